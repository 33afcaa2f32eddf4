"""Action masks in parallel envs, given as a classic Dict observation or in info["action_mask"]: the
slots observe the observation entry, the masks are served to MaskablePPO and Gymnasium as in
turn-based games, and every NPC that takes masks (random, an SB3 or MaskablePPO model) acts legally."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from mpe2 import simple_tag_v3
from pettingzoo.utils import BaseParallelWrapper

import npc_wrapper as nw
from npc_wrapper.cli.envs import pad_observations

sb3_contrib = pytest.importorskip("sb3_contrib")

#: The only legal actions: 1 and 3 ("left", "up"), for every agent.
LEGAL = np.array([0, 1, 0, 1, 0], dtype=np.int8)


class MaskedTag(BaseParallelWrapper):
    """Padded simple_tag whose agents may only take actions 1 and 3, announced in a classic Dict
    observation (``where="obs"``) or in ``info["action_mask"]`` (``where="info"``); it records every
    action it is sent."""

    def __init__(self, where: str = "obs") -> None:
        tag = simple_tag_v3.parallel_env(max_cycles=25, continuous_actions=False)
        super().__init__(pad_observations(tag))
        self.where = where
        self.sent: list[dict[Any, Any]] = []

    def observation_space(self, agent: Any) -> spaces.Space:
        inner = self.env.observation_space(agent)
        if self.where != "obs":
            return inner
        return spaces.Dict({"observation": inner, "action_mask": spaces.Box(0, 1, (5,), np.int8)})

    def _wrap(self, obs: dict, infos: dict) -> tuple[dict, dict]:
        if self.where == "obs":
            return {a: {"observation": o, "action_mask": LEGAL.copy()} for a, o in obs.items()}, infos
        return obs, {a: {**infos.get(a, {}), "action_mask": LEGAL.copy()} for a in obs}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple:
        return self._wrap(*self.env.reset(seed=seed, options=options))

    def step(self, actions: dict) -> tuple:
        self.sent.append(dict(actions))
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        obs, infos = self._wrap(obs, infos)
        return obs, rewards, terms, truncs, infos


def sent_actions(venv: Any) -> list[int]:
    return [int(a) for joint in venv.engine.backend.joints for step in joint.env.sent for a in step.values()]


@pytest.mark.parametrize("where", ["obs", "info"])
def test_maskable_ppo_and_masked_random_npcs_in_a_parallel_env(where: str) -> None:
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.utils import is_masking_supported

    venv = nw.make_vec_env(lambda: MaskedTag(where), num_envs=2, npc="random", training_agents_pct=0.75,
                           seed=0, device="cpu")
    try:
        obs = venv.reset()
        assert obs.shape == (6, 16) and venv.observation_space.shape == (16,)
        assert is_masking_supported(venv)
        np.testing.assert_array_equal(venv.action_masks(), np.tile(LEGAL.astype(bool), (6, 1)))
        model = MaskablePPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
        model.learn(64)
        sent = sent_actions(venv)  # the trainer's and the NPC's
        assert set(sent) <= {1, 3} and len(sent) > 100
    finally:
        venv.close()


@pytest.mark.parametrize("npc", ["PPO", "MaskablePPO"])
def test_model_npcs_take_masks_in_a_parallel_env(npc: str) -> None:
    from stable_baselines3 import PPO

    algo = sb3_contrib.MaskablePPO if npc == "MaskablePPO" else PPO
    source = nw.make_vec_env(lambda: MaskedTag("obs"), num_envs=1, training_agents_pct=1.0, device="cpu")
    model = algo("MlpPolicy", source, n_steps=16, batch_size=16, seed=0, device="cpu")
    source.close()
    venv = nw.make_vec_env(lambda: MaskedTag("obs"), num_envs=2, npc=model, training_agents=["agent_0"],
                           seed=0, device="cpu")
    venv.reset()
    for _ in range(30):
        venv.step(np.full(2, 3))
    assert set(sent_actions(venv)) <= {1, 3}
    venv.close()


def test_gymnasium_infos_carry_the_masks_of_a_parallel_env() -> None:
    envs = nw.make_vector_env(lambda: MaskedTag("info"), num_envs=2, training_agents_pct=0.75, device="cpu")
    obs, infos = envs.reset(seed=0)
    assert infos["action_mask"].shape == (6, 5) and (infos["action_mask"] == LEGAL.astype(bool)).all()
    obs, *_, infos = envs.step(np.full(6, 1))
    assert (infos["action_mask"] == LEGAL.astype(bool)).all() and infos["_action_mask"].all()
    envs.close()


def test_npc_that_cannot_take_masks_is_refused_in_a_parallel_env() -> None:
    with pytest.raises(ValueError, match=r"does not take action masks, but the env gives those agents masks"):
        nw.make_vec_env(lambda: MaskedTag("obs"), npc=lambda obs: np.zeros(len(obs), np.int64),
                        training_agents_pct=0.75, device="cpu")


def test_parallel_env_without_masks_has_none() -> None:
    venv = nw.make_vec_env(lambda: pad_observations(simple_tag_v3.parallel_env(max_cycles=25)), num_envs=2,
                           training_agents_pct=0.75, device="cpu")
    venv.reset()
    assert not venv.engine.has_masks and not venv.has_attr("action_masks")
    venv.close()

"""The Stable-Baselines3 ``VecEnv`` contract of ``make_vec_env``."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium
import numpy as np
import pytest
from pettingzoo.utils import BaseParallelWrapper
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import check_for_correct_spaces
from stable_baselines3.common.vec_env import (
    VecCheckNan,
    VecEnv,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
)

import npc_wrapper as nw
from tests.envs import RecordingEnvFactory as EnvFactory
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv


def make(factory: EnvFactory, num_envs: int = 2, **kwargs: Any) -> nw.SB3VecEnv:
    kwargs.setdefault("training_agents_pct", 0.67)
    kwargs.setdefault("npc", "noop")
    return nw.make_vec_env(factory, num_envs=num_envs, **kwargs)


def test_is_a_vec_env_with_the_training_agents_spaces() -> None:
    venv = make(EnvFactory())
    assert isinstance(venv, VecEnv) and isinstance(venv, nw.NPCVecEnv)  # the former name, kept
    assert venv.num_envs == 4 and venv.num_sub_envs == 2
    check_for_correct_spaces(venv, ScriptedParallelEnv(obs_shape=(4,)).observation_space("a_0"),
                             gymnasium.spaces.Discrete(4))
    obs = venv.reset()
    assert obs.shape == (4, 4) and obs.dtype == np.float32
    assert all(venv.observation_space.contains(o) for o in obs)
    obs, rew, done, infos = venv.step(np.array([venv.action_space.sample() for _ in range(4)]))
    assert obs.shape == (4, 4) and rew.shape == (4,) and rew.dtype == np.float32
    assert done.shape == (4,) and done.dtype == np.bool_
    assert isinstance(infos, (list, tuple)) and len(infos) == 4 and all(isinstance(i, dict) for i in infos)
    venv.close()


def test_step_async_then_step_wait() -> None:
    factory = EnvFactory()
    venv = make(factory)
    venv.reset()
    with pytest.raises(RuntimeError, match="without step_async"):
        venv.step_wait()
    venv.step_async(np.array([1, 2, 3, 0]))
    assert factory.envs[0].action_log == []  # nothing stepped before step_wait
    obs, *_ = venv.step_wait()
    np.testing.assert_array_equal(obs[:, 2], [1, 2, 3, 0])
    assert factory.envs[1].action_log[-1] == {"a_0": 3, "a_1": 0, "b_0": 0}
    venv.close()


def test_close_is_idempotent_and_closes_every_env() -> None:
    factory = EnvFactory()
    venv = make(factory, num_envs=3)
    venv.reset()
    venv.close()
    venv.close()
    assert [e.close_count for e in factory.envs] == [1, 1, 1]
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


def test_seed_reaches_every_sub_env_as_seed_plus_index() -> None:
    factory = EnvFactory()
    venv = make(factory, num_envs=3)
    assert venv.seed(7) == [7, 7, 8, 8, 9, 9]
    obs = venv.reset()
    assert [e.reset_seeds for e in factory.envs] == [[7], [8], [9]]
    np.testing.assert_array_equal(obs[:, 3], [7, 7, 8, 8, 9, 9])
    venv.reset()  # SB3 seeds only the next reset
    assert [e.reset_seeds for e in factory.envs] == [[7, None], [8, None], [9, None]]
    venv.close()


def test_make_vec_env_seed_argument() -> None:
    factory = EnvFactory()
    venv = make(factory, seed=100)
    venv.reset()
    assert [e.reset_seeds for e in factory.envs] == [[100], [101]]
    venv.close()


def test_set_options_reach_env_reset() -> None:
    factory = EnvFactory()
    venv = make(factory)
    venv.set_options({"difficulty": 3})
    venv.reset()
    assert [e.reset_options for e in factory.envs] == [[{"difficulty": 3}]] * 2
    venv.reset()  # options, like seeds, apply to the next reset only
    assert [e.reset_options[-1] for e in factory.envs] == [None, None]
    venv.close()


class _InfosOnFirstResetOnly(BaseParallelWrapper):
    """Reset infos at the first reset, none at later ones."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.resets = 0

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self.resets += 1
        return obs, infos if self.resets == 1 else {}


def test_auto_reset_with_empty_infos_replaces_the_old_reset_infos() -> None:
    """As DummyVecEnv does: ``reset_infos[i]`` is always the latest reset's, even when that one is empty."""
    venv = nw.make_vec_env(lambda: _InfosOnFirstResetOnly(ScriptedParallelEnv(max_steps=2)), num_envs=2,
                           training_agents=["a_0"], npc="noop", seed=0)
    venv.reset()
    assert all(info["agent"] == "a_0" for info in venv.reset_infos)
    venv.step(np.zeros(2, dtype=np.int64))
    _, _, done, _ = venv.step(np.zeros(2, dtype=np.int64))
    assert done.all()
    assert venv.reset_infos == [{}, {}]
    venv.close()


def test_reset_infos_after_reset_and_after_auto_reset() -> None:
    venv = make(EnvFactory(max_steps=2, death_steps={"a_1": 1}), seed=5)
    venv.reset()
    assert [(i["agent"], i["step"], i["episode_id"]) for i in venv.reset_infos] == [
        ("a_0", 0, 5), ("a_1", 0, 5), ("a_0", 0, 6), ("a_1", 0, 6)]
    venv.step(np.zeros(4, dtype=np.int64))
    assert [i["episode_id"] for i in venv.reset_infos] == [5, 5, 6, 6]  # no reset yet
    obs, _, done, _ = venv.step(np.zeros(4, dtype=np.int64))
    assert done.tolist() == [True, False, True, False]
    # Every slot of a reset env holds the new episode's reset info, the padded one included.
    new_ids = [i["episode_id"] for i in venv.reset_infos]
    assert new_ids == [obs[0, 3], obs[0, 3], obs[2, 3], obs[2, 3]] and 5 not in new_ids
    assert [i["agent"] for i in venv.reset_infos] == ["a_0", "a_1"] * 2
    assert all(i["step"] == 0 for i in venv.reset_infos)
    venv.close()


def test_get_attr_set_attr_env_method_are_routed_by_slot() -> None:
    venv = make(EnvFactory(), num_envs=3, seed=20)
    venv.reset()
    assert venv.get_attr("episode_id") == [20, 20, 21, 21, 22, 22]
    assert venv.get_attr("episode_id", indices=[3]) == [21]
    assert venv.get_attr("num_resets", indices=[0, 5]) == [1, 1]
    assert venv.env_method("agent_index", "b_0", indices=[4]) == [2]
    assert venv.env_method("agent_index", agent="a_1") == [1] * 6
    venv.close()

    # set_attr changes only the env behind the given slot (once, though two slots share it).
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(obs_shape=(4,)), num_envs=3, npc="noop",
                           training_agents_pct=0.67, seed=20)
    venv.reset()
    venv.set_attr("max_steps", 2, indices=[2, 3])
    assert venv.get_attr("max_steps") == [10, 10, 2, 2, 10, 10]
    _, _, done, _ = venv.step(np.zeros(6, dtype=np.int64))
    _, _, done, _ = venv.step(np.zeros(6, dtype=np.int64))
    assert done.tolist() == [False, False, True, True, False, False]
    venv.env_method("reset", seed=99, indices=[5])  # reaches env 2, the env of slot 5
    assert venv.get_attr("episode_id", indices=[4, 5]) == [99, 99]
    venv.close()


def test_env_is_wrapped() -> None:
    venv = make(EnvFactory())
    # Every slot reports Monitor's info["episode"], so SB3 may treat it as Monitor-wrapped.
    assert venv.env_is_wrapped(Monitor) == [True] * 4
    assert venv.env_is_wrapped(RecordingParallelEnv) == [True] * 4
    assert venv.env_is_wrapped(BaseParallelWrapper, indices=[1]) == [True]
    assert venv.env_is_wrapped(ScriptedParallelEnv) == [True] * 4  # the innermost env counts too
    assert venv.env_is_wrapped(gymnasium.wrappers.TimeLimit) == [False] * 4
    venv.close()
    bare = nw.make_vec_env(lambda: ScriptedParallelEnv(), training_agents_pct=0.67)
    assert bare.env_is_wrapped(RecordingParallelEnv) == [False, False]
    bare.close()


def test_render_rgb_array_tiles_one_image_per_sub_env() -> None:
    venv = make(EnvFactory(render_mode="rgb_array"), seed=3)
    assert venv.render_mode == "rgb_array"
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))
    img = venv.render()
    assert img.shape == (32, 16, 3) and img.dtype == np.uint8  # 2 sub-envs' 16x16 images, not 4 slots'
    assert (img[:16] == (1 * 7 + 3) % 256).all() and (img[16:] == (1 * 7 + 4) % 256).all()  # episodes 3, 4
    assert [int(i[0, 0, 0]) for i in venv.get_images()] == [10, 10, 11, 11]  # one per slot
    venv.close()


def test_vec_monitor_and_vec_frame_stack() -> None:
    base = make(EnvFactory(max_steps=4, death_steps={"a_1": 2}), num_envs=2, npc="random", seed=0)
    with pytest.warns(UserWarning, match="already wrapped with a `Monitor`"):  # SB3 sees our Monitor info
        monitored = VecMonitor(VecCheckNan(base, raise_exception=True))
    venv = VecFrameStack(monitored, n_stack=3)
    obs = venv.reset()
    assert obs.shape == (4, 12)
    episodes = []
    for _ in range(9):
        obs, _rew, done, infos = venv.step(np.array([venv.action_space.sample() for _ in range(4)]))
        assert obs.shape == (4, 12)
        for k in np.flatnonzero(done):
            # VecFrameStack stacked the terminal observation: the agent's last frame is last.
            term = infos[k]["terminal_observation"]
            assert term.shape == (12,)
            assert term[-4] == (2 if k % 2 else 4) and term[-3] == k % 2
            assert (obs[k, :8] == 0).all()  # and the stack restarts at done
            episodes.append(infos[k]["episode"]["l"])
    assert sorted(set(episodes)) == [2, 4]
    venv.close()
    assert base.engine.closed


def test_vec_normalize() -> None:
    base = make(EnvFactory(max_steps=4, death_steps={"a_1": 2}), num_envs=2, npc="random", seed=0)
    venv = VecNormalize(base, clip_obs=5.0)
    venv.reset()
    for _ in range(12):
        obs, rew, done, infos = venv.step(np.array([venv.action_space.sample() for _ in range(4)]))
        assert np.isfinite(obs).all() and np.abs(obs).max() <= 5.0 and np.isfinite(rew).all()
        for k in np.flatnonzero(done):
            assert np.abs(infos[k]["terminal_observation"]).max() <= 5.0  # normalised too
    assert venv.obs_rms.count > 40
    np.testing.assert_allclose(venv.get_original_obs()[:, 1], [0, 1, 0, 1])
    venv.close()


def test_vec_monitor_counts_padding_steps_so_our_monitor_info_is_preferred() -> None:
    # VecMonitor counts every step of a slot; after a death the padding steps join the next
    # "episode". The wrapper's own info["episode"] counts only the agent's live steps.
    base = make(EnvFactory(max_steps=4, death_steps={"a_1": 1}), num_envs=1, seed=0)
    # env_is_wrapped(Monitor) is True (the wrapper reports Monitor's info itself), so VecMonitor warns,
    # once, that it overwrites those statistics: rightly, as it counts padding steps in the lengths.
    with pytest.warns(UserWarning, match="already wrapped with a `Monitor`") as warned:
        venv = VecMonitor(base)
    assert len(warned) == 1
    venv.reset()
    lengths = []
    for _ in range(8):
        _, _, done, infos = venv.step(np.zeros(2, dtype=np.int64))
        lengths += [(k, infos[k]["episode"]["l"]) for k in np.flatnonzero(done)]
    # VecMonitor overwrote "episode": slot 1 dies at steps 1 and 5 -> lengths 1, then 4 (3 padding + 1).
    assert lengths == [(1, 1), (0, 4), (1, 4), (0, 4)]
    venv.close()


class ConstantModel:
    """The smallest thing ``evaluate_policy`` accepts: SB3's ``predict`` signature."""

    def __init__(self, action: int) -> None:
        self.action = action

    def predict(self, obs: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        return np.full(len(obs), self.action, dtype=np.int64), None


def test_evaluate_policy_reads_the_wrappers_monitor_info_without_a_warning() -> None:
    # a_1 dies at step 1 and its slot is padding until the env ends at step 3: evaluate_policy takes the
    # wrapper's info["episode"] (env_is_wrapped(Monitor) is True), so its length is the 1 step it lived,
    # where counting the slot's steps would give 1 and then 2 padding steps of a next "episode".
    venv = make(EnvFactory(max_steps=3, death_steps={"a_1": 1}), num_envs=1, seed=0)
    assert venv.env_is_wrapped(Monitor) == [True, True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not wrapped with a Monitor" warning
        rewards, lengths = evaluate_policy(
            ConstantModel(0), venv, n_eval_episodes=4, return_episode_rewards=True
        )
    assert sorted(lengths) == [1, 1, 3, 3]
    assert sorted(rewards) == pytest.approx([1.01, 1.01, 6.0, 6.0])  # a_1 scored t + 0.01 at step 1 only
    venv.close()


def test_evaluate_policy() -> None:
    venv = make(EnvFactory(max_steps=3), num_envs=2, seed=0)
    rewards, lengths = evaluate_policy(ConstantModel(2), venv, n_eval_episodes=8, return_episode_rewards=True,
                                       warn=True)
    assert len(rewards) == 8 and lengths == [3] * 8
    # Slots alternate agent a_0 (index 0) and a_1 (index 1): 1+2+3 + 0.01*i*3 + 0.001*2*3.
    assert sorted(rewards) == pytest.approx([6.006] * 4 + [6.036] * 4)
    venv.close()

"""Checks at the API boundary beyond the red team's reproducers (issue #14): NPC outputs of every action
space, seeds, step_async bookkeeping, step_timeout, pool weights, devices.

On :class:`tests.envs.ScriptedParallelEnv` (agents ``a_0``, ``a_1`` train, ``b_0`` is the NPC).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

import npc_wrapper as nw
from npc_wrapper.errors import NPCOutputError
from tests.envs import ScriptedParallelEnv
from tests.test_hostile_inputs import later_strings

OBS = spaces.Box(-1.0, 1.0, (3,), np.float32)
INF, NAN = math.inf, math.nan


class Fixed(torch.nn.Module):
    """A network whose output is ``row`` for every observation (what a diverged one may give)."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.nn.Parameter(torch.tensor(row), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row.expand(len(x), -1)


def act(space: spaces.Space, row: list[float], n: int = 4) -> np.ndarray:
    policy = nw.TorchPolicy(Fixed(row), OBS, space, device="cpu")
    policy.reset(n, seed=0)
    return policy.act(np.zeros((n, 3), np.float32), np.arange(n), np.zeros(n, bool))


@pytest.mark.parametrize(
    ("space", "row"),
    [
        (spaces.Discrete(3), [0.0, NAN, 1.0]),
        (spaces.Discrete(3), [0.0, INF, 1.0]),
        (spaces.Discrete(3), [-INF, -INF, -INF]),
        (spaces.MultiDiscrete([2, 3]), [0.0, 1.0, -INF, -INF, -INF]),  # the second categorical has no action
        (spaces.MultiDiscrete([2, 3]), [NAN, 1.0, 0.0, 0.0, 0.0]),
        (spaces.MultiBinary(2), [0.0, NAN]),
        (spaces.Box(-1.0, 1.0, (2,)), [0.5, NAN]),
    ],
    ids=["discrete-nan", "discrete-inf", "discrete-all-minus-inf", "multidiscrete-empty-part",
         "multidiscrete-nan", "multibinary-nan", "box-nan"],
)
def test_network_output_that_cannot_be_acted_on_is_an_error_naming_the_npc(
    space: spaces.Space, row: list
) -> None:
    with pytest.raises(NPCOutputError, match=r"TorchPolicy\(name='Fixed'.*NaN or infinite") as exc:
        act(space, row)
    assert exc.value.rows == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("space", "row", "allowed"),
    [
        (spaces.Discrete(3), [-INF, 0.0, -INF], {1}),  # -inf rules an action out; it is not an error
        (spaces.MultiDiscrete([2, 3]), [-INF, 0.0, 0.0, -INF, 0.0], {(1, 0), (1, 2)}),
        (spaces.MultiBinary(2), [INF, -INF], {(1, 0)}),  # Bernoulli logits of certainty
        (spaces.Box(-1.0, 1.0, (2,)), [INF, -INF], {(1.0, -1.0)}),  # clipped to the bounds, as SB3 does
    ],
    ids=["discrete", "multidiscrete", "multibinary", "box"],
)
def test_infinite_logits_that_can_be_sampled_are_legal(space: spaces.Space, row: list, allowed: set) -> None:
    actions = act(space, row, n=32)
    assert {a.item() if a.ndim == 0 else tuple(a.tolist()) for a in actions} <= allowed


def test_an_sb3_npc_with_nan_weights_on_a_multibinary_space_is_an_error() -> None:
    space = spaces.MultiBinary(3)
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(action_space=space), training_agents_pct=1.0,
                           device="cpu")
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, seed=0, device="cpu")
    venv.close()
    with torch.no_grad():
        for p in model.policy.parameters():
            p.fill_(NAN)
    policy = nw.SB3Policy(model, venv.observation_space, space, device="cpu", name="diverged")
    policy.reset(2, seed=0)
    with pytest.raises(NPCOutputError, match="name='diverged'"):
        policy.act(np.zeros((2, 3), np.float32), np.arange(2), np.zeros(2, bool))


def test_a_failed_step_leaves_no_pending_step_async_behind() -> None:
    venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=2, npc=later_strings, device="cpu", seed=0)
    try:
        venv.reset()
        with pytest.raises(ValueError, match="later_strings"):
            for _ in range(5):
                venv.step(np.zeros(4, dtype=np.int64))
        venv.step_async(np.zeros(4, dtype=np.int64))  # not "called twice": the failed step took its actions
    finally:
        venv.close()


def test_reset_abandons_a_pending_step_async() -> None:
    venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=2, device="cpu", seed=0)
    try:
        venv.reset()
        venv.step_async(np.zeros(4, dtype=np.int64))
        venv.reset()
        venv.step(np.zeros(4, dtype=np.int64))
    finally:
        venv.close()


def test_negative_seeds_are_refused_by_every_way_in() -> None:
    venv = nw.make_vec_env(ScriptedParallelEnv, num_envs=2, device="cpu")
    with pytest.raises(ValueError, match=r"^seed must be an integer >= 0"):
        venv.seed(-1)
    venv.close()
    envs = nw.make_vector_env(ScriptedParallelEnv, num_envs=2, device="cpu")
    with pytest.raises(ValueError, match=r"^the reset seed must be an integer >= 0.*got -1"):
        envs.reset(seed=[0, -1])
    envs.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step_timeout": 0}, ValueError, "step_timeout must be a positive, finite number of seconds"),
        ({"step_timeout": math.inf}, ValueError, "step_timeout must be a positive, finite number"),
        ({"step_timeout": "10"}, TypeError, "step_timeout must be a number of seconds or None"),
        ({"step_timeout": True}, TypeError, "step_timeout must be a number of seconds or None"),
        ({"step_timeout": 10}, ValueError, "step_timeout=10.0 needs num_workers >= 1"),
    ],
)
def test_step_timeout_is_checked(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        nw.make_vec_env(ScriptedParallelEnv, device="cpu", **kwargs)


def test_workers_within_their_step_timeout_step_as_without_one(make_venv: Any) -> None:
    kwargs = {"num_envs": 2, "num_workers": 2, "start_method": "fork", "device": "cpu", "seed": 0}
    bounded = make_venv(ScriptedParallelEnv, step_timeout=30, **kwargs)
    free = make_venv(ScriptedParallelEnv, **kwargs)
    try:
        first = [v.reset() for v in (bounded, free)]
        np.testing.assert_array_equal(*(o[0] if isinstance(o, tuple) else o for o in first))
        for _ in range(12):  # past an episode end: the automatic resets are bounded too
            steps = [v.step(np.ones(4, dtype=np.int64)) for v in (bounded, free)]
            np.testing.assert_array_equal(steps[0][0], steps[1][0])
    finally:
        bounded.close()
        free.close()


def test_bool_actions_are_taken_for_multibinary_spaces() -> None:
    space = spaces.MultiBinary(2)
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(action_space=space), num_envs=1, device="cpu", seed=0)
    try:
        venv.reset()
        venv.step(np.array([[True, False], [False, True]]))
    finally:
        venv.close()


def test_pool_weights_must_be_finite() -> None:
    members = [nw.RandomPolicy(OBS, spaces.Discrete(2)), nw.ConstantPolicy(OBS, spaces.Discrete(2))]
    for weights in ([1.0, NAN], [1.0, INF], [1e308, 1e308]):
        with pytest.raises(ValueError, match="positive sum that is finite"):
            nw.NPCPool(members, weights=weights)
    pool = nw.NPCPool(members)
    with pytest.raises(ValueError, match="finite, non-negative number, got inf"):
        pool.add(nw.RandomPolicy(OBS, spaces.Discrete(2)), weight=INF)


def test_a_cuda_index_past_the_visible_devices_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:3' but only 1 CUDA device\(s\) are visible"):
        nw.make_vec_env(ScriptedParallelEnv, device="cuda:3")

"""Resets of some sub-envs (Gymnasium's ``reset_mask``) and per-env reset options, on both backends."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium.wrappers.vector import RecordEpisodeStatistics

import npc_wrapper as nw
from tests.envs import RecordingEnvFactory

WORKERS = [0, 2]
ACT = np.zeros(4, dtype=np.int64)  # 2 envs x 2 training agents


def gym_envs(num_workers: int, **kwargs: Any) -> nw.NPCVectorEnv:
    kwargs.setdefault("npc", "noop")
    return nw.make_vector_env(RecordingEnvFactory(max_steps=10), num_envs=2, training_agents_pct=0.67,
                              num_workers=num_workers, **kwargs)


@pytest.mark.parametrize("num_workers", WORKERS)
def test_reset_mask_resets_only_the_masked_envs(num_workers: int) -> None:
    envs = gym_envs(num_workers)
    try:
        envs.reset(seed=0)
        for _ in range(3):
            envs.step(ACT)
        obs, infos = envs.reset(seed=5, options={"reset_mask": np.array([False, False, True, True])})
        # obs = [t, agent index, last action, episode id]; env 1 restarts with seed 5 + 1
        np.testing.assert_array_equal(obs[:, 0], [3, 3, 0, 0])
        np.testing.assert_array_equal(obs[:, 3], [0, 0, 6, 6])
        assert infos["_episode_id"].tolist() == [False, False, True, True]
        assert [s[-1] for s in envs.get_attr("reset_seeds")] == [0, 0, 6, 6]
        assert [o[-1] for o in envs.get_attr("reset_options")] == [None] * 4  # the mask is not passed on
        obs, *_ = envs.step(ACT)
        np.testing.assert_array_equal(obs[:, 0], [4, 4, 1, 1])
    finally:
        envs.close()


@pytest.mark.parametrize("num_workers", WORKERS)
def test_episode_statistics_restart_with_the_masked_envs(num_workers: int) -> None:
    envs = RecordEpisodeStatistics(gym_envs(num_workers))
    try:
        envs.reset(seed=0)
        for _ in range(4):
            envs.step(ACT)
        envs.reset(options={"reset_mask": np.array([True, True, False, False])})
        lengths: dict[int, float] = {}
        for _ in range(10):
            *_, infos = envs.step(ACT)
            if "episode" in infos:
                lengths.update({k: infos["episode"]["l"][k] for k in np.flatnonzero(infos["_episode"])})
                ours = infos[nw.EPISODE_KEY]
                lengths.update({10 + k: ours["length"][k] for k in np.flatnonzero(ours["_length"])})
        # env 1 ends first (10 steps since the first reset), env 0 10 steps after its own reset
        assert lengths == {2: 10, 3: 10, 12: 10, 13: 10, 0: 10, 1: 10, 10: 10, 11: 10}
    finally:
        envs.close()


def test_partial_reset_runs_the_npcs_of_the_reset_envs_only(recording_npc: Any) -> None:
    """One NPC per env (rows 0 and 1): the kept env's NPC keeps the action computed for its next step."""
    factory = RecordingEnvFactory(max_steps=10)
    probe = factory()
    agent = probe.possible_agents[-1]
    log = recording_npc(probe.observation_space(agent), probe.action_space(agent))  # stands still
    envs = nw.make_vector_env(factory, num_envs=2, training_agents_pct=0.67, npc=log)
    envs.reset(seed=0)
    envs.step(ACT)
    log.calls.clear()
    envs.reset(options={"reset_mask": np.array([False, False, True, True])})
    assert [c.rows for c in log.calls] == [[1]]  # env 0's NPC keeps the action computed for its coming step
    envs.step(ACT)
    assert [c.rows for c in log.calls] == [[1], [0, 1]]
    envs.close()


def test_reset_mask_is_checked() -> None:
    envs = gym_envs(0)
    with pytest.raises(RuntimeError, match="first reset\\(\\) must reset every sub-env"):
        envs.reset(options={"reset_mask": np.array([True, True, False, False])})
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"reset_mask'\] gives slots 2-3 different values \[True, False\]"):
        envs.reset(options={"reset_mask": np.array([True, True, True, False])})
    with pytest.raises(TypeError, match="dtype=np.bool_"):
        envs.reset(options={"reset_mask": np.array([1, 1, 0, 0])})
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        envs.reset(options={"reset_mask": np.array([True, False])})
    with pytest.raises(ValueError, match="at least one True"):
        envs.reset(options={"reset_mask": np.zeros(4, dtype=bool)})
    with pytest.raises(TypeError, match="numpy array"):
        envs.reset(options={"reset_mask": [True, True, False, False]})
    options = {"reset_mask": np.array([True, True, False, False]), "level": 2}
    envs.reset(options=options)
    assert "reset_mask" in options  # the caller's dict is left as it was
    assert [o[-1] for o in envs.get_attr("reset_options")] == [{"level": 2}] * 2 + [None] * 2
    envs.close()


@pytest.mark.parametrize("num_workers", WORKERS)
def test_sb3_set_options_gives_each_env_its_own(num_workers: int) -> None:
    venv = nw.make_vec_env(RecordingEnvFactory(max_steps=10), num_envs=2, npc="noop",
                           training_agents_pct=0.67, num_workers=num_workers)
    try:
        venv.set_options([{"level": 0}, {"level": 0}, {"level": 1}, {"level": 1}])
        venv.reset()
        assert [o[-1] for o in venv.get_attr("reset_options")] == [{"level": 0}] * 2 + [{"level": 1}] * 2
        venv.set_options([{"level": 0}, {"level": 1}, {"level": 1}, {"level": 1}])
        with pytest.raises(ValueError, match="set_options gives slots 0-1 different values"):
            venv.reset()
        venv.set_options([{"w": [np.ones(2)]} for _ in range(4)])  # equal copies, arrays compared by value
        venv.reset()
        assert all(np.array_equal(o[-1]["w"][0], np.ones(2)) for o in venv.get_attr("reset_options"))
    finally:
        venv.close()

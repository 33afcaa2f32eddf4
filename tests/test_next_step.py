"""Gymnasium NEXT_STEP autoreset: the step after a done only delivers the reset."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import NormalizeObservation, RecordEpisodeStatistics

import npc_wrapper as nw
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv

AGENTS = ["a_0", "a_1", "b_0", "b_1"]


def _envs(num_envs: int = 2, num_workers: int = 0, **env_kwargs):
    recorders: list[RecordingParallelEnv] = []

    def make() -> RecordingParallelEnv:
        rec = RecordingParallelEnv(ScriptedParallelEnv(agents=AGENTS, obs_shape=(4,), **env_kwargs))
        recorders.append(rec)
        return rec

    envs = nw.make_vector_env(make, num_envs=num_envs, training_agents_pct=0.5, num_workers=num_workers,
                              autoreset_mode="next_step")
    return envs, recorders


def test_metadata_declares_next_step_and_bad_modes_are_refused() -> None:
    envs, _ = _envs()
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    envs.close()
    with pytest.raises(ValueError, match="SAME_STEP or AutoresetMode.NEXT_STEP"):
        nw.make_vector_env(lambda: ScriptedParallelEnv(), autoreset_mode="disabled")


def test_episode_end_shows_terminal_obs_then_the_reset_without_stepping_the_env() -> None:
    envs, recorders = _envs(max_steps=3)
    envs.reset(seed=0)
    for t in (1, 2):
        obs, rew, term, trunc, _ = envs.step(np.zeros(4, dtype=np.int64))
        assert not (term | trunc).any()
    obs, rew, term, trunc, infos = envs.step(np.ones(4, dtype=np.int64))
    assert trunc.all() and not term.any()
    assert "final_obs" not in infos
    np.testing.assert_array_equal(obs[:, 0], 3)  # the terminal observation (step 3), not the reset
    np.testing.assert_allclose(rew, [3.001, 3.011, 3.001, 3.011])
    steps_before = [len(r.action_log) for r in recorders[-2:]]

    obs, rew, term, trunc, infos = envs.step(np.full(4, 2, dtype=np.int64))
    assert [len(r.action_log) for r in recorders[-2:]] == steps_before  # the envs were not stepped
    np.testing.assert_array_equal(obs[:, 0], 0)  # the new episode's first observation
    np.testing.assert_array_equal(obs[:, 2], -1)
    assert not (term | trunc).any() and (rew == 0).all()
    assert infos[nw.PADDING_KEY].all()
    assert (infos["step"] == 0).all()  # the reset infos come with the reset

    obs, rew, *_ = envs.step(np.full(4, 3, dtype=np.int64))
    np.testing.assert_array_equal(obs[:, 0], 1)
    np.testing.assert_array_equal(obs[:, 2], 3)  # the first real action of the new episode arrived
    envs.close()


def test_dead_agent_shows_terminal_obs_then_padding() -> None:
    envs, _ = _envs(num_envs=1, max_steps=6, death_steps={"a_0": 2})
    envs.reset(seed=0)
    envs.step(np.zeros(2, dtype=np.int64))
    obs, rew, term, trunc, infos = envs.step(np.zeros(2, dtype=np.int64))
    assert term.tolist() == [True, False]
    np.testing.assert_array_equal(obs[0][:2], [2, 0])  # a_0's terminal observation
    obs, rew, term, trunc, infos = envs.step(np.zeros(2, dtype=np.int64))
    np.testing.assert_array_equal(obs[0], 0)
    assert rew[0] == 0 and not term[0] and infos[nw.PADDING_KEY][0]
    envs.close()


def test_dead_slot_stays_padding_on_the_step_its_env_ends() -> None:
    """The env is reset inside that step, but its reset is delivered one step later, to every slot."""
    envs, _ = _envs(num_envs=1, max_steps=4, death_steps={"a_0": 2})
    envs.reset(seed=0)
    for _ in range(3):
        envs.step(np.zeros(2, dtype=np.int64))
    obs, rew, term, trunc, infos = envs.step(np.zeros(2, dtype=np.int64))  # t=4: a_1 truncated
    assert trunc.tolist() == [False, True] and infos[nw.PADDING_KEY].tolist() == [True, False]
    np.testing.assert_array_equal(obs[0], 0)  # still padding, not the next episode's first obs
    np.testing.assert_array_equal(obs[1][:2], [4, 1])  # a_1's terminal observation
    obs, rew, term, trunc, infos = envs.step(np.zeros(2, dtype=np.int64))  # the reset, for both slots
    np.testing.assert_array_equal(obs[:, :3], [[0, 0, -1], [0, 1, -1]])
    assert not (term | trunc).any() and rew.tolist() == [0, 0]
    envs.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_partial_reset_leaves_an_ended_env_showing_its_terminal_obs(num_workers: int) -> None:
    """As in Gymnasium: an env that ended and is not in ``reset_mask`` keeps its terminal observation
    (and padding) until its next step delivers its reset, instead of showing that reset early."""
    envs, _ = _envs(num_envs=2, num_workers=num_workers, max_steps=3, death_steps={"a_1": 2})
    envs.reset(seed=0)
    envs.step(np.zeros(4, dtype=np.int64))
    envs.reset(options={"reset_mask": np.array([False, False, True, True])})  # env 1 starts later
    envs.step(np.zeros(4, dtype=np.int64))
    ended, _, term, trunc, _ = envs.step(np.zeros(4, dtype=np.int64))  # env 0 ends at its step 3
    assert (term | trunc).tolist() == [True, False, False, True]
    np.testing.assert_array_equal(ended[:2, :2], [[3, 0], [0, 0]])  # a_0's terminal obs, a_1's padding
    obs, _ = envs.reset(options={"reset_mask": np.array([False, False, True, True])})
    np.testing.assert_array_equal(obs[:2], ended[:2])
    np.testing.assert_array_equal(obs[2:, :3], [[0, 0, -1], [0, 1, -1]])
    obs, rew, term, trunc, infos = envs.step(np.zeros(4, dtype=np.int64))  # env 0's reset arrives now
    np.testing.assert_array_equal(obs[:, :3], [[0, 0, -1], [0, 1, -1], [1, 0, 0], [1, 1, 0]])
    assert rew[:2].tolist() == [0, 0] and infos[nw.PADDING_KEY].tolist() == [True, True, False, False]
    envs.close()


def test_normalize_observation_and_episode_statistics_work() -> None:
    envs, _ = _envs(max_steps=3)
    wrapped = RecordEpisodeStatistics(NormalizeObservation(envs))
    wrapped.reset(seed=0)
    episodes = 0
    for _ in range(8):
        *_, infos = wrapped.step(np.zeros(4, dtype=np.int64))
        if "episode" in infos:
            episodes += int(infos["_episode"].sum())
            np.testing.assert_array_equal(infos["episode"]["l"][infos["_episode"]], 3)
    assert episodes == 8  # two episodes of 3 steps (+1 reset step each) in 8 steps, 4 slots
    wrapped.close()


def test_workers_match_in_process() -> None:
    results = []
    for workers in (0, 2):
        envs, _ = _envs(num_envs=2, num_workers=workers, max_steps=3, death_steps={"a_1": 2})
        obs, _ = envs.reset(seed=3)
        trace = [obs]
        for t in range(7):
            obs, rew, term, trunc, _ = envs.step(np.full(4, t % 4, dtype=np.int64))
            trace += [obs, rew, term, trunc]
        envs.close()
        results.append(trace)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)

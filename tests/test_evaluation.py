"""The evaluation loop and its summaries (npc-train's and npc-eval's evaluations, the round robin's games)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import npc_wrapper as nw
from npc_wrapper.errors import NoEpisodeEnds
from npc_wrapper.evaluation import EpisodeStats, play_episodes, wilson_interval
from tests.envs import ScriptedParallelEnv


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(40, 40)  # exactly 1, not 0.9999999999999999 (as eval.json showed)
    assert hi == 1.0 and lo == pytest.approx(0.9124, abs=1e-4)


def test_episode_stats_per_npc() -> None:
    stats = EpisodeStats()
    for outcome, npc in [("win", "a"), ("loss", "a"), ("win", "b"), ("draw", "b")]:
        stats.add({"train_return": 1.0, "npc_return": 0.0, "length": 5, "outcome": outcome, "npc": npc})
    s = stats.summary()
    assert (s["wins"], s["losses"], s["draws"]) == (2, 1, 1)
    assert s["per_npc"]["a"]["win_rate"] == 0.5 and s["per_npc"]["b"]["draw_rate"] == 0.5


def test_evaluation_plays_episodes_longer_than_1000_steps() -> None:
    from mpe2 import simple_tag_v3

    venv = nw.make_vec_env(
        lambda: simple_tag_v3.parallel_env(max_cycles=1100), num_envs=1, npc="random",
        training_agents_pct=0.75, seed=0, device="cpu",
    )
    try:
        act = lambda obs, start: np.zeros(len(obs), dtype=np.int64)
        assert play_episodes(act, venv, 1).summary()["episode_length"] == 1100
        # An env whose episodes do not end is still an error, once no episode ended for max_steps steps.
        with pytest.raises(RuntimeError, match="no episode ended in the last 20 vector steps"):
            play_episodes(act, venv, 1, max_steps=20)
    finally:
        venv.close()


@pytest.mark.timeout(60)
def test_episodes_of_envs_done_with_their_share_do_not_reset_the_bound() -> None:
    from mpe2 import simple_tag_v3

    # Env 0's episodes end every step; env 1's never do (within the bound): an error, not a hang.
    venv = nw.make_vec_env(
        [
            lambda: simple_tag_v3.parallel_env(max_cycles=1),
            lambda: simple_tag_v3.parallel_env(max_cycles=10_000),
        ],
        npc="random", training_agents_pct=0.75, seed=0, device="cpu",
    )
    try:
        act = lambda obs, start: np.zeros(len(obs), dtype=np.int64)
        with pytest.raises(RuntimeError, match=r"no episode ended in the last 20 vector steps \(1 of 2"):
            play_episodes(act, venv, 2, max_steps=20)
    finally:
        venv.close()


def test_episode_start_marks_each_slots_first_observation_of_an_episode() -> None:
    """A recurrent learner resets its state where ``episode_start`` is set (SB3's ``predict``), so it must
    be set on the first observation of each episode, and only there. Agent a_0 dies at step 2 while its
    env plays on: its slot is done then, padding until the env resets, and its next real observation is
    the reset's, where its slot was not done (it was dead). A loop that took ``episode_start`` from the
    slots' dones would start a_0's next episode with the state it carried over the padding."""
    venv = nw.make_vec_env(
        lambda: ScriptedParallelEnv(agents=["a_0", "a_1", "b_0"], max_steps=5, death_steps={"a_0": 2}),
        num_envs=2, npc="noop", training_agents=["a_*"], seed=0, device="cpu",
    )
    seen = []

    def act(obs: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        seen.append((obs[:, 0].copy(), venv.slot_alive(), episode_start.copy()))
        return np.zeros(len(obs), dtype=np.int64)

    try:
        play_episodes(act, venv, 4)
    finally:
        venv.close()
    assert len(seen) == 10  # two episodes of 5 steps in each env
    for t, (step, alive, start) in enumerate(seen):
        first = alive & (step == 0)  # the observation of step 0 is an episode's first (dead slots: padding)
        assert start.tolist() == first.tolist(), f"call {t}: episode_start {start}, first observation {first}"
    assert not seen[3][1][0] and seen[5][1][0] and seen[5][2][0]  # a_0: padding, then back at the reset


def test_no_episode_ends_survives_pickling() -> None:
    """It carries the bound and the episodes played besides its message (a worker or a test runner may
    send it between processes)."""
    e = pickle.loads(pickle.dumps(NoEpisodeEnds("no episode ended in the last 20 vector steps", 20, 1)))
    assert (str(e), e.steps, e.played) == ("no episode ended in the last 20 vector steps", 20, 1)

"""Episode boundaries on both front ends: auto-reset, truncation vs termination, agent death and
padding, early reset, Monitor-style statistics and the per-env ``npc_wrapper/episode`` summary."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import NormalizeObservation, NormalizeReward, RecordEpisodeStatistics
from stable_baselines3 import PPO

import npc_wrapper as nw
from tests.envs import ScriptedParallelEnv

PAD, EPISODE = nw.PADDING_KEY, nw.EPISODE_KEY


class Runner:
    """Drives either front end and returns per-slot results in one shape:
    ``obs, reward, terminated, truncated, infos (one dict per slot), final_obs (slot -> obs)``."""

    def __init__(self, kind: str, env_fn: Any, num_envs: int, seed: int = 0, **kwargs: Any) -> None:
        self.kind = kind
        kwargs.setdefault("npc", "noop")
        kwargs.setdefault("training_agents_pct", 0.67)
        if kind == "sb3":
            self.venv = nw.make_vec_env(env_fn, num_envs=num_envs, seed=seed, **kwargs)
        else:
            self.venv = nw.make_vector_env(env_fn, num_envs=num_envs, **kwargs)
        self.seed = seed

    def reset(self) -> np.ndarray:
        if self.kind == "sb3":
            return self.venv.reset()
        return self.venv.reset(seed=self.seed)[0]

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict], dict]:
        n = self.venv.num_envs
        if self.kind == "sb3":
            obs, rew, done, infos = self.venv.step(np.asarray(actions))
            trunc = np.array([bool(d and i["TimeLimit.truncated"]) for d, i in zip(done, infos)])
            final = {k: i["terminal_observation"] for k, i in enumerate(infos) if "terminal_observation" in i}
            return obs, rew, done & ~trunc, trunc, infos, final
        obs, rew, term, trunc, infos = self.venv.step(np.asarray(actions))
        slots = unbatch_infos(infos, n)
        final = {k: s["final_obs"] for k, s in enumerate(slots) if "final_obs" in s}
        return obs, rew, term, trunc, slots, final

    def close(self) -> None:
        self.venv.close()


def unbatch_infos(infos: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Gymnasium's dict-of-arrays infos (with ``_key`` masks, nested for dict values) as one dict per slot."""
    slots: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            for k, sub in enumerate(unbatch_infos(value, n)):
                if infos["_" + key][k]:
                    slots[k][key] = sub
            continue
        for k in np.flatnonzero(infos["_" + key]):
            slots[k][key] = value[k]
    return slots


def scripted(**kwargs: Any):
    kwargs.setdefault("obs_shape", (4,))
    return lambda: ScriptedParallelEnv(**kwargs)


# -------------------------------------------------------------------------------- whole-env ends
def test_truncation_resets_the_env_and_reports_terminal_obs(kind: str) -> None:
    r = Runner(kind, scripted(max_steps=3), num_envs=2, seed=10)
    obs = r.reset()
    np.testing.assert_array_equal(obs, [[0, 0, -1, 10], [0, 1, -1, 10], [0, 0, -1, 11], [0, 1, -1, 11]])
    actions = np.array([1, 2, 3, 0])
    idx = np.array([0, 1, 0, 1])
    for t in (1, 2):
        obs, rew, term, trunc, infos, final = r.step(actions)
        assert not term.any() and not trunc.any() and not final
        assert not any(PAD in i or EPISODE in i for i in infos)
        np.testing.assert_array_equal(obs[:, :3], np.stack([np.full(4, t), idx, actions], axis=1))
    obs, rew, term, trunc, infos, final = r.step(actions)
    assert trunc.all() and not term.any()
    np.testing.assert_allclose(rew, 3 + 0.01 * idx + 0.001 * actions, rtol=1e-6)
    episode_id = np.array([10, 10, 11, 11])  # the seed of each slot's env
    for k in range(4):
        # The terminal observation is the env's last observation of that agent, exactly.
        np.testing.assert_array_equal(final[k], [3, idx[k], actions[k], episode_id[k]])
        assert final[k].dtype == np.float32
    # The returned observation is the first of the new episode (unseeded reset: a new episode id).
    np.testing.assert_array_equal(obs[:, :3], np.stack([np.zeros(4), idx, -np.ones(4)], axis=1))
    assert obs[0, 3] not in (10, 11) and obs[0, 3] == obs[1, 3] and obs[2, 3] == obs[3, 3]
    assert not any(PAD in i for i in infos)
    r.close()


def test_termination_is_not_a_truncation(kind: str) -> None:
    r = Runner(kind, scripted(max_steps=10, terminate_all_at=2), num_envs=1)
    r.reset()
    r.step([0, 0])
    obs, _, term, trunc, infos, _final = r.step([0, 0])
    assert term.all() and not trunc.any()
    np.testing.assert_array_equal(obs[:, 0], [0, 0])
    if kind == "sb3":
        assert all(i["TimeLimit.truncated"] is False for i in infos)
    r.close()


def test_termination_and_truncation_at_the_same_step(kind: str) -> None:
    """SB3 counts it as a termination (``TimeLimit.truncated`` is False); Gymnasium passes both of the
    env's flags on, as its own vector envs do."""
    r = Runner(kind, scripted(max_steps=3, terminate_all_at=3), num_envs=1)
    r.reset()
    for _ in range(3):
        _, _, term, trunc, _infos, _ = r.step([0, 0])
    assert term.all() and (trunc.all() if kind == "gym" else not trunc.any())
    r.close()


def test_reward_dtype_is_the_front_ends_own(kind: str) -> None:
    """float32 as SB3's DummyVecEnv gives, float64 as Gymnasium's vector envs give (no precision lost)."""
    r = Runner(kind, scripted(max_steps=10, reward_fn=lambda *_: 1 + 2.0**-40), num_envs=1)
    r.reset()
    rew = r.step([0, 0])[1]
    assert rew.dtype == (np.float32 if kind == "sb3" else np.float64)
    assert (rew == np.array(1 + 2.0**-40, dtype=rew.dtype)).all() and (kind == "sb3" or (rew != 1).all())
    r.close()


def test_sb3_time_limit_flag_is_on_every_slot_every_step() -> None:
    venv = nw.make_vec_env(scripted(max_steps=2), num_envs=2, npc="noop", training_agents_pct=0.67, seed=0)
    venv.reset()
    _, _, done, infos = venv.step(np.zeros(4, dtype=np.int64))
    assert not done.any() and [i["TimeLimit.truncated"] for i in infos] == [False] * 4
    _, _, done, infos = venv.step(np.zeros(4, dtype=np.int64))
    assert done.all() and [i["TimeLimit.truncated"] for i in infos] == [True] * 4
    venv.close()


# ---------------------------------------------------------------------------------- agent death
def test_agent_death_done_then_padding_until_env_reset(kind: str) -> None:
    r = Runner(kind, scripted(max_steps=5, death_steps={"a_0": 2}), num_envs=2, seed=0)
    r.reset()
    actions = np.array([3, 1, 2, 1])
    sa = r.venv.slot_alive
    assert sa().tolist() == [True] * 4

    r.step(actions)
    obs, rew, term, trunc, infos, final = r.step(actions)  # step 2: a_0 dies in both envs
    assert term.tolist() == [True, False, True, False] and not trunc.any()
    np.testing.assert_array_equal(final[0], [2, 0, 3, 0])
    np.testing.assert_array_equal(final[2], [2, 0, 2, 1])
    np.testing.assert_allclose(rew, 2 + 0.01 * np.array([0, 1, 0, 1]) + 0.001 * actions, rtol=1e-6)
    np.testing.assert_array_equal(obs[[0, 2]], np.zeros((2, 4)))  # padding from now on
    assert not any(PAD in i for i in infos)  # everyone was alive at the start of step 2
    assert sa().tolist() == [False, True, False, True]
    if kind == "sb3":
        assert infos[0]["episode"]["r"] == pytest.approx(2 * 1 + 2 * 2 * 0 + 2 * 0.003 + 1)
        assert infos[0]["episode"]["l"] == 2 and "episode" not in infos[1]
        assert infos[0]["TimeLimit.truncated"] is False

    for t in (3, 4):
        obs, rew, term, trunc, infos, final = r.step(actions)
        assert not term.any() and not trunc.any() and not final
        assert [PAD in i for i in infos] == [True, False, True, False]
        assert all(bool(i[PAD]) for i in (infos[0], infos[2]))
        if kind == "sb3":
            assert infos[0][PAD] is True
        np.testing.assert_array_equal(rew[[0, 2]], [0, 0])
        np.testing.assert_array_equal(obs[[0, 2]], np.zeros((2, 4)))
        np.testing.assert_array_equal(obs[[1, 3], 0], [t, t])
        assert infos[0].get("agent") is None  # the dead agent's env info is not invented
        assert EPISODE not in infos[0]

    obs, rew, term, trunc, infos, final = r.step(actions)  # step 5: the env ends and resets
    assert trunc.tolist() == [False, True, False, True] and not term.any()
    assert set(final) == {1, 3}
    # The padded slot gets the new episode's first obs, without done, still flagged as padding.
    np.testing.assert_array_equal(obs[:, :3], [[0, 0, -1], [0, 1, -1]] * 2)
    assert [PAD in i for i in infos] == [True, False, True, False]
    assert rew[0] == 0 and rew[2] == 0
    assert all(EPISODE in i for i in infos)
    assert sa().tolist() == [True] * 4
    if kind == "sb3":
        assert infos[1]["episode"]["l"] == 5 and "episode" not in infos[0]

    obs, rew, term, trunc, infos, final = r.step(actions)  # the slot plays again
    assert not any(PAD in i for i in infos)
    np.testing.assert_array_equal(obs[:, 0], [1, 1, 1, 1])
    assert rew[0] == pytest.approx(1.003)
    r.close()


def test_early_reset_when_all_training_agents_are_dead(kind: str) -> None:
    r = Runner(kind, scripted(max_steps=10, death_steps={"a_0": 2, "a_1": 3}), num_envs=1, seed=0)
    r.reset()
    for _ in range(2):
        r.step([0, 0])
    obs, _rew, term, trunc, infos, final = r.step([0, 0])  # step 3: the last training agent dies
    assert term.tolist() == [False, True] and not trunc.any()
    assert [PAD in i for i in infos] == [True, False]
    np.testing.assert_array_equal(final[1], [3, 1, 0, 0])
    # The env was reset at once although its NPC b_0 lives on.
    np.testing.assert_array_equal(obs[:, :3], [[0, 0, -1], [0, 1, -1]])
    assert infos[1][EPISODE]["length"] == 3
    assert infos[1][EPISODE]["npc_return"] == pytest.approx(1.02 + 2.02 + 3.02)
    if kind == "sb3":
        assert r.venv.get_attr("num_resets") == [2, 2]
    else:
        assert r.venv.get_attr("num_resets") == (2, 2)
    r.close()


def test_no_early_reset_plays_on_until_all_agents_are_done(kind: str) -> None:
    r = Runner(kind, scripted(max_steps=6, death_steps={"a_0": 2, "a_1": 3}), num_envs=1,
               reset_when_training_agents_dead=False)
    r.reset()
    for _ in range(3):
        r.step([0, 0])
    for t in (4, 5):
        obs, rew, term, trunc, infos, final = r.step([0, 0])
        assert not term.any() and not trunc.any()
        assert all(i[PAD] for i in infos) and not any(EPISODE in i for i in infos)
        assert (obs == 0).all() and (rew == 0).all()
    obs, rew, term, trunc, infos, final = r.step([0, 0])  # step 6: the NPC is truncated, the env resets
    assert not term.any() and not trunc.any() and not final
    assert all(i[EPISODE]["length"] == 6 for i in infos)
    assert infos[0][EPISODE]["npc_return"] == pytest.approx(sum(t + 0.02 for t in range(1, 7)))
    np.testing.assert_array_equal(obs[:, :3], [[0, 0, -1], [0, 1, -1]])
    assert r.venv.slot_alive().all()
    r.close()


def test_dead_npcs_break_nothing(kind: str) -> None:
    r = Runner(kind, scripted(max_steps=4, death_steps={"b_0": 1}), num_envs=2)
    r.reset()
    for _ in range(3):
        _, _, term, trunc, infos, _ = r.step([0, 0, 0, 0])
        assert not term.any() and not trunc.any() and not any(PAD in i for i in infos)
    _, _, term, trunc, infos, _ = r.step([0, 0, 0, 0])
    assert trunc.all()
    assert infos[0][EPISODE]["npc_return"] == pytest.approx(1.02)  # b_0 only scored while alive
    r.close()


# ------------------------------------------------------------------------------------ statistics
def test_monitor_episode_info_and_team_summary() -> None:
    venv = nw.make_vec_env(scripted(max_steps=3, death_steps={"a_1": 2}), num_envs=2, npc="noop",
                           training_agents_pct=0.67, seed=0)
    venv.reset()
    actions = np.array([1, 2, 3, 0])
    for _ in range(2):
        _, _, done, infos = venv.step(actions)
    assert done.tolist() == [False, True, False, True]
    assert infos[1]["episode"]["r"] == pytest.approx(1.012 + 2.012)
    assert infos[3]["episode"]["r"] == pytest.approx(1.01 + 2.01)
    assert infos[1]["episode"]["l"] == 2
    assert isinstance(infos[1]["episode"]["t"], float)
    _, _, done, infos = venv.step(actions)
    assert done.tolist() == [True, False, True, False]
    assert infos[0]["episode"] == {"r": pytest.approx(6.003), "l": 3, "t": infos[0]["episode"]["t"]}
    assert infos[2]["episode"]["r"] == pytest.approx(6.009)
    for e, (a0, a1) in enumerate([(1, 2), (3, 0)]):
        summary = {
            "train_return": pytest.approx(6 + 0.003 * a0 + 3.02 + 0.002 * a1),
            "npc_return": pytest.approx(6.06),
            "length": 3,
            "outcome": "win",
            "npc": "noop",
        }
        assert infos[2 * e][EPISODE] == summary and infos[2 * e + 1][EPISODE] == summary
    venv.close()


THREE, FOUR = ["a_0", "a_1", "b_0"], ["a_0", "b_0", "b_1", "b_2"]


@pytest.mark.parametrize(
    ("agents", "reward_fn", "outcome"),
    [
        (THREE, lambda agent, i, t, a: 1.0 if agent.startswith("b") else 0.0, "loss"),
        (FOUR, lambda agent, i, t, a: 0.5, "loss"),  # team totals: 1 trainer vs 3 NPCs
        (THREE, lambda agent, i, t, a: 0.0, "draw"),
        (THREE, lambda agent, i, t, a: 1.0 if agent == "a_0" else 0.0, "win"),
    ],
)
def test_outcome_compares_team_totals(agents: list[str], reward_fn: Any, outcome: str) -> None:
    venv = nw.make_vec_env(scripted(agents=agents, max_steps=2, reward_fn=reward_fn), num_envs=1,
                           npc="noop", training_agents=["a_*"], seed=0)
    venv.reset()
    venv.step(np.zeros(venv.num_envs, dtype=np.int64))
    _, _, done, infos = venv.step(np.zeros(venv.num_envs, dtype=np.int64))
    assert done.all() and infos[0][EPISODE]["outcome"] == outcome
    venv.close()


def test_summary_names_each_npc_group() -> None:
    venv = nw.make_vec_env(scripted(agents=["a_0", "b_0", "c_0"], max_steps=1), num_envs=1,
                           npc={"b_*": "noop", "c_*": "random"}, training_agents_pct=0.34, seed=0)
    venv.reset()
    _, _, _, infos = venv.step(np.zeros(1, dtype=np.int64))
    assert infos[0][EPISODE]["npc"] == ["noop", "random"]
    venv.close()


def test_ppo_fills_ep_info_buffer_without_vec_monitor() -> None:
    venv = nw.make_vec_env(scripted(max_steps=4, death_steps={"a_1": 2}), num_envs=2, npc="random",
                           training_agents_pct=0.67, seed=0)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    lengths = sorted({ep["l"] for ep in model.ep_info_buffer})
    assert lengths == [2, 4]  # a_1's short episodes and a_0's full ones
    full = [ep["r"] for ep in model.ep_info_buffer if ep["l"] == 4]
    assert all(10 <= r < 10.02 for r in full)  # 1+2+3+4 + 0.001 * actions
    venv.close()


# -------------------------------------------------------------------------- Gymnasium specifics
def test_gym_same_step_autoreset_infos() -> None:
    envs = nw.make_vector_env(scripted(max_steps=2, death_steps={"a_0": 1}), num_envs=2, npc="noop",
                              training_agents_pct=0.67)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    envs.reset(seed=0)
    obs, _, term, _, infos = envs.step(np.array([1, 2, 3, 0]))
    assert term.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(obs[[0, 2]], np.zeros((2, 4)))  # the "next episode" of a dead slot: padding
    assert infos["_final_obs"].tolist() == [True, False, True, False]
    np.testing.assert_array_equal(infos["final_obs"][0], [1, 0, 1, 0])
    np.testing.assert_array_equal(infos["final_obs"][2], [1, 0, 3, 1])
    assert infos["_final_info"].tolist() == [True, False, True, False]
    final_info = infos["final_info"]
    assert final_info["_agent"].tolist() == [True, False, True, False]
    assert final_info["agent"][0] == "a_0" and final_info["step"][2] == 1
    for key in ("episode", "terminal_observation", "TimeLimit.truncated"):
        assert key not in infos
    _obs, _rew, term, trunc, infos = envs.step(np.array([1, 2, 3, 0]))
    assert trunc.tolist() == [False, True, False, True]
    assert infos["_final_obs"].tolist() == [False, True, False, True]
    np.testing.assert_array_equal(infos["final_obs"][3], [2, 1, 0, 1])
    # The env's reset info is the slot's info now (Gymnasium's SAME_STEP convention).
    assert infos["step"][3] == 0 and infos["final_info"]["step"][3] == 2
    assert infos["final_info"][EPISODE]["length"][3] == 2
    # The env's summary is on every slot of the env, the done ones included.
    assert infos["_" + EPISODE].all() and infos[EPISODE]["length"].tolist() == [2, 2, 2, 2]
    assert infos[PAD].tolist() == [True, False, True, False]
    # The padded slots start the new episode too: they carry its reset info, like the done ones.
    assert infos["_step"].all() and infos["step"].tolist() == [0, 0, 0, 0]
    assert infos["agent"].tolist() == ["a_0", "a_1", "a_0", "a_1"]
    for key in ("episode", "terminal_observation", "TimeLimit.truncated"):
        assert key not in infos
    envs.close()


def test_gym_record_episode_statistics() -> None:
    envs = RecordEpisodeStatistics(nw.make_vector_env(scripted(max_steps=3), num_envs=2, npc="noop",
                                                      training_agents_pct=0.67))
    envs.reset(seed=0)
    actions = np.array([1, 2, 3, 0])
    for _ in range(3):
        _, _, _term, trunc, infos = envs.step(actions)
    assert trunc.all()
    assert infos["_episode"].all()
    np.testing.assert_allclose(infos["episode"]["r"], 6 + 0.03 * np.array([0, 1, 0, 1]) + 0.003 * actions, rtol=1e-6)
    np.testing.assert_array_equal(infos["episode"]["l"], [3, 3, 3, 3])
    _, _, _, _, infos = envs.step(actions)
    assert "episode" not in infos
    envs.close()


def test_gym_final_info_carries_each_slots_episode_statistics_without_padding() -> None:
    # CleanRL (Gymnasium 1.x) reads infos["final_info"]["episode"], which each RecordEpisodeStatistics-
    # wrapped sub-env of its SyncVectorEnv puts there. a_0 dies at step 1 of every 3-step episode.
    envs = nw.make_vector_env(scripted(max_steps=3, death_steps={"a_0": 1}), num_envs=2, npc="noop",
                              training_agents_pct=0.67)
    wrapped = RecordEpisodeStatistics(envs)  # the vector wrapper beside it: returns agree, lengths do not
    wrapped.reset(seed=0)
    actions = np.array([1, 2, 3, 0])
    seen = []
    for _ in range(4):
        _, reward, term, trunc, infos = wrapped.step(actions)
        done = term | trunc
        if not done.any():
            assert "final_info" not in infos
            continue
        final = infos["final_info"]
        assert final["_episode"].tolist() == done.tolist()
        np.testing.assert_allclose(final["episode"]["r"][done], infos["episode"]["r"][done])
        assert (final["episode"]["t"][done] >= 0).all()
        seen.append((final["episode"]["r"][done].round(6).tolist(), final["episode"]["l"][done].tolist(),
                     infos["episode"]["l"][done].tolist()))
    assert seen == [
        ([1.001, 1.003], [1, 1], [1, 1]),  # a_0 died at step 1: its action's 0.001 * a is in its reward
        ([6.036, 6.03], [3, 3], [3, 3]),  # a_1 truncated at step 3: 1 + 2 + 3 + 3 * (0.01 + 0.001 * a)
        ([1.001, 1.003], [1, 1], [3, 3]),  # a_0 again: one step alive; the vector wrapper counts 2 padding
    ]
    wrapped.close()


def test_gym_normalize_reward_works_and_observation_wrappers_refuse_same_step() -> None:
    envs = NormalizeReward(nw.make_vector_env(scripted(max_steps=5), num_envs=2, npc="random",
                                              training_agents_pct=0.67))
    envs.reset(seed=0)
    for _ in range(12):
        _, rew, *_ = envs.step(envs.action_space.sample())
        assert rew.shape == (4,) and np.isfinite(rew).all()
    assert 0 < np.abs(rew).max() < 5  # scaled down from the raw 2..5 step rewards
    envs.close()
    # Gymnasium 1.x observation wrappers (NormalizeObservation included) accept only NEXT_STEP or
    # DISABLED autoreset: they cannot transform infos["final_obs"]. Documented, not hidden.
    envs = nw.make_vector_env(scripted(), num_envs=1)
    with pytest.raises(ValueError, match="SAME_STEP"):
        NormalizeObservation(envs)
    envs.close()


def test_reset_mid_episode_restarts_statistics_and_padding(kind: str) -> None:
    r = Runner(kind, scripted(max_steps=4, death_steps={"a_0": 1}), num_envs=1)
    r.reset()
    r.step([0, 0])
    r.step([0, 0])
    assert r.venv.slot_alive().tolist() == [False, True]
    obs = r.reset()  # a manual reset in the middle of the episode
    np.testing.assert_array_equal(obs[:, :3], [[0, 0, -1], [0, 1, -1]])
    assert r.venv.slot_alive().tolist() == [True, True]
    for t in range(1, 5):
        obs, _rew, _term, trunc, infos, _final = r.step([0, 0])
        assert not any(PAD in i for i in infos[1:])
    assert trunc.tolist() == [False, True]
    assert infos[1][EPISODE]["length"] == 4  # counted from the manual reset
    assert infos[1][EPISODE]["train_return"] == pytest.approx(1.0 + 10.04)  # a_0 lived 1 step, a_1 four
    if kind == "sb3":
        assert infos[1]["episode"]["l"] == 4 and infos[1]["episode"]["r"] == pytest.approx(10.04)


def test_agents_that_join_after_reset_start_a_life_of_their_own(kind: str, recording_npc: Any) -> None:
    """a_1 (training) joins env.agents at step 2 and b_0 (NPC) at step 3: padding until then, then
    their own rewards, dones and episode statistics; the NPC's first act is an episode start."""
    probe = ScriptedParallelEnv(obs_shape=(4,))
    npc = recording_npc(probe.observation_space("b_0"), probe.action_space("b_0"))  # stands still
    r = Runner(kind, scripted(max_steps=6, join_steps={"a_1": 2, "b_0": 3}), num_envs=1, npc=npc)
    npc.calls.clear()  # the construction's dry run
    obs = r.reset()
    np.testing.assert_array_equal(obs[1], 0)
    assert r.venv.slot_alive().tolist() == [True, False] and npc.calls == []
    seen = []
    for t in range(1, 7):
        obs, rew, term, trunc, infos, final = r.step([1, 1])
        seen.append((obs[1][:3].tolist(), float(rew[1]), bool(PAD in infos[1]), bool(trunc[1])))
    assert seen == [
        ([0, 0, 0], 0.0, True, False),  # not there yet: padding
        ([2, 1, -1], 0.0, True, False),  # joins: its first observation (the step itself is padding)
        ([3, 1, 1], pytest.approx(3.011), False, False),  # acts and is rewarded from then on
        ([4, 1, 1], pytest.approx(4.011), False, False),
        ([5, 1, 1], pytest.approx(5.011), False, False),
        ([0, 0, 0], pytest.approx(6.011), False, True),  # truncated; absent again in the next episode
    ]
    starts = [(c.rows, c.episode_start) for c in npc.calls if c.rows]
    assert starts[0] == ([0], [True])  # b_0's first forward starts its episode
    assert starts[1] == ([0], [False])
    if kind == "sb3":
        assert infos[1]["episode"]["l"] == 4 and infos[0]["episode"]["l"] == 6
    r.close()


def test_agents_done_but_still_listed_stay_dead_until_they_leave() -> None:
    """An env that keeps a done agent in env.agents (PettingZoo asks to remove it) does not revive it."""

    class Lingering(ScriptedParallelEnv):
        def step(self, actions: dict) -> tuple:
            out = super().step(actions)
            if self.num_steps < self.max_steps and "a_1" not in self.agents:
                self.agents = sorted({*self.agents, "a_1"}, key=self.possible_agents.index)
            return out

    venv = nw.make_vec_env(lambda: Lingering(obs_shape=(4,), death_steps={"a_1": 2}), num_envs=1,
                           npc="noop", training_agents_pct=0.67, seed=0)
    venv.reset()
    alive = []
    for _ in range(4):
        try:
            venv.step(np.zeros(2, dtype=np.int64))
        except ValueError:  # the env refuses the action the wrapper must not send to a dead a_1
            raise AssertionError("an action was sent to the lingering dead agent") from None
        alive.append(venv.slot_alive().tolist())
    assert alive == [[True, True], [True, False], [True, False], [True, False]]
    venv.close()

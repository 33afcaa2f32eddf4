"""The agent split (training vs NPC agents), the slot layout, and how NPC policies map to agents."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

import npc_wrapper as nw
from npc_wrapper.agents import split_agents
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv


def agents_of(n: int) -> list[str]:
    return [f"p_{i}" for i in range(n)]


# ---------------------------------------------------------------------------------------- split rule
@pytest.mark.parametrize(
    ("n", "pct", "n_train"),
    [
        (4, 0.375, 2),  # 1.5 + 0.5 = 2: exact halves round up
        (4, 0.3, 1),  # 1.2 + 0.5 = 1.7
        (4, 0.5, 2),
        (4, 0.625, 3),  # 2.5 -> 3
        (4, 0.125, 1),  # 0.5 -> 1
        (4, 0.74, 3),  # 2.96 -> 3
        (3, 0.5, 2),  # 1.5 -> 2
        (3, 0.49, 1),  # 1.47 -> 1
        (2, 0.25, 1),
        (5, 0.7, 4),  # 3.5 -> 4
        (4, 1.0, 4),
        (1, 1.0, 1),
        # Exact halves that binary floating point puts a hair below .5: the rule is exact arithmetic.
        (50, 0.29, 15),
        (25, 0.58, 15),
        (45, 0.7, 32),
        (50, 0.57, 29),
    ],
)
def test_split_rounds_half_up(n: int, pct: float, n_train: int) -> None:
    train, npcs = split_agents(agents_of(n), pct)
    assert train == agents_of(n)[:n_train]
    assert npcs == agents_of(n)[n_train:]


def test_split_is_the_same_in_every_env_and_exposed_on_both_front_ends() -> None:
    fn = lambda: ScriptedParallelEnv(agents=["x", "y", "z", "w"])
    venv = nw.make_vec_env(fn, num_envs=3, training_agents_pct=0.375)
    assert venv.training_agents == ["x", "y"] and venv.npc_agents == ["z", "w"]
    assert venv.num_envs == 6  # slots: 3 envs x 2 training agents
    obs = venv.reset()
    # Slots are env-major: slot k is training agent k % 2 of env k // 2 (obs[1] is the agent index).
    np.testing.assert_array_equal(obs[:, 1], [0, 1, 0, 1, 0, 1])
    assert [info["agent"] for info in venv.reset_infos] == ["x", "y"] * 3
    venv.close()

    envs = nw.make_vector_env(fn, num_envs=3, training_agents_pct=0.3)
    assert envs.training_agents == ["x"] and envs.npc_agents == ["y", "z", "w"]
    assert envs.num_envs == 3
    envs.close()


def test_training_agents_glob_and_exact_names_in_possible_agents_order() -> None:
    names = ["blue_0", "red_0", "blue_1", "red_1"]
    fn = lambda: ScriptedParallelEnv(agents=names)
    venv = nw.make_vec_env(fn, num_envs=2, training_agents=["red_*"])
    assert venv.training_agents == ["red_0", "red_1"] and venv.npc_agents == ["blue_0", "blue_1"]
    obs = venv.reset()
    np.testing.assert_array_equal(obs[:, 1], [1, 3, 1, 3])
    venv.close()

    # Exact names, given out of order: the slots still follow possible_agents.
    venv = nw.make_vec_env(fn, num_envs=1, training_agents=["red_1", "blue_0"], training_agents_pct=0.01)
    assert venv.training_agents == ["blue_0", "red_1"] and venv.npc_agents == ["red_0", "blue_1"]
    np.testing.assert_array_equal(venv.reset()[:, 1], [0, 3])
    venv.close()

    # A bare string is one pattern, not a sequence of characters.
    venv = nw.make_vec_env(fn, num_envs=1, training_agents="blue_*")
    assert venv.training_agents == ["blue_0", "blue_1"]
    venv.close()


def test_int_agent_ids() -> None:
    fn = lambda: RecordingParallelEnv(ScriptedParallelEnv(agents=[0, 1, 2, 3]))
    venv = nw.make_vec_env(fn, num_envs=2, training_agents_pct=0.5, npc="noop")
    assert venv.training_agents == [0, 1] and venv.npc_agents == [2, 3]
    venv.reset()
    venv.step(np.array([1, 2, 3, 1]))
    log = venv.get_attr("action_log", indices=[0, 2])
    assert log[0][-1] == {0: 1, 1: 2, 2: 0, 3: 0}
    assert log[1][-1] == {0: 3, 1: 1, 2: 0, 3: 0}
    venv.close()

    venv = nw.make_vec_env(fn, num_envs=1, training_agents=[3, 1])
    assert venv.training_agents == [1, 3] and venv.npc_agents == [0, 2]
    venv.close()


def test_zero_training_agents_is_a_value_error_that_says_why() -> None:
    fn = lambda: ScriptedParallelEnv(agents=agents_of(4))
    with pytest.raises(ValueError, match=r"rounds to 0 training agents") as err:
        nw.make_vec_env(fn, training_agents_pct=0.1)
    assert "training_agents=[...]" in str(err.value)
    with pytest.raises(ValueError, match="rounds to 0"):
        nw.make_vector_env(fn, training_agents_pct=0.0)


@pytest.mark.parametrize("n", [1, 3, 7, 24, 1000])
def test_the_suggested_least_pct_gives_a_training_agent(n: int) -> None:
    agents = agents_of(n)
    with pytest.raises(ValueError, match="use at least") as err:
        nw.split_agents(agents, 0.001 / n)
    least = float(re.search(r"use at least ([\d.e-]+)", str(err.value)).group(1))
    assert len(nw.split_agents(agents, least)[0]) == 1


@pytest.mark.parametrize("pct", [-0.1, 1.01, 2, float("nan"), None])
def test_pct_outside_unit_interval_is_rejected(pct: float | None) -> None:
    with pytest.raises(ValueError, match=r"training_agents_pct must be a fraction in \[0, 1\]"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(), training_agents_pct=pct)


def test_pattern_matching_nothing_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\['green_\*'\] match none of the env's possible_agents"):
        nw.make_vec_env(lambda: ScriptedParallelEnv(agents=["red_0", "blue_0"]), training_agents=["red_*", "green_*"])


def test_all_agents_training_is_a_plain_multi_to_single_agent_vec_env() -> None:
    fn = lambda: RecordingParallelEnv(ScriptedParallelEnv(max_steps=3))
    venv = nw.make_vec_env(fn, num_envs=2, training_agents_pct=1.0)
    assert venv.training_agents == ["a_0", "a_1", "b_0"] and venv.npc_agents == []
    assert venv.num_envs == 6
    obs = venv.reset()
    np.testing.assert_array_equal(obs[:, 1], [0, 1, 2, 0, 1, 2])
    actions = np.array([0, 1, 2, 3, 2, 1])
    for t in range(1, 4):
        obs, rew, done, infos = venv.step(actions)
        np.testing.assert_allclose(rew, t + 0.01 * np.tile([0, 1, 2], 2) + 0.001 * actions, rtol=1e-6)
    assert done.all() and all(info["TimeLimit.truncated"] for info in infos)
    logs = venv.get_attr("action_log", indices=[0, 3])
    assert logs[0][0] == {"a_0": 0, "a_1": 1, "b_0": 2} and logs[1][0] == {"a_0": 3, "a_1": 2, "b_0": 1}
    venv.close()


# ------------------------------------------------------------------------------------------ spaces
def test_training_agents_with_differing_spaces_name_agents_spaces_and_padding() -> None:
    odd_obs = spaces.Box(-np.inf, np.inf, (5,), np.float32)
    fn = lambda: ScriptedParallelEnv(
        per_agent_spaces={"a_1": (odd_obs, spaces.Discrete(4))}
    )
    with pytest.raises(ValueError, match="share one observation space") as err:
        nw.make_vec_env(fn, training_agents_pct=0.67)
    msg = str(err.value)
    assert "'a_0'" in msg and "'a_1'" in msg and "(5,)" in msg and "(3,)" in msg
    assert "pad_observations_v0" in msg and "SuperSuit" in msg

    fn = lambda: ScriptedParallelEnv(
        per_agent_spaces={"a_1": (spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(6))}
    )
    with pytest.raises(ValueError, match="share one observation space") as err:
        nw.make_vector_env(fn, training_agents=["a_*"])
    assert "Discrete(6)" in str(err.value) and "pad_action_space_v0" in str(err.value)


def test_npcs_may_have_other_spaces_than_the_trainers(recording_npc: Any) -> None:
    npc_obs = spaces.Box(-np.inf, np.inf, (5,), np.float32)
    npc_act = spaces.Discrete(2)
    spy = recording_npc(npc_obs, npc_act, action=1)
    fn = lambda: RecordingParallelEnv(ScriptedParallelEnv(per_agent_spaces={"b_0": (npc_obs, npc_act)}))
    venv = nw.make_vec_env(fn, num_envs=2, training_agents_pct=0.67, npc=spy)
    assert venv.observation_space.shape == (3,)
    venv.reset(), spy.calls.clear()
    venv.step(np.zeros(4, dtype=np.int64))
    assert len(spy.calls) == 1 and spy.calls[0].obs.shape == (2, 5)
    np.testing.assert_array_equal(spy.calls[0].obs[:, 1], [2, 2])  # only b_0 rows
    assert venv.get_attr("action_log", indices=[0])[0][-1]["b_0"] == 1
    venv.close()


def test_npcs_with_differing_spaces_get_separate_policies() -> None:
    small = (spaces.Box(-np.inf, np.inf, (4,), np.float32), spaces.Discrete(2))
    big = (spaces.Box(-np.inf, np.inf, (6,), np.float32), spaces.Discrete(9))
    fn = lambda: RecordingParallelEnv(
        ScriptedParallelEnv(agents=["a_0", "b_0", "c_0", "b_1"],
                            per_agent_spaces={"b_0": small, "b_1": small, "c_0": big}, max_steps=50)
    )
    venv = nw.make_vec_env(fn, num_envs=2, training_agents_pct=0.25, npc="random", seed=3)
    groups = venv.engine.layout.groups
    assert [g.agents for g in groups] == [("b_0", "b_1"), ("c_0",)]
    assert [p.members[0].action_space for p in venv.pools] == [small[1], big[1]]
    venv.reset()
    for _ in range(40):
        venv.step(np.zeros(2, dtype=np.int64))
    log = venv.get_attr("action_log", indices=[0])[0]
    b_actions = {step[a] for step in log for a in ("b_0", "b_1")}
    c_actions = {step["c_0"] for step in log}
    assert b_actions == {0, 1}  # each group sampled in its own action space
    assert c_actions <= set(range(9)) and max(c_actions) >= 2
    venv.close()


def test_npc_mapping_by_pattern(recording_npc: Any) -> None:
    obs_space, act_space = spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(4)
    spy_b = recording_npc(obs_space, act_space, action=3)
    fn = lambda: RecordingParallelEnv(ScriptedParallelEnv(agents=["a_0", "b_0", "b_1", "c_0"]))
    venv = nw.make_vec_env(fn, num_envs=3, training_agents_pct=0.25, npc={"b_*": spy_b, "c_*": "noop"})
    venv.reset(), spy_b.calls.clear()
    venv.step(np.array([1, 1, 1]))
    # One call over the b rows of all three envs, env-major.
    assert len(spy_b.calls) == 1
    np.testing.assert_array_equal(spy_b.calls[0].obs[:, 1], [1, 2] * 3)
    for log in venv.get_attr("action_log", indices=[0, 1, 2]):
        assert log[-1] == {"a_0": 1, "b_0": 3, "b_1": 3, "c_0": 0}
    assert venv.engine.layout.groups[1].spec == "noop"
    venv.close()


def test_npc_not_matched_by_the_mapping_is_rejected() -> None:
    fn = lambda: ScriptedParallelEnv(agents=["a_0", "b_0", "c_0"])
    with pytest.raises(ValueError, match=r"NPC agents \['c_0'\] match no key of the npc mapping \['b_\*'\]"):
        nw.make_vec_env(fn, training_agents_pct=0.34, npc={"b_*": "random"})


def test_one_policy_object_for_two_npc_groups_is_rejected(recording_npc: Any) -> None:
    small = (spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(4))
    spy = recording_npc(*small)
    fn = lambda: ScriptedParallelEnv(agents=["a_0", "b_0", "c_0"])
    with pytest.raises(ValueError, match="give each group its own instance"):
        nw.make_vec_env(fn, training_agents_pct=0.34, npc={"b_*": spy, "c_*": spy})

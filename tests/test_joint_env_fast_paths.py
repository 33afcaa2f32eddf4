"""JointEnv's per-step paths and what the engine makes of them: actions picked per live tuple,
rewards zeroed only where an agent got none, flags cleared after a done, the env's info dicts
handed over uncopied (the engine copies them per slot), contiguous agent runs read as slices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from pettingzoo.utils import BaseParallelWrapper

import npc_wrapper as nw
from npc_wrapper.agents import build_layout
from npc_wrapper.engine import _as_slice
from npc_wrapper.joint_env import JointBuffers, JointEnv, env_actions
from tests.envs import RecordingParallelEnv, ScriptedParallelEnv, default_reward, is_integer_action
from tests.test_real_envs import greedy_blue

INTERLEAVED = ["a_0", "b_0", "a_1", "b_1"]  # training agents a_*: layout order is not possible_agents order


class Capture(BaseParallelWrapper):
    """Keeps the last ``step``'s return value."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.last: tuple[Any, ...] = ()

    def step(self, actions: dict[Any, Any]) -> Any:
        self.last = self.env.step(actions)
        return self.last


class ReversedAgents(BaseParallelWrapper):
    """Lists its live agents in reverse ``possible_agents`` order."""

    @property
    def agents(self) -> list[Any]:
        return self.env.agents[::-1]


class ExtraAgent(BaseParallelWrapper):
    """Names ``"ghost"``, an agent outside ``possible_agents``, where ``where`` says: in ``agents``,
    or in a step's observations or rewards."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.where = ""

    @property
    def agents(self) -> list[Any]:
        return [*self.env.agents, "ghost"] if self.where == "agents" else self.env.agents

    def step(self, actions: dict[Any, Any]) -> Any:
        obs, rew, term, trunc, infos = self.env.step({a: v for a, v in actions.items() if a != "ghost"})
        if self.where == "observations":
            obs = {**obs, "ghost": next(iter(obs.values()))}
        if self.where == "rewards":
            rew = {**rew, "ghost": 0.0}
        return obs, rew, term, trunc, infos


class SomeRewards(BaseParallelWrapper):
    """Gives no reward to ``a_0`` on even steps (all agents alive)."""

    def step(self, actions: dict[Any, Any]) -> Any:
        obs, rew, term, trunc, infos = self.env.step(actions)
        if self.env.num_steps % 2 == 0:
            rew = {a: r for a, r in rew.items() if a != "a_0"}
        return obs, rew, term, trunc, infos


class SharedInfo(BaseParallelWrapper):
    """Hands one info dict object to every agent, and none to ``a_1``."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.shared: dict[str, Any] = {}

    def _infos(self, agents: list[Any]) -> dict[Any, dict[str, Any]]:
        self.shared.clear()
        self.shared["t"] = self.env.num_steps
        return {a: self.shared for a in agents if a != "a_1"}

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        obs, _ = self.env.reset(seed=seed, options=options)
        return obs, self._infos(self.env.agents)

    def step(self, actions: dict[Any, Any]) -> Any:
        obs, rew, term, trunc, infos = self.env.step(actions)
        return obs, rew, term, trunc, self._infos(list(infos))


def joint(env: Any, training: list[str]) -> JointEnv:
    layout = build_layout(env, "noop", training_agents=training)
    return JointEnv(env, layout, JointBuffers.allocate(layout))


def step_joint(j: JointEnv, train: np.ndarray, npc: list[np.ndarray]) -> None:
    j.step(env_actions(j.layout, train[None], [a[None] for a in npc])[0])


# ---------------------------------------------------------------------------------- reference check
def check_against_env_output(j: JointEnv, capture: Capture) -> None:
    """The buffers after a step (no env reset) hold exactly what the env returned, in layout places."""
    obs, rewards, terms, truncs, infos = capture.last
    buf, layout = j.buf, j.layout
    pos = {a: i for i, a in enumerate(layout.possible_agents)}
    expected_reward = np.zeros(layout.n_agents, dtype=np.float64)
    for a, r in rewards.items():
        expected_reward[pos[a]] = r
    np.testing.assert_array_equal(buf.reward, expected_reward)
    live = set(capture.env.agents)
    rows = {a: (buf.train_obs, i, True) for i, a in enumerate(layout.training)}
    for g, group in enumerate(layout.groups):
        rows.update({a: (buf.npc_obs[g], i, False) for i, a in enumerate(group.agents)})
    for a, value in obs.items():
        array, i, training = rows[a]
        if a in live:
            np.testing.assert_array_equal(array[i], value)
        else:  # done at this step: the row is zero, a training agent's terminal obs is kept
            assert not array[i].any()
            if training:
                np.testing.assert_array_equal(buf.final_obs[i], value)
    for a, flag in terms.items():
        assert buf.terminated[pos[a]] == flag
    for a, flag in truncs.items():
        assert buf.truncated[pos[a]] == flag
    assert not buf.env_done[0]
    assert [i is infos.get(a) for i, a in zip(j.train_infos, layout.training)] == [True] * layout.n_train


def test_battle_buffers_hold_the_envs_output_through_deaths() -> None:
    from magent2.environments import battle_v4

    capture = Capture(battle_v4.parallel_env(map_size=16, max_cycles=100))
    j = joint(capture, ["red_*"])
    j.reset(seed=0)
    deaths = resets = 0
    for _ in range(250):
        before = len(capture.agents)
        # Both teams fight (random play almost never kills in battle).
        step_joint(j, greedy_blue(j.buf.train_obs.copy()), [greedy_blue(j.buf.npc_obs[0].copy())])
        if j.buf.env_done[0]:  # the buffers hold the next episode's start
            resets += 1
            continue
        check_against_env_output(j, capture)
        deaths += before - len(capture.agents)
    assert deaths >= 3 and resets >= 2
    j.close()


def test_actions_reach_their_agents_in_any_listing_order_and_after_deaths() -> None:
    env = RecordingParallelEnv(ReversedAgents(ScriptedParallelEnv(
        agents=INTERLEAVED, max_steps=8, death_steps={"a_1": 2, "b_0": 3, "b_1": 3})))
    j = joint(env, ["a_*"])
    assert j.layout.training == ("a_0", "a_1")
    j.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(1, 7):
        train, npc = rng.integers(0, 4, size=2), [rng.integers(0, 4, size=2)]
        step_joint(j, train, npc)
        sent = env.action_log[-1]
        # Sent in env.agents order, which loses a_1 at step 2, b_0 and b_1 at step 3 (a one-agent tuple).
        listed = ["b_1", "a_1", "b_0", "a_0"] if t <= 2 else ["b_1", "b_0", "a_0"] if t == 3 else ["a_0"]
        assert list(sent) == listed
        expected = {"a_0": train[0], "a_1": train[1], "b_0": npc[0][0], "b_1": npc[0][1]}
        assert sent == {a: expected[a] for a in sent}
        assert all(type(v) is int for v in sent.values())
    j.close()


def test_env_actions_converts_a_batch_per_env_as_copies() -> None:
    box = spaces.Box(-1.0, 1.0, (2,), np.float32)
    env = ScriptedParallelEnv(agents=INTERLEAVED, per_agent_spaces={
        a: (spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(3)) for a in ("b_0", "b_1")},
        action_space=box)
    layout = build_layout(env, "noop", training_agents=["a_*"])
    train = np.arange(8, dtype=np.float64).reshape(2, 2, 2) / 10  # (E, n_train, 2), float64 in
    npc = [np.array([[0, 1], [2, 0]])]
    out = env_actions(layout, train, [npc[0]])
    assert len(out) == 2 and [len(acts) for acts in out] == [4, 4]
    for e in range(2):
        for i in range(2):  # training agents: float32 arrays, copies of the input
            assert out[e][i].dtype == np.float32
            np.testing.assert_array_equal(out[e][i], train[e, i].astype(np.float32))
        assert out[e][2:] == npc[0][e].tolist() and all(is_integer_action(a) for a in out[e][2:])
    train[...] = 0.5
    assert out[0][1][0] != np.float32(0.5)


@pytest.mark.parametrize(("where", "seen_in"), [
    ("agents", "live agents"), ("observations", "observations"), ("rewards", "agents or step results")])
def test_an_agent_outside_possible_agents_is_a_clear_error(where: str, seen_in: str) -> None:
    env = ExtraAgent(ScriptedParallelEnv(agents=INTERLEAVED))
    j = joint(env, ["a_*"])
    j.reset(seed=0)
    env.where = where
    message = rf"env's {seen_in} include agent 'ghost', which is not in its possible_agents"
    with pytest.raises(ValueError, match=message):
        step_joint(j, np.zeros(2, dtype=np.int64), [np.zeros(2, dtype=np.int64)])
    env.where = "agents"
    with pytest.raises(ValueError, match=r"env's agents or step results include agent 'ghost'"):
        j.reset(seed=0)


def test_rewards_are_zero_where_the_env_gave_none() -> None:
    env = Capture(SomeRewards(ScriptedParallelEnv(agents=INTERLEAVED, max_steps=20, death_steps={"b_1": 3})))
    j = joint(env, ["a_*"])
    j.reset(seed=0)
    for t in range(1, 7):
        step_joint(j, np.ones(2, dtype=np.int64), [np.ones(2, dtype=np.int64)])
        check_against_env_output(j, env)
        a_0 = j.buf.reward[0]
        assert a_0 == (0.0 if t % 2 == 0 else default_reward("a_0", 0, t, 1))
        if t > 3:
            assert j.buf.reward[3] == 0.0  # b_1 died at step 3
    j.close()


def test_done_flags_and_env_done_are_cleared_the_step_after() -> None:
    env = ScriptedParallelEnv(agents=INTERLEAVED, max_steps=3, death_steps={"b_0": 2})
    j = joint(env, ["a_*"])
    j.reset(seed=0)
    history = []
    for _ in range(6):
        step_joint(j, np.zeros(2, dtype=np.int64), [np.zeros(2, dtype=np.int64)])
        history.append((bool(j.buf.terminated.any()), bool(j.buf.truncated.any()), bool(j.buf.env_done[0])))
    # Each episode: quiet, b_0 dies, time limit and reset; every flag is cleared the step after.
    assert history == [(False, False, False), (True, False, False), (False, True, True)] * 2
    j.close()


# -------------------------------------------------------------------------------------------- infos
def test_infos_are_the_envs_own_dicts_in_joint_env() -> None:
    env = SharedInfo(ScriptedParallelEnv(agents=INTERLEAVED))
    j = joint(env, ["a_*"])
    j.reset(seed=0)
    assert j.train_infos == [env.shared, None] and j.train_infos[0] is env.shared
    step_joint(j, np.zeros(2, dtype=np.int64), [np.zeros(2, dtype=np.int64)])
    assert j.train_infos[0] is env.shared and j.train_infos[1] is None
    j.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sb3_infos_are_one_fresh_dict_per_slot(num_workers: int) -> None:
    made: list[SharedInfo] = []

    def make() -> SharedInfo:
        made.append(SharedInfo(ScriptedParallelEnv(agents=["a_0", "a_1", "a_2", "b_0"], max_steps=3)))
        return made[-1]

    venv = nw.make_vec_env(make, num_envs=2, npc="noop", training_agents=["a_*"], seed=0,
                           num_workers=num_workers)
    venv.reset()
    assert [dict(i) for i in venv.reset_infos] == [{"t": 0}, {}, {"t": 0}] * 2
    assert len({id(i) for i in venv.reset_infos}) == 6
    for t in range(1, 5):
        _, _, _, infos = venv.step(np.zeros(6, dtype=np.int64))
        assert len({id(i) for i in infos}) == 6
        for k, info in enumerate(infos):
            assert info.get("t") == (None if k % 3 == 1 else t if t < 4 else 1)
            assert info["TimeLimit.truncated"] == (t == 3)
    if num_workers == 0:
        assert all(set(env.shared) == {"t"} for env in made)  # the wrapper's keys never reach the env's dict
    venv.close()


def test_gym_final_info_is_a_copy_of_the_envs_dict() -> None:
    made: list[SharedInfo] = []

    def make() -> SharedInfo:
        made.append(SharedInfo(ScriptedParallelEnv(agents=["a_0", "a_1", "b_0"], max_steps=2)))
        return made[-1]

    venv = nw.make_vector_env(make, num_envs=1, npc="noop", training_agents=["a_*"])
    venv.reset(seed=0)
    venv.step(np.zeros(2, dtype=np.int64))
    _, _, _, trunc, infos = venv.step(np.zeros(2, dtype=np.int64))
    assert trunc.all()
    env = made[-1]
    assert infos["final_info"]["t"][0] == 2 and env.shared == {"t": 0}  # the env's dict moved on to the reset
    assert infos["t"][0] == 0 and set(env.shared) == {"t"}
    venv.close()


# -------------------------------------------------------------------------------------------- engine
def test_as_slice_only_for_one_ascending_run() -> None:
    assert _as_slice(np.array([2, 3, 4])) == slice(2, 5)
    assert _as_slice(np.array([5])) == slice(5, 6)
    for index in ([0, 2], [1, 0], []):
        result = _as_slice(np.array(index, dtype=np.intp))
        assert isinstance(result, np.ndarray) and result.tolist() == index


@pytest.mark.parametrize("agents", [["a_0", "a_1", "b_0", "b_1"], INTERLEAVED, ["b_0", "b_1", "a_0", "a_1"]])
def test_slot_rewards_dones_and_team_returns_for_any_agent_placement(agents: list[str]) -> None:
    index = {a: i for i, a in enumerate(agents)}
    venv = nw.make_vec_env(lambda: ScriptedParallelEnv(agents=agents, max_steps=4, death_steps={"a_1": 2}),
                           num_envs=2, npc="noop", training_agents=["a_*"], seed=0)
    venv.reset()
    npc_action = 0
    for t in range(1, 5):
        actions = np.array([1, 2, 3, 0])
        _, rew, done, infos = venv.step(actions)
        for e in range(2):
            for j, a in enumerate(("a_0", "a_1")):
                k = 2 * e + j
                alive = a == "a_0" or t <= 2
                expected = default_reward(a, index[a], t, actions[k]) if alive else 0.0
                assert rew[k] == pytest.approx(expected, rel=1e-6)
                assert done[k] == (t == 4 and alive or a == "a_1" and t == 2)
                assert infos[k].get(nw.PADDING_KEY, False) == (not alive)
        if t == 4:
            summary = infos[0][nw.EPISODE_KEY]
            train = sum(default_reward("a_0", index["a_0"], s, 1) for s in range(1, 5)) + sum(
                default_reward("a_1", index["a_1"], s, 2) for s in range(1, 3))
            npc = sum(default_reward(b, index[b], s, npc_action) for b in ("b_0", "b_1") for s in range(1, 5))
            assert summary["train_return"] == pytest.approx(train, rel=1e-6)
            assert summary["npc_return"] == pytest.approx(npc, rel=1e-6)
    venv.close()

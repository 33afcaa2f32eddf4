"""Real PettingZoo environments through the wrapper: MPE, MAgent2, butterfly, SISL and MettaGrid."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import npc_wrapper as nw
from tests.envs import RecordingParallelEnv, simple_tag

# MettaGrid supports Python 3.11-3.12 (the dev extra leaves it out on 3.10); where it is supported, a
# missing mettagrid fails these tests rather than skipping them.
needs_mettagrid = pytest.mark.skipif(sys.version_info < (3, 11), reason="MettaGrid needs Python >= 3.11")

PAD, EPISODE = nw.PADDING_KEY, nw.EPISODE_KEY


def recorded(fn: Callable[[], Any]) -> Callable[[], RecordingParallelEnv]:
    return lambda: RecordingParallelEnv(fn())


def run_and_replay(venv: nw.NPCVecEnv, env_fn: Callable[[], Any], seed: int, steps: int) -> list[dict]:
    """Step ``venv`` with seeded random trainer actions, then replay sub-env 0's logged actions (the
    NPCs' included) on a fresh env: the training slots must have seen exactly that env's observations,
    rewards and dones. Returns the per-step infos of slot 0."""
    env0 = venv.slots.of_env(0)  # sub-env 0's slots
    rng = np.random.default_rng(seed)
    venv.seed(seed)
    seen = [venv.reset()[env0]]
    rewards, dones, infos0 = [], [], []
    for _ in range(steps):
        actions = np.stack([venv.action_space.sample() for _ in range(venv.num_envs)]) \
            if not hasattr(venv.action_space, "n") else rng.integers(0, venv.action_space.n, venv.num_envs)
        obs, rew, done, infos = venv.step(actions)
        seen.append(obs[env0])
        rewards.append(rew[env0])
        dones.append(done[env0])
        infos0.append([infos[k] for k in env0])
    log = venv.get_attr("action_log", indices=[0])[0]

    env = env_fn()
    obs, _ = env.reset(seed=seed)
    for a, agent in enumerate(venv.training_agents):
        np.testing.assert_array_equal(seen[0][a], obs[agent])
    for t, actions in enumerate(log):
        obs, rew, term, trunc, _ = env.step(actions)
        for a, agent in enumerate(venv.training_agents):
            if agent not in actions:
                continue  # dead before this step: padding
            assert rewards[t][a] == pytest.approx(rew[agent], rel=1e-6), (t, agent)
            assert dones[t][a] == (term[agent] or trunc[agent]), (t, agent)
            if dones[t][a]:
                np.testing.assert_array_equal(infos0[t][a]["terminal_observation"], obs[agent])
                assert infos0[t][a]["TimeLimit.truncated"] == (trunc[agent] and not term[agent])
            else:
                np.testing.assert_array_equal(seen[t + 1][a], obs[agent], err_msg=f"step {t + 1} {agent}")
        if not env.agents:
            break  # the wrapper auto-reset here; the replay covers the first episode
    return infos0


# ------------------------------------------------------------------------------------------- MPE
def test_simple_tag_predators_train_against_a_prey_npc() -> None:
    venv = nw.make_vec_env(recorded(simple_tag), num_envs=4, npc="random", training_agents_pct=0.75)
    assert venv.training_agents == ["adversary_0", "adversary_1", "adversary_2"]
    assert venv.npc_agents == ["agent_0"]
    assert venv.observation_space.shape == (16,) and venv.num_envs == 12
    assert venv.pools[0].members[0].observation_space.shape == (14,)  # the prey's own space
    infos = run_and_replay(venv, simple_tag, seed=3, steps=26)
    ends = [t for t, step in enumerate(infos) if EPISODE in step[0]]
    assert ends == [24]  # max_cycles=25: a truncation ...
    assert all(i["TimeLimit.truncated"] for i in infos[24])
    summary = infos[24][0][EPISODE]
    assert summary["length"] == 25 and summary["npc"] == "random"
    diff = summary["train_return"] - summary["npc_return"]
    assert summary["outcome"] == ("win" if diff > 0 else "loss" if diff < 0 else "draw")
    prey = [step["agent_0"] for step in venv.get_attr("action_log", indices=[0])[0]]
    assert set(prey) <= set(range(5)) and len(set(prey)) > 2
    venv.close()


class SpreadLogits(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(18, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_simple_spread_with_a_torch_npc_team() -> None:
    from mpe2 import simple_spread_v3

    fn = lambda: simple_spread_v3.parallel_env(max_cycles=10, N=3)
    venv = nw.make_vec_env(recorded(fn), num_envs=3, npc=SpreadLogits(), training_agents_pct=0.34, device="cpu")
    assert venv.training_agents == ["agent_0"] and venv.npc_agents == ["agent_1", "agent_2"]
    infos = run_and_replay(venv, fn, seed=0, steps=12)
    assert all(i["TimeLimit.truncated"] for i in infos[9])
    # Cooperative env: every agent gets the shared reward, so the teams draw or differ by the
    # per-agent collision terms only; the summary is still there.
    assert infos[9][0][EPISODE]["length"] == 10
    venv.close()


# ---------------------------------------------------------------------------------------- MAgent2
_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
_MOVES = [(-2, 0), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1), (0, 0), (0, 1), (0, 2), (1, -1), (1, 0), (1, 1), (2, 0)]


def greedy_blue(obs: np.ndarray) -> np.ndarray:
    """A scripted battle_v4 NPC: attack an adjacent red (actions 13-20), else step towards the
    nearest visible one, else walk left (blue starts on the right). Random play almost never kills
    in battle (10 HP, 2 damage, regeneration), so deaths need an NPC that fights."""
    B, H, W, _ = obs.shape
    c = H // 2
    enemy = obs[..., 3] > 0
    out = np.full(B, 4, dtype=np.int64)
    ys, xs = np.mgrid[0:H, 0:W]
    for b in range(B):
        adjacent = [k for k, (dy, dx) in enumerate(_NEIGHBOURS) if enemy[b, c + dy, c + dx]]
        if adjacent:
            out[b] = 13 + adjacent[0]
        elif enemy[b].any():
            dist = np.where(enemy[b], np.abs(ys - c) + np.abs(xs - c), 10**6)
            ty, tx = np.unravel_index(np.argmin(dist), dist.shape)
            out[b] = min(range(13), key=lambda m: (abs(c + _MOVES[m][0] - ty) + abs(c + _MOVES[m][1] - tx)) or 99)
    return out


def test_magent2_battle_agent_death_and_padding() -> None:
    from magent2.environments import battle_v4

    fn = lambda: battle_v4.parallel_env(map_size=12, max_cycles=100)
    venv = nw.make_vec_env(recorded(fn), num_envs=2, npc=greedy_blue, training_agents=["red_*"], seed=0)
    assert venv.training_agents == ["red_0", "red_1"] and venv.npc_agents == ["blue_0", "blue_1"]
    obs = venv.reset()
    assert obs.shape == (4, 13, 13, 5)
    rng = np.random.default_rng(0)
    partial_deaths = padded_steps = short_episodes = 0
    dead_since: dict[int, int] = {}
    for t in range(150):
        obs, rew, done, infos = venv.step(rng.integers(0, 21, size=4))
        for k in range(4):
            if k in dead_since and EPISODE not in infos[k]:
                # Padding after a death: zeros, no reward, no done, flagged.
                assert infos[k][PAD] is True and not done[k] and rew[k] == 0 and not obs[k].any()
                padded_steps += 1
        alive = venv.slot_alive()
        for k in np.flatnonzero(done):
            assert infos[k]["terminal_observation"].shape == (13, 13, 5)
            assert infos[k]["episode"]["l"] >= 1
            partner = k ^ 1
            if EPISODE not in infos[k]:  # the env plays on: a real mid-episode death
                partial_deaths += 1
                assert not alive[k] and alive[partner]
                dead_since[k] = t
        for k in range(0, 4, 2):
            if EPISODE in infos[k]:
                dead_since.pop(k, None), dead_since.pop(k + 1, None)
                assert alive[k] and alive[k + 1]  # reset: both slots play again
                if infos[k][EPISODE]["length"] < 100:
                    short_episodes += 1
    assert partial_deaths >= 2 and padded_steps >= 2 and short_episodes >= 2
    venv.close()


# ------------------------------------------------------------------------------------- butterfly
def test_knights_archers_zombies_archers_die_to_zombies() -> None:
    from pettingzoo.butterfly import knights_archers_zombies_v11

    fn = lambda: knights_archers_zombies_v11.parallel_env(max_cycles=400)
    venv = nw.make_vec_env(recorded(fn), num_envs=4, npc="random", training_agents_pct=0.5, seed=0)
    assert venv.training_agents == ["archer_0", "archer_1"] and venv.npc_agents == ["knight_0", "knight_1"]
    assert venv.observation_space.dtype == np.float64
    venv.reset()
    rng = np.random.default_rng(1)
    deaths = padded = 0
    for _ in range(400):
        obs, rew, done, infos = venv.step(rng.integers(0, 6, size=8))
        alive = venv.slot_alive()
        for k in np.flatnonzero(done):
            if EPISODE not in infos[k]:  # died; its env (knights, the other archer) plays on
                deaths += 1
                assert not alive[k] and not obs[k].any()
                assert infos[k]["terminal_observation"].shape == (27, 5)
        for k, info in enumerate(infos):
            if info.get(PAD) and EPISODE not in info:
                padded += 1
                assert rew[k] == 0 and not done[k] and not obs[k].any()
        if deaths >= 2 and padded >= 4:
            break
    assert deaths >= 2 and padded >= 4
    venv.close()


def test_pistonball_image_observations_and_box_actions() -> None:
    import supersuit as ss
    from pettingzoo.butterfly import pistonball_v6

    def fn() -> Any:
        env = pistonball_v6.parallel_env(n_pistons=4, max_cycles=12)
        return ss.resize_v1(ss.color_reduction_v0(env, mode="B"), 16, 16)

    venv = nw.make_vec_env(recorded(fn), num_envs=2, npc="random", training_agents_pct=0.5)
    assert venv.observation_space.shape == (16, 16) and venv.observation_space.dtype == np.uint8
    obs = venv.reset()
    assert obs.dtype == np.uint8 and obs.min() < obs.max()  # real pixels
    infos = run_and_replay(venv, fn, seed=0, steps=13)
    assert all(i["TimeLimit.truncated"] for i in infos[11])
    assert infos[11][0]["terminal_observation"].dtype == np.uint8
    npc = np.array([step["piston_2"] for step in venv.get_attr("action_log", indices=[0])[0]])
    assert npc.shape == (13, 1) and np.abs(npc).max() <= 1 and np.unique(npc).size > 5
    venv.close()


# ------------------------------------------------------------------------------------------ SISL
def test_pursuit() -> None:
    from pettingzoo.sisl import pursuit_v5

    fn = lambda: pursuit_v5.parallel_env(max_cycles=20, n_pursuers=4, n_evaders=10)
    venv = nw.make_vec_env(recorded(fn), num_envs=2, npc="random", training_agents_pct=0.5)
    assert venv.training_agents == ["pursuer_0", "pursuer_1"]
    assert venv.observation_space.shape == (7, 7, 3)
    infos = run_and_replay(venv, fn, seed=2, steps=21)
    assert all(i["TimeLimit.truncated"] for i in infos[19])
    venv.close()


# ------------------------------------------------------------------------------------- MettaGrid
def mettagrid_arena(max_steps: int = 8) -> Any:
    from mettagrid.builder.envs import make_arena
    from mettagrid.envs.pettingzoo_env import MettaGridPettingZooEnv
    from mettagrid.simulator import Simulator

    cfg = make_arena(num_agents=24)
    cfg.game.max_steps = max_steps
    return MettaGridPettingZooEnv(Simulator(), cfg)


@needs_mettagrid
def test_mettagrid_arena_int_agents_and_unaliased_observations() -> None:
    venv = nw.make_vec_env(mettagrid_arena, num_envs=2, npc="random", training_agents_pct=0.5, seed=0)
    assert venv.training_agents == list(range(12)) and venv.npc_agents == list(range(12, 24))
    assert venv.num_envs == 24 and venv.observation_space.dtype == np.uint8
    obs = venv.reset()
    rng = np.random.default_rng(0)
    kept: list[tuple[np.ndarray, np.ndarray]] = [(obs, obs.copy())]
    terminal: list[tuple[np.ndarray, np.ndarray]] = []
    for t in range(10):
        obs, _rew, done, infos = venv.step(rng.integers(0, venv.action_space.n, size=24))
        # Our observations are the env's current ones for the training agents of each env ...
        for e in range(2):
            sim = venv.get_attr("_sim", indices=[12 * e])[0]
            if not done[12 * e]:
                np.testing.assert_array_equal(obs[12 * e:12 * (e + 1)], sim._c_sim.observations()[:12])
        kept.append((obs, obs.copy()))
        for k in np.flatnonzero(done):
            term = infos[k]["terminal_observation"]
            terminal.append((term, term.copy()))
    assert len(terminal) == 24  # max_steps=8: every slot ended once
    # ... and copies: later steps (MettaGrid reuses its C buffers) did not change them.
    assert any(not np.array_equal(a, kept[0][1]) for a, _ in kept[1:])
    for got, copy in kept + terminal:
        np.testing.assert_array_equal(got, copy)
    venv.close()


@needs_mettagrid
def test_mettagrid_time_limit_is_a_truncation_in_the_shipped_factory() -> None:
    """MettaGrid itself reports its max_steps cut as a termination; the CLI's factory makes it a
    truncation."""
    from npc_wrapper.cli.envs import mettagrid_arena as shipped

    raw = mettagrid_arena(max_steps=3)
    raw.reset(seed=0)
    for _ in range(3):
        _, _, terms, truncs, _ = raw.step({a: 0 for a in raw.agents})
    assert all(terms.values()) and not any(truncs.values())  # the env's own flags
    venv = nw.make_vec_env(
        lambda: shipped(max_steps=3), num_envs=1, npc="random", training_agents_pct=0.5, seed=0
    )
    venv.reset()
    for t in range(1, 4):
        _, _, done, infos = venv.step(np.zeros(12, dtype=np.int64))
        assert done.all() == (t == 3) and all(i["TimeLimit.truncated"] == (t == 3) for i in infos)
    venv.close()


@needs_mettagrid
def test_mettagrid_shipped_factory_seeds_its_maps() -> None:
    """MettaGrid draws its maps from the map builder's seed, not reset's: the CLI's factory seeds both,
    so a seed reproduces a run and each episode still gets a new map."""
    from npc_wrapper.cli.envs import mettagrid_arena as shipped

    def episodes(seed: int) -> list[dict]:
        env = shipped(num_agents=4, max_steps=3)
        return [env.reset(seed=seed)[0], env.reset()[0]]

    def same(a: dict, b: dict) -> bool:
        return all(np.array_equal(a[k], b[k]) for k in a)

    first, again, other = episodes(3), episodes(3), episodes(4)
    assert all(same(a, b) for a, b in zip(first, again))
    assert not same(first[0], first[1]) and not same(first[0], other[0])


@needs_mettagrid
def test_mettagrid_hearts_observes_a_grid_of_the_tokens_and_pays_one_per_heart() -> None:
    """The hearts factory's grid holds each in-window token of the env's own observation at its cell (the
    object type one-hot, other features scaled), and the hearts taken are the rewards paid."""
    from npc_wrapper.cli.envs import mettagrid_hearts

    env = mettagrid_hearts(num_agents=4, size=9, hearts=10, max_steps=30)
    obs, _ = env.reset(seed=0)
    tokens = env.unwrapped._sim._c_sim.observations()  # the tokens the grid was made from
    height, width, _ = env.observation_space(0).shape
    assert (height, width) == (13, 13) and obs[0].dtype == np.float32
    for agent in env.possible_agents:
        loc, feature, value = tokens[agent].astype(int).T
        inside = (loc != 255) & (loc >> 4 < height) & (loc & 15 < width)
        tags = inside & (feature == 6)  # feature 6 is MettaGrid's "tag" (object type)
        grid = obs[agent]
        assert grid[6, 6, 0] == 1.0  # the agent itself at the centre: type 0, "type:agent"
        cells = np.argwhere(grid[..., :3].sum(axis=2) > 0)
        assert sorted(map(tuple, cells)) == sorted(zip(loc[tags] >> 4, loc[tags] & 15))
        for r, c, v in zip(loc[tags] >> 4, loc[tags] & 15, value[tags]):
            assert grid[r, c, v] == 1.0
        assert np.count_nonzero(grid[..., 3:]) <= np.count_nonzero(inside & ~tags)
    taken = 0.0
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs, rewards, _, truncs, _ = env.step({a: int(rng.integers(5)) for a in env.agents})
        assert set(rewards.values()) <= {0.0, 1.0}
        taken += sum(rewards.values())
    assert all(truncs.values()) and 0 < taken <= 10


# ---------------------------------------------------------------------------------------- classic
def test_discrete_observations_rock_paper_scissors() -> None:
    """rps_v2's observations are Discrete(4) (shape ()): each agent's buffer row is a 0-d view."""
    from pettingzoo.classic import rps_v2

    for gym in (False, True):
        make = nw.make_vector_env if gym else nw.make_vec_env
        venv = make(
            lambda: rps_v2.parallel_env(max_cycles=3), num_envs=2, npc="noop", training_agents_pct=0.5
        )
        obs = venv.reset(seed=0)[0] if gym else venv.reset()
        np.testing.assert_array_equal(obs, [3, 3])  # "no move yet"
        out = venv.step(np.array([1, 2]))  # paper, scissors against the NPC's rock (noop = 0)
        np.testing.assert_array_equal(out[0], [0, 0])  # each sees the opponent's rock
        np.testing.assert_array_equal(out[1], [1, -1])
        venv.close()

"""Self-play league: snapshots join the NPC pool on schedule, sampling, eviction, Elo, round robin.

Learners are real SB3 PPO models trained on real envs (the scripted env from ``tests/envs.py``,
where the outcome of every episode is known in advance, and magent2 battle).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from omegaconf import OmegaConf
from pettingzoo.utils import BaseParallelWrapper
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecNormalize

import npc_wrapper as nw
from npc_wrapper.config import LeagueConfig
from npc_wrapper.engine import EPISODE_KEY
from npc_wrapper.errors import NoEpisodeEnds
from npc_wrapper.league import (
    LeagueCallback,
    check_league_venv,
    elo_expected,
    elo_update,
    fit_ratings,
    round_robin,
)
from npc_wrapper.npcs.policies import ConstantPolicy
from tests.envs import ScriptedParallelEnv

torch.set_num_threads(1)


def learner_wins(agent: Any, index: int, t: int, action: Any) -> float:
    """The training agent ``a_0`` scores every step, the NPC never: every episode is a win."""
    return 1.0 if agent == "a_0" else 0.0


def learner_loses(agent: Any, index: int, t: int, action: Any) -> float:
    return 0.0 if agent == "a_0" else 1.0


def scripted_venv(max_steps: Sequence[int] = (4, 4), reward_fn: Callable[..., float] | None = None,
                  seed: int = 0) -> nw.NPCVecEnv:
    """One env per entry of ``max_steps`` (different lengths desynchronise the episode ends)."""
    fns = [lambda n=n: ScriptedParallelEnv(agents=["a_0", "b_0"], max_steps=n, reward_fn=reward_fn)
           for n in max_steps]
    return nw.make_vec_env(fns, training_agents=["a_*"], npc="random", seed=seed, device="cpu")


def ppo(venv: Any, n_steps: int = 8) -> PPO:
    return PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=n_steps * venv.num_envs, n_epochs=1,
               policy_kwargs={"net_arch": [16]}, device="cpu", seed=0)


def names(pool: nw.NPCPool) -> list[str]:
    return [m.name for m in pool.members]


class PoolRecorder(BaseCallback):
    """After the league's own hooks: the pool at every rollout start and step, and episode ends."""

    def __init__(self, league: LeagueCallback) -> None:
        super().__init__()
        self.league = league
        self.rollout_starts: list[tuple[int, list[str]]] = []
        self.steps: list[tuple[int, list[str]]] = []
        self.playing: list[list[str]] = []  # per record: each env's member name
        self.ended: list[np.ndarray] = []  # per record: which envs' episodes ended at that step
        self.episode_npc: list[dict[int, str]] = []  # per record: env -> member named in its episode info

    def _playing(self) -> list[str]:
        engine = self.league.engine
        return [engine.pools[0].members[m].name for m in engine._member[0]]

    def _on_rollout_start(self) -> None:
        self.rollout_starts.append((self.num_timesteps, names(self.league.pool)))
        self.playing.append(self._playing())
        self.ended.append(np.zeros(self.league.engine.num_envs, dtype=bool))
        self.episode_npc.append({})

    def _on_step(self) -> bool:
        engine = self.league.engine
        self.steps.append((self.num_timesteps, names(engine.pools[0])))
        infos = self.locals["infos"]
        eps = {e: info.get(EPISODE_KEY) for e, info in enumerate(engine.slots.first_of_env(infos))}
        self.playing.append(self._playing())
        self.ended.append(np.array([eps[e] is not None for e in range(engine.num_envs)]))
        self.episode_npc.append({e: ep["npc"] for e, ep in eps.items() if ep is not None})
        return True


def train(venv: nw.NPCVecEnv, config: LeagueConfig, steps: int, n_steps: int = 8, **kwargs: Any
          ) -> tuple[PPO, LeagueCallback, PoolRecorder]:
    model = ppo(venv, n_steps)
    league = LeagueCallback(config, device="cpu", **kwargs)
    recorder = PoolRecorder(league)
    model.learn(steps, callback=CallbackList([league, recorder]))
    return model, league, recorder


# --------------------------------------------------------------------------- schedule
def test_snapshots_enter_the_pool_every_snapshot_every_steps_between_rollouts() -> None:
    venv = scripted_venv()  # 2 envs x 1 training agent: a rollout is 8 x 2 = 16 steps
    _, league, rec = train(venv, LeagueConfig(enabled=True, snapshot_every=32, window=10), 160)
    assert league.window == ["snapshot@32", "snapshot@64", "snapshot@96", "snapshot@128"]
    assert names(venv.pools[0]) == ["random", *league.window]
    for steps, pool in rec.rollout_starts:  # each snapshot is in the pool from the rollout starting at its step
        assert pool == ["random"] + [f"snapshot@{n}" for n in (32, 64, 96, 128) if n <= steps]
    starts = dict(rec.rollout_starts)
    for steps, pool in rec.steps:  # and the pool never changes during a rollout
        assert pool == starts[(steps - 1) // 16 * 16]
    assert all(r.path is None for r in league.records.values())  # no save_dir: nothing written
    venv.close()


def test_later_learn_calls_keep_the_snapshot_schedule() -> None:
    venv = scripted_venv()  # a rollout is 16 steps
    model = ppo(venv)
    league = LeagueCallback(LeagueConfig(enabled=True, snapshot_every=32), device="cpu")
    model.learn(64, callback=league)  # ends at 64: the snapshot due there waits for the next rollout
    model.learn(16, callback=league, reset_num_timesteps=False)
    assert league.window == ["snapshot@32", "snapshot@64"]
    model.learn(64, callback=league)  # SB3's default reset_num_timesteps=True: the count restarts at 0
    assert league.window == ["snapshot@32", "snapshot@64", "snapshot@32#2"]
    venv.close()


def test_snapshots_taken_at_the_same_step_are_saved_to_their_own_files(tmp_path: Path) -> None:
    venv = scripted_venv()
    model = ppo(venv)
    league = LeagueCallback(LeagueConfig(enabled=True, snapshot_every=32), save_dir=tmp_path, device="cpu")
    model.learn(48, callback=league)
    model.learn(48, callback=league)  # the step count restarts: a second snapshot at step 32
    first, second = (Path(league.records[n].path) for n in ("snapshot@32", "snapshot@32#2"))
    assert first != second and first.is_file() and second.is_file()
    assert json.loads(first.with_suffix(".json").read_text())["league_name"] == "snapshot@32"
    assert json.loads(second.with_suffix(".json").read_text())["league_name"] == "snapshot@32#2"
    venv.close()


def test_a_snapshot_save_killed_midway_leaves_no_torn_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots are saved as checkpoints are (to a temporary file, then renamed): a resume or a round
    robin over the league directory never finds half a snapshot."""
    venv = scripted_venv()  # a rollout is 16 steps
    model = ppo(venv)
    league = LeagueCallback(LeagueConfig(enabled=True, snapshot_every=32), save_dir=tmp_path, device="cpu")
    model.learn(48, callback=league)
    good = (tmp_path / "snapshot_32.zip").read_bytes()

    def torn_save(path: object, *args: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(good[: len(good) // 2])  # what a kill during the write leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        model.learn(32, callback=league, reset_num_timesteps=False)  # snapshot@64 is due at step 64
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == ["league.json", "snapshot_32.json", "snapshot_32.zip"]
    venv.close()


def test_snapshot_when_win_rate_passes_the_threshold_over_the_last_k_episodes() -> None:
    # Every episode lasts 4 steps in both envs: a rollout (8 steps per env) holds 4 episodes, all won.
    venv = scripted_venv(reward_fn=learner_wins)
    cfg = LeagueConfig(enabled=True, snapshot_when_win_rate=0.9, win_rate_episodes=4)
    _, league, _ = train(venv, cfg, 64)
    assert league.window == ["snapshot@16", "snapshot@32", "snapshot@48"]
    assert league.win_rate() == 1.0
    venv.close()

    # K counts the episodes since the last snapshot: with K = 6 a snapshot needs 1.5 rollouts.
    venv = scripted_venv(reward_fn=learner_wins)
    _, league, _ = train(venv, LeagueConfig(enabled=True, snapshot_when_win_rate=0.9, win_rate_episodes=6), 96)
    assert league.window == ["snapshot@32", "snapshot@64"]
    venv.close()

    # A learner that loses every episode never reaches the threshold.
    venv = scripted_venv(reward_fn=learner_loses)
    _, league, _ = train(venv, LeagueConfig(enabled=True, snapshot_when_win_rate=0.5, win_rate_episodes=4), 64)
    assert league.window == [] and names(venv.pools[0]) == ["random"]
    assert league.win_rate() == 0.0 and league.records["random"].losses == league.num_episodes > 0
    venv.close()


# --------------------------------------------------------------------------- window and sampling
@pytest.fixture(scope="module")
def trained_league(tmp_path_factory: pytest.TempPathFactory) -> tuple[nw.NPCVecEnv, PPO, LeagueCallback]:
    venv = scripted_venv(max_steps=(3, 5, 7))
    cfg = LeagueConfig(enabled=True, snapshot_every=16, window=3, play_latest_ratio=0.6)
    save_dir = tmp_path_factory.mktemp("league")
    model, league, _ = train(venv, cfg, 24 * 6, save_dir=save_dir)
    yield venv, model, league
    venv.close()


def test_play_latest_ratio_sampling_statistics(trained_league: Any) -> None:
    venv, _, league = trained_league
    pool = venv.pools[0]
    active = league.active_members()
    assert active == ["random", *league.window] and len(league.window) == 3
    latest = league.window[-1]
    draws = pool.draw(np.random.default_rng(0), 40_000)
    freq = {n: float(np.mean([pool.members[i].name == n for i in draws])) for n in names(pool)}
    assert freq[latest] == pytest.approx(0.6, abs=0.015)
    for n in active[:-1]:  # the rest share 0.4 uniformly
        assert freq[n] == pytest.approx(0.4 / 3, abs=0.015)
    assert sum(freq[n] for n in names(pool) if n not in active) == 0  # evicted members are never drawn


def test_prioritized_sampling_weights_by_learner_score(trained_league: Any) -> None:
    venv, _, league = trained_league
    pool = venv.pools[0]
    cfg = league.config
    others = league.active_members()[:-1]
    saved = {n: (list(league.records[n].recent)) for n in others}
    try:
        league.config = LeagueConfig(enabled=True, snapshot_every=16, window=3, play_latest_ratio=0.6,
                                     sampling="prioritized", priority_power=2.0)
        scores = {others[0]: [1.0, 1.0], others[1]: [1.0, 0.0, 0.0, 0.0], others[2]: []}  # 1.0, 0.25, unplayed
        for n, s in scores.items():
            league.records[n].recent.clear()
            league.records[n].recent.extend(s)
        league._reweight()
        w = dict(zip(names(pool), pool.weights))
        prio = np.array([0.0, 0.75**2, 0.5**2])
        for n, p in zip(others, prio / prio.sum()):
            assert w[n] == pytest.approx(0.4 * p)
        assert w[league.window[-1]] == pytest.approx(0.6)
        # The learner beats everyone: no preference left, uniform again.
        for n in others:
            league.records[n].recent.clear()
            league.records[n].recent.extend([1.0])
        league._reweight()
        assert [dict(zip(names(pool), pool.weights))[n] for n in others] == pytest.approx([0.4 / 3] * 3)
    finally:
        league.config = cfg
        for n, s in saved.items():
            league.records[n].recent.clear()
            league.records[n].recent.extend(s)
        league._reweight()


def test_window_eviction_keeps_members_in_use_until_their_episode_ends(trained_league: Any) -> None:
    venv, model, league = trained_league
    pool, engine = venv.pools[0], venv.engine
    oldest = league.window[0]
    engine._member[0][0] = names(pool).index(oldest)  # env 0 is playing the oldest snapshot right now
    before = [names(pool)[m] for m in engine._member[0]]
    model.num_timesteps += 16
    league.take_snapshot()  # between rollouts, as the callback does: evicts the oldest
    assert oldest not in league.window and len(league.window) == 3
    assert oldest in names(pool) and oldest not in league.active_members()  # kept: env 0 still plays it
    assert dict(zip(names(pool), pool.weights))[oldest] == 0.0
    assert [names(pool)[m] for m in engine._member[0]] == before  # nobody's opponent changed
    # Step env 0 to the end of its episode (it then draws a new member), then the next rollout boundary.
    for _ in range(10):
        _, _, _, infos = venv.step(np.zeros(venv.num_envs, dtype=np.int64))
        if EPISODE_KEY in infos[0]:
            break
    assert EPISODE_KEY in infos[0] and infos[0][EPISODE_KEY]["npc"] == oldest
    playing = [names(pool)[m] for m in engine._member[0]]
    league._on_rollout_start()
    assert oldest not in names(pool)  # removed once unused
    assert [names(pool)[m] for m in engine._member[0]] == playing  # indices remapped, opponents unchanged
    assert len(pool.weights) == len(pool.members)
    assert league.records[oldest].elo  # its rating is kept


def test_snapshots_are_saved_and_load_as_npcs(trained_league: Any) -> None:
    venv, model, league = trained_league
    state = json.loads((league.save_dir / "league.json").read_text())
    assert state["window"] == league.window and state["snapshots"] == league.num_snapshots
    rec = league.records[league.window[-1]]
    path = Path(rec.path)
    assert path.is_file() and json.loads(path.with_suffix(".json").read_text())["num_timesteps"] == rec.num_timesteps
    # The saved snapshot is an SB3 zip the checkpoint loader reads safely; it acts like the frozen one.
    loaded = nw.as_npc_policy(str(path), venv.observation_space, venv.action_space, device="cpu", deterministic=True)
    frozen = next(m for m in venv.pools[0].members if m.name == rec.name)
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    rows, start = np.arange(6), np.ones(6, dtype=bool)
    with torch.no_grad():
        logits_saved = loaded.policy.get_distribution(torch.as_tensor(obs)).distribution.logits
        logits_frozen = frozen.policy.get_distribution(torch.as_tensor(obs)).distribution.logits
    assert torch.allclose(logits_saved, logits_frozen)
    assert loaded.act(obs, rows, start).shape == (6,)
    # Frozen: no gradients, eval mode, and not the learner's tensors.
    assert not any(p.requires_grad for p in frozen.policy.parameters())
    learner_params = {p.data_ptr() for p in model.policy.parameters()}
    assert not learner_params & {p.data_ptr() for p in frozen.policy.parameters()}


def test_resume_continues_the_saved_league(trained_league: Any) -> None:
    _, model, league = trained_league
    saved = json.loads((league.save_dir / "league.json").read_text())
    venv = scripted_venv(max_steps=(3, 5, 7), seed=1)
    resumed = ppo(venv)
    resumed.set_parameters(model.get_parameters())
    resumed.num_timesteps = model.num_timesteps
    cb = LeagueCallback(league.config, save_dir=league.save_dir, device="cpu", resume=True)
    cb.init_callback(resumed)  # what learn() does first
    assert cb.window == saved["window"] == league.window
    assert names(venv.pools[0]) == ["random", *league.window]
    assert cb.learner_elo == league.learner_elo and cb.num_snapshots == league.num_snapshots
    assert {n: r.elo for n, r in cb.records.items()} == {n: r.elo for n, r in league.records.items()}
    assert list(cb.records["random"].recent) == list(league.records["random"].recent)
    assert dict(zip(names(venv.pools[0]), venv.pools[0].weights))[league.window[-1]] == pytest.approx(0.6)
    resumed.learn(48, callback=cb, reset_num_timesteps=False)
    assert cb.num_snapshots > league.num_snapshots and len(cb.window) == 3
    venv.close()


def test_resume_takes_the_snapshot_that_was_due_when_the_run_ended(tmp_path: Path) -> None:
    venv = scripted_venv()  # a rollout is 16 steps
    model = ppo(venv)
    cfg = LeagueConfig(enabled=True, snapshot_every=32)
    # Ends at 64, before the snapshot due there.
    model.learn(64, callback=LeagueCallback(cfg, save_dir=tmp_path, device="cpu"))
    venv.close()
    venv = scripted_venv()
    resumed = ppo(venv)
    resumed.set_parameters(model.get_parameters())
    resumed.num_timesteps = model.num_timesteps
    league = LeagueCallback(cfg, save_dir=tmp_path, device="cpu", resume=True)
    resumed.learn(32, callback=league, reset_num_timesteps=False)
    assert league.window == ["snapshot@32", "snapshot@64"]
    venv.close()


def test_resume_keeps_counting_the_episodes_towards_a_win_rate_snapshot(tmp_path: Path) -> None:
    cfg = LeagueConfig(enabled=True, snapshot_when_win_rate=0.9, win_rate_episodes=6)
    venv = scripted_venv(reward_fn=learner_wins)  # a rollout: 4 won episodes
    model = ppo(venv)
    model.learn(16, callback=LeagueCallback(cfg, save_dir=tmp_path, device="cpu"))
    venv.close()
    venv = scripted_venv(reward_fn=learner_wins)
    resumed = ppo(venv)
    resumed.num_timesteps = model.num_timesteps
    league = LeagueCallback(cfg, save_dir=tmp_path, device="cpu", resume=True)
    resumed.learn(32, callback=league, reset_num_timesteps=False)
    assert league.window == ["snapshot@32"]  # 4 episodes before the resume and 4 after
    assert league.win_rate() == 1.0 and len(league._recent) == 6
    venv.close()


def test_saved_snapshots_are_logged_as_wandb_artifacts(tmp_path: Path) -> None:
    wandb = pytest.importorskip("wandb")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="npc-wrapper-test", name="league run")
    try:
        venv = scripted_venv()
        cfg = LeagueConfig(enabled=True, snapshot_every=16, wandb_artifacts=True)
        _, league, _ = train(venv, cfg, 48, save_dir=tmp_path / "league")
        venv.close()
    finally:
        run.finish()
    assert [a.name for a in league.artifacts] == ["league-run-league", "league-run-league"]
    assert [a.metadata["league_name"] for a in league.artifacts] == ["snapshot@16", "snapshot@32"]
    assert sorted(league.artifacts[1].manifest.entries) == ["snapshot_32.json", "snapshot_32.zip"]


# --------------------------------------------------------------------------- episode boundaries
class ActRecorder:
    """Wraps every pool member's ``act_async``: which member acted for which rows, with which starts."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, np.ndarray, np.ndarray]] = []
        self.batch = 0

    def wrap(self, pool: nw.NPCPool) -> None:
        for m in pool.members:
            if getattr(m, "_recorded", False):
                continue
            inner = m.act_async

            def act_async(obs: np.ndarray, rows: np.ndarray, start: np.ndarray, _m: Any = m, _inner: Any = inner):
                self.calls.append((self.batch, _m.name, np.array(rows), np.array(start)))
                return _inner(obs, rows, start)

            m.act_async = act_async
            m._recorded = True


def test_an_env_changes_npc_only_at_its_episode_boundary_with_fresh_state() -> None:
    venv = scripted_venv(max_steps=(3, 5, 7))  # 3 envs ending at different steps
    cfg = LeagueConfig(enabled=True, snapshot_every=12, window=1, keep_initial_npc=False, play_latest_ratio=1.0)
    model = ppo(venv, n_steps=4)  # a rollout is 12 steps: a snapshot at every rollout start
    league = LeagueCallback(cfg, device="cpu")
    acts = ActRecorder()

    class Recorder(PoolRecorder):
        def _on_rollout_start(self) -> None:
            super()._on_rollout_start()
            acts.wrap(self.league.pool)

        def _on_step(self) -> bool:
            acts.batch += 1
            return super()._on_step()

    rec = Recorder(league)
    model.learn(12 * 8, callback=CallbackList([league, rec]))
    assert league.num_snapshots == 7

    playing, ended = np.array(rec.playing), np.array(rec.ended)
    changed = playing[1:] != playing[:-1]
    assert changed.sum() >= 10  # the opponents did change many times...
    assert not (changed & ~ended[1:]).any()  # ...but only where that env's episode had just ended
    for t in range(1, len(playing)):  # and the episode info names the member that played it
        for e, npc in rec.episode_npc[t].items():
            assert npc == playing[t - 1][e]

    # NPC state: the first action of a member in an env after a swap is an episode start.
    n_rows = 1  # one NPC agent per env
    last: dict[int, tuple[int, str]] = {}
    switches = 0
    for batch, name, rows, start in acts.calls:
        for r, s in zip(rows, start):
            e = r // n_rows
            prev = last.get(e)
            if prev is not None and prev[0] < batch and prev[1] != name:
                assert s, f"env {e} switched from {prev[1]} to {name} without an episode start"
                switches += 1
            last[e] = (batch, name)
    assert switches >= 10
    venv.close()


# --------------------------------------------------------------------------- Elo
def test_elo_updates_from_known_outcomes() -> None:
    assert elo_expected(1200, 1200) == 0.5
    assert elo_update(1200.0, 1200.0, 1.0, 32.0) == (1216.0, 1184.0)
    league = LeagueCallback(LeagueConfig(snapshot_every=10, elo_k=32.0, initial_elo=1200.0))
    league.record_episode("a", "win")
    assert (league.learner_elo, league.records["a"].elo) == (1216.0, 1184.0)
    league.record_episode("b", "loss")  # 1216 vs 1200: expected 0.5230
    assert league.learner_elo == pytest.approx(1199.263693206478, abs=1e-9)
    assert league.records["b"].elo == pytest.approx(1216.736306793522, abs=1e-9)
    league.record_episode("a", "draw")
    assert league.learner_elo == pytest.approx(1198.5612260339533, abs=1e-9)
    assert league.records["a"].elo == pytest.approx(1184.7024671725246, abs=1e-9)
    assert (league.records["a"].wins, league.records["a"].draws, league.records["b"].losses) == (1, 1, 1)
    assert league.win_rate() == pytest.approx(0.5)


def test_elo_from_real_episodes_is_zero_sum() -> None:
    venv = scripted_venv(reward_fn=learner_wins)
    _, league, _ = train(venv, LeagueConfig(enabled=True, snapshot_every=32, elo_k=16.0), 96)
    assert league.learner_elo > 1200 and all(r.wins == r.games for r in league.records.values())
    assert league.num_episodes == sum(r.games for r in league.records.values()) > 0
    assert league.window == ["snapshot@32", "snapshot@64"]
    # Every game moves rating from the loser to the winner; a snapshot joins with the learner's rating.
    snap = league.records["snapshot@64"]
    assert snap.start_elo > league.records["snapshot@32"].start_elo > 1200 and snap.elo < snap.start_elo
    total = league.learner_elo + sum(r.elo for r in league.records.values())
    assert total == pytest.approx(1200.0 + sum(r.start_elo for r in league.records.values()))
    venv.close()


# --------------------------------------------------------------------------- refusals and config
class PadTo(BaseParallelWrapper):
    """Pads every agent's observation to one Box, as padding wrappers do for asymmetric games."""

    def __init__(self, env: Any, size: int) -> None:
        super().__init__(env)
        self.metadata = env.metadata
        self._space = spaces.Box(-np.inf, np.inf, (size,), np.float32)

    def observation_space(self, agent: Any) -> spaces.Box:
        return self._space

    def _pad(self, obs: dict) -> dict:
        return {a: np.pad(o, (0, self._space.shape[0] - o.shape[0])) for a, o in obs.items()}

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._pad(obs), infos

    def step(self, actions: dict) -> tuple:
        obs, *rest = self.env.step(actions)
        return (self._pad(obs), *rest)


def league_error(env_fn: Callable[[], Any], **kwargs: Any) -> str:
    venv = nw.make_vec_env(env_fn, num_envs=1, device="cpu", **kwargs)
    model = ppo(venv, n_steps=4)
    with pytest.raises(ValueError) as info:
        model.learn(4, callback=LeagueCallback(LeagueConfig(snapshot_every=4), device="cpu"))
    venv.close()
    return str(info.value)


def test_league_refuses_games_without_a_symmetric_opponent() -> None:
    from mpe2 import simple_spread_v3, simple_tag_v3

    msg = league_error(lambda: simple_tag_v3.parallel_env(max_cycles=5), training_agents=["adversary_*"])
    assert "must share the training agents' spaces" in msg and "agent_0" in msg and "simple_tag" in msg
    assert "Box(-inf, inf, (14,), float32)" in msg and "(16,)" in msg

    msg = league_error(lambda: PadTo(simple_tag_v3.parallel_env(max_cycles=5), 16), training_agents=["adversary_*"])
    assert "simple_tag_v3" in msg and "predators and prey play different roles" in msg

    msg = league_error(lambda: simple_spread_v3.parallel_env(max_cycles=5), training_agents_pct=0.5)
    assert "simple_spread_v3" in msg and "cooperative" in msg and "there is no opponent" in msg
    spread = nw.make_vec_env(lambda: simple_spread_v3.parallel_env(max_cycles=5), device="cpu")
    with pytest.raises(ValueError, match="Turn trainer.league.enabled off for this env"):
        check_league_venv(spread)  # the same check, before any model exists (for the CLI)
    spread.close()

    # Roles told apart by the spaces before a padding wrapper, for an env the league does not know.
    asym = {"b_0": (spaces.Box(-np.inf, np.inf, (2,), np.float32), spaces.Discrete(4))}
    msg = league_error(lambda: PadTo(ScriptedParallelEnv(agents=["a_0", "b_0"], per_agent_spaces=asym), 3),
                       training_agents=["a_0"])
    assert "before the env's wrappers NPC agents ['b_0']" in msg and "roles differ" in msg

    msg = league_error(lambda: ScriptedParallelEnv(agents=["a_0", "a_1"]), training_agents_pct=1.0)
    assert "every agent trains" in msg

    venv = scripted_venv()
    model = PPO("MlpPolicy", VecNormalize(venv), n_steps=4, batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="VecNormalize"):
        model.learn(8, callback=LeagueCallback(LeagueConfig(snapshot_every=4), device="cpu"))
    with pytest.raises(ValueError, match="VecNormalize"):  # also when the env is named
        model.learn(8, callback=LeagueCallback(LeagueConfig(snapshot_every=4), venv=venv, device="cpu"))
    other = scripted_venv()  # e.g. the evaluation env by mistake
    model = ppo(venv, n_steps=4)
    with pytest.raises(ValueError, match="not the one the model trains in"):
        model.learn(8, callback=LeagueCallback(LeagueConfig(snapshot_every=4), venv=other, device="cpu"))
    other.close()
    venv.close()


def test_league_config_validation() -> None:
    assert LeagueConfig().enabled is False
    cfg = LeagueConfig.from_dict(OmegaConf.create({"enabled": True, "snapshot_every": 1000, "window": 3}))
    assert (cfg.snapshot_every, cfg.window, cfg.sampling) == (1000, 3, "uniform")
    structured = OmegaConf.merge(OmegaConf.structured(LeagueConfig), {"snapshot_when_win_rate": 0.6})
    assert LeagueConfig.from_dict(structured).snapshot_when_win_rate == 0.6
    with pytest.raises(ValueError, match="never takes a snapshot: set trainer.league.snapshot_every"):
        LeagueConfig.from_dict({"enabled": True})
    with pytest.raises(ValueError, match="unknown key.*'snapshot_evry'"):
        LeagueConfig.from_dict({"snapshot_evry": 10})
    with pytest.raises(ValueError, match="sampling must be one of uniform, prioritized"):
        LeagueConfig.from_dict({"snapshot_every": 10, "sampling": "pfsp"})
    with pytest.raises(ValueError, match="play_latest_ratio must be a probability"):
        LeagueConfig.from_dict({"snapshot_every": 10, "play_latest_ratio": 1.5})
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        LeagueConfig.from_dict({"snapshot_every": 10, "window": 0})
    with pytest.raises(ValueError, match="wandb_artifacts logs the saved snapshots, but"):
        LeagueConfig.from_dict({"snapshot_every": 10, "save_snapshots": False, "wandb_artifacts": True})
    with pytest.raises(ValueError, match="never takes a snapshot"):
        LeagueCallback({"enabled": False})  # the callback always needs a schedule


# --------------------------------------------------------------------------- round robin
def test_fit_ratings() -> None:
    score = np.array([[0.0, 3.0], [1.0, 0.0]])
    games = np.array([[0, 4], [4, 0]])
    a, b = fit_ratings(score, games)
    assert a > 1200 > b and a - 1200 == pytest.approx(1200 - b)  # anchored symmetrically
    even = fit_ratings(np.array([[0.0, 2.0], [2.0, 0.0]]), games)
    assert even == pytest.approx([1200.0, 1200.0])


def test_round_robin_ranks_players_and_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    def env_fn() -> ScriptedParallelEnv:  # the bigger action wins every step
        return ScriptedParallelEnv(agents=["a_0", "b_0"], max_steps=3, reward_fn=lambda ag, i, t, a: float(a))

    space, act = spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(4)
    players = {f"c{k}": ConstantPolicy(space, act, action=k, name=f"c{k}") for k in range(4)}
    seen: list[tuple[int, int]] = []
    result = round_robin(players, env_fn, episodes=3, num_envs=2, training_agents=["a_0"], device="cpu",
                         observe=lambda done, total: seen.append((done, total)))
    # Progress over all 12 pairings' 36 episodes: it only grows, and ends complete.
    assert {total for _, total in seen} == {36} and seen[-1] == (36, 36)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert {done for done, _ in seen} >= {0, 3, 33}  # each pairing's start, in order
    order = sorted(result.names, key=lambda n: -result.ratings[n])
    assert order == ["c3", "c2", "c1", "c0"]
    assert (result.games == 6 * (1 - np.eye(4))).all()  # 3 episodes on each side per pair
    assert result.wins[3].sum() == 18 and result.losses[0].sum() == 18 and result.draws.sum() == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["rank", "player", "elo"] and "c3" in out.splitlines()[1]


def test_round_robin_counts_every_env_equally_however_long_its_episodes() -> None:
    made = itertools.count()

    def env_fn() -> ScriptedParallelEnv:
        # Every other env has short episodes the bigger action wins, the others long ones it loses.
        short = next(made) % 2 == 1
        return ScriptedParallelEnv(agents=["a_0", "b_0"], max_steps=2 if short else 10,
                                   reward_fn=lambda ag, i, t, a: float(a if short else -a))

    space, act = spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(4)
    players = {f"c{k}": ConstantPolicy(space, act, action=k, name=f"c{k}") for k in range(2)}
    result = round_robin(players, env_fn, episodes=4, num_envs=2, training_agents=["a_0"], device="cpu",
                         print_table=False)
    assert next(made) == 5  # the probe, then one short and one long env per pairing
    assert result.wins.tolist() == [[0, 4], [4, 0]]  # half short, half long, on both sides


def test_round_robin_gives_up_after_max_steps_instead_of_hanging() -> None:
    def env_fn() -> ScriptedParallelEnv:  # episodes of 50 steps: none ends within 10
        return ScriptedParallelEnv(agents=["a_0", "b_0"], max_steps=50)

    space, act = spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(4)
    players = {f"c{k}": ConstantPolicy(space, act, action=k, name=f"c{k}") for k in range(2)}
    kwargs: dict[str, Any] = {"episodes": 2, "num_envs": 2, "training_agents": ["a_0"], "device": "cpu"}
    message = r"no episode ended in the last max_steps=10 vector steps \(0 of 2 played\); .*time limit"
    with pytest.raises(RuntimeError, match=message):
        round_robin(players, env_fn, max_steps=10, **kwargs)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        round_robin(players, env_fn, max_steps=0, **kwargs)
    # The bound is on steps without an episode end, not on the pairing: 2 x 50-step episodes per env.
    result = round_robin(players, env_fn, max_steps=50, print_table=False, **{**kwargs, "episodes": 4})
    assert (result.games == 8 * (1 - np.eye(2))).all()


def test_round_robin_plays_copies_of_one_network_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def env_fn() -> ScriptedParallelEnv:
        return ScriptedParallelEnv(agents=["a_0", "b_0"], max_steps=3)

    venv = nw.make_vec_env(env_fn, num_envs=1, training_agents=["a_0"], seed=0, device="cpu")
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    (tmp_path / "checkpoints").mkdir()
    model.save(tmp_path / "checkpoints" / "step_8.zip")
    model.save(tmp_path / "final.zip")  # the same network, saved again (its zip's bytes differ)
    model.learn(16)
    model.save(tmp_path / "checkpoints" / "step_24.zip")
    venv.close()
    with caplog.at_level(logging.WARNING, logger="npc_wrapper.league"):
        result = round_robin(tmp_path, env_fn, episodes=1, num_envs=1, training_agents=["a_0"], device="cpu",
                             print_table=False)
    assert result.names == ["checkpoints/step_24", "final"]
    assert "checkpoints/step_8.zip holds the same network as final.zip; it plays once, as final" in caplog.text


@pytest.mark.timeout(60)
def test_round_robin_bound_is_not_reset_by_envs_done_with_their_share() -> None:
    made = itertools.count()

    def env_fn() -> ScriptedParallelEnv:  # the probe, then per pairing: a 1-step env and a 500-step one
        return ScriptedParallelEnv(agents=["a_0", "b_0"], max_steps=1 if next(made) % 2 == 1 else 500)

    space, act = spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Discrete(4)
    players = {f"c{k}": ConstantPolicy(space, act, action=k, name=f"c{k}") for k in range(2)}
    with pytest.raises(NoEpisodeEnds, match=r"no episode ended in the last max_steps=10 .*\(1 of 2 played\)"):
        round_robin(players, env_fn, episodes=2, num_envs=2, training_agents=["a_0"], device="cpu",
                    max_steps=10)


def test_ppo_on_magent2_battle_with_the_league_logs_ratings(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from magent2.environments import battle_v4

    def env_fn() -> Any:
        return battle_v4.parallel_env(map_size=12, max_cycles=20)  # 2 red vs 2 blue

    venv = nw.make_vec_env(env_fn, num_envs=2, training_agents=["red_*"], npc="random", seed=0, device="cpu")
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, policy_kwargs={"net_arch": [32]},
                device="cpu", seed=0)  # a rollout: 16 steps x 4 red slots = 64
    model.set_logger(configure(str(tmp_path / "logs"), ["csv", "tensorboard"]))
    cfg = LeagueConfig(enabled=True, snapshot_every=64, window=5, play_latest_ratio=0.5)
    league = LeagueCallback(cfg, save_dir=tmp_path / "league", device="cpu")
    model.learn(64 * 3, callback=league)
    assert league.window == ["snapshot@64", "snapshot@128"] and league.num_episodes > 0
    assert league.active_members() == ["random", "snapshot@64", "snapshot@128"]

    with open(tmp_path / "logs" / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    last = rows[-1]
    for key in ("league/elo_learner", "league/pool_size", "league/win_rate", "league/elo/random",
                "league/elo/snapshot@64"):
        assert last[key] != "", key
    assert float(last["league/elo_learner"]) == pytest.approx(league.learner_elo)
    assert [int(float(r["league/pool_size"])) for r in rows] == [1, 2, 3]
    assert rows[0]["league/elo/snapshot@64"] == "" != rows[1]["league/elo/snapshot@64"]  # joined at 64
    venv.close()

    # The saved snapshots play a round robin on the same game through the checkpoint loader.
    result = round_robin(tmp_path / "league", env_fn, episodes=2, num_envs=2, training_agents=["red_*"],
                         device="cpu")
    assert result.names == ["snapshot_128", "snapshot_64"]
    assert (result.games == 4 * (1 - np.eye(2))).all()
    assert "snapshot_64" in capsys.readouterr().out

"""The self-play league's callback: the NPC pool grows from the learner's own snapshots while it trains.

:class:`LeagueCallback` is a Stable-Baselines3 callback on top of the NPC pool of an
:class:`~npc_wrapper.SB3VecEnv`. Between rollouts it freezes a copy of the learner's current policy
(on a step schedule and/or when the learner's recent win rate passes a threshold), adds it to the
NPC pool, keeps a window of the most recent snapshots, and sets the pool's sampling weights: the
newest snapshot plays a fixed share of the episodes, the other members share the rest uniformly or
by how often they still beat the learner (PFSP-style prioritisation). Every env keeps its NPC
until its own episode ends (the engine draws a member at each episode start), so a snapshot never
replaces an opponent mid-episode, and an evicted member leaves the pool only once no env plays it.

Ratings: Elo per pool member and for the learner, updated from every episode's outcome and logged
to the SB3 logger each rollout (:mod:`~npc_wrapper.league.elo`). Snapshots and ``league.json`` are
written atomically (:mod:`npc_wrapper.checkpoints.store`), so a run killed mid-save leaves no torn
file for a resume to read.

The league needs a game: NPC agents that are the learner's opponents and share its observation and
action spaces (magent2 battle with ``training_agents=["red_*"]``, MettaGrid arena). It refuses
envs where they do not (:func:`~npc_wrapper.league.checks.check_league_layout`).
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from npc_wrapper.checkpoints.store import atomic_save, atomic_write_json, snapshot_path
from npc_wrapper.config import LeagueConfig
from npc_wrapper.engine import NPCEngine
from npc_wrapper.errors import saving
from npc_wrapper.evaluation import episodes_from_infos
from npc_wrapper.frontends.sb3 import SB3VecEnv
from npc_wrapper.league.checks import check_league_venv, check_wrappers, find_npc_vec_env
from npc_wrapper.league.elo import OUTCOME_SCORE, elo_update
from npc_wrapper.npcs.policies import NPCPolicy, SB3Policy
from npc_wrapper.npcs.pool import NPCPool
from npc_wrapper.npcs.resolve import as_npc_policy

__all__ = ["LeagueCallback", "MemberRecord"]


@dataclass
class MemberRecord:
    """What the league knows about one pool member (keyed by its name).

    :param name: the member's name (``info["npc_wrapper/episode"]["npc"]``)
    :param elo: its current rating
    :param recent: the learner's last ``win_rate_episodes`` scores against it
    """

    name: str
    elo: float
    #: The rating it joined the league with.
    start_elo: float = float("nan")
    wins: int = 0
    draws: int = 0
    losses: int = 0
    recent: collections.deque = field(default_factory=collections.deque)
    #: ``num_timesteps`` when the snapshot was taken (``None`` for the initial NPCs).
    num_timesteps: int | None = None
    #: Where the snapshot was saved (``None`` when not saved).
    path: str | None = None

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses

    def learner_score(self) -> float | None:
        """The learner's mean score over its recent games against this member (``None``: none played)."""
        return float(np.mean(self.recent)) if self.recent else None


class LeagueCallback(BaseCallback):
    """Grows the NPC pool from the learner's snapshots during ``model.learn`` (see the module doc).

    Snapshots are taken at rollout starts (never during a rollout): a copy of ``model.policy``
    with its current weights and no optimizer state, moved to ``device``, in eval mode, frozen, wrapped in an
    :class:`~npc_wrapper.SB3Policy` named ``snapshot@<num_timesteps>`` and added to NPC group 0's
    pool. Ratings and win rates are updated from ``info["npc_wrapper/episode"]`` at every step.

    Logged every rollout: ``league/elo_learner``, ``league/elo/<member>`` for each member in the
    pool, ``league/pool_size`` (members that can be drawn), ``league/win_rate`` (the learner's score
    over its last ``win_rate_episodes`` episodes), ``league/snapshots`` and ``league/episodes``.

    :param config: a :class:`LeagueConfig` or a mapping of its keys
    :param venv: the :class:`~npc_wrapper.SB3VecEnv` (default: found under the model's env wrappers)
    :param save_dir: where snapshots (``snapshot_<steps>.zip`` + ``.json``; ``snapshot_<steps>_2.zip``
        for a second one at the same step) and ``league.json``
        are written (``None``: nothing is written)
    :param device: where the snapshots run (``"auto"``: CUDA when available)
    :param deterministic: snapshots take their most likely action instead of sampling
    :param resume: continue the league saved in ``save_dir`` (ratings, counts, and the window's
        snapshots back in the pool) when it holds a ``league.json``; start a new one otherwise
    :param verbose: 1 prints a line per snapshot
    """

    def __init__(
        self,
        config: LeagueConfig | Mapping[str, Any],
        venv: SB3VecEnv | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device = "auto",
        deterministic: bool = False,
        resume: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        cfg = config if isinstance(config, LeagueConfig) else LeagueConfig.from_dict(config)
        replace(cfg, enabled=True).validate()  # the callback always runs the league: it needs a schedule
        self.config = cfg
        self.venv = venv
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.device = device
        self.deterministic = deterministic
        self.resume = resume
        self.engine: NPCEngine | None = None
        self.learner_elo = float(cfg.initial_elo)
        #: Every member the league has seen, by name (evicted ones stay here with their final rating).
        self.records: dict[str, MemberRecord] = {}
        #: Names of the snapshots in the window, oldest first.
        self.window: list[str] = []
        #: Names of the members the run started with.
        self.initial: list[str] = []
        self.num_snapshots = 0
        self.num_episodes = 0
        self._evicted: dict[int, NPCPolicy] = {}  # by id: leave the pool once no env plays them
        self._latest: NPCPolicy | None = None
        self._recent = collections.deque(maxlen=cfg.win_rate_episodes)  # for logging
        self._since_snapshot = collections.deque(maxlen=cfg.win_rate_episodes)  # for the win-rate trigger
        self._next_step_snapshot: int | None = None
        #: The wandb artifacts logged for the saved snapshots (``wandb_artifacts``).
        self.artifacts: list[Any] = []

    # ------------------------------------------------------------------ setup
    @property
    def pool(self) -> NPCPool:
        """The NPC pool the league manages (NPC group 0's)."""
        assert self.engine is not None, "the league callback is not attached to a model yet"
        return self.engine.pools[0]

    def _init_callback(self) -> None:
        if self.engine is not None:  # a second learn() call continues the same league
            self._schedule()
            return
        venv, wrappers = find_npc_vec_env(self.model.get_env(), self.venv)
        check_wrappers(wrappers)
        check_league_venv(venv)
        engine = venv.engine
        names = [m.name for m in engine.pools[0].members]
        if len(set(names)) != len(names):
            raise ValueError(
                f"the league keeps ratings by NPC name, but the starting NPC pool has duplicate names "
                f"{names}; give each pool member its own name"
            )
        self.engine = engine
        self.initial = names
        for n in names:
            self.records[n] = self._record(n, float(self.config.initial_elo))
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:
                self._restore()
        self._schedule()

    def _schedule(self) -> None:
        """Set the step of the next scheduled snapshot from the model's step count."""
        every = self.config.snapshot_every
        if not every:
            self._next_step_snapshot = None
            return
        nxt = (self.model.num_timesteps // every + 1) * every
        # A later one means the count went back (learn() with reset_num_timesteps=True): start over.
        if self._next_step_snapshot is None or self._next_step_snapshot > nxt:
            self._next_step_snapshot = nxt

    def _restore(self) -> None:
        """Continue the league saved in ``save_dir/league.json``: ratings, counts, the window's snapshots."""
        path = self.save_dir / "league.json"
        if not path.is_file():
            return  # the run had no league yet: it starts now
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            members = {m["name"]: m for m in state["members"]}
            window = [str(n) for n in state["window"]]
            self.learner_elo = float(state["learner_elo"])
            self.num_episodes, self.num_snapshots = int(state["episodes"]), int(state["snapshots"])
            # A snapshot due when the state was saved (a run that ended at a multiple) is taken now.
            due = state.get("next_step_snapshot")
            self._next_step_snapshot = None if due is None else int(due)
            # The win-rate trigger counts the episodes since the last snapshot across the resume.
            self._since_snapshot.extend(float(x) for x in state.get("since_snapshot", []))
            self._recent.extend(float(x) for x in state.get("recent", []))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"cannot resume the league from {path}: {type(e).__name__}: {e}; fix or remove the file"
            ) from e
        for name, m in members.items():
            rec = self.records.get(name) or self._record(name, float(m["elo"]))
            rec.elo, rec.start_elo = float(m["elo"]), float(m.get("start_elo", m["elo"]))
            rec.wins, rec.draws, rec.losses = int(m["wins"]), int(m["draws"]), int(m["losses"])
            rec.num_timesteps, rec.path = m.get("num_timesteps"), m.get("path")
            rec.recent.extend(float(x) for x in m.get("recent", []))
            self.records[name] = rec
        group = self.engine.layout.groups[0]
        for name in window:
            rec = self.records[name]
            file = self.save_dir / Path(rec.path).name if rec.path else None
            if file is None or not file.is_file():
                raise ValueError(
                    f"cannot resume the league: snapshot {name} of {path} was not saved ({file}); the "
                    "window's snapshots are needed to rebuild the pool (trainer.league.save_snapshots must "
                    "stay true)"
                )
            npc = as_npc_policy(str(file), group.observation_space, group.action_space,
                                device=self.device, deterministic=self.deterministic)
            npc.name = name
            self.engine.add_npc(npc, group=0, weight=0.0)
            self.window.append(name)
            self._latest = npc
        if self.window and not self.config.keep_initial_npc:
            for member in self.pool.members:
                if member.name in self.initial:
                    self._evict(member)
        self._reweight()

    def _record(self, name: str, elo: float, **kwargs: Any) -> MemberRecord:
        recent = collections.deque(maxlen=self.config.win_rate_episodes)
        return MemberRecord(name, elo, elo, recent=recent, **kwargs)

    # ------------------------------------------------------------------ per step
    def _on_step(self) -> bool:
        infos = self.locals.get("infos")
        if not infos:
            return True
        for _, episode in episodes_from_infos(infos, self.engine.slots):
            self.record_episode(episode["npc"], episode["outcome"])
        return True

    def record_episode(self, npc: str, outcome: str) -> None:
        """Update ratings and win rates with one finished episode against member ``npc``.

        :param npc: the member's name
        :param outcome: ``"win"``, ``"draw"`` or ``"loss"`` (the learner's)
        """
        score = OUTCOME_SCORE[outcome]
        rec = self.records.get(npc)
        if rec is None:  # a member added to the pool by someone else
            rec = self.records[npc] = self._record(npc, float(self.config.initial_elo))
        self.learner_elo, rec.elo = elo_update(self.learner_elo, rec.elo, score, self.config.elo_k)
        if outcome == "win":
            rec.wins += 1
        elif outcome == "draw":
            rec.draws += 1
        else:
            rec.losses += 1
        rec.recent.append(score)
        self._recent.append(score)
        self._since_snapshot.append(score)
        self.num_episodes += 1

    # ------------------------------------------------------------------ between rollouts
    def _on_rollout_start(self) -> None:
        if self._snapshot_due():
            self.take_snapshot()
        self._remove_unused()
        self._reweight()

    def _on_rollout_end(self) -> None:
        self._log()

    def _on_training_end(self) -> None:
        self.save_state()

    def win_rate(self) -> float | None:
        """The learner's mean score over its last ``win_rate_episodes`` episodes (``None``: none yet)."""
        return float(np.mean(self._recent)) if self._recent else None

    def _snapshot_due(self) -> bool:
        n = self.model.num_timesteps
        if self._next_step_snapshot is not None and n >= self._next_step_snapshot:
            return True
        threshold = self.config.snapshot_when_win_rate
        return (
            threshold is not None
            and len(self._since_snapshot) >= self.config.win_rate_episodes
            and float(np.mean(self._since_snapshot)) >= threshold
        )

    def take_snapshot(self) -> NPCPolicy:
        """Freeze the learner's current policy into the pool now (call only between rollouts); returns it."""
        model, engine, cfg = self.model, self.engine, self.config
        steps = int(model.num_timesteps)
        name = f"snapshot@{steps}"
        if name in self.records:
            name = f"{name}#{sum(n.startswith(name) for n in self.records) + 1}"
        group = engine.layout.groups[0]
        npc = SB3Policy(model.policy, group.observation_space, group.action_space, device=self.device,
                        deterministic=self.deterministic, name=name)
        engine.add_npc(npc, group=0, weight=0.0)
        rec = self.records[name] = self._record(name, self.learner_elo, num_timesteps=steps)
        if self.save_dir is not None and cfg.save_snapshots:
            rec.path = str(self._save(name, steps))
        self._latest = npc
        self.window.append(name)
        self.num_snapshots += 1
        self._since_snapshot.clear()
        if cfg.snapshot_every:
            self._next_step_snapshot = (steps // cfg.snapshot_every + 1) * cfg.snapshot_every
        members = {m.name: m for m in self.pool.members}
        while len(self.window) > cfg.window:
            self._evict(members[self.window.pop(0)])
        if not cfg.keep_initial_npc:
            for n in self.initial:
                if n in members:
                    self._evict(members[n])
        self._remove_unused()
        self._reweight()
        if self.verbose:
            print(
                f"league: {name} joined the NPC pool (elo {rec.elo:.0f}; {len(self.window)} snapshots in "
                "the window)"
            )
        self.save_state()
        return npc

    def _evict(self, member: NPCPolicy) -> None:
        """Stop drawing ``member``; it leaves the pool once no env plays it any more."""
        self._evicted[id(member)] = member

    def _remove_unused(self) -> None:
        """Drop evicted members that no env is playing, keeping every env's current member."""
        if not self._evicted:
            return
        pool = self.pool
        in_use = set(self.engine.npc_playing(0).tolist())
        for m in range(len(pool.members) - 1, -1, -1):  # descending, so lower indices stay valid
            member = pool.members[m]
            if id(member) in self._evicted and m not in in_use:
                self.engine.remove_npc(m, 0)
                del self._evicted[id(member)]

    def _reweight(self) -> None:
        """Set the pool's sampling weights from the config (once a snapshot exists)."""
        if self._latest is None:
            return
        cfg, pool = self.config, self.pool
        members = pool.members
        latest = next(i for i, m in enumerate(members) if m is self._latest)
        others = [i for i, m in enumerate(members) if i != latest and id(m) not in self._evicted]
        w = np.zeros(len(members), dtype=np.float64)
        if not others:
            w[latest] = 1.0
        else:
            w[latest] = cfg.play_latest_ratio
            prio = np.ones(len(others))
            if cfg.sampling == "prioritized":
                scores = [self.records[members[i].name].learner_score() for i in others]
                prio = np.array([(1.0 - (0.5 if s is None else s)) ** cfg.priority_power for s in scores])
                if prio.sum() <= 0:  # the learner beats every one of them: no preference left
                    prio = np.ones(len(others))
            w[others] = (1.0 - cfg.play_latest_ratio) * prio / prio.sum()
        pool.set_weights(w)

    def active_members(self) -> list[str]:
        """Names of the members that can be drawn now (weight > 0, or the only member)."""
        pool = self.pool
        if pool.weights is None or len(pool.members) == 1:
            return [m.name for m in pool.members]
        return [m.name for m, w in zip(pool.members, pool.weights) if w > 0]

    # ------------------------------------------------------------------ output
    def _log(self) -> None:
        if self.engine is None:
            return
        log = self.logger
        log.record("league/elo_learner", self.learner_elo)
        for name in self.active_members():
            log.record(f"league/elo/{name}", self.records[name].elo)
        log.record("league/pool_size", len(self.active_members()))
        log.record("league/snapshots", self.num_snapshots)
        log.record("league/episodes", self.num_episodes)
        rate = self.win_rate()
        if rate is not None:
            log.record("league/win_rate", rate)

    def state(self) -> dict[str, Any]:
        """The league as plain data (what ``league.json`` holds)."""
        active = set(self.active_members()) if self.engine is not None else set()
        weights = {}
        if self.engine is not None and self.pool.weights is not None:
            weights = {m.name: float(w) for m, w in zip(self.pool.members, self.pool.weights)}
        return {
            "num_timesteps": int(self.model.num_timesteps) if self.model is not None else 0,
            "learner_elo": self.learner_elo,
            "episodes": self.num_episodes,
            "snapshots": self.num_snapshots,
            "next_step_snapshot": self._next_step_snapshot,
            "since_snapshot": list(self._since_snapshot),
            "recent": list(self._recent),
            "window": list(self.window),
            "members": [
                {
                    "name": r.name, "elo": r.elo, "start_elo": r.start_elo,
                    "wins": r.wins, "draws": r.draws, "losses": r.losses,
                    "num_timesteps": r.num_timesteps, "path": r.path, "in_pool": r.name in active,
                    "weight": weights.get(r.name, 0.0), "initial": r.name in self.initial,
                    "recent": list(r.recent),
                }
                for r in self.records.values()
            ],
            "config": asdict(self.config),
        }

    def save_state(self) -> None:
        """Write ``league.json`` now, atomically (done at every snapshot and at the end of training; no-op
        without ``save_dir``)."""
        if self.save_dir is not None:
            path = self.save_dir / "league.json"
            with saving("the league's state", path):
                atomic_write_json(path, self.state())

    def _save(self, name: str, steps: int) -> Path:
        # The checkpoint loader reads <stem>.json as the checkpoint's metadata (selectors sort by it).
        meta = {"league_name": name, "num_timesteps": steps, "step": steps, "elo": self.learner_elo}
        path = snapshot_path(self.save_dir, name)
        with saving(f"league snapshot {name}", path):
            atomic_save(self.model, path, meta)
        if self.config.wandb_artifacts:
            artifact = self._log_artifact(path, meta)
            if artifact is not None:
                self.artifacts.append(artifact)
        return path

    @staticmethod
    def _log_artifact(path: Path, meta: dict[str, Any]) -> Any:
        """Log a saved snapshot (zip + sidecar) as a version of the run's ``<run>-league`` model artifact."""
        try:
            import wandb
        except ImportError:
            return None
        run = wandb.run
        if run is None:
            return None
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", str(run.name or run.id))
        artifact = wandb.Artifact(f"{base}-league", type="model", metadata=meta)
        artifact.add_file(str(path))
        artifact.add_file(str(path.with_suffix(".json")))
        return run.log_artifact(artifact, aliases=[f"step-{meta['num_timesteps']}"])

"""Self-play league: the NPC pool grows from the learner's own snapshots while it trains.

:class:`LeagueCallback` is a Stable-Baselines3 callback on top of the NPC pool of an
:class:`~npc_wrapper.NPCVecEnv`. Between rollouts it freezes a copy of the learner's current policy
(on a step schedule and/or when the learner's recent win rate passes a threshold), adds it to the
NPC pool, keeps a window of the most recent snapshots, and sets the pool's sampling weights: the
newest snapshot plays a fixed share of the episodes, the other members share the rest uniformly or
by how often they still beat the learner (PFSP-style prioritisation). Every env keeps its NPC
until its own episode ends (the engine draws a member at each episode start), so a snapshot never
replaces an opponent mid-episode, and an evicted member leaves the pool only once no env plays it.

Ratings: Elo per pool member and for the learner, updated from every episode's outcome and logged
to the SB3 logger each rollout. :func:`round_robin` plays saved checkpoints against each other and
fits ratings to all the games at once.

The league needs a game: NPC agents that are the learner's opponents and share its observation and
action spaces (magent2 battle with ``training_agents=["red_*"]``, MettaGrid arena). It refuses
envs where they do not (:func:`check_league_layout`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import numbers
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize, VecTransposeImage

from npc_wrapper.agents import AgentLayout, build_layout
from npc_wrapper.engine import EPISODE_KEY, NPCEngine
from npc_wrapper.policies import NPCPolicy, SB3Policy, as_npc_policy
from npc_wrapper.pool import NPCPool
from npc_wrapper.frontends.sb3 import SB3VecEnv as NPCVecEnv

logger = logging.getLogger(__name__)

__all__ = [
    "LeagueConfig",
    "LeagueCallback",
    "MemberRecord",
    "SAMPLING_MODES",
    "OUTCOME_SCORE",
    "elo_expected",
    "elo_update",
    "check_league_layout",
    "check_league_venv",
    "round_robin",
    "RoundRobinResult",
    "fit_ratings",
    "NoEpisodeEnds",
    "MAX_EPISODE_STEPS",
]

#: How the pool members other than the newest snapshot are drawn.
SAMPLING_MODES = ("uniform", "prioritized")

#: Default bound on vector steps without an episode end when playing episodes (round robin, the CLI's
#: evaluations): far above common episode lengths (MettaGrid's 1000), and an env without one fails.
MAX_EPISODE_STEPS = 10_000


class NoEpisodeEnds(RuntimeError):
    """No episode that counts ended for the bound's number of vector steps: an env without a time limit."""

#: The learner's score for each episode outcome reported in ``info["npc_wrapper/episode"]``.
OUTCOME_SCORE = {"win": 1.0, "draw": 0.5, "loss": 0.0}

# Envs (by metadata name, version suffix stripped) whose NPC agents are not the learner's
# opponents in a symmetric game, even when padding wrappers give every agent one space.
_NOT_SYMMETRIC = {
    "simple": "it has a single agent",
    "simple_spread": "it is cooperative: the NPC agents are the learner's teammates, there is no opponent",
    "simple_reference": "it is cooperative: the NPC agents are the learner's teammates, there is no opponent",
    "simple_speaker_listener": "it is cooperative and the speaker and listener play different roles",
    "pistonball": "it is cooperative: the NPC pistons are the learner's teammates, there is no opponent",
    "cooperative_pong": "it is cooperative: the NPC paddle is the learner's teammate, there is no opponent",
    "knights_archers_zombies": "it is cooperative (the opponents are the env's zombies, not agents)",
    "pursuit": "it is cooperative (the evaders are driven by the env, not agents)",
    "multiwalker": "it is cooperative: the NPC walkers are the learner's teammates",
    "waterworld": "it is cooperative: the NPC pursuers are the learner's teammates",
    "simple_tag": "predators and prey play different roles (their unpadded observation spaces differ)",
    "simple_adversary": "the adversary and the good agents play different roles",
    "simple_crypto": "eve, bob and alice play different roles",
    "simple_push": "the adversary and the agent play different roles",
    "simple_world_comm": "the adversaries and the good agents play different roles",
}


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


@dataclass
class LeagueConfig:
    """The ``trainer.league`` config block (off by default).

    :param enabled: run the league (for configs; :class:`LeagueCallback` runs it whatever this says)
    :param snapshot_every: freeze a snapshot every this many learner steps (SB3 ``num_timesteps``,
        one per training slot), at the first rollout boundary at or after each multiple; ``None``
        or ``0``: not by steps
    :param snapshot_when_win_rate: also freeze one when the learner's score over the last
        ``win_rate_episodes`` episodes since the previous snapshot reaches this (win 1, draw 0.5,
        loss 0); ``None``: not by win rate
    :param win_rate_episodes: ``K``, the episodes the win rates are measured over
    :param window: how many snapshots stay in the pool (the oldest is evicted first)
    :param play_latest_ratio: probability that an episode's NPC is the newest snapshot
    :param keep_initial_npc: keep the NPC(s) the run started with (``checkpoint_npc``) in the pool
        once snapshots exist
    :param sampling: how the other members share ``1 - play_latest_ratio``: ``uniform``, or
        ``prioritized`` (weight ``(1 - learner's score against the member) ** priority_power``:
        opponents the learner still loses to are drawn more often)
    :param priority_power: the exponent of ``prioritized`` sampling
    :param elo_k: Elo K-factor (rating change per fully unexpected result)
    :param initial_elo: rating of the learner and of the initial NPCs at the start; a snapshot
        starts with the learner's rating at the time it is taken
    :param save_snapshots: also save each snapshot (SB3 ``.zip`` + JSON sidecar) in the run's
        league directory, when the callback is given one
    :param wandb_artifacts: log each saved snapshot as a wandb model artifact when a wandb run is active
    """

    enabled: bool = False
    snapshot_every: int | None = None
    snapshot_when_win_rate: float | None = None
    win_rate_episodes: int = 100
    window: int = 10
    play_latest_ratio: float = 0.5
    keep_initial_npc: bool = True
    sampling: str = "uniform"
    priority_power: float = 2.0
    elo_k: float = 32.0
    initial_elo: float = 1200.0
    save_snapshots: bool = True
    wandb_artifacts: bool = False

    @classmethod
    def from_dict(cls, d: Any) -> LeagueConfig:
        """Build and validate from a mapping or an OmegaConf ``DictConfig``; unknown keys are an error."""
        if type(d).__module__.startswith("omegaconf"):
            from omegaconf import OmegaConf

            d = OmegaConf.to_container(d, resolve=True)
        if not isinstance(d, Mapping):
            raise ValueError(f"trainer.league must be a mapping of config keys, got {type(d).__name__}: {d!r}")
        known = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in known]
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in trainer.league; known keys: {', '.join(known)}")
        cfg = cls(**dict(d))
        cfg.validate()
        return cfg

    def validate(self, where: str = "trainer.league") -> None:
        """Raise ``ValueError`` saying which key to change and how.

        :param where: the config path used in messages
        """
        if self.snapshot_every is not None and (not _is_int(self.snapshot_every) or self.snapshot_every < 0):
            raise ValueError(f"{where}.snapshot_every must be a number of steps >= 0 (0 or null: off), got {self.snapshot_every!r}")
        wr = self.snapshot_when_win_rate
        if wr is not None and (not _is_num(wr) or not 0.0 <= wr <= 1.0):
            raise ValueError(f"{where}.snapshot_when_win_rate must be a win rate in [0, 1] (null: off), got {wr!r}")
        if self.enabled and not self.snapshot_every and wr is None:
            raise ValueError(
                f"{where} is enabled but never takes a snapshot: set {where}.snapshot_every (steps) "
                f"and/or {where}.snapshot_when_win_rate (e.g. 0.6)"
            )
        for key in ("win_rate_episodes", "window"):
            v = getattr(self, key)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{where}.{key} must be an integer >= 1, got {v!r}")
        if not _is_num(self.play_latest_ratio) or not 0.0 <= self.play_latest_ratio <= 1.0:
            raise ValueError(f"{where}.play_latest_ratio must be a probability in [0, 1], got {self.play_latest_ratio!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"{where}.sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}")
        if not _is_num(self.priority_power) or self.priority_power < 0:
            raise ValueError(f"{where}.priority_power must be a number >= 0, got {self.priority_power!r}")
        if not _is_num(self.elo_k) or self.elo_k <= 0:
            raise ValueError(f"{where}.elo_k must be a positive number (Elo K-factor, e.g. 32), got {self.elo_k!r}")
        if not _is_num(self.initial_elo):
            raise ValueError(f"{where}.initial_elo must be a number (e.g. 1200), got {self.initial_elo!r}")
        for key in ("enabled", "keep_initial_npc", "save_snapshots", "wandb_artifacts"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{where}.{key} must be true or false, got {getattr(self, key)!r}")
        if self.wandb_artifacts and not self.save_snapshots:
            raise ValueError(
                f"{where}.wandb_artifacts logs the saved snapshots, but {where}.save_snapshots is false: "
                "set save_snapshots to true, or wandb_artifacts to false"
            )


# --------------------------------------------------------------------------- Elo
def elo_expected(rating: float, opponent: float) -> float:
    """Expected score of a player rated ``rating`` against one rated ``opponent``."""
    return 1.0 / (1.0 + 10.0 ** ((opponent - rating) / 400.0))


def elo_update(rating: float, opponent: float, score: float, k: float) -> tuple[float, float]:
    """Both players' new ratings after one game.

    :param rating: the first player's rating
    :param opponent: the second player's rating
    :param score: the first player's result (1 win, 0.5 draw, 0 loss)
    :param k: the K-factor
    :return: ``(new rating, new opponent rating)``; the two changes cancel out
    """
    delta = k * (score - elo_expected(rating, opponent))
    return rating + delta, opponent - delta


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


# --------------------------------------------------------------------------- env checks
def _env_base_name(metadata: Mapping[str, Any] | None) -> str | None:
    name = (metadata or {}).get("name")
    return re.sub(r"_v\d+$", "", str(name)) if name else None


def check_league_layout(
    layout: AgentLayout,
    metadata: Mapping[str, Any] | None = None,
    raw_env: Any = None,
    *,
    round_robin: bool = False,
) -> None:
    """Raise ``ValueError`` unless the NPC agents can play the learner's snapshots as its opponents.

    :param layout: the agent split (training agents and NPC groups)
    :param metadata: the env's ``metadata``; its ``name`` is checked against envs known to be
        cooperative or role-asymmetric
    :param raw_env: the innermost PettingZoo env (``env.unwrapped``), to compare the agents' spaces
        before padding wrappers
    :param round_robin: word the errors for :func:`round_robin` (which plays checkpoints against each
        other), not for the training league
    """
    train = list(layout.training)
    if round_robin:
        why = "a round robin plays one checkpoint as the training agents and another as the NPC agents, so"
        off = "or rate the checkpoints against a fixed NPC instead (npc-eval CHECKPOINT --npc URI)"
        not_for = (
            "A round robin cannot rate checkpoints of this env; evaluate each against a fixed NPC (npc-eval "
            "CHECKPOINT --npc URI) instead. A round robin is for"
        )
    else:
        why = "the league plays the learner's own snapshots as the NPC agents, so"
        off = "or turn trainer.league.enabled off"
        not_for = (
            "Turn trainer.league.enabled off for this env (train against a fixed NPC instead); "
            "the league is for"
        )
    if not layout.groups:
        raise ValueError(
            f"{why} it needs NPC agents, but every agent trains ({train}); lower training_agents_pct or name the "
            f"training agents with training_agents=[...], {off}"
        )
    if len(layout.groups) > 1:
        desc = "; ".join(f"{list(g.agents)} ({g.observation_space}, {g.action_space})" for g in layout.groups)
        raise ValueError(
            f"{why} the NPC agents must form one group with the learner's spaces, but they form {len(layout.groups)} "
            f"groups: {desc}; use one npc spec for all NPC agents and choose training_agents so that the NPCs are "
            f"the opposing team, {off}"
        )
    group = layout.groups[0]
    if group.observation_space != layout.observation_space or group.action_space != layout.action_space:
        raise ValueError(
            f"{why} the NPC agents must share the training agents' spaces, but they differ: training agents {train} "
            f"observe {layout.observation_space} and act in {layout.action_space}; NPC agents {list(group.agents)} "
            f"observe {group.observation_space} and act in {group.action_space}. This is not a symmetric game "
            "(e.g. simple_tag's predators vs prey): choose training_agents so that both teams share spaces, "
            f"{off}"
        )
    base = _env_base_name(metadata)
    if base in _NOT_SYMMETRIC:
        raise ValueError(
            f"{why} the NPC agents must be the learner's opponents in a symmetric game, but {metadata['name']}: "
            f"{_NOT_SYMMETRIC[base]}. {not_for} games like magent2 battle or MettaGrid arena"
        )
    if raw_env is not None:
        try:
            t = raw_env.observation_space(train[0]), raw_env.action_space(train[0])
            odd = [a for a in group.agents if (raw_env.observation_space(a), raw_env.action_space(a)) != t]
        except (AttributeError, KeyError, TypeError, NotImplementedError):  # no per-agent getters there
            odd = []
        if odd:
            raise ValueError(
                f"{why} the NPC agents must play the same role as the training agents, but before the env's "
                f"wrappers NPC agents {odd} have spaces ({raw_env.observation_space(odd[0])}, "
                f"{raw_env.action_space(odd[0])}) while training agent {train[0]!r} has {t}; padding made the "
                "spaces equal but the roles differ. Choose training_agents so that the NPCs are the opposing "
                f"team of the same kind, {off}"
            )


def _raw_env(engine: NPCEngine) -> Any:
    """The innermost PettingZoo env of sub-env 0 when it lives in this process (``None`` for workers)."""
    joints = getattr(engine.backend, "joints", None)
    if not joints:
        return None
    env = joints[0].env
    return getattr(env, "unwrapped", env)


def check_league_venv(venv: NPCVecEnv) -> None:
    """:func:`check_league_layout` for a built vector env (the spaces before wrappers too, in-process).

    :param venv: the env the learner trains in
    :raises ValueError: when the league cannot run there, saying why and what to change
    """
    engine = venv.engine
    check_league_layout(engine.layout, engine.metadata, _raw_env(engine))


def _find_npc_vec_env(env: VecEnv, given: NPCVecEnv | None = None) -> tuple[NPCVecEnv, list[VecEnvWrapper]]:
    """The NPC env under the model's env ``env`` (or ``given``, which must be that one) and the wrappers."""
    wrappers: list[VecEnvWrapper] = []
    while isinstance(env, VecEnvWrapper):
        wrappers.append(env)
        env = env.venv
    if given is not None:
        if isinstance(env, NPCVecEnv) and env is not given:
            raise ValueError(
                "the league was given an NPCVecEnv (venv=...) that is not the one the model trains in; "
                "pass the model's env, or leave venv out to use it"
            )
        return given, wrappers
    if not isinstance(env, NPCVecEnv):
        raise ValueError(
            f"the league needs the model's env to be an npc_wrapper NPCVecEnv (from npc_wrapper.make_vec_env), "
            f"got {type(env).__name__}"
        )
    return env, wrappers


def _check_wrappers(wrappers: Sequence[VecEnvWrapper]) -> None:
    """Snapshots see the NPCs' raw observations, so wrappers may not change what the learner observes."""
    for w in wrappers:
        if isinstance(w, VecNormalize) and w.norm_obs:
            raise ValueError(
                "the league's snapshots act on the NPC agents' raw observations, but the learner is trained on "
                "VecNormalize-normalised observations; use VecNormalize(norm_obs=False) or no VecNormalize"
            )
        if isinstance(w, VecTransposeImage):
            continue  # SB3Policy transposes NPC images the same way
        if w.observation_space != w.venv.observation_space:
            raise ValueError(
                f"the league's snapshots act on the NPC agents' raw observations, but {type(w).__name__} changes the "
                f"learner's observations ({w.venv.observation_space} -> {w.observation_space}); remove that wrapper"
            )


# --------------------------------------------------------------------------- callback
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
    :param venv: the :class:`~npc_wrapper.NPCVecEnv` (default: found under the model's env wrappers)
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
        venv: NPCVecEnv | None = None,
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
        venv, wrappers = _find_npc_vec_env(self.model.get_env(), self.venv)
        _check_wrappers(wrappers)
        check_league_venv(venv)
        engine = venv.engine
        names = [m.name for m in engine.pools[0].members]
        if len(set(names)) != len(names):
            raise ValueError(
                f"the league keeps ratings by NPC name, but the starting NPC pool has duplicate names {names}; "
                "give each pool member its own name"
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
        """Continue the league saved in ``save_dir/league.json``: ratings, counts and the window's snapshots."""
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
            raise ValueError(f"cannot resume the league from {path}: {type(e).__name__}: {e}; fix or remove the file") from e
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
                    f"cannot resume the league: snapshot {name} of {path} was not saved ({file}); the window's "
                    "snapshots are needed to rebuild the pool (trainer.league.save_snapshots must stay true)"
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
        return MemberRecord(name, elo, elo, recent=collections.deque(maxlen=self.config.win_rate_episodes), **kwargs)

    # ------------------------------------------------------------------ per step
    def _on_step(self) -> bool:
        infos = self.locals.get("infos")
        if not infos:
            return True
        n_train = self.engine.n_train
        for e in range(self.engine.num_envs):
            episode = infos[e * n_train].get(EPISODE_KEY)
            if episode is not None:
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
            print(f"league: {name} joined the NPC pool (elo {rec.elo:.0f}; {len(self.window)} snapshots in the window)")
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
                    "name": r.name, "elo": r.elo, "start_elo": r.start_elo, "wins": r.wins, "draws": r.draws, "losses": r.losses,
                    "num_timesteps": r.num_timesteps, "path": r.path, "in_pool": r.name in active,
                    "weight": weights.get(r.name, 0.0), "initial": r.name in self.initial,
                    "recent": list(r.recent),
                }
                for r in self.records.values()
            ],
            "config": asdict(self.config),
        }

    def save_state(self) -> None:
        """Write ``league.json`` now (done at every snapshot and at the end of training; no-op without ``save_dir``)."""
        if self.save_dir is not None:
            _write_json(self.save_dir / "league.json", self.state())

    def _save(self, name: str, steps: int) -> Path:
        # Named after the unique member name: a second snapshot at a step (the step count went back, or a
        # resumed run repeats steps) must not overwrite the first one's file.
        path = self.save_dir / f"{name.replace('@', '_').replace('#', '_')}.zip"
        self.model.save(path)
        # The checkpoint loader reads <stem>.json as the checkpoint's metadata (selectors sort by it).
        meta = {"league_name": name, "num_timesteps": steps, "step": steps, "elo": self.learner_elo}
        _write_json(path.with_suffix(".json"), meta)
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


def _write_json(path: Path, data: Any) -> None:
    """Write atomically, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- round robin
@dataclass
class RoundRobinResult:
    """Games between every ordered pair of players and the ratings fitted to them.

    ``score[i, j]`` is player ``i``'s total score against ``j`` (win 1, draw 0.5) over
    ``games[i, j]`` games, on either side of the env.
    """

    names: list[str]
    ratings: dict[str, float]
    score: np.ndarray
    games: np.ndarray
    wins: np.ndarray
    draws: np.ndarray
    losses: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One record per player, ranked by rating: elo, games, wins, draws, losses and mean score
        (``None`` without games)."""
        out = []
        for i in sorted(range(len(self.names)), key=lambda i: -self.ratings[self.names[i]]):
            games = int(self.games[i].sum())
            out.append({
                "player": self.names[i],
                "elo": self.ratings[self.names[i]],
                "games": games,
                "wins": int(self.wins[i].sum()),
                "draws": int(self.draws[i].sum()),
                "losses": int(self.losses[i].sum()),
                "score": float(self.score[i].sum()) / games if games else None,
            })
        return out

    def table(self) -> str:
        """The players ranked by rating, as a text table."""
        width = max([len("player")] + [len(n) for n in self.names])
        lines = [f"{'rank':>4}  {'player':<{width}}  {'elo':>7}  {'games':>5}  {'W':>4}  {'D':>4}  {'L':>4}  {'score':>5}"]
        for rank, r in enumerate(self.rows(), 1):
            score = float("nan") if r["score"] is None else r["score"]
            lines.append(
                f"{rank:>4}  {r['player']:<{width}}  {r['elo']:>7.1f}  {r['games']:>5}  "
                f"{r['wins']:>4}  {r['draws']:>4}  {r['losses']:>4}  {score:>5.2f}"
            )
        return "\n".join(lines)


def fit_ratings(score: np.ndarray, games: np.ndarray, initial_elo: float = 1200.0,
                iterations: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Elo ratings that best explain all games at once (Bradley-Terry maximum likelihood).

    Draws count as half a win. Each player also gets one virtual draw against a reference player
    rated ``initial_elo``, which anchors the scale and keeps perfect records finite.

    :param score: ``score[i, j]``: ``i``'s total score against ``j``
    :param games: ``games[i, j]``: games played between ``i`` and ``j`` (a symmetric matrix)
    :return: one rating per player
    """
    n = len(score)
    pair_games = np.asarray(games, dtype=np.float64)
    won = score.sum(axis=1) + 0.5  # + the virtual draw
    gamma = np.ones(n)
    for _ in range(iterations):  # Hunter's MM algorithm
        denom = (pair_games / (gamma[:, None] + gamma[None, :])).sum(axis=1) + 1.0 / (gamma + 1.0)
        new = won / denom
        if np.max(np.abs(np.log(new) - np.log(gamma))) < tol:
            gamma = new
            break
        gamma = new
    return initial_elo + 400.0 * np.log10(gamma)


def _checkpoint_files(root: Path) -> list[Path]:
    from npc_wrapper.checkpoints import CHECKPOINT_SUFFIXES

    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") or part == "wandb" for part in rel):
            continue  # hidden files and wandb's own copies of the run's files
        if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES:
            found.append(p)
    return found


def _policy_digest(path: Path) -> str:
    """A digest of the network a checkpoint holds: an SB3 zip's ``policy.pth`` (its other entries differ
    between two saves of one model, e.g. their step counts), else the whole file. Reads bytes only."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if "policy.pth" in z.namelist():
                return hashlib.sha256(z.read("policy.pth")).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _distinct(files: list[Path], root: Path) -> list[Path]:
    """``files`` less the copies of one network: a run directory holds its last checkpoint twice
    (``checkpoints/step_N`` and ``final``), which would play as two players. The copy nearest the top
    of ``root`` is kept."""
    kept: dict[str, Path] = {}
    for f in sorted(files, key=lambda f: (len(f.relative_to(root).parts), f.as_posix())):
        first = kept.setdefault(_policy_digest(f), f)
        if first is not f:
            logger.warning(
                "round_robin: %s holds the same network as %s; it plays once, as %s",
                f.relative_to(root).as_posix(), first.relative_to(root).as_posix(),
                first.relative_to(root).with_suffix("").as_posix(),
            )
    return [f for f in files if f in kept.values()]


def _players(checkpoints: Any) -> tuple[list[str], list[Any]]:
    """Names and specs of the players from a directory, a sequence of paths/URIs or a name->spec mapping."""
    if isinstance(checkpoints, Mapping):
        return [str(k) for k in checkpoints], list(checkpoints.values())
    if isinstance(checkpoints, (str, os.PathLike)) and Path(checkpoints).is_dir():
        root = Path(checkpoints)
        files = _distinct(_checkpoint_files(root), root)
        if len(files) < 2:
            raise ValueError(
                f"a round robin needs at least 2 different checkpoints, but {root} holds "
                f"{[str(f) for f in files]}"
            )
        return [f.relative_to(root).with_suffix("").as_posix() for f in files], [str(f) for f in files]
    if isinstance(checkpoints, (str, os.PathLike)):
        raise ValueError(f"round_robin: {checkpoints!s} is not a directory; pass a directory or a list of checkpoints")
    specs = list(checkpoints)
    names = [Path(str(s)).stem if isinstance(s, (str, os.PathLike)) else getattr(s, "name", type(s).__name__)
             for s in specs]
    if len(set(names)) != len(names):
        names = [str(s) if isinstance(s, (str, os.PathLike)) else f"{n}#{i}" for i, (n, s) in enumerate(zip(names, specs))]
    return names, specs


def _play(
    env_fn: Callable[[], Any],
    learner: NPCPolicy,
    npc: NPCPolicy,
    episodes: int,
    num_envs: int,
    seed: int,
    env_kwargs: dict[str, Any],
    max_steps: int,
) -> list[str]:
    """Outcomes (for ``learner``) of ``episodes`` episodes ``learner`` plays on the training side,
    or a ``RuntimeError`` once no episode has ended for ``max_steps`` vector steps."""
    from npc_wrapper.factory import make_vec_env

    venv = make_vec_env(env_fn, num_envs=num_envs, npc=npc, seed=seed, **env_kwargs)
    try:
        n_train, slots, n_envs = venv.engine.n_train, venv.num_envs, venv.num_sub_envs
        # Each env plays a fixed quota: the first episodes to end anywhere would over-represent short
        # ones, and episode length often depends on who wins.
        quota = np.full(n_envs, episodes // n_envs)
        quota[: episodes % n_envs] += 1
        played = np.zeros(n_envs, dtype=np.int64)
        rows = np.arange(slots)
        learner.reset(slots, seed)
        obs = venv.reset()
        start = np.ones(slots, dtype=bool)
        outcomes: list[str] = []
        since_end = 0
        while (played < quota).any():
            if since_end >= max_steps:
                raise NoEpisodeEnds(
                    f"round_robin: no episode ended in the last max_steps={max_steps} vector steps "
                    f"({int(played.sum())} of {episodes} played); give the env a time limit, or pass a "
                    "larger max_steps"
                )
            obs, _, _, infos = venv.step(learner.act(obs, rows, start))
            ended = np.array([EPISODE_KEY in infos[e * n_train] for e in range(n_envs)])
            # Only an episode that counts resets the bound: envs done with their share may end many.
            since_end = 0 if (ended & (played < quota)).any() else since_end + 1
            for e in np.flatnonzero(ended & (played < quota)):
                outcomes.append(infos[e * n_train][EPISODE_KEY]["outcome"])
                played[e] += 1
            start = np.repeat(ended, n_train)  # a new episode starts in the envs that just reset
        return outcomes
    finally:
        venv.close()


def round_robin(
    checkpoints: str | os.PathLike[str] | Sequence[Any] | Mapping[str, Any],
    env_fn: Callable[[], Any],
    *,
    episodes: int = 10,
    num_envs: int = 4,
    training_agents_pct: float | None = 0.5,
    training_agents: Sequence[Any] | None = None,
    reset_when_training_agents_dead: bool = True,
    device: str | torch.device = "auto",
    deterministic: bool = False,
    trusted: bool = False,
    seed: int = 0,
    initial_elo: float = 1200.0,
    load: Callable[[Any, spaces.Space, spaces.Space], NPCPolicy] | None = None,
    print_table: bool = True,
    max_steps: int | None = None,
) -> RoundRobinResult:
    """Play every checkpoint against every other one and rate them.

    Each ordered pair ``(a, b)`` plays ``episodes`` episodes with ``a`` driving the training agents
    and ``b`` the NPC agents, so every pair meets on both sides of the env. Ratings are fitted to
    all games at once (:func:`fit_ratings`), so the table does not depend on the order of play.

    :param checkpoints: a directory (its checkpoint files, searched recursively, e.g. a run
        directory), a sequence of checkpoint paths/URIs or policies, or a mapping name -> either
    :param env_fn: factory of the PettingZoo parallel env (a symmetric game: see
        :func:`check_league_layout`)
    :param episodes: episodes per ordered pair
    :param num_envs: env copies played in parallel, each playing an equal share of the episodes
    :param training_agents_pct: fraction of agents on the first player's side
    :param training_agents: names or glob patterns of the first player's agents (overrides the fraction)
    :param reset_when_training_agents_dead: end an episode once the first player's agents are all dead
    :param device: where the policies run
    :param deterministic: players take their most likely action
    :param trusted: allow checkpoint formats that run code (pickles, TorchScript)
    :param seed: seed of the first pairing (pairing ``k`` uses ``seed + 1000 * k``)
    :param initial_elo: the rating scale's anchor
    :param load: ``load(spec, observation_space, action_space) -> NPCPolicy`` (default:
        :func:`~npc_wrapper.as_npc_policy`, which loads paths and URIs through the checkpoint loader)
    :param print_table: print the ranked table
    :param max_steps: vector steps without a counted episode end before a pairing is an error (an env
        whose episodes never end would otherwise hang; default :data:`MAX_EPISODE_STEPS`); a bound on
        episode length, not on the pairing
    :return: the games and ratings; ``result.table()`` formats them
    """
    if not _is_int(episodes) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1 (per ordered pair), got {episodes!r}")
    if max_steps is None:
        max_steps = MAX_EPISODE_STEPS
    elif not _is_int(max_steps) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1 (vector steps per pairing), got {max_steps!r}")
    names, specs = _players(checkpoints)
    if len(names) < 2:
        raise ValueError(f"a round robin needs at least 2 players, got {names}")
    probe = env_fn()
    try:
        layout = build_layout(probe, "random", training_agents_pct, training_agents)
        check_league_layout(
            layout, getattr(probe, "metadata", None), getattr(probe, "unwrapped", probe), round_robin=True
        )
    finally:
        probe.close()
    obs_space, act_space = layout.observation_space, layout.action_space
    if load is None:
        def load(spec: Any, o: spaces.Space, a: spaces.Space) -> NPCPolicy:
            return as_npc_policy(spec, o, a, device=device, deterministic=deterministic, trusted=trusted)
    players = []
    for name, spec in zip(names, specs):
        policy = load(spec, obs_space, act_space)
        if not isinstance(policy, NPCPolicy):
            raise ValueError(f"round_robin: {name!r} loaded as {type(policy).__name__}, not one policy; name one checkpoint file")
        players.append(policy)
    n = len(players)
    wins, draws, losses = (np.zeros((n, n), dtype=np.int64) for _ in range(3))
    env_kwargs = {"training_agents_pct": training_agents_pct, "training_agents": training_agents,
                  "reset_when_training_agents_dead": reset_when_training_agents_dead, "device": device}
    k = 0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            outcomes = _play(
                env_fn, players[i], players[j], episodes, num_envs, seed + 1000 * k, env_kwargs, max_steps
            )
            for outcome in outcomes:
                if outcome == "win":
                    wins[i, j] += 1
                    losses[j, i] += 1
                elif outcome == "loss":
                    losses[i, j] += 1
                    wins[j, i] += 1
                else:
                    draws[i, j] += 1
                    draws[j, i] += 1
            k += 1
    score = wins + 0.5 * draws
    games = wins + draws + losses
    ratings = fit_ratings(score, games, initial_elo)
    result = RoundRobinResult(names, dict(zip(names, ratings.tolist())), score, games, wins, draws, losses)
    if print_table:
        print(result.table())
    return result

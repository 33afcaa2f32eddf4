"""The user configs: which agents train, which checkpoints the NPCs play, and the self-play league.

The two dataclasses mirror the original dual-policy feature's ``trainer.dual_policy`` block::

    trainer:
      dual_policy:
        enabled: true
        training_agents_pct: 0.5
        checkpoint_npc:
          uri: "wandb://entity/project/model/name:v2"   # or file://PATH, a plain PATH, random, noop
          type: specific                                # specific | latest | top | rand | all
          range: 1
          metric: epoch

:class:`LeagueConfig` is the ``trainer.league`` block (the self-play league of
:mod:`npc_wrapper.league`, off by default).

They work without Hydra (build them in code or with :meth:`DualPolicyConfig.from_dict` from a plain
dict) and with it (``from_dict`` accepts an OmegaConf ``DictConfig``, and the classes can be used
as structured configs: ``OmegaConf.structured(DualPolicyConfig)``). Every key is honoured;
unknown keys are an error rather than being ignored.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "DEFAULT_METRIC",
    "IMPORT_SPEC",
    "SAMPLING_MODES",
    "SELECTOR_TYPES",
    "CheckpointConfig",
    "DualPolicyConfig",
    "LeagueConfig",
    "check_max_bytes",
]

#: The checkpoint selectors ``CheckpointConfig.type`` accepts.
SELECTOR_TYPES = ("specific", "latest", "top", "rand", "all")

#: The metadata key ``top`` sorts by unless ``metric`` names another.
DEFAULT_METRIC = "epoch"

#: How the league draws the pool members other than its newest snapshot (``LeagueConfig.sampling``).
SAMPLING_MODES = ("uniform", "prioritized")

#: ``"pkg.module:attr"`` (an importable object); ``attr`` may be dotted (``Outer.Inner``).
IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def _to_plain(d: Any, what: str) -> dict[str, Any]:
    """A plain ``dict`` from a mapping or an OmegaConf ``DictConfig`` (omegaconf imported only then)."""
    if type(d).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(d, resolve=True)
    if not isinstance(d, Mapping):
        raise ValueError(f"{what} must be a mapping of config keys, got {type(d).__name__}: {d!r}")
    return dict(d)


def _config_dict(d: Any, cls: type, what: str) -> dict[str, Any]:
    """``d`` as a plain dict (see :func:`_to_plain`) whose keys are all fields of ``cls``."""
    plain = _to_plain(d, what)
    known = [f.name for f in fields(cls)]
    unknown = [k for k in plain if k not in known]
    if unknown:
        raise ValueError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {what}; known "
            f"keys: {', '.join(known)}"
        )
    return plain


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_max_bytes(value: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``value`` is ``None`` or a positive integer (a byte limit).

    :param where: the argument or config key, for the message
    """
    if value is not None and (not _is_int(value) or value < 1):
        raise ValueError(f"{where} must be a positive number of bytes or null, got {value!r}")


def _is_num(x: Any) -> bool:
    """A finite real number (numpy's too), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


@dataclass
class CheckpointConfig:
    """Where the NPC policy comes from and how to pick checkpoints: the ``checkpoint_npc`` block of the
    original dual-policy feature.

    :param uri: ``file://PATH`` or a plain ``PATH`` (a checkpoint file or a directory of them),
        ``wandb://entity/project/[type/]name[:version]``, ``"random"``, ``"noop"``, or
        ``"pkg.module:callable"`` (a scripted bot)
    :param type: selector: ``specific`` (the checkpoint or version named), ``latest`` (newest
        ``range``), ``top`` (best ``range`` by ``metadata[metric]``), ``rand`` (``range`` drawn at
        random, seeded by ``seed``) or ``all``
    :param range: how many checkpoints ``latest``/``top``/``rand`` select; more than one makes an
        NPC pool (one member drawn per env per episode)
    :param metric: metadata key ``top`` sorts by, descending (another type with another metric than
        the default is an error: it would be ignored)
    :param weights: pool sampling weights, one per selected checkpoint (uniform when ``None``)
    :param policy_class: ``"pkg.module:Class"`` of the network for ``state_dict`` checkpoints
    :param policy_kwargs: keyword arguments for ``policy_class``
    :param trusted: allow formats that run code (full pickled modules, SB3 zips with custom
        classes, TorchScript); only for checkpoints you trust
    :param deterministic: NPCs take their most likely action instead of sampling
    :param noop_action: the action of ``"noop"`` NPCs (default: the action space's zero)
    :param cache_dir: where ``wandb://`` artifacts are downloaded (default
        ``~/.cache/npc_wrapper/wandb``)
    :param seed: seed of the ``rand`` selector (``None``: a fresh draw each run)
    :param max_checkpoint_bytes: the most bytes reading an untrusted checkpoint may take for each of
        its parts (a zip member, the spaces it declares, its network, its weights); ``None``: limits
        proportional to the NPC agents' spaces and the network, at most 256 MiB each
    """

    uri: str | None = None
    type: str = "specific"
    range: int = 1
    metric: str = DEFAULT_METRIC
    weights: list[float] | None = None
    policy_class: str | None = None
    policy_kwargs: dict = field(default_factory=dict)
    trusted: bool = False
    deterministic: bool = False
    noop_action: Any = None
    cache_dir: str | None = None
    seed: int | None = 0
    max_checkpoint_bytes: int | None = None

    def validate(self, where: str = "checkpoint_npc") -> None:
        """Raise ``ValueError`` saying which key to change and how.

        :param where: the config path used in messages
        """
        if self.uri is not None and (
            not isinstance(self.uri, (str, os.PathLike)) or not str(self.uri).strip()
        ):
            raise ValueError(
                f"{where}.uri must be a non-empty string (wandb://..., file://..., a path, 'random', 'noop' "
                f"or 'pkg.module:callable'), got {self.uri!r}"
            )
        if self.type not in SELECTOR_TYPES:
            raise ValueError(f"{where}.type must be one of {', '.join(SELECTOR_TYPES)}; got {self.type!r}")
        if not _is_int(self.range) or self.range < 1:
            raise ValueError(
                f"{where}.range must be an integer >= 1 (how many checkpoints to select), got {self.range!r}"
            )
        if self.type == "specific" and self.range != 1:
            raise ValueError(
                f"{where}.type 'specific' selects exactly the checkpoint named by the uri, but "
                f"range={self.range}; use type 'latest', 'top' or 'rand' to select {self.range} checkpoints, "
                "or set range: 1"
            )
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"{where}.metric must be a metadata key such as 'epoch', got {self.metric!r}")
        # The original dual-policy feature's example spells out the default (metric: epoch) with type
        # specific, so only another metric means the user expected it to be used.
        if self.type != "top" and self.metric != DEFAULT_METRIC:
            raise ValueError(
                f"{where}.metric={self.metric!r} is only used by type 'top' (the best by "
                f"metadata[metric]), but type is {self.type!r}; set type: top, or drop metric"
            )
        if self.weights is not None:
            w = list(self.weights)
            if not w or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in w):
                raise ValueError(
                    f"{where}.weights must be a list of numbers (one per selected checkpoint), got "
                    f"{self.weights!r}"
                )
            if any(x < 0 or not math.isfinite(x) for x in w) or not 0 < sum(w) < math.inf:
                raise ValueError(
                    f"{where}.weights must be non-negative with a positive sum that is finite (only their "
                    f"ratios count: [3, 1] draws the first 3 times as often), got {w}"
                )
            if self.type in ("specific", "latest", "top", "rand") and len(w) != self.range:
                raise ValueError(
                    f"{where}.weights has {len(w)} entries but type {self.type!r} with range={self.range} "
                    f"selects {self.range} checkpoint{'s' if self.range > 1 else ''}; give one weight per "
                    "selected checkpoint"
                )
        if self.policy_class is not None and (
            not isinstance(self.policy_class, str) or not IMPORT_SPEC.match(self.policy_class)
        ):
            raise ValueError(
                f"{where}.policy_class must look like 'pkg.module:Class', got {self.policy_class!r}"
            )
        if not isinstance(self.policy_kwargs, Mapping):
            raise ValueError(
                f"{where}.policy_kwargs must be a mapping of keyword arguments, got {self.policy_kwargs!r}"
            )
        for key in ("trusted", "deterministic"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{where}.{key} must be true or false, got {getattr(self, key)!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ValueError(f"{where}.cache_dir must be a directory path, got {self.cache_dir!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"{where}.seed must be an integer or null, got {self.seed!r}")
        check_max_bytes(self.max_checkpoint_bytes, f"{where}.max_checkpoint_bytes")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "checkpoint_npc") -> CheckpointConfig:
        """Build from a plain dict or an OmegaConf ``DictConfig``; unknown keys are an error.

        :param d: the ``checkpoint_npc`` block
        :param where: the config path used in messages
        """
        plain = _config_dict(d, cls, where)
        if plain.get("weights") is not None:
            plain["weights"] = list(plain["weights"])
        if plain.get("policy_kwargs") is None:
            plain.pop("policy_kwargs", None)
        cfg = cls(**plain)
        cfg.validate(where)
        return cfg


@dataclass
class DualPolicyConfig:
    """The original dual-policy feature's ``trainer.dual_policy`` block.

    :param enabled: whether some agents are NPCs (off by default: every agent trains)
    :param training_agents_pct: fraction of each env's agents that train, in ``[0, 1]``
    :param training_agents: names or glob patterns of the training agents (overrides the fraction)
    :param checkpoint_npc: where the NPC policy comes from
    """

    enabled: bool = False
    training_agents_pct: float = 0.5
    training_agents: list[str] | None = None
    checkpoint_npc: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self, where: str = "dual_policy") -> None:
        """Raise ``ValueError`` saying which key to change and how.

        :param where: the config path used in messages
        """
        if not isinstance(self.enabled, bool):
            raise ValueError(f"{where}.enabled must be true or false, got {self.enabled!r}")
        pct = self.training_agents_pct
        if isinstance(pct, bool) or not isinstance(pct, numbers.Real) or not 0.0 <= float(pct) <= 1.0:
            raise ValueError(
                f"{where}.training_agents_pct must be a fraction in [0, 1] (0.75 means 75% of each env's "
                f"agents train), got {pct!r}"
            )
        if float(pct) == 0.0 and self.training_agents is None:
            raise ValueError(
                f"{where}.training_agents_pct is 0, so no agent would train; give a fraction above 0 "
                f"(0.75 means 75% of each env's agents train), or name them with {where}.training_agents"
            )
        if self.training_agents is not None:
            names = [self.training_agents] if isinstance(self.training_agents, str) else self.training_agents
            if (
                not isinstance(names, (list, tuple))
                or not names
                or not all(isinstance(a, str) for a in names)
            ):
                raise ValueError(
                    f"{where}.training_agents must be a non-empty list of agent names or glob patterns, got "
                    f"{self.training_agents!r}"
                )
        if not isinstance(self.checkpoint_npc, CheckpointConfig):
            raise ValueError(
                f"{where}.checkpoint_npc must be a CheckpointConfig (use DualPolicyConfig.from_dict for "
                f"dicts), got {type(self.checkpoint_npc).__name__}"
            )
        self.checkpoint_npc.validate(f"{where}.checkpoint_npc")
        if self.enabled and self.checkpoint_npc.uri is None:
            raise ValueError(
                f"{where}.checkpoint_npc.uri is required when {where}.enabled is true: set it to a wandb:// "
                "or file:// URI, a checkpoint path, 'random', 'noop' or 'pkg.module:callable' (or set "
                "enabled: false)"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "dual_policy") -> DualPolicyConfig:
        """Build from a plain dict or an OmegaConf ``DictConfig``; unknown keys are an error.

        :param d: the ``dual_policy`` block
        :param where: the config path used in messages
        """
        plain = _config_dict(d, cls, where)
        npc = plain.get("checkpoint_npc")
        if npc is None:
            plain.pop("checkpoint_npc", None)
        elif not isinstance(npc, CheckpointConfig):
            plain["checkpoint_npc"] = CheckpointConfig.from_dict(npc, f"{where}.checkpoint_npc")
        if isinstance(plain.get("training_agents"), tuple):
            plain["training_agents"] = list(plain["training_agents"])
        cfg = cls(**plain)
        cfg.validate(where)
        return cfg

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`npc_wrapper.make_vec_env` / ``make_vector_env``.

        Enabled: the NPC spec, the split and the NPC flags. Disabled: every agent trains
        (``training_agents_pct=1.0``), as in the original dual-policy feature, where it is off by default.
        """
        self.validate()
        if not self.enabled:
            return {"training_agents_pct": 1.0, "training_agents": None}
        return {
            "npc": self.checkpoint_npc,
            "training_agents_pct": self.training_agents_pct,
            "training_agents": self.training_agents,
            "deterministic_npc": self.checkpoint_npc.deterministic,
            "trusted": self.checkpoint_npc.trusted,
        }


@dataclass
class LeagueConfig:
    """The ``trainer.league`` config block (off by default).

    :param enabled: run the league (for configs; :class:`~npc_wrapper.league.LeagueCallback` runs it
        whatever this says)
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
    def from_dict(cls, d: Any, where: str = "trainer.league") -> LeagueConfig:
        """Build and validate from a mapping or an OmegaConf ``DictConfig``; unknown keys are an error.

        :param d: the ``league`` block
        :param where: the config path used in messages
        """
        plain = _config_dict(d, cls, where)
        cfg = cls(**plain)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "trainer.league") -> None:
        """Raise ``ValueError`` saying which key to change and how.

        :param where: the config path used in messages
        """
        if self.snapshot_every is not None and (not _is_int(self.snapshot_every) or self.snapshot_every < 0):
            raise ValueError(
                f"{where}.snapshot_every must be a number of steps >= 0 (0 or null: off), got "
                f"{self.snapshot_every!r}"
            )
        wr = self.snapshot_when_win_rate
        if wr is not None and (not _is_num(wr) or not 0.0 <= wr <= 1.0):
            raise ValueError(
                f"{where}.snapshot_when_win_rate must be a win rate in [0, 1] (null: off), got {wr!r}"
            )
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
            raise ValueError(
                f"{where}.play_latest_ratio must be a probability in [0, 1], got {self.play_latest_ratio!r}"
            )
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(
                f"{where}.sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.sampling!r}"
            )
        if not _is_num(self.priority_power) or self.priority_power < 0:
            raise ValueError(f"{where}.priority_power must be a number >= 0, got {self.priority_power!r}")
        if not _is_num(self.elo_k) or self.elo_k <= 0:
            raise ValueError(
                f"{where}.elo_k must be a positive number (Elo K-factor, e.g. 32), got {self.elo_k!r}"
            )
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

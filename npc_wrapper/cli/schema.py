"""The schema of ``configs/``: every key ``npc-train`` takes, its type and its default.

Hydra merges the YAML files into these structured configs (registered by
:func:`npc_wrapper.cli.config.register_configs`), so an unknown key or a wrongly typed value fails at
composition, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from npc_wrapper.config import DualPolicyConfig, LeagueConfig

__all__ = ["EnvConfig", "VideoConfig", "TrainerConfig", "WandbConfig", "TrainConfig"]


@dataclass
class EnvConfig:
    """``env``: which PettingZoo env (parallel, or AEC for turn-based games) to build and the defaults that
    go with it."""

    #: Short name, used in the default run name.
    name: str = MISSING
    #: ``{_target_: dotted.path.to.env_factory, **kwargs}``, called with no arguments.
    factory: Any = MISSING
    #: Wrappers applied in order, each ``{_target_: dotted.path, **kwargs}`` called as
    #: ``wrapper(env, **kwargs)``.
    wrappers: list[Any] = field(default_factory=list)
    #: SB3 policy suited to the observations (``MlpPolicy``, ``CnnPolicy`` for images).
    policy: str = "MlpPolicy"
    #: NPC this env is trained against by default (URI, path, ``random``, ``noop``...).
    npc: str | None = None
    #: Fraction of each env's agents that train by default.
    training_agents_pct: float = 0.5
    #: Reset an env once none of its training agents is alive (NPCs would play on alone).
    reset_when_training_agents_dead: bool = True
    #: Turn-based (AEC) games: ``fixed`` (the learner plays the seat the split picks) or ``random`` (a seat
    #: drawn per episode).
    seat: str = "fixed"


@dataclass
class VideoConfig:
    """``trainer.video``: episodes of the learner against the NPC, recorded to ``runs/<run>/videos/``."""

    #: Record after training (needs an env that renders ``rgb_array``, and the ``video`` extra).
    enabled: bool = False
    #: Episodes per recording (one env plays them one after another).
    episodes: int = 2
    #: Also record before training.
    before: bool = False


@dataclass
class TrainerConfig:
    """``trainer``: the learning algorithm, its budget, checkpoints and the ``dual_policy`` block (the
    original dual-policy feature's keys)."""

    #: ``PPO``, ``A2C``, ``DQN``, ``RecurrentPPO``, ``MaskablePPO``, ``TRPO``, ``QRDQN`` or
    #: ``pkg.module:Class``.
    algorithm: str = "PPO"
    #: SB3 policy alias of the algorithm (``MlpPolicy``, ``CnnPolicy``, ``MlpLstmPolicy``...) or
    #: ``pkg.module:Class``.
    policy: str = "MlpPolicy"
    #: ``policy_kwargs`` of the SB3 algorithm (``net_arch``, ``activation_fn`` as a dotted path...).
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Keyword arguments of the algorithm's constructor (``learning_rate``, ``n_steps``...).
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    #: Training-agent steps to train for (SB3 counts one step per training slot).
    total_timesteps: int = 200_000
    #: PettingZoo env copies (each contributes one slot per training agent).
    num_envs: int = 8
    #: Workers stepping the envs (0: in this process).
    num_workers: int = 0
    #: What a worker is: ``process`` (a process on this machine) or ``ray`` (a Ray actor on a Ray cluster).
    backend: str = "process"
    #: Multiprocessing start method for the worker processes (platform default when null).
    start_method: str | None = None
    #: ``backend=ray``: the Ray cluster to connect to (null: ``RAY_ADDRESS``, else a local Ray).
    ray_address: str | None = None
    #: ``backend=ray``: Ray resources each worker reserves (empty: ``{CPU: 1}``).
    worker_resources: dict[str, float] = field(default_factory=dict)
    #: Seconds the workers may take to answer one step (null: no limit); needs ``num_workers >= 1``.
    step_timeout: float | None = None
    #: Continue the run from its latest checkpoint, keeping the step count.
    resume: bool = False
    #: Save a checkpoint every this many steps (0: only at the end).
    checkpoint_interval: int = 50_000
    #: Keep this many most recent periodic checkpoints (0: keep all).
    keep_checkpoints: int = 5
    #: Show a progress bar on the terminal.
    progress_bar: bool = True
    #: Without a progress bar: seconds between progress log lines (training and evaluations).
    log_interval_s: float = 30.0
    #: torch's CPU threads (null: 1 on the CPU, torch's default on CUDA).
    torch_threads: int | None = None
    #: Episodes played against the NPC before and after training (0: skip).
    eval_episodes: int = 100
    #: Parallel envs for those evaluations.
    eval_num_envs: int = 8
    #: The learner plays greedily in those evaluations.
    eval_deterministic: bool = False
    #: Start even when the estimated memory (envs, buffers, network) exceeds what the machine has left.
    skip_memory_check: bool = False
    #: SB3 logger outputs besides TensorBoard and the progress CSV (``stdout``, ``log``, ``json``).
    log_formats: list[str] = field(default_factory=list)
    #: The original dual-policy feature's keys: which agents train and which checkpoint the NPCs play.
    dual_policy: DualPolicyConfig = field(default_factory=DualPolicyConfig)
    #: Self-play league: the NPC pool grows from the learner's own snapshots (off by default).
    league: LeagueConfig = field(default_factory=LeagueConfig)
    #: Videos of the learner against the NPC.
    video: VideoConfig = field(default_factory=VideoConfig)


@dataclass
class WandbConfig:
    """``wandb``: Weights & Biases logging through wandb's SB3 integration."""

    enabled: bool = False
    project: str = "npc-wrapper"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    #: ``online``, ``offline`` or ``disabled``; null: online with an API key, else offline.
    mode: str | None = None
    #: Log the final model as a wandb model artifact (usable as the next NPC).
    log_model: bool = True


@dataclass
class TrainConfig:
    """The whole ``npc-train`` config (``configs/config.yaml``)."""

    #: Run name: the run directory and the wandb run/artifact name.
    run: str = MISSING
    #: Where the run's config, logs and checkpoints go.
    run_dir: str = MISSING
    seed: int = 0
    #: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
    device: str = "auto"
    env: EnvConfig = field(default_factory=EnvConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

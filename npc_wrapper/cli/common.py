"""What the command-line programs share: config location, config schema, errors, run directories.

Config files live in the repository's top-level ``configs/`` directory. A source checkout (and an
editable install) reads them from there; a regular install ships a copy as wheel data files under
``<prefix>/share/npc-wrapper/configs``, found through the installed distribution's file list.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import MISSING, OmegaConf

from npc_wrapper.config import DualPolicyConfig
from npc_wrapper.league import LeagueConfig

__all__ = [
    "CLIError",
    "EnvConfig",
    "check_device",
    "choose_wandb_mode",
    "with_trust_flag",
    "TrainerConfig",
    "WandbConfig",
    "TrainConfig",
    "config_dir",
    "data_path",
    "die",
    "one_line",
    "register_configs",
]

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
#: The shipped default NPC checkpoint(s).
DATA_DIR = PACKAGE_ROOT / "data"


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, before any training."""


def one_line(msg: Any) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    lines = [" ".join(part.split()) for part in str(msg).splitlines()]
    return "; ".join(line for line in lines if line)


def die(prog: str, msg: Any, code: int = 2) -> NoReturn:
    """Print ``prog: error: msg`` as one line on stderr and exit with ``code``."""
    print(f"{prog}: error: {one_line(msg)}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def check_device(device: str, option: str = "device") -> None:
    """Refuse a CUDA device this machine lacks, before anything is built (torch would fall back or fail late).

    :param option: how the user set it (``device``, ``--device``), for the message
    """
    import torch

    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            msg = f"{option}={device!r} is not a torch device: use auto, cpu, cuda or cuda:N"
            raise CLIError(msg) from None
    if not str(device).startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise CLIError(
            f"{option}={device} but CUDA is not available (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False); use {option}=cpu or {option}=auto"
        )
    index = str(device).partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise CLIError(
            f"{option}={device} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
            f"use {option}=cuda:0..{torch.cuda.device_count() - 1}"
        )


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_wandb_mode(configured: str | None = None) -> str:
    """``configured``, else ``WANDB_MODE``, else online with an API key and offline without one."""
    return configured or os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")


def with_trust_flag(text: str, flag: str) -> str:
    """A loader message whose trust advice (written for code and configs) names the program's own ``flag``."""
    from npc_wrapper.checkpoints import TRUST_HINT

    return text.replace(
        TRUST_HINT, f"pass {flag} (only for checkpoints you trust: loading then runs code stored in the file)"
    )


def config_dir() -> Path:
    """The directory holding ``config.yaml`` and the ``env/``, ``trainer/``, ``user/`` groups.

    ``NPC_WRAPPER_CONFIG_DIR`` wins when set; then the source checkout's ``configs/``; then the
    copy installed with the package.
    """
    env = os.environ.get("NPC_WRAPPER_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    source = PACKAGE_ROOT.parent / "configs"
    if (source / "config.yaml").is_file():
        return source
    for installed in _installed_config_dirs():
        if (installed / "config.yaml").is_file():
            return installed
    raise CLIError(
        "cannot find the npc-wrapper config files (configs/config.yaml): reinstall the package, or point "
        "NPC_WRAPPER_CONFIG_DIR at a copy of the repository's configs/ directory"
    )


def _installed_config_dirs() -> list[Path]:
    """Where an install may have put the configs: the distribution's own record of the file, then the
    data directories of the interpreter's install schemes (venv/system, user), then ``--target`` layouts."""
    rel = Path("share", "npc-wrapper", "configs")
    found: list[Path] = []
    try:
        files = importlib.metadata.distribution("npc-wrapper").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found += [Path(f.locate()).resolve().parent for f in files if f.as_posix().endswith(f"{rel.as_posix()}/config.yaml")]
    for scheme in (None, f"{os.name}_user"):
        try:
            found.append(Path(sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")) / rel)
        except KeyError:
            pass
    found.append(PACKAGE_ROOT.parent / rel)
    return found


def data_path(name: str) -> str:
    """Absolute path of a file shipped in ``npc_wrapper/data`` (the ``${npc_data:NAME}`` resolver).

    A missing file is not an error here: the NPC check reports it only when the NPC is used.
    """
    return str(DATA_DIR / name)


# --------------------------------------------------------------------------- schema
# The structured configs below are the schema of configs/: Hydra merges the YAML files into them,
# so an unknown key or a wrongly typed value fails at composition, naming the key.


@dataclass
class EnvConfig:
    """``env``: which PettingZoo parallel env to build and the defaults that go with it."""

    #: Short name, used in the default run name.
    name: str = MISSING
    #: ``{_target_: dotted.path.to.parallel_env_factory, **kwargs}``, called with no arguments.
    factory: Any = MISSING
    #: Wrappers applied in order, each ``{_target_: dotted.path, **kwargs}`` called as ``wrapper(env, **kwargs)``.
    wrappers: list[Any] = field(default_factory=list)
    #: SB3 policy suited to the observations (``MlpPolicy``, ``CnnPolicy`` for images).
    policy: str = "MlpPolicy"
    #: NPC this env is trained against by default (URI, path, ``random``, ``noop``...).
    npc: str | None = None
    #: Fraction of each env's agents that train by default.
    training_agents_pct: float = 0.5
    #: Reset an env once none of its training agents is alive (NPCs would play on alone).
    reset_when_training_agents_dead: bool = True


@dataclass
class TrainerConfig:
    """``trainer``: the learning algorithm, its budget, checkpoints and the seed's ``dual_policy`` block."""

    #: ``PPO``, ``A2C``, ``DQN``, ``RecurrentPPO``, ``MaskablePPO``, ``TRPO``, ``QRDQN`` or ``pkg.module:Class``.
    algorithm: str = "PPO"
    #: SB3 policy alias of the algorithm (``MlpPolicy``, ``CnnPolicy``, ``MlpLstmPolicy``...) or ``pkg.module:Class``.
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
    #: Continue the run from its latest checkpoint, keeping the step count.
    resume: bool = False
    #: Save a checkpoint every this many steps (0: only at the end).
    checkpoint_interval: int = 50_000
    #: Keep this many most recent periodic checkpoints (0: keep all).
    keep_checkpoints: int = 5
    #: Show a progress bar on the terminal.
    progress_bar: bool = True
    #: Episodes played against the NPC before and after training (0: skip).
    eval_episodes: int = 100
    #: Parallel envs for those evaluations.
    eval_num_envs: int = 8
    #: The learner plays greedily in those evaluations.
    eval_deterministic: bool = False
    #: SB3 logger outputs besides TensorBoard and the progress CSV (``stdout``, ``log``, ``json``).
    log_formats: list[str] = field(default_factory=list)
    #: The seed's dual-policy block: which agents train and which checkpoint the NPCs play.
    dual_policy: DualPolicyConfig = field(default_factory=DualPolicyConfig)
    #: Self-play league: the NPC pool grows from the learner's own snapshots (off by default).
    league: LeagueConfig = field(default_factory=LeagueConfig)


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


_registered = False


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore and the ``${npc_data:NAME}`` resolver (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="npc_train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("npc_data"):
        OmegaConf.register_new_resolver("npc_data", data_path)
    _registered = True

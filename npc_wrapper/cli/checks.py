"""Checks of an ``npc-train`` config that need no env and no model, run before anything is built or written.

:func:`precheck` runs them on a command line before Hydra creates its output directory;
:func:`check_config` runs them again on the config a job is given (a sweep's, or one from code).
"""

from __future__ import annotations

import multiprocessing
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from npc_wrapper.backends import check_backend
from npc_wrapper.checkpoints.uri import parse_uri
from npc_wrapper.cli.config import backend_options, compose_config, dual_policy_config, league_config
from npc_wrapper.cli.errors import CLIError, one_line
from npc_wrapper.config import DualPolicyConfig
from npc_wrapper.errors import CheckpointError
from npc_wrapper.workers import check_worker_split

__all__ = [
    "LOG_FORMATS",
    "WANDB_MODES",
    "check_config",
    "check_device",
    "check_npc_uri",
    "check_writable_dir",
    "precheck",
]

#: SB3 logger outputs that ``trainer.log_formats`` may add (CSV and TensorBoard are always on).
LOG_FORMATS = ("stdout", "log", "json")
#: The values of ``wandb.mode`` (null: chosen by :func:`npc_wrapper.cli.tracking.choose_wandb_mode`).
WANDB_MODES = ("online", "offline", "disabled")
#: Hydra flags that take a value; anything else starting with '-' is left to Hydra alone.
_VALUE_FLAGS = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"}


def check_config(cfg: DictConfig) -> None:
    """The numbers, the names and the fixed choices of ``cfg``, and its device.

    :param cfg: a composed ``npc-train`` config
    :raises CLIError: naming the key to fix
    """
    _check_numbers(cfg)
    _check_options(cfg)


def _check_numbers(cfg: DictConfig) -> None:
    t = cfg.trainer
    for key, low in (
        ("total_timesteps", 1),
        ("num_envs", 1),
        ("num_workers", 0),
        ("checkpoint_interval", 0),
        ("keep_checkpoints", 0),
        ("eval_episodes", 0),
        ("eval_num_envs", 1),
    ):
        if t[key] < low:
            raise CLIError(f"trainer.{key} must be >= {low}, got {t[key]}")
    if t.video.enabled and t.video.episodes < 1:
        raise CLIError(
            f"trainer.video.episodes must be >= 1 when trainer.video.enabled, got {t.video.episodes}"
        )
    if t.torch_threads is not None and t.torch_threads < 1:
        raise CLIError(f"trainer.torch_threads must be >= 1 or null (1 on the CPU), got {t.torch_threads}")
    if not t.log_interval_s > 0:  # also NaN
        raise CLIError(f"trainer.log_interval_s must be > 0 seconds, got {t.log_interval_s}")
    if not str(cfg.run).strip() or "/" in str(cfg.run):
        raise CLIError(
            f"run must be a non-empty name without '/', got {cfg.run!r} (use run_dir=PATH to place it)"
        )
    try:
        check_worker_split(t.num_envs, t.num_workers, prefix="trainer.")
    except ValueError as e:
        raise CLIError(str(e)) from e


def _check_options(cfg: DictConfig) -> None:
    """Values with a fixed set of choices, and the device."""
    bad = [f for f in cfg.trainer.log_formats if f not in LOG_FORMATS]
    if bad:
        raise CLIError(f"trainer.log_formats: unknown format(s) {bad}; use any of {list(LOG_FORMATS)}")
    if cfg.wandb.mode is not None and cfg.wandb.mode not in WANDB_MODES:
        raise CLIError(
            f"wandb.mode={cfg.wandb.mode!r} is not one of {', '.join(WANDB_MODES)} (or null: online with an "
            "API key, else offline)"
        )
    try:
        check_backend(num_workers=cfg.trainer.num_workers, prefix="trainer.", **backend_options(cfg))
    except (TypeError, ValueError, ImportError) as e:
        raise CLIError(str(e)) from e
    methods = multiprocessing.get_all_start_methods()
    if cfg.trainer.start_method is not None and cfg.trainer.start_method not in methods:
        raise CLIError(
            f"trainer.start_method={cfg.trainer.start_method!r} is not a start method of this machine: "
            f"use one of {methods}, or null for the platform's default"
        )
    check_device(cfg.device)


def check_device(device: str, option: str = "device") -> None:
    """Refuse a CUDA device this machine lacks, before anything is built (torch would fall back or fail late).

    :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``...
    :param option: how the user set it (``device``, ``--device``), for the message
    """
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


def check_writable_dir(directory: str | Path, what: str) -> None:
    """Create ``directory`` (and its parents) where missing and write a file in it, so that a path where
    nothing can be written fails now, in one line, rather than after the envs and the model are built.

    :param what: how the user named it (``run_dir=runs/x``, ``--json out/x.json``), for the message
    :raises CLIError: naming it and the reason
    """
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        why = e.strerror or one_line(e)
        raise CLIError(f"{what}: cannot write in {directory} ({why}); choose another path") from None


def check_npc_uri(dp: DualPolicyConfig, where: str = "trainer.dual_policy.checkpoint_npc.uri") -> None:
    """A local NPC checkpoint must exist before anything is built (the URI parsed as the loader does).

    :param dp: the validated ``trainer.dual_policy`` block
    :param where: how the user gave the URI (a config key, ``--npc``), for the message
    """
    if not dp.enabled:
        return
    try:
        parsed = parse_uri(str(dp.checkpoint_npc.uri))
    except CheckpointError as e:
        raise CLIError(f"{where}: {one_line(e)}") from e
    if parsed.kind == "file" and not parsed.value.exists():
        raise CLIError(
            f"{where}: no checkpoint at {str(parsed.value)!r}; give an "
            "existing checkpoint file or directory (file://PATH), a wandb:// URI, 'random' or 'noop'"
        )


def precheck(argv: Sequence[str]) -> None:
    """Compose the config of an ``npc-train`` command line once before Hydra does, so a bad override fails
    with one line before Hydra creates the output directory and anything is built.

    :param argv: the command line's arguments (overrides and Hydra flags); one with a flag of Hydra's
        own (``--help``, ``--cfg``, ``-m``...) or another primary config directory is left to Hydra
    :raises CLIError: naming the key to fix
    """
    overrides: list[str] = []
    extra_dirs: list[str] = []
    config_name = "config"
    it = iter(argv)
    for arg in it:
        flag, eq, inline = arg.partition("=")
        if flag in _VALUE_FLAGS:
            value = inline if eq else next(it, "")
            if flag in ("--config-dir", "-cd"):
                extra_dirs.append(value)
            elif flag in ("--config-name", "-cn"):
                config_name = value
            else:
                return  # a different primary config directory: leave it all to Hydra
        elif arg.startswith("-"):
            return  # --help, --cfg, --multirun...: Hydra's own behaviour
        else:
            overrides.append(arg)
    cfg = compose_config(overrides, config_name=config_name, extra_dirs=extra_dirs)
    check_config(cfg)
    dual_policy_config(cfg)
    league_config(cfg)
    check_writable_dir(cfg.run_dir, f"run_dir={cfg.run_dir}")  # Hydra creates it next, with a traceback

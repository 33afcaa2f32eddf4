"""Where a training run's metrics go: the SB3 logger's files in the run directory, and the W&B run.

wandb is optional (``pip install 'npc-wrapper[wandb]'``): it is imported only when a run enables it.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.logger import (
    CSVOutputFormat,
    HumanOutputFormat,
    JSONOutputFormat,
    Logger,
    TensorBoardOutputFormat,
    make_output_format,
)

from npc_wrapper.cli.callbacks import atomic_write_text
from npc_wrapper.cli.errors import CLIError, one_line
from npc_wrapper.cli.run_dir import RunPaths

__all__ = ["choose_wandb_mode", "make_logger", "init_wandb", "log_model_artifact", "finish_wandb"]

log = logging.getLogger("npc_wrapper.cli")


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_wandb_mode(configured: str | None = None) -> str:
    """``configured``, else ``WANDB_MODE``, else online with an API key and offline without one.

    :param configured: the configured mode (``wandb.mode``), or ``None``
    """
    return configured or os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")


def make_logger(cfg: DictConfig, paths: RunPaths, start_step: int) -> Logger:
    """The SB3 logger of a session: the progress CSV, TensorBoard and ``trainer.log_formats``.

    :param cfg: the job's config
    :param paths: the run directory
    :param start_step: the step the session starts at (a resumed session writes files of its own)
    """
    paths.logs.mkdir(parents=True, exist_ok=True)
    # SB3's file outputs truncate their files, so a resumed session (even from step 0) writes its own.
    suffix = f"_from_{start_step}" if cfg.trainer.resume else ""
    formats = [
        CSVOutputFormat(str(paths.logs / f"progress{suffix}.csv")),
        TensorBoardOutputFormat(str(paths.tensorboard)),
    ]
    for fmt in cfg.trainer.log_formats:  # checked by check_config
        if fmt == "json":
            formats.append(JSONOutputFormat(str(paths.logs / f"progress{suffix}.json")))
        elif fmt == "log":
            formats.append(HumanOutputFormat(str(paths.logs / f"log{suffix}.txt")))
        else:
            formats.append(make_output_format(fmt, str(paths.logs)))
    return Logger(str(paths.logs), formats)


def init_wandb(cfg: DictConfig, paths: RunPaths) -> Any:
    """Start (or, for a resumed run, continue) the run's W&B run, syncing its TensorBoard logs.

    :param cfg: the job's config (``wandb.*``)
    :param paths: the run directory, where the W&B run id is kept
    :raises CLIError: when wandb is missing or cannot start
    """
    try:
        import wandb
    except ImportError as e:
        raise CLIError(
            "wandb.enabled=true needs wandb: pip install 'npc-wrapper[wandb]' (or set wandb.enabled=false)"
        ) from e
    run_id = paths.wandb_id.read_text().strip() if paths.wandb_id.is_file() else None
    mode = choose_wandb_mode(cfg.wandb.mode)
    try:
        run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            group=cfg.wandb.group,
            tags=list(cfg.wandb.tags),
            notes=cfg.wandb.notes,
            name=cfg.run,
            id=run_id,
            resume="allow" if run_id else None,
            dir=str(paths.root),
            config=OmegaConf.to_container(cfg, resolve=True),
            sync_tensorboard=True,
            mode=mode,
        )
    except Exception as e:
        raise CLIError(
            f"wandb.init failed in {mode} mode: {one_line(e)} (run 'wandb login', set WANDB_API_KEY, "
            "use wandb.mode=offline, or wandb.enabled=false)"
        ) from e
    atomic_write_text(paths.wandb_id, run.id)
    log.info("wandb run %s (%s mode)", run.id, mode)
    return run


def _artifact_name(run: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run)


def log_model_artifact(
    run: Any, cfg: DictConfig, paths: RunPaths, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Log ``final.zip`` as a W&B model artifact (usable as the next NPC); its URI, kept in the run directory.

    :param run: the W&B run
    :param cfg: the job's config
    :param paths: the run directory
    :param metadata: the final model's metadata (``step`` names the artifact's alias)
    """
    import wandb

    name = _artifact_name(cfg.run)
    artifact = wandb.Artifact(
        name=name,
        type="model",
        metadata=metadata,
        description=f"npc-train {cfg.trainer.algorithm} on {cfg.env.name}, step {metadata['step']}",
    )
    artifact.add_file(str(paths.final), name="final.zip")
    run.log_artifact(artifact, aliases=["latest", f"step_{metadata['step']}"])
    entity = run.entity or cfg.wandb.entity or "<entity>"
    info = {
        "uri": f"wandb://{entity}/{run.project or cfg.wandb.project}/model/{name}:latest",
        "name": name,
        "metadata": metadata,
        "mode": choose_wandb_mode(cfg.wandb.mode),
    }
    atomic_write_text(paths.artifact, json.dumps(info, indent=2, default=float))
    return info


def finish_wandb(run: Any) -> None:
    """Finish the W&B run and undo its TensorBoard patch.

    :param run: the W&B run
    """
    import wandb

    run.finish()
    # finish() leaves TensorBoard patched (sync_tensorboard), so the next run in this process
    # (npc-train -m, train() called again) would get wandb's "several event log directories" warning.
    wandb.tensorboard.unpatch()

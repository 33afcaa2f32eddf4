"""The layout of a run directory (``runs/<run>``) and what a session reads from one to resume or evaluate it.

A run writes ``config.yaml`` (resolved), ``checkpoints/step_<n>.zip`` with ``.json`` metadata
sidecars, ``final.zip`` (with ``final.json``), ``eval.json``, ``logs/``, ``tb/``, ``league/``, ``videos/`` and
the W&B run's id and artifact when enabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npc_wrapper.checkpoints.select import sidecar_metadata
from npc_wrapper.checkpoints.store import latest_checkpoint, list_checkpoints
from npc_wrapper.checkpoints.uri import parse_uri
from npc_wrapper.cli.algos import resolve_algorithm
from npc_wrapper.cli.config import read_run_config
from npc_wrapper.cli.errors import CLIError, one_line
from npc_wrapper.errors import CheckpointError

__all__ = ["RunPaths", "ResumePoint", "resume_point", "resume_hint", "find_run_config", "resolve_policy_path"]


class RunPaths:
    """The files of one run directory.

    :param root: ``runs/<run>``
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final.zip"
        self.config = self.root / "config.yaml"
        self.logs = self.root / "logs"
        self.tensorboard = self.root / "tb"
        self.eval = self.root / "eval.json"
        self.wandb_id = self.root / "wandb_run_id"
        self.artifact = self.root / "wandb_artifact.json"
        self.league = self.root / "league"
        self.videos = self.root / "videos"


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resumed session continues from."""

    #: The checkpoint's step (its file name's).
    step: int
    #: ``checkpoints/step_<step>.zip``
    path: Path
    #: Its metadata sidecar (metrics of the last window, ``total_episodes``...).
    metadata: dict[str, Any]
    #: Episodes ended before this session (0 for checkpoints written before it was recorded).
    episodes: int


def resume_point(cfg: DictConfig, paths: RunPaths) -> ResumePoint | None:
    """Where the session starts: ``None`` for a new run, else the run's latest readable checkpoint.

    :param cfg: the job's config (``trainer.resume``, and what must match the stored run's config)
    :param paths: the run directory
    :raises CLIError: resuming a run with no checkpoint or another algorithm or network; starting a new
        run where one already is; a checkpoint whose metadata cannot be read
    """
    latest = latest_checkpoint(paths.checkpoints)
    if not cfg.trainer.resume:
        if list_checkpoints(paths.checkpoints) or paths.final.exists():
            raise CLIError(
                f"{paths.root} already holds a run; pass trainer.resume=true to continue it, or choose "
                "another run=NAME"
            )
        return None
    if latest is None:
        raise CLIError(
            f"trainer.resume=true but {paths.checkpoints} holds no checkpoint (step_<n>.zip) to resume from; "
            "check run=/run_dir=, or drop trainer.resume to start the run fresh"
        )
    _check_resumed_algorithm(cfg, paths)
    step, path = latest
    try:
        metadata = sidecar_metadata(path)
    except CheckpointError as e:
        raise CLIError(f"cannot resume from {path}: {one_line(e)}") from e
    # Checkpoints written before total_episodes was recorded lack it: the count restarts at 0.
    episodes = metadata.get("total_episodes", 0)
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 0:
        raise CLIError(
            f"cannot resume from {path}: its metadata's total_episodes must be a count, got {episodes!r}"
        )
    return ResumePoint(step, path, metadata, episodes)


def _check_resumed_algorithm(cfg: DictConfig, paths: RunPaths) -> None:
    """A checkpoint continues only with the algorithm and network that wrote it (A2C would load a PPO zip
    as its own; SB3 rebuilds the stored network whatever ``trainer.policy``/``policy_kwargs`` say)."""
    if not paths.config.is_file():
        return
    try:
        stored_cfg = read_run_config(paths.config)
    except CLIError as e:
        raise CLIError(f"trainer.resume=true: {e}") from e
    stored = OmegaConf.select(stored_cfg, "trainer.algorithm")
    if stored is not None and resolve_algorithm(str(stored)) is not resolve_algorithm(cfg.trainer.algorithm):
        raise CLIError(
            f"trainer.resume=true: {paths.root} was trained with trainer.algorithm={stored} "
            f"({paths.config}), but this session's is {cfg.trainer.algorithm}; resume with the original "
            "trainer= (and its overrides), or start a new run=NAME"
        )
    for key in ("policy", "policy_kwargs"):
        old, new = OmegaConf.select(stored_cfg, f"trainer.{key}"), cfg.trainer[key]
        # Resolved: config.yaml was written resolved, this session's may hold interpolations.
        plain = [OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for v in (old, new)]
        if old is not None and plain[0] != plain[1]:
            raise CLIError(
                f"trainer.resume=true: {paths.root} was trained with trainer.{key}={plain[0]} "
                f"({paths.config}), but this session's is {plain[1]}; a checkpoint keeps its network: resume "
                f"with the original trainer.{key}, or start a new run=NAME"
            )


def resume_hint(cfg: DictConfig, paths: RunPaths) -> str:
    """The overrides that name this run again: ``run=NAME``, plus ``run_dir=`` where it is not ``runs/NAME``.

    :param cfg: the job's config
    :param paths: the run directory
    """
    where = f"run={cfg.run}"
    if paths.root != Path("runs") / str(cfg.run):  # run_dir=PATH, or a sweep's runs/<run>/<job>
        where += f" run_dir={paths.root}"
    return where


def _local_path(policy: str) -> Path | None:
    """The local file or directory ``policy`` names, parsed as the loader parses it; else ``None``."""
    try:
        parsed = parse_uri(policy)
    except CheckpointError:
        return None  # not a local path; loading the policy reports what is wrong with it
    return parsed.value if parsed.kind == "file" else None


def find_run_config(policy: str) -> Path | None:
    """The ``config.yaml`` of a run directory given as the policy; ``None`` for anything else.

    Only a directory given itself counts: a checkpoint file is evaluated in the default config (and
    the overrides), never in a ``config.yaml`` found near it, which would be code run from wherever
    the file happens to lie (its ``_target_`` s are called).

    :param policy: a path or URI of a policy
    """
    path = _local_path(policy)
    if path is None or not path.is_dir() or not (path / "config.yaml").is_file():
        return None
    return path / "config.yaml"


def resolve_policy_path(policy: str) -> str:
    """A run directory stands for its ``final.zip``, else its latest checkpoint; anything else for itself.

    :param policy: a run directory, a path or URI of a policy
    :raises CLIError: a run directory with nothing to evaluate
    """
    path = _local_path(policy)
    if path is not None and path.is_dir() and (path / "config.yaml").is_file():
        paths = RunPaths(path)
        if paths.final.is_file():
            return str(paths.final)
        latest = latest_checkpoint(paths.checkpoints)
        if latest is None:
            raise CLIError(f"run directory {path} has neither final.zip nor a checkpoint to evaluate")
        return str(latest[1])
    return policy

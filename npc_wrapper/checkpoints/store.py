"""Writing checkpoints: every model, sidecar and state file the package saves goes through here.

Files are written atomically: the content goes to a hidden temporary file in the same directory
(``.<name>.<pid>.tmp``, ``.<stem>.<pid>.tmp.zip``), is flushed to disk, and is renamed over its final
name with ``os.replace``. A run killed at any moment leaves either the previous file or the new one,
never a torn file, and its temporary files, which :func:`remove_stale_temporaries` deletes at the next
start; :func:`latest_checkpoint` also skips any checkpoint whose members cannot be read (a copy
damaged after the save).

Names: a training run's periodic checkpoints are ``step_<num_timesteps>.zip``
(:func:`checkpoint_path`), the league's snapshots ``snapshot_<steps>.zip`` (:func:`snapshot_path`),
each with its metadata in a ``.json`` sidecar that the checkpoint selectors read.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from npc_wrapper.checkpoints.sb3 import check_sb3_zip
from npc_wrapper.errors import CheckpointError, CheckpointLimitError

__all__ = [
    "CHECKPOINT_RE",
    "atomic_save",
    "atomic_write_json",
    "atomic_write_text",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "remove_stale_temporaries",
    "snapshot_path",
]

logger = logging.getLogger(__name__)

#: Periodic checkpoint files: ``checkpoints/step_<num_timesteps>.zip``.
CHECKPOINT_RE = re.compile(r"^step_(\d+)\.zip$")
#: The temporary files of :func:`atomic_write_text` and :func:`atomic_save`, with the writer's pid.
_TEMPORARY_RE = re.compile(r"^\..+\.(\d+)\.tmp(\.zip)?$")


def checkpoint_path(directory: Path, step: int) -> Path:
    """``directory/step_<step>.zip``."""
    return directory / f"step_{int(step)}.zip"


def snapshot_path(directory: Path, name: str) -> Path:
    """Where the league saves its snapshot ``name`` (``snapshot@<steps>``, ``snapshot@<steps>#2``):
    ``directory/snapshot_<steps>.zip``, ``directory/snapshot_<steps>_2.zip``.

    Named after the unique member name: a second snapshot at a step (the step count went back, or a
    resumed run repeats steps) must not overwrite the first one's file.
    """
    return directory / f"{name.replace('@', '_').replace('#', '_')}.zip"


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (numbers numpy gives, such as float32, as floats)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float))


def atomic_save(model: BaseAlgorithm, path: Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` to ``path`` (a ``.zip``) atomically, with ``metadata`` in a ``.json`` sidecar.

    The sidecar is written first, so a checkpoint never exists without its metadata.

    :param model: the SB3 model
    :param path: final path, ending in ``.zip``
    :param metadata: JSON-serialisable metadata (``epoch``, ``step``, metrics) for checkpoint selectors
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # SB3 appends ".zip" to names without it, so the temporary name ends in .zip too.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.zip")
    try:
        model.save(tmp)
        _fsync_path(tmp)
        if metadata is not None:
            atomic_write_json(path.with_suffix(".json"), dict(metadata))
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one of another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files an interrupted save left in ``directory``: those of this process
    (none is being written when a run starts) and of processes that no longer run.

    :return: what was deleted (each is logged)
    """
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        m = _TEMPORARY_RE.match(path.name)
        if m is None or not path.is_file() or (int(m.group(1)) != os.getpid() and _alive(int(m.group(1)))):
            continue
        path.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted save", path)
        removed.append(path)
    return removed


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the periodic checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The newest readable checkpoint in ``directory``: one whose ``data`` and ``policy.pth`` read
    (:func:`~npc_wrapper.checkpoints.sb3.check_sb3_zip`); a torn, empty or damaged one is skipped with
    a warning saying why. One too large to check within the default limits is not damaged: it is
    chosen (resuming loads it with SB3's own loader; loading it as an NPC applies the limits again)."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            check_sb3_zip(path)
        except CheckpointLimitError as e:
            logger.info("%s is too large to check before it is loaded: %s", path, e)
        except CheckpointError as e:
            logger.warning("skipping unreadable checkpoint %s: %s", path, e)
            continue
        return step, path
    return None

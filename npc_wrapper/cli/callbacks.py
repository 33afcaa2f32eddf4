"""SB3 callbacks of ``npc-train`` and the run directory's checkpoint files.

Checkpoints are written atomically: the model goes to a hidden temporary file in the same
directory, is flushed to disk, and is renamed over its final name with ``os.replace``. A run
killed at any moment leaves either the previous checkpoint or the new one, never a torn file;
:func:`latest_checkpoint` also skips any file that is not a readable zip archive.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from npc_wrapper.evaluation import EpisodeStats, episodes_from_infos

__all__ = [
    "CHECKPOINT_RE",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "atomic_save",
    "atomic_write_text",
    "epoch_of",
    "NPCMetricsCallback",
    "CheckpointCallback",
]

log = logging.getLogger("npc_wrapper.cli")

#: Periodic checkpoint files: ``checkpoints/step_<num_timesteps>.zip``.
CHECKPOINT_RE = re.compile(r"^step_(\d+)\.zip$")


def checkpoint_path(directory: Path, step: int) -> Path:
    """``directory/step_<step>.zip``."""
    return directory / f"step_{int(step)}.zip"


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
            atomic_write_text(
                path.with_suffix(".json"), json.dumps(dict(metadata), indent=2, sort_keys=True, default=float)
            )
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _readable_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the periodic checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The newest readable checkpoint in ``directory`` (a torn or corrupt file is skipped with a warning)."""
    for step, path in reversed(list_checkpoints(directory)):
        if _readable_zip(path):
            return step, path
        log.warning("skipping unreadable checkpoint %s", path)
    return None


def epoch_of(model: BaseAlgorithm) -> int:
    """Training iterations so far: rollouts of ``n_steps * n_envs`` for on-policy algorithms."""
    per_iteration = int(getattr(model, "n_steps", 1)) * int(model.n_envs)
    return int(model.num_timesteps // max(per_iteration, 1))


class NPCMetricsCallback(BaseCallback):
    """Logs episode outcomes against the NPC to the SB3 logger at the end of every rollout.

    Keys (means over the last ``window`` episodes): ``npc/win_rate``, ``npc/loss_rate``,
    ``npc/draw_rate`` (the training team's summed return above, below or equal to the NPC team's),
    ``npc/train_team_return``, ``npc/npc_team_return``, ``npc/episode_length``, ``npc/episodes``
    (episodes ended so far), and ``npc/<name>/win_rate`` / ``npc/<name>/train_team_return`` per
    NPC when a pool plays.

    :param n_train: training agents per sub-env
    :param has_npc: whether the env has NPC agents (without them only returns and length are logged)
    :param window: episodes the means are taken over
    :param start_episodes: episodes ended before this session (``npc/episodes`` counts on from there)
    :param report: called with the step and the summary after each rollout (for log lines)
    """

    def __init__(
        self,
        n_train: int,
        has_npc: bool = True,
        window: int = 100,
        report: Callable[[int, dict[str, Any]], None] | None = None,
        start_episodes: int = 0,
    ) -> None:
        super().__init__()
        self.n_train = n_train
        self.has_npc = has_npc
        self.stats = EpisodeStats(window=window)
        self.total_episodes = start_episodes  # a resumed run continues its count
        self.report = report
        self.last_summary: dict[str, Any] = {"episodes": 0}

    def _on_step(self) -> bool:
        ended = episodes_from_infos(self.locals["infos"], self.n_train)
        if ended:
            self.stats.extend(e for _, e in ended)
            self.total_episodes += len(ended)
        return True

    def _on_rollout_end(self) -> None:
        if not len(self.stats):
            return
        s = self.stats.summary()
        self.last_summary = s
        rec = self.logger.record
        rec("npc/episodes", self.total_episodes)
        rec("npc/train_team_return", s["train_return"])
        rec("npc/episode_length", s["episode_length"])
        if self.has_npc:
            rec("npc/npc_team_return", s["npc_return"])
            for key in ("win_rate", "loss_rate", "draw_rate"):
                rec(f"npc/{key}", s[key])
            for name, sub in s.get("per_npc", {}).items():
                rec(f"npc/{name}/win_rate", sub["win_rate"])
                rec(f"npc/{name}/train_team_return", sub["train_return"])
        if self.report is not None:
            self.report(self.num_timesteps, s)


class CheckpointCallback(BaseCallback):
    """Saves ``checkpoints/step_<n>.zip`` (atomically, with a metadata sidecar) every ``interval`` steps.

    Checkpoints are taken at the first rollout boundary past each multiple of ``interval``.

    :param directory: the run's ``checkpoints/`` directory
    :param interval: steps between checkpoints (0: none; the final one is saved by the caller)
    :param keep: how many periodic checkpoints to keep (0: all)
    :param metadata: called with the model; returns the sidecar's metadata
    """

    def __init__(
        self,
        directory: Path,
        interval: int,
        keep: int = 0,
        metadata: Callable[[BaseAlgorithm], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.interval = int(interval)
        self.keep = int(keep)
        self.metadata = metadata
        self._bucket = 0

    def _init_callback(self) -> None:
        self._bucket = self.model.num_timesteps // self.interval if self.interval > 0 else 0

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        # Between rollouts the model has trained on every step it counted, so a resumed run
        # neither repeats nor skips an update.
        step = self.model.num_timesteps
        if self.interval > 0 and step // self.interval > self._bucket:
            self._bucket = step // self.interval
            self.save()

    def save(self) -> Path:
        """Save a checkpoint at the current step now and prune old ones."""
        t = time.time()
        path = atomic_save(
            self.model,
            checkpoint_path(self.directory, self.model.num_timesteps),
            self.metadata(self.model) if self.metadata else None,
        )
        log.debug("saved %s in %.2fs", path, time.time() - t)
        self.prune()
        return path

    def prune(self) -> None:
        if self.keep <= 0:
            return
        for _, old in list_checkpoints(self.directory)[: -self.keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)

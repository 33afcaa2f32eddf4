"""SB3 callbacks of ``npc-train``: episode outcomes to the logger, periodic checkpoints.

The checkpoint files themselves are written by :mod:`npc_wrapper.checkpoints.store` (atomically).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from npc_wrapper.agents import SlotMap
from npc_wrapper.checkpoints.store import atomic_save, checkpoint_path, list_checkpoints
from npc_wrapper.cli.errors import writing
from npc_wrapper.evaluation import EpisodeStats, episodes_from_infos

__all__ = [
    "SAVE_ADVICE",
    "epoch_of",
    "NPCMetricsCallback",
    "CheckpointCallback",
]

log = logging.getLogger("npc_wrapper.cli")

#: What to do when a run's file cannot be saved: the writes are atomic, so nothing saved before is lost.
SAVE_ADVICE = (
    "the files saved before are intact: free disk space (or fix the permissions), then continue the run "
    "with trainer.resume=true"
)


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

    :param slots: the training env's slots (``venv.slots``)
    :param has_npc: whether the env has NPC agents (without them only returns and length are logged)
    :param window: episodes the means are taken over
    :param start_episodes: episodes ended before this session (``npc/episodes`` counts on from there)
    """

    def __init__(
        self,
        slots: SlotMap,
        has_npc: bool = True,
        window: int = 100,
        start_episodes: int = 0,
    ) -> None:
        super().__init__()
        self.slots = slots
        self.has_npc = has_npc
        self.stats = EpisodeStats(window=window)
        self.total_episodes = start_episodes  # a resumed run continues its count
        self.last_summary: dict[str, Any] = {"episodes": 0}

    def _on_step(self) -> bool:
        ended = episodes_from_infos(self.locals["infos"], self.slots)
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
        path = checkpoint_path(self.directory, self.model.num_timesteps)
        with writing("checkpoint", path, SAVE_ADVICE):
            atomic_save(self.model, path, self.metadata(self.model) if self.metadata else None)
        log.debug("saved %s in %.2fs", path, time.time() - t)
        self.prune()
        return path

    def prune(self) -> None:
        if self.keep <= 0:
            return
        for _, old in list_checkpoints(self.directory)[: -self.keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)

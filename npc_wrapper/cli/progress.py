"""Progress of the waits of ``npc-train`` and ``npc-eval``: training steps and evaluation episodes.

On a terminal (and with ``trainer.progress_bar`` on) both show a progress bar, SB3's own during
training and the same kind (``tqdm.rich``) during evaluations: done / total, elapsed time, time
left. Without a bar (a log file, a CI job, a test) nothing redraws: training and evaluations write a
line at least every ``trainer.log_interval_s`` seconds instead, with what is done, the speed and the
time left, even while no episode ends.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from tqdm import TqdmExperimentalWarning
from tqdm.rich import tqdm

__all__ = ["on_terminal", "format_duration", "EpisodeProgress", "TrainingProgressLog"]

log = logging.getLogger("npc_wrapper.cli")


def on_terminal() -> bool:
    """Whether the output is a terminal, where a bar can redraw itself (SB3's bar writes to stdout)."""
    return sys.stdout.isatty()


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when not a finite number.

    Example::

        >>> format_duration(3725), format_duration(185), format_duration(42.4), format_duration(float("inf"))
        ('1h02m', '3m05s', '42s', '?')
    """
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class EpisodeProgress:
    """Progress of playing ``total`` episodes: a bar, or a line at most every ``interval_s`` seconds.

    Pass it as ``observe`` to :func:`npc_wrapper.evaluation.play_episodes` (it is called with the episodes
    played so far) and :meth:`close` it afterwards.

    :param total: episodes to play
    :param what: what is played, for the bar and the lines (``evaluation before training``)
    :param bar: show a bar (else lines)
    :param interval_s: seconds between lines without a bar
    :param emit: where the lines go (default: the ``npc_wrapper.cli`` logger at INFO)
    """

    def __init__(
        self,
        total: int,
        what: str,
        bar: bool,
        interval_s: float,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.total = total
        self.what = what
        self.interval_s = interval_s
        self.emit = emit or log.info
        self.done = 0
        self.started = self.last_line = time.monotonic()
        self._bar: Any = None
        if bar:
            with warnings.catch_warnings():  # tqdm.rich is "experimental"; SB3's bar silences it too
                warnings.simplefilter("ignore", TqdmExperimentalWarning)
                self._bar = tqdm(total=total, desc=what, unit="episodes")

    def __call__(self, done: int) -> None:
        """Record that ``done`` episodes have been played."""
        if self._bar is not None:
            if done > self.done:
                self._bar.update(done - self.done)
            self.done = done
            return
        self.done = done
        now = time.monotonic()
        if now - self.last_line >= self.interval_s:
            self.last_line = now
            self.emit(self.line(now))

    def line(self, now: float) -> str:
        """The progress line at time ``now`` (``time.monotonic()``)."""
        elapsed = now - self.started
        left = elapsed / self.done * (self.total - self.done) if self.done else math.inf
        return (
            f"{self.what}: {self.done}/{self.total} episodes, {format_duration(elapsed)} elapsed, "
            f"about {format_duration(left)} left"
        )

    def close(self) -> None:
        """Close the bar (it stays on screen, complete)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TrainingProgressLog(BaseCallback):
    """Without a progress bar: a training line at least every ``interval_s`` seconds, even while no episode
    ends, and one at the end: the step, the speed, the time left and the latest episode metrics.

    :param total: the step training stops at (``trainer.total_timesteps``)
    :param interval_s: seconds between lines
    :param metrics: the latest window of episode metrics (``{"episodes": 0}`` before the first), or ``None``
    :param has_npc: whether the metrics hold a win rate against the NPC
    """

    def __init__(
        self,
        total: int,
        interval_s: float,
        metrics: Callable[[], dict[str, Any]] | None = None,
        has_npc: bool = True,
    ) -> None:
        super().__init__()
        self.total = total
        self.interval_s = interval_s
        self.metrics = metrics
        self.has_npc = has_npc
        self._start_step = 0
        self._started = self._last_line = 0.0

    def _on_training_start(self) -> None:
        self._start_step = int(self.num_timesteps)
        self._started = self._last_line = time.monotonic()

    def _on_step(self) -> bool:
        now = time.monotonic()
        if now - self._last_line >= self.interval_s:
            self._last_line = now
            log.info("%s", self.line(now))
        return True

    def _on_training_end(self) -> None:
        log.info("%s", self.line(time.monotonic()))

    def line(self, now: float) -> str:
        """The progress line at time ``now`` (``time.monotonic()``)."""
        step, elapsed = int(self.num_timesteps), now - self._started
        speed = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        left = (self.total - step) / speed if speed > 0 else math.inf
        text = (
            f"step {step:,}/{self.total:,}  {speed:,.0f} steps/s  {format_duration(elapsed)} elapsed, "
            f"about {format_duration(max(left, 0.0))} left"
        )
        s = self.metrics() if self.metrics is not None else {}
        if s.get("episodes"):
            win = f"win {s['win_rate']:.2f}  npc return {s['npc_return']:.2f}  " if self.has_npc else ""
            text += f"  |  {win}train return {s['train_return']:.2f}  length {s['episode_length']:.1f}"
        return text

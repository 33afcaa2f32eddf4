"""``npc-train``'s evaluations: the model's games against the NPC before and after training.

They run on envs of their own (seeded apart from the training envs, in this process), go to the
run's ``eval.json`` and to the logger's ``eval/*`` keys, and are printed in the final report.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig
from stable_baselines3.common.logger import Logger

from npc_wrapper.checkpoints.store import atomic_write_text
from npc_wrapper.cli.algos import ActionMaskVecEnv
from npc_wrapper.cli.build import TrainingPlan, build_vec_env
from npc_wrapper.cli.callbacks import SAVE_ADVICE
from npc_wrapper.cli.errors import CLIError, one_line, writing
from npc_wrapper.cli.progress import EpisodeProgress, on_terminal
from npc_wrapper.cli.run_dir import RunPaths
from npc_wrapper.errors import NoEpisodeEnds
from npc_wrapper.evaluation import format_summary, play_episodes

__all__ = ["EVAL_SEED_OFFSET", "evaluate_model", "TrainingEvaluation"]

log = logging.getLogger("npc_wrapper.cli")

#: Seed offset of the evaluation envs, so evaluation episodes differ from training ones.
EVAL_SEED_OFFSET = 1_000_003
#: The summary keys logged as ``eval/<key>``.
_LOGGED_KEYS = (
    "win_rate",
    "loss_rate",
    "draw_rate",
    "win_rate_ci_low",
    "win_rate_ci_high",
    "train_return",
    "npc_return",
    "episode_length",
    "episodes",
)


def evaluate_model(
    model: Any,
    venv: Any,
    episodes: int,
    deterministic: bool = False,
    observe: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Play ``episodes`` episodes of the SB3 ``model`` against the NPCs of ``venv``; the summary.

    :param model: the SB3 model
    :param venv: the NPC vector env (wrapped in :class:`ActionMaskVecEnv` for ``MaskablePPO`` where the env's
        masks come in infos); a ``MaskablePPO`` model gets the slots' masks
    :param episodes: episodes to play
    :param deterministic: the model acts greedily
    :param observe: :func:`~npc_wrapper.evaluation.play_episodes`' ``observe`` (progress, video)
    :raises CLIError: when no episode ends (an env without a time limit)
    """
    state: Any = None
    takes_masks = "action_masks" in inspect.signature(model.predict).parameters  # MaskablePPO's predict

    def act(obs: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        nonlocal state
        masked = takes_masks and (isinstance(venv, ActionMaskVecEnv) or venv.engine.has_masks)
        extra = {"action_masks": venv.action_masks()} if masked else {}
        actions, state = model.predict(
            obs, state=state, episode_start=episode_start, deterministic=deterministic, **extra
        )
        return actions

    try:
        return play_episodes(act, venv, episodes, observe=observe).summary()
    except NoEpisodeEnds as e:  # an env without a time limit: one line, not a traceback
        raise CLIError(f"evaluation: {e} (env.factory), or set trainer.eval_episodes=0") from e


class TrainingEvaluation:
    """The evaluations of one session, with the run's earlier ones (``eval.json``) when it resumes.

    No env is built, and nothing evaluated, when the env has no NPC or ``trainer.eval_episodes`` is 0.

    :param cfg: the job's config (``trainer.eval_*``, ``seed``)
    :param plan: the resolved config
    :param paths: the run directory
    :param train_env: the training env (its NPCs, and whether the model takes action masks)
    :param resumed: whether the session resumes the run (its ``before`` evaluation is kept, not redone)
    """

    def __init__(
        self, cfg: DictConfig, plan: TrainingPlan, paths: RunPaths, train_env: Any, resumed: bool
    ) -> None:
        self.cfg = cfg
        self.paths = paths
        self.resumed = resumed
        #: ``{"before": summary, "after": summary}``, each with its ``step``.
        self.summaries: dict[str, Any] = _earlier_evaluations(paths) if resumed else {}
        #: The evaluation env (``None``: no evaluation).
        self.venv: Any = None
        if train_env.npc_agents and cfg.trainer.eval_episodes > 0:
            venv = build_vec_env(
                cfg, plan.env_fn, plan.dual_policy, cfg.trainer.eval_num_envs, cfg.seed + EVAL_SEED_OFFSET,
                num_workers=0,
            )
            self.venv = ActionMaskVecEnv(venv) if isinstance(train_env, ActionMaskVecEnv) else venv

    def _play(self, model: Any, when: str) -> dict[str, Any]:
        trainer = self.cfg.trainer
        bar = bool(trainer.progress_bar) and on_terminal()
        what = f"evaluation {when} training"
        progress = EpisodeProgress(trainer.eval_episodes, what, bar, trainer.log_interval_s)
        try:
            return evaluate_model(
                model, self.venv, trainer.eval_episodes, trainer.eval_deterministic, observe=progress
            )
        finally:
            progress.close()

    def before(self, model: Any, logger: Logger) -> None:
        """Evaluate the untrained model (not in a resumed session: the run's first one did).

        :param model: the SB3 model
        :param logger: the session's logger
        """
        if self.venv is None or self.resumed:
            return
        before = self._play(model, "before")
        self.summaries["before"] = {"step": 0, **before}
        # Now, not only at the end: an interrupted run's resumed session does not evaluate it again.
        self._write()
        _record(logger, before, 0)
        log.info("before training, vs the NPC:\n%s", format_summary(before, "  "))

    def after(self, model: Any, logger: Logger) -> None:
        """Evaluate the trained model.

        :param model: the SB3 model
        :param logger: the session's logger
        """
        if self.venv is None:
            return
        after = self._play(model, "after")
        step = int(model.num_timesteps)
        self.summaries["after"] = {"step": step, **after}
        _record(logger, after, step)
        self._write()

    def final_metrics(self, step: int) -> dict[str, Any]:
        """The ``after`` evaluation's numbers as ``eval_<key>`` metadata of the model at ``step``; none when
        this session did not evaluate that model (an earlier one's would be credited to another model).

        :param step: the final model's step
        """
        after = self.summaries.get("after", {})
        if after.get("step") != step:
            return {}
        return {f"eval_{k}": v for k, v in after.items() if k != "per_npc" and not isinstance(v, dict)}

    def report(self) -> list[str]:
        """Lines of the final report: each evaluation of the run, with its step."""
        lines = []
        for when in ("before", "after"):
            if when in self.summaries:
                lines.append(f"  {when} training (step {self.summaries[when]['step']}), vs the NPC:")
                lines.append(format_summary(self.summaries[when], "    "))
        return lines

    def _write(self) -> None:
        with writing("the evaluations", self.paths.eval, SAVE_ADVICE):
            atomic_write_text(self.paths.eval, json.dumps(self.summaries, indent=2, default=float))


def _earlier_evaluations(paths: RunPaths) -> dict[str, Any]:
    """The evaluations a resumed run's ``eval.json`` holds; none, with a warning, when it cannot be read
    (torn by a crash or a full disk): they are only reported, and the run can go on without them."""
    if not paths.eval.is_file():
        return {}
    try:
        found = json.loads(paths.eval.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError, RecursionError) as e:
        found = e
    if isinstance(found, dict) and all(isinstance(v, dict) for v in found.values()):
        return found
    why = f"{type(found).__name__}: {one_line(found)}" if isinstance(found, Exception) else "not evaluations"
    log.warning("ignoring %s (%s); the run's earlier evaluations are left out of its report", paths.eval, why)
    return {}


def _record(logger: Logger, summary: dict[str, Any], step: int) -> None:
    if not summary.get("episodes"):
        return
    for key in _LOGGED_KEYS:
        logger.record(f"eval/{key}", summary[key])
    logger.record("time/total_timesteps", step)  # the x axis of the progress CSV
    logger.dump(step)

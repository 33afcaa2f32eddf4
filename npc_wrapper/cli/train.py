"""``npc-train``: train a policy against frozen NPCs in a PettingZoo env, configured with Hydra.

Usage (see ``configs/config.yaml`` and the README)::

    npc-train                                      # simple_tag vs the NPC shipped with the package
    npc-train run=my_experiment trainer.dual_policy.enabled=true \\
        trainer.dual_policy.checkpoint_npc.uri="wandb://entity/project/model/name:v2" \\
        trainer.dual_policy.training_agents_pct=0.6 +user=dual_policy_checkpoint_example
    npc-train run=my_experiment trainer.resume=true trainer.total_timesteps=400000

A run writes ``runs/<run>/``: ``config.yaml`` (resolved), ``checkpoints/step_<n>.zip`` (atomic,
every ``trainer.checkpoint_interval`` steps, on Ctrl-C and at the end), ``final.zip`` (an SB3
model that is itself a valid NPC checkpoint), ``eval.json`` (win rate against the NPC before and
after training), ``logs/progress*.csv`` and ``tb/`` (TensorBoard), and ``wandb/`` when enabled.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.logger import Logger

from npc_wrapper.checkpoints.store import atomic_save, atomic_write_text, remove_stale_temporaries
from npc_wrapper.cli.algos import ActionMaskVecEnv
from npc_wrapper.cli.build import TrainingPlan, build_model, build_train_env, build_vec_env, plan_training
from npc_wrapper.cli.callbacks import SAVE_ADVICE, CheckpointCallback, NPCMetricsCallback, epoch_of
from npc_wrapper.cli.checks import check_config, check_writable_dir, precheck
from npc_wrapper.cli.config import check_schema, config_dir, register_configs
from npc_wrapper.cli.errors import CLIError, die, one_line, writing
from npc_wrapper.cli.estimate import check_memory
from npc_wrapper.cli.model_eval import TrainingEvaluation
from npc_wrapper.cli.progress import TrainingProgressLog, format_duration, on_terminal
from npc_wrapper.cli.run_dir import ResumePoint, RunPaths, resume_hint, resume_point
from npc_wrapper.cli.threads import torch_threads
from npc_wrapper.cli.tracking import (
    choose_wandb_mode,
    finish_wandb,
    init_wandb,
    log_model_artifact,
    make_logger,
)
from npc_wrapper.cli.video import TrainingVideo
from npc_wrapper.errors import SaveError
from npc_wrapper.league import LeagueCallback

__all__ = ["train", "main"]

PROG = "npc-train"
log = logging.getLogger("npc_wrapper.cli")


# --------------------------------------------------------------------------- the job
def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job as configured; return a summary (paths, step, evaluations).

    :param cfg: a composed ``npc-train`` config (:func:`npc_wrapper.cli.config.compose_config`)
    :raises CLIError: on bad input, before any training
    :raises SystemExit: with status 130 after Ctrl-C or SIGTERM, once a checkpoint is saved
    """
    started = time.time()
    paths, resume = _prepare_run(cfg)
    plan = plan_training(cfg)
    check_memory(cfg, plan)
    session = _Session()
    with torch_threads(cfg.trainer.torch_threads, cfg.device), session:
        venv = build_vec_env(cfg, plan.env_fn, plan.dual_policy, cfg.trainer.num_envs, cfg.seed)
        session.envs.append(venv)
        train_env = build_train_env(cfg, plan, venv)
        video = TrainingVideo(
            cfg, plan, paths.videos, isinstance(train_env, ActionMaskVecEnv), resumed=resume is not None
        )
        session.envs.append(video)
        model = build_model(cfg, plan, train_env, resume)
        logger = _open_outputs(cfg, paths, model, session)
        evaluation = TrainingEvaluation(cfg, plan, paths, train_env, resumed=resume is not None)
        session.envs.append(evaluation.venv)
        evaluation.before(model, logger)
        video.before(model, logger, session.wandb_run)
        callbacks = _make_callbacks(cfg, paths, plan, model, venv, resume, session.wandb_run)
        _learn(cfg, paths, plan, model, callbacks, resumed=resume is not None)
        return _finish(cfg, paths, model, callbacks, (evaluation, video), logger, session.wandb_run, started)


@dataclass
class _Session:
    """What a training session holds open: its envs and its W&B run."""

    envs: list[Any] = field(default_factory=list)
    wandb_run: Any = None

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for v in self.envs:
            if v is not None:
                try:
                    v.close()
                except Exception as e:  # a worker killed by Ctrl-C must not hide the real outcome
                    log.debug("closing env: %s", e)
        if self.wandb_run is not None:
            finish_wandb(self.wandb_run)


def _prepare_run(cfg: DictConfig) -> tuple[RunPaths, ResumePoint | None]:
    """Check the config and find where the run starts, before anything is built or written."""
    check_schema(cfg)
    check_config(cfg)
    check_writable_dir(cfg.run_dir, f"run_dir={cfg.run_dir}")
    paths = RunPaths(cfg.run_dir)
    for directory in (paths.root, paths.checkpoints, paths.league):
        remove_stale_temporaries(directory)  # what a killed save left
    return paths, resume_point(cfg, paths)


def _open_outputs(cfg: DictConfig, paths: RunPaths, model: Any, session: _Session) -> Logger:
    """Write the run's ``config.yaml``, start its W&B run and give the model the session's logger."""
    with writing("the run's config", paths.config):
        atomic_write_text(paths.config, OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.wandb.enabled and choose_wandb_mode(cfg.wandb.mode) != "disabled":  # disabled: no run at all
        session.wandb_run = init_wandb(cfg, paths)
    logger = make_logger(cfg, paths, int(model.num_timesteps))
    model.set_logger(logger)
    return logger


# --------------------------------------------------------------------------- callbacks
@dataclass
class _Callbacks:
    """The callbacks of ``model.learn``, and the checkpoint metadata they write."""

    metrics: NPCMetricsCallback
    checkpoints: CheckpointCallback
    #: The metadata sidecar of a checkpoint of the model given.
    metadata: Callable[[Any], dict[str, Any]]
    league: LeagueCallback | None = None
    wandb: Any = None
    #: Progress lines (none under a progress bar).
    progress: TrainingProgressLog | None = None

    def all(self) -> list[Any]:
        every = (self.metrics, self.checkpoints, self.league, self.wandb, self.progress)
        return [c for c in every if c is not None]

    def save_checkpoint(self, model: Any) -> Path:
        """``checkpoints/step_<n>.zip`` of ``model`` now (also outside ``learn``)."""
        self.checkpoints.model = model
        return self.checkpoints.save()


def _make_callbacks(
    cfg: DictConfig,
    paths: RunPaths,
    plan: TrainingPlan,
    model: Any,
    venv: Any,
    resume: ResumePoint | None,
    wandb_run: Any,
) -> _Callbacks:
    """Metrics, periodic checkpoints, the league (when enabled) and W&B (when it runs)."""
    has_npc = bool(venv.npc_agents)
    metrics = NPCMetricsCallback(
        venv.slots,
        has_npc,
        window=getattr(model, "_stats_window_size", 100),
        start_episodes=resume.episodes if resume is not None else 0,
    )
    metadata = functools.partial(
        _checkpoint_metadata,
        cfg=cfg,
        plan=plan,
        metrics=metrics,
        has_npc=has_npc,
        resumed=resume.metadata if resume is not None else {},
    )
    checkpoints = CheckpointCallback(
        paths.checkpoints, cfg.trainer.checkpoint_interval, cfg.trainer.keep_checkpoints, metadata
    )
    callbacks = _Callbacks(metrics, checkpoints, metadata)
    if not _progress_bar(cfg):
        callbacks.progress = TrainingProgressLog(
            int(cfg.trainer.total_timesteps), float(cfg.trainer.log_interval_s), lambda: metrics.last_summary,
            has_npc,
        )
    if plan.league.enabled:
        callbacks.league = LeagueCallback(
            plan.league, venv=venv, save_dir=paths.league, device=cfg.device,
            deterministic=plan.dual_policy.checkpoint_npc.deterministic, resume=resume is not None,
        )
        try:  # now rather than inside learn(): restoring a resumed league can fail
            callbacks.league.init_callback(model)
        except ValueError as e:
            raise CLIError(f"trainer.league: {one_line(e)}") from e
    if wandb_run is not None:
        from wandb.integration.sb3 import WandbCallback

        callbacks.wandb = WandbCallback(verbose=0)
    return callbacks


def _checkpoint_metadata(
    model: Any,
    *,
    cfg: DictConfig,
    plan: TrainingPlan,
    metrics: NPCMetricsCallback,
    has_npc: bool,
    resumed: dict[str, Any],
) -> dict[str, Any]:
    """A checkpoint's sidecar: where it stands, and the last window's metrics (``type: top`` sorts by them).

    :param resumed: the metadata of the checkpoint the session resumed from (``{}``: a new run)
    """
    s = metrics.last_summary
    meta: dict[str, Any] = {
        "epoch": epoch_of(model),
        "step": int(model.num_timesteps),
        "run": str(cfg.run),
        "env": str(cfg.env.name),
        "algorithm": plan.algorithm.__name__,
        "npc": str(plan.dual_policy.checkpoint_npc.uri) if has_npc else None,
        "total_episodes": metrics.total_episodes,
    }
    keys = ["train_return", "episode_length"]
    if has_npc:
        keys += ["win_rate", "loss_rate", "draw_rate", "npc_return"]
    if s.get("episodes"):
        meta.update({k: s[k] for k in keys})
    else:
        # No episode has ended in this session yet: keep the resumed checkpoint's window, so
        # rewriting its metadata (nothing left to train) drops no metric `type: top` sorts by.
        meta.update({k: resumed[k] for k in keys if k in resumed})
    return meta


def _progress_bar(cfg: DictConfig) -> bool:
    """Whether training and its evaluations show progress bars (asked for, on a terminal) instead of lines."""
    return bool(cfg.trainer.progress_bar) and on_terminal()


# --------------------------------------------------------------------------- learning and the end
def _learn(
    cfg: DictConfig, paths: RunPaths, plan: TrainingPlan, model: Any, callbacks: _Callbacks, resumed: bool
) -> None:
    """Train up to ``trainer.total_timesteps``; on Ctrl-C or SIGTERM save a checkpoint and exit with 130."""
    start_step, total = int(model.num_timesteps), int(cfg.trainer.total_timesteps)
    remaining = total - start_step
    if remaining <= 0:
        log.info(
            "%s already reached %d steps (trainer.total_timesteps=%d); nothing to train",
            cfg.run,
            start_step,
            total,
        )
        return
    log.info(
        "training %s for %d steps (%d -> %d) in %s",
        plan.algorithm.__name__,
        remaining,
        start_step,
        total,
        paths.root,
    )
    try:
        with _sigterm_as_interrupt(), _training_errors(cfg.trainer.step_timeout):
            model.learn(
                total_timesteps=remaining,
                callback=callbacks.all(),
                reset_num_timesteps=not resumed,
                progress_bar=_progress_bar(cfg),
            )
    except KeyboardInterrupt:
        with _no_interrupts(), _training_errors(cfg.trainer.step_timeout):
            path = callbacks.save_checkpoint(model)
            if callbacks.league is not None:
                callbacks.league.save_state()
        print(
            f"\n{PROG}: interrupted at step {model.num_timesteps}; saved {path}. Continue with: "
            f"{PROG} {resume_hint(cfg, paths)} trainer.resume=true (and the same overrides)",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(130) from None


def _finish(
    cfg: DictConfig,
    paths: RunPaths,
    model: Any,
    callbacks: _Callbacks,
    results: tuple[TrainingEvaluation, TrainingVideo],
    logger: Logger,
    wandb_run: Any,
    started: float,
) -> dict[str, Any]:
    """Save the last checkpoint, evaluate and record, save ``final.zip`` (and its W&B artifact), print the
    report."""
    evaluation, video = results
    with _no_interrupts():
        callbacks.save_checkpoint(model)
    evaluation.after(model, logger)
    video.after(model, logger, wandb_run)
    step = int(model.num_timesteps)
    final_meta = callbacks.metadata(model)
    if callbacks.league is not None:
        final_meta["league_elo"] = callbacks.league.learner_elo
    final_meta.update(evaluation.final_metrics(step))
    with _no_interrupts(), writing("the final model", paths.final, SAVE_ADVICE):
        atomic_save(model, paths.final, final_meta)
    artifact = (
        log_model_artifact(wandb_run, cfg, paths, final_meta)
        if wandb_run is not None and cfg.wandb.log_model
        else None
    )
    logger.close()
    elapsed = time.time() - started
    print(_final_report(cfg, paths, step, results, artifact, elapsed), flush=True)
    return {
        "paths": paths,
        "step": step,
        "eval": evaluation.summaries,
        "videos": video.recordings,
        "artifact": artifact,
        "metadata": final_meta,
        "seconds": elapsed,
    }


def _final_report(
    cfg: DictConfig,
    paths: RunPaths,
    step: int,
    results: tuple[TrainingEvaluation, TrainingVideo],
    artifact: dict[str, Any] | None,
    elapsed: float,
) -> str:
    """What the run did and where its results are, and how to use the model as the next NPC."""
    evaluation, video = results
    lines = [f"{PROG}: finished {cfg.run} at step {step} in {format_duration(elapsed)}"]
    lines += evaluation.report()
    lines += [f"  video: {r.path} ({r.frames} frames at {r.fps} fps)" for r in video.recordings]
    lines.append(
        f"  final model: {paths.final} (as the next NPC: "
        f"trainer.dual_policy.checkpoint_npc.uri=file://{paths.final})"
    )
    if artifact is not None:
        lines.append(
            f"  wandb model artifact: {artifact['uri']}"
            + (" (offline: 'wandb sync' the run first)" if artifact["mode"] == "offline" else "")
        )
    lines.append(
        f"  learning curve: npc-plot {paths.root}   TensorBoard: tensorboard --logdir {paths.tensorboard}"
    )
    return "\n".join(lines)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a preempted cloud job, ``kill``) interrupts training like Ctrl-C, so a checkpoint is saved."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while a checkpoint is being written."""
    try:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _training_errors(step_timeout: float | None) -> Iterator[None]:
    """One line, with what to do about it, for a league snapshot or state that cannot be written and for
    workers that did not answer a step in time (within ``trainer.step_timeout`` when it is set)."""
    try:
        yield
    except SaveError as e:
        raise CLIError(f"{e}; {SAVE_ADVICE}") from e
    except TimeoutError as e:  # the message names the workers that did not answer, or what timed out
        raise CLIError(one_line(e) + (" (trainer.step_timeout)" if step_timeout is not None else "")) from e


# --------------------------------------------------------------------------- entry point
def _debug() -> bool:
    return bool(os.environ.get("HYDRA_FULL_ERROR") or os.environ.get("NPC_WRAPPER_DEBUG"))


def _task(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        # Each job of a sweep gets its own run directory: runs/<run>/<job number>.
        cfg.run_dir = hc.runtime.output_dir
        cfg.run = f"{cfg.run}_{hc.job.num}"
    try:
        train(cfg)
    except CLIError as e:
        if _debug():
            raise
        die(PROG, e)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``npc-train`` (Hydra overrides on the command line).

    :param argv: the arguments (default: ``sys.argv[1:]``)
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        register_configs()
        cdir = config_dir()
        precheck(argv)
    except CLIError as e:
        if _debug():
            raise
        die(PROG, e)
    sys.argv = [sys.argv[0] if sys.argv else PROG, *argv]
    hydra.main(version_base="1.3", config_path=str(cdir), config_name="config")(_task)()


if __name__ == "__main__":
    main()

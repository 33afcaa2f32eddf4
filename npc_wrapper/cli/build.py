"""What a config builds: the env factory, the NPC vector env, and the SB3 model (new or resumed).

:func:`plan_training` resolves and checks everything the config names (env targets, the
``dual_policy`` and ``league`` blocks, the algorithm, its policy and arguments) before anything is
built; the ``build_*`` functions then build it, each failure as one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from pettingzoo import AECEnv
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from npc_wrapper.agents import agent_ranges
from npc_wrapper.cli.algos import ActionMaskVecEnv, algorithm_kwargs, check_policy, resolve_algorithm
from npc_wrapper.cli.checks import check_npc_uri
from npc_wrapper.cli.config import backend_options, dual_policy_config, league_config
from npc_wrapper.cli.envs import EnvFactory
from npc_wrapper.cli.errors import CLIError, one_line
from npc_wrapper.cli.run_dir import ResumePoint
from npc_wrapper.config import DualPolicyConfig, LeagueConfig
from npc_wrapper.errors import CheckpointError
from npc_wrapper.factory import make_vec_env
from npc_wrapper.league import check_league_venv
from npc_wrapper.turn_engine import TurnEngine

__all__ = [
    "TrainingPlan",
    "plan_training",
    "env_factory",
    "build_vec_env",
    "build_train_env",
    "build_model",
]

log = logging.getLogger("npc_wrapper.cli")


@dataclass(frozen=True)
class TrainingPlan:
    """The parts of an ``npc-train`` config, resolved and checked, that the builders take."""

    #: Builds one PettingZoo env (``env.factory`` and ``env.wrappers``).
    env_fn: EnvFactory
    #: ``trainer.dual_policy``: the agent split and the NPC.
    dual_policy: DualPolicyConfig
    #: ``trainer.league``
    league: LeagueConfig
    #: ``trainer.algorithm``
    algorithm: type[BaseAlgorithm]
    #: ``trainer.policy``: an alias of the algorithm or a class
    policy: str | type
    #: The algorithm's keyword arguments (``trainer.hyperparameters`` and ``policy_kwargs``).
    kwargs: dict[str, Any]


def env_factory(cfg: DictConfig) -> EnvFactory:
    """The env factory of ``cfg.env``, its targets imported (a typo fails here, in one line).

    :param cfg: a composed ``npc-train`` config
    """
    env_fn = EnvFactory(
        OmegaConf.to_container(cfg.env.factory, resolve=True),
        OmegaConf.to_container(cfg.env.wrappers, resolve=True),
    )
    env_fn.check()
    return env_fn


def plan_training(cfg: DictConfig) -> TrainingPlan:
    """Resolve and check what ``cfg`` names, before anything is built.

    :param cfg: a composed ``npc-train`` config
    :raises CLIError: naming the key to fix
    """
    env_fn = env_factory(cfg)
    dp = dual_policy_config(cfg)
    check_npc_uri(dp)
    league = league_config(cfg)
    algo = resolve_algorithm(cfg.trainer.algorithm)
    policy = check_policy(algo, cfg.trainer.policy)
    kwargs = algorithm_kwargs(
        algo,
        OmegaConf.to_container(cfg.trainer.hyperparameters, resolve=True),
        OmegaConf.to_container(cfg.trainer.policy_kwargs, resolve=True),
    )
    return TrainingPlan(env_fn, dp, league, algo, policy, kwargs)


def build_vec_env(
    cfg: DictConfig,
    env_fn: EnvFactory,
    dp: DualPolicyConfig,
    num_envs: int,
    seed: int,
    num_workers: int | None = None,
) -> Any:
    """The NPC vector env for ``cfg`` (one line of error on any failure to build it or load the NPC).

    :param cfg: the job's config (``env``, ``device``, ``trainer.num_workers`` and the backend keys)
    :param env_fn: builds one PettingZoo env
    :param dp: the agent split and the NPC
    :param num_envs: PettingZoo env copies
    :param seed: the first env's seed
    :param num_workers: workers (default: ``trainer.num_workers``, in ``trainer.backend``; another count,
        such as an evaluation's 0, takes none of the backend keys)
    """
    try:
        venv = make_vec_env(
            env_fn,
            num_envs=num_envs,
            seed=seed,
            num_workers=cfg.trainer.num_workers if num_workers is None else num_workers,
            device=cfg.device,
            reset_when_training_agents_dead=cfg.env.reset_when_training_agents_dead,
            seat=cfg.env.seat,
            **(backend_options(cfg) if num_workers is None else {}),
            **dp.env_kwargs(),
        )
    except CLIError:
        raise
    except Exception as e:
        if not dp.enabled and isinstance(e, ValueError) and _turn_based(env_fn):
            raise CLIError(
                f"trainer.dual_policy.enabled=false trains every agent, but {cfg.env.name!r} is a turn-based "
                "game: one learner per env, the other seats NPCs. Keep it true (env.seat=random plays every "
                "seat; trainer.league.enabled=true for self-play against the learner's snapshots)"
            ) from e
        # Only a failure to load or fit the NPC (a CheckpointError) is the NPC's fault.
        npc = f" with the NPC {dp.checkpoint_npc.uri!r}" if isinstance(e, CheckpointError) else ""
        raise CLIError(f"cannot build env {cfg.env.name!r}{npc}: {type(e).__name__}: {one_line(e)}") from e
    if dp.enabled and not venv.npc_agents:
        # A split with no NPC would train without the checkpoint the user asked to play against.
        n = len(venv.training_agents)
        venv.close()
        if dp.training_agents is not None:
            why, fix = f"training_agents {dp.training_agents} match them all", "name fewer training_agents"
        else:
            pct = dp.training_agents_pct
            why = f"training_agents_pct={pct} gives the first floor({pct} * {n} + 0.5) = {n}"
            fix = f"use training_agents_pct <= {(n - 1) / n:.4g}" if n > 1 else "use an env with 2+ agents"
        raise CLIError(
            f"trainer.dual_policy.enabled is true, but all {n} agents of env {cfg.env.name!r} train ({why}), "
            f"so the NPC {dp.checkpoint_npc.uri!r} would play none; {fix}, or set "
            "trainer.dual_policy.enabled=false to train every agent"
        )
    return venv


def _turn_based(env_fn: EnvFactory) -> bool:
    """Whether ``env_fn`` builds a turn-based (AEC) env (it builds one to see)."""
    env = env_fn()
    try:
        return isinstance(env, AECEnv)
    finally:
        env.close()


def build_train_env(cfg: DictConfig, plan: TrainingPlan, venv: Any) -> VecEnv:
    """The env the model trains on: ``venv``, logged, checked for the league, and given action masks for
    ``MaskablePPO``.

    :param cfg: the job's config
    :param plan: the resolved config
    :param venv: the NPC vector env built by :func:`build_vec_env` (the caller closes it)
    """
    npc = plan.dual_policy.checkpoint_npc.uri if venv.npc_agents else "-"
    if isinstance(venv.engine, TurnEngine):
        log.info(
            "env %s (turn-based): %d envs, the learner at seat %s (%s), NPCs at %s driven by %s",
            cfg.env.name, venv.num_sub_envs, agent_ranges(venv.training_agents), venv.engine.seat,
            agent_ranges(venv.npc_agents), npc,
        )
    else:
        log.info(
            "env %s: %d envs x %d training agents %s; %d NPC agents %s driven by %s",
            cfg.env.name,
            venv.num_sub_envs,
            len(venv.training_agents),
            agent_ranges(venv.training_agents),
            len(venv.npc_agents),
            agent_ranges(venv.npc_agents),
            npc,
        )
    if plan.league.enabled:
        try:
            check_league_venv(venv)
        except ValueError as e:
            raise CLIError(f"trainer.league: {one_line(e)}") from e
    if plan.algorithm.__name__ == "MaskablePPO" and not venv.engine.has_masks:
        # An env whose masks come in infos (or none: every action allowed, with a warning).
        return ActionMaskVecEnv(venv)
    return venv


def build_model(cfg: DictConfig, plan: TrainingPlan, train_env: VecEnv, resume: ResumePoint | None) -> Any:
    """A new model of the planned algorithm, or the one ``resume`` names, continued with this session's
    hyperparameters and a seed of its own.

    :param cfg: the job's config (``seed``, ``device``)
    :param plan: the resolved config
    :param train_env: the env from :func:`build_train_env`
    :param resume: the checkpoint to continue from (``None``: a new model)
    :raises CLIError: when the model cannot be built or loaded
    """
    algo = plan.algorithm
    try:
        if resume is not None:
            model = _resume_model(cfg, plan, train_env, resume)
        else:
            model = algo(plan.policy, train_env, seed=cfg.seed, device=cfg.device, verbose=0, **plan.kwargs)
    except Exception as e:
        what = f"resume from {resume.path}" if resume is not None else f"build {algo.__name__}"
        raise CLIError(f"cannot {what}: {type(e).__name__}: {one_line(e)}") from e
    if isinstance(train_env, ActionMaskVecEnv) and not any(
        "action_mask" in i for i in getattr(train_env.venv, "reset_infos", [])
    ):
        log.warning("MaskablePPO: the env gives no info['action_mask'] at reset; every action is allowed")
    return model


def _resume_model(cfg: DictConfig, plan: TrainingPlan, train_env: VecEnv, resume: ResumePoint) -> Any:
    # The session's hyperparameters, not the checkpoint's: config.yaml records them as used.
    # (Not policy_kwargs: the network is the checkpoint's, and A2C stores its optimizer there.)
    hyper = {k: v for k, v in plan.kwargs.items() if k != "policy_kwargs"}
    if "stats_window_size" in hyper:  # load() sets attributes; SB3 keeps this one private
        hyper["_stats_window_size"] = hyper.pop("stats_window_size")
    model = plan.algorithm.load(str(resume.path), env=train_env, device=cfg.device, **hyper)
    log.info("resuming %s from %s (step %d)", cfg.run, resume.path, model.num_timesteps)
    if cfg.seed is not None:
        # load() reseeds the envs and RNGs with the run's seed, so the session would replay the
        # first session's env seeds and samples; its own seed comes from (seed, step) instead.
        seq = np.random.SeedSequence([int(cfg.seed), int(model.num_timesteps)])
        model.set_random_seed(int(seq.generate_state(1)[0]))
    return model

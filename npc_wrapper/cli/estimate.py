"""``npc-train``'s estimate of the memory a run takes, checked before its envs and its model are built.

A typo (``trainer.num_envs=1000000``, ``trainer.policy_kwargs.net_arch=[60000,60000]``) would otherwise
allocate until the kernel's out-of-memory killer ends the run. The estimate counts what grows with the
config: the envs (one is built and measured), the wrapper's buffers, SB3's rollout or replay buffer, and
the network with its gradients and optimizer state (built on PyTorch's ``meta`` device, which allocates
nothing). It leaves out what stays small (the libraries, one minibatch's activations), so it is a lower
bound: a run it refuses cannot fit. ``trainer.skip_memory_check=true`` skips it.
"""

from __future__ import annotations

import inspect
import logging
import tracemalloc
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from omegaconf import DictConfig
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.preprocessing import (
    get_action_dim,
    is_image_space,
    is_image_space_channels_first,
)
from stable_baselines3.common.vec_env import VecTransposeImage

from npc_wrapper.agents import split_agents
from npc_wrapper.cli.build import TrainingPlan
from npc_wrapper.cli.errors import CLIError, one_line
from npc_wrapper.memory import available_memory, format_bytes

__all__ = ["MemoryPart", "estimate_memory", "check_memory"]

log = logging.getLogger("npc_wrapper.cli")

#: Bytes a float32 parameter takes in training: itself, its gradient and Adam's two moments.
_PER_PARAMETER = 4 * 4
#: SB3's float32 per-step entries besides observations and actions: rollout buffer (reward, return,
#: episode start, value, log-probability, advantage), replay buffer (reward, done, timeout).
_ROLLOUT_SCALARS, _REPLAY_SCALARS = 6 * 4, 3 * 4


@dataclass(frozen=True)
class MemoryPart:
    """One part of the estimate: what it is, with the config keys that size it, and its bytes."""

    what: str
    nbytes: int


def _nbytes(space: spaces.Space) -> int:
    """Bytes of one value of ``space`` in an array of its dtype (Dict and Tuple: their parts)."""
    if isinstance(space, spaces.Dict):
        return sum(_nbytes(s) for s in space.spaces.values())
    if isinstance(space, spaces.Tuple):
        return sum(_nbytes(s) for s in space.spaces)
    dtype = np.dtype(space.dtype) if space.dtype is not None else np.dtype(np.float32)
    return int(np.prod(space.shape or (), dtype=np.int64)) * dtype.itemsize


def _measured_env(cfg: DictConfig, plan: TrainingPlan) -> tuple[Any, int]:
    """One env, built and reset, and the bytes its build and reset allocated (Python's allocations, numpy's
    included). A first build, closed at once, imports what the env needs, which is not counted."""
    was_tracing = tracemalloc.is_tracing()
    try:
        plan.env_fn().close()
        if not was_tracing:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        env = plan.env_fn()
        env.reset(seed=0)
        return env, max(tracemalloc.get_traced_memory()[0] - before, 0)
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(f"cannot build env {cfg.env.name!r}: {type(e).__name__}: {one_line(e)}") from e
    finally:
        if not was_tracing:
            tracemalloc.stop()


def _default(plan: TrainingPlan, name: str) -> Any:
    """The algorithm's argument ``name``: set in ``trainer.hyperparameters``, else its default."""
    if name in plan.kwargs:
        return plan.kwargs[name]
    parameter = inspect.signature(plan.algorithm.__init__).parameters.get(name)
    return None if parameter is None else parameter.default


def _parameter_count(plan: TrainingPlan, obs_space: spaces.Space, act_space: spaces.Space) -> int | None:
    """The parameters of the policy the model will build, counted on a skeleton built on the ``meta``
    device; ``None`` where it cannot be built so (the real build then reports why)."""
    policy = plan.policy
    policy_class = policy if isinstance(policy, type) else plan.algorithm.policy_aliases.get(policy)
    if policy_class is None:
        return None
    if is_image_space(obs_space) and not is_image_space_channels_first(obs_space):
        obs_space = VecTransposeImage.transpose_space(obs_space)  # as SB3 wraps the env
    # SB3 moves sub-networks to the policy's ``device`` (its first parameter's, else the CPU): keep meta.
    on_meta = {"device": property(lambda _: torch.device("meta"))}
    skeleton = type(policy_class.__name__, (policy_class,), on_meta)
    try:
        with torch.device("meta"):
            policy = skeleton(obs_space, act_space, lambda _: 0.0, **plan.kwargs.get("policy_kwargs", {}))
    except Exception as e:  # noqa: BLE001 - not buildable on meta: the estimate goes without it
        log.debug("memory estimate: the network cannot be built on the meta device (%s: %s)",
                  type(e).__name__, e)
        return None
    return sum(p.numel() for p in policy.parameters())


def estimate_memory(cfg: DictConfig, plan: TrainingPlan) -> list[MemoryPart]:
    """The parts of the run's memory that grow with its config, largest first.

    :param cfg: the job's config
    :param plan: the resolved config (builds one env)
    """
    env, env_bytes = _measured_env(cfg, plan)
    try:
        agents = list(env.possible_agents)
        dp = plan.dual_policy
        train = agents
        if dp.enabled:
            try:
                train = split_agents(agents, dp.training_agents_pct, dp.training_agents)[0]
            except ValueError:
                pass  # a split that fails: building the env, right after, reports it
        if not train:
            return []
        obs_space, act_space = env.observation_space(train[0]), env.action_space(train[0])
        all_obs = sum(_nbytes(env.observation_space(a)) for a in agents)
    finally:
        env.close()
    t = cfg.trainer
    num_envs = int(t.num_envs) + (int(t.eval_num_envs) if t.eval_episodes > 0 else 0)
    per_env = env_bytes + 3 * all_obs  # the wrapper's observation and terminal-observation buffers, a copy
    evaluation = f" + trainer.eval_num_envs={t.eval_num_envs}" if t.eval_episodes > 0 else ""
    parts = [MemoryPart(
        f"trainer.num_envs={t.num_envs}{evaluation} envs at {format_bytes(per_env)} each (one measured, with "
        "the wrapper's buffers)", num_envs * per_env,
    )]
    slots = int(t.num_envs) * len(train)
    obs_bytes, act_bytes = _nbytes(obs_space), get_action_dim(act_space) * np.dtype(act_space.dtype).itemsize
    if issubclass(plan.algorithm, OnPolicyAlgorithm):
        n_steps = int(_default(plan, "n_steps"))
        per_step = obs_bytes + act_bytes + _ROLLOUT_SCALARS
        parts.append(MemoryPart(
            f"the rollout buffer, trainer.num_envs x {len(train)} training agents x "
            f"trainer.hyperparameters.n_steps={n_steps} steps at {per_step} B", slots * n_steps * per_step,
        ))
    elif issubclass(plan.algorithm, OffPolicyAlgorithm):
        size = max(int(_default(plan, "buffer_size")) // slots, 1) * slots
        observations = 1 if _default(plan, "optimize_memory_usage") else 2  # and the next ones
        per_step = observations * obs_bytes + act_bytes + _REPLAY_SCALARS
        parts.append(MemoryPart(
            f"the replay buffer of trainer.hyperparameters.buffer_size={size} steps at {per_step} B",
            size * per_step,
        ))
    count = _parameter_count(plan, obs_space, act_space)
    if count is not None:
        kwargs = one_line(plan.kwargs.get("policy_kwargs", {}))
        kwargs = kwargs if len(kwargs) <= 80 else kwargs[:77] + "..."
        parts.append(MemoryPart(
            f"the network of trainer.policy={cfg.trainer.policy} with trainer.policy_kwargs={kwargs}, "
            f"{count:,} parameters at {_PER_PARAMETER} B (weights, gradients, optimizer state)",
            count * _PER_PARAMETER,
        ))
    return sorted(parts, key=lambda p: -p.nbytes)


def check_memory(cfg: DictConfig, plan: TrainingPlan) -> None:
    """Refuse a run whose estimate exceeds the memory available, with the numbers, before anything big is
    built (nothing when ``trainer.skip_memory_check`` is set, or the platform tells no available memory).

    :param cfg: the job's config
    :param plan: the resolved config
    :raises CLIError: naming each part, its config keys and its size
    """
    if cfg.trainer.skip_memory_check:
        return
    available = available_memory()
    if available is None:
        log.info("memory check skipped: this platform does not tell how much memory is available")
        return
    parts = estimate_memory(cfg, plan)
    total = sum(p.nbytes for p in parts)
    if total > available:
        raise CLIError(
            f"this run needs at least an estimated {format_bytes(total)} of memory, more than the "
            f"{format_bytes(available)} available: "
            + "; ".join(f"{p.what}: {format_bytes(p.nbytes)}" for p in parts)
            + "; make the largest smaller, or set trainer.skip_memory_check=true if the estimate is wrong"
        )

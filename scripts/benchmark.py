#!/usr/bin/env python3
"""Throughput benchmark: ``npc_wrapper`` against its floor, a per-env NPC wrapper and SuperSuit.

One run prints one table. Every row of an (env, NPC policy) block is measured side by side in the
same process: the variants are built once, warmed up, and then run in turn for ``--repeats``
rounds, the order rotated each round so slow drift of a shared machine hits every variant alike.
Rates are medians over the rounds; ratios are the median of the per-round ratios, because ratios
within a run are the figures that count on a noisy machine.

Rows:

* ``floor``: the same PettingZoo envs stepped in a plain loop with action dicts built beforehand,
  plus the NPC policy's bare batched forward (``from_numpy -> logits -> Gumbel sample -> numpy``)
  over all NPC rows of all envs, timed separately and added (called once per vector step between
  the env loops, where a wrapper calls it). It does not even gather observations out of the
  PettingZoo dicts: nothing a wrapper must do is cheaper.
* ``dict_floor``: the floor plus the least the PettingZoo dict API forces on a wrapper that hands a
  trainer arrays: every observation copied out of its dict into a preallocated row, rewards into an
  array, done flags read, and per vector step a fresh array of the training agents' observations
  and one info dict per slot. The forward reads the copied NPC rows. ``npc_wrapper`` against it is
  the share of the wrapper's own work.
* ``npc_wrapper``: ``nw.make_vec_env(...)`` with that NPC, stepped with precomputed trainer actions.
* ``per_env``: a minimal SB3-VecEnv-like loop written here that calls the same bare forward once
  per env per step on that env's live NPC observations (the design ``npc_wrapper`` replaces; with
  the bare forward rather than an adapter, the comparison favours it).
* ``supersuit``: ``pettingzoo_env_to_vec_env_v1`` + ``concat_vec_envs_v1`` with every agent a
  slot, stepped with precomputed random actions (no NPC forward: the trainer would act for all).

After the table, a breakdown of one ``npc_wrapper`` step (env, per-env bookkeeping, NPC inference,
engine). Torch runs with ``--torch-threads`` (default 1) intra-op threads in every row.

Sections: ``--workers-check`` (``num_workers=0`` vs ``2`` on a butterfly image env), ``--ray-check``
(``backend="ray"`` vs ``backend="process"`` at the same worker count on that env, with the bytes each
step moves and Ray's round trip),
``--memory-check`` (resident memory sampled while the wrapper runs for many steps, a mode of its
own), the GPU inference section (automatic with ``--device cuda``) and ``--profile DIR``
(cProfile of the ``npc_wrapper`` rows, top self-time functions).

Run ``python3 scripts/benchmark.py --help``; BENCHMARKS.md has the recorded results.
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import datetime
import gc
import hashlib
import inspect
import math
import os
import platform
import pstats
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # butterfly envs import pygame
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(_REPO_ROOT))

import cloudpickle
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

import npc_wrapper as nw
from npc_wrapper.joint_env import buffer_spaces

__all__ = [
    "AECFloorRunner",
    "AECWrapperRunner",
    "ENV_SPECS",
    "BlockResult",
    "DictFloorRunner",
    "EnvSpec",
    "FloorRunner",
    "NPCModel",
    "PerEnvRunner",
    "SmallCNN",
    "SuperSuitRunner",
    "WrapperRunner",
    "breakdown_section",
    "build_npc",
    "inference_section",
    "main",
    "measure_block",
    "memory_check",
    "parse_args",
    "profile_wrapper",
    "ray_check",
    "source_digest",
    "turn_based_section",
    "workers_check",
]

VARIANTS = ("floor", "dict_floor", "npc_wrapper", "per_env", "supersuit")
#: Distinct action tables cycled through (steps beyond it reuse them; enough to vary the dynamics).
ACTION_TABLE = 64


# ---------------------------------------------------------------------------------------------- envs
def _tag_env() -> Any:
    from mpe2 import simple_tag_v3

    return simple_tag_v3.parallel_env(continuous_actions=False, max_cycles=50)


def _battle_env() -> Any:
    from magent2.environments import battle_v4

    return battle_v4.parallel_env(map_size=20, max_cycles=200)


def _uniform_actions(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, n, size=shape)


def _battle_red_actions(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Charge right (moves 7 and 8 are +1 and +2 in x) and attack (13..20), so agents die mid-episode.

    Uniform random actions in battle almost never kill anyone; this mix kills a few blue NPCs per
    episode, so the benchmark covers partial NPC batches and zeroed dead rows.
    """
    u = rng.random(shape)
    return np.where(u < 0.25, 8, np.where(u < 0.4, 7, rng.integers(13, 21, size=shape)))


@dataclass(frozen=True)
class EnvSpec:
    """One benchmark env: its factory, who trains, and how the trainer's actions are drawn.

    :param name: short name used on the command line and in the table
    :param make: factory of the PettingZoo parallel env
    :param training_agents: glob patterns of the training agents (the rest are NPCs)
    :param trainer_actions: ``(rng, n_actions, shape) -> int array`` of trainer actions
    :param supersuit_wrap: SuperSuit wrappers that make every agent share spaces / stay alive
    """

    name: str
    make: Callable[[], Any]
    training_agents: tuple[str, ...]
    trainer_actions: Callable[[np.random.Generator, int, tuple[int, ...]], np.ndarray]
    supersuit_wrap: Callable[[Any], Any]


def _done_both_flags(env: Any) -> Any:
    """Set termination *and* truncation for every agent on the step the whole env ends.

    SuperSuit 3.11's ``black_death_v3`` decides "env done" with ``terminations & truncations``, so an
    episode that ends by time limit (truncation only) never ends, and magent2 segfaults when stepped
    with no agents left (fixed upstream by Farama-Foundation/SuperSuit#265). Setting both flags on
    the final step makes the installed version reset; it costs one pass over the agents per step.
    """
    from pettingzoo.utils import BaseParallelWrapper

    class DoneBothFlags(BaseParallelWrapper):
        def step(self, actions: dict[Any, Any]) -> Any:
            obs, rew, term, trunc, info = self.env.step(actions)
            if all(t or trunc[a] for a, t in term.items()):
                term = dict.fromkeys(term, True)
                trunc = dict.fromkeys(trunc, True)
            return obs, rew, term, trunc, info

    return DoneBothFlags(env)


def _ss_tag(env: Any) -> Any:
    import supersuit as ss

    return ss.pad_action_space_v0(ss.pad_observations_v0(env))


def _ss_battle(env: Any) -> Any:
    import supersuit as ss

    return ss.black_death_v3(_done_both_flags(env))


ENV_SPECS: dict[str, EnvSpec] = {
    "tag": EnvSpec("tag", _tag_env, ("adversary_*",), _uniform_actions, _ss_tag),
    "battle": EnvSpec("battle", _battle_env, ("red_*",), _battle_red_actions, _ss_battle),
}


# ------------------------------------------------------------------------------------------ policies
class SmallCNN(nn.Module):
    """A small conv net from one observation to logits, for vector, ``(H, W)`` or ``(H, W, C)`` obs.

    uint8 observations arrive as uint8 and are scaled here; HWC images are permuted to CHW here
    (magent2 and SuperSuit give HWC). Vector observations use 1-d convolutions.

    :param obs_shape: shape of one observation
    :param n_actions: number of logits
    """

    def __init__(self, obs_shape: Sequence[int], n_actions: int) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        if len(self.obs_shape) == 1:
            (length,) = self.obs_shape
            self.body = nn.Sequential(
                nn.Conv1d(1, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.ReLU(), nn.Flatten(),
            )
            flat = 8 * (length - 4)
        else:
            h, w = self.obs_shape[:2]
            c = self.obs_shape[2] if len(self.obs_shape) == 3 else 1
            stride = 2 if min(h, w) >= 24 else 1  # downsample real images, keep 13x13 grids
            self.body = nn.Sequential(
                nn.Conv2d(c, 16, 3, stride=stride), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=stride), nn.ReLU(),
                nn.Flatten(),
            )
            with torch.no_grad():
                flat = int(self.body(torch.zeros(1, c, h, w)).shape[1])
        self.head = nn.Sequential(nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()
        if x.ndim == 2:
            x = x.unsqueeze(1)  # (B, L) -> (B, 1, L)
        elif x.ndim == 3:
            x = x.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        else:
            x = x.permute(0, 3, 1, 2)  # HWC -> CHW
        return self.head(self.body(x))


class _SpaceEnv(gym.Env):
    """The smallest Gymnasium env with given spaces: all SB3 needs to build an untrained PPO."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any):
        return self.observation_space.sample(), 0.0, False, False, {}


@dataclass
class NPCModel:
    """An NPC network as passed to ``npc=`` plus its bare logits function (for the floor and per-env).

    :param kind: ``"mlp"`` (an SB3 PPO model) or ``"cnn"`` (a :class:`SmallCNN`)
    :param npc: the model or module itself
    :param logits: ``obs tensor on device -> logits``, the forward with no adapter around it
    :param device: where it runs
    :param observation_space: one NPC agent's observation space
    :param action_space: one NPC agent's action space
    """

    kind: str
    npc: Any
    logits: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    observation_space: spaces.Space
    action_space: spaces.Space

    def make_forward(self, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        """``obs batch (numpy)[, bool masks] -> sampled actions (numpy)``: the least work one NPC step can cost."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        device, logits_fn = self.device, self.logits

        def forward(obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
            with torch.inference_mode():
                logits = logits_fn(torch.from_numpy(obs).to(device))
                if mask is not None:  # illegal actions out, as the wrapper's masked NPCs do
                    logits = logits.masked_fill(~torch.from_numpy(mask).to(device), float("-inf"))
                u = torch.rand(logits.shape, generator=gen, device=device).clamp_(1e-20, 1.0)
                return (logits - torch.log(-torch.log(u))).argmax(dim=-1).cpu().numpy()

        return forward

    def adapter_class(self) -> type:
        """The ``npc_wrapper`` adapter that ``npc=`` turns this model into."""
        return nw.SB3Policy if self.kind == "mlp" else nw.TorchPolicy

    def wrapper_npc(self, options: dict[str, Any] | None = None) -> Any:
        """What to pass as ``npc=``: the raw model, or its adapter built with ``options`` (e.g. ``cuda_graphs``).

        :raises SystemExit: when this version's adapter has no such parameter (no silent fallback)
        """
        if not options:
            return self.npc
        cls = self.adapter_class()
        params = inspect.signature(cls).parameters
        missing = [k for k in options if k not in params]
        if missing:
            raise SystemExit(f"{cls.__name__} has no parameter(s) {missing} in this version of npc_wrapper; "
                             f"its parameters are {list(params)}")
        return cls(self.npc, self.observation_space, self.action_space, device=self.device, **options)


def adapter_supports(kind: str, option: str) -> bool:
    """Whether this version's adapter for ``kind`` NPCs takes ``option`` (e.g. ``cuda_graphs``)."""
    cls = nw.SB3Policy if kind == "mlp" else nw.TorchPolicy
    return option in inspect.signature(cls).parameters


def build_npc(kind: str, obs_space: spaces.Space, act_space: spaces.Space, device: torch.device, seed: int) -> NPCModel:
    """An untrained NPC of ``kind`` (``"mlp"``: SB3 PPO's default MlpPolicy; ``"cnn"``: :class:`SmallCNN`).

    :param kind: ``"mlp"`` or ``"cnn"``
    :param obs_space: one NPC agent's observation space
    :param act_space: one NPC agent's action space (``Discrete``)
    :param device: where the policy lives
    :param seed: weight initialisation seed
    """
    if not isinstance(act_space, spaces.Discrete):
        raise TypeError(f"the benchmark NPCs output logits for Discrete actions, got {act_space}")
    torch.manual_seed(seed)
    if kind == "mlp":
        from stable_baselines3 import PPO
        from stable_baselines3.common.preprocessing import preprocess_obs

        model = PPO("MlpPolicy", _SpaceEnv(obs_space, act_space), n_steps=64, batch_size=64, seed=seed,
                    device=device, verbose=0)
        policy = model.policy

        def logits(x: torch.Tensor) -> torch.Tensor:
            obs = preprocess_obs(x, policy.observation_space, normalize_images=policy.normalize_images)
            latent = policy.mlp_extractor.forward_actor(policy.pi_features_extractor(obs))
            return policy.action_net(latent)

        return NPCModel(kind, model, logits, device, obs_space, act_space)
    if kind == "cnn":
        module = SmallCNN(obs_space.shape, int(act_space.n)).to(device).eval()
        return NPCModel(kind, module, module, device, obs_space, act_space)
    raise ValueError(f"unknown policy kind {kind!r}; use mlp or cnn")


# ------------------------------------------------------------------------------------------- runners
def _npc_model(spec: EnvSpec, policy: str, args: argparse.Namespace) -> NPCModel:
    """The NPC network of kind ``policy`` for ``spec``'s NPC agents, on ``--device``."""
    probe = spec.make()
    _, npcs = _split(probe, spec.training_agents)
    model = build_npc(policy, probe.observation_space(npcs[0]), probe.action_space(npcs[0]),
                      torch.device(args.device), args.seed)
    probe.close()
    return model


def _split(env: Any, patterns: Sequence[str]) -> tuple[list[Any], list[Any]]:
    train, npcs = nw.split_agents(env.possible_agents, training_agents=list(patterns))
    return list(train), list(npcs)


def _rss_mb() -> float:
    """Current resident set size in MiB (``/proc``; the peak from ``getrusage`` where that is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``resource.getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class Runner:
    """One row's workload: ``run(n)`` steps every env ``n`` times and returns the seconds spent."""

    #: Seconds of the last ``run`` spent in the NPC forward (only the floor times it separately).
    last_forward_s: float = 0.0

    def run(self, n: int) -> float:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FloorRunner(Runner):
    """The PettingZoo envs in a plain loop with prebuilt action dicts, plus the bare NPC forward.

    The env loop sends each live agent its precomputed action and resets an env when no agent is
    left; the forward runs over every NPC row of every env (the largest batch the wrapper sees),
    once per vector step after the env loop, and is timed apart from it.
    """

    def __init__(self, spec: EnvSpec, model: NPCModel, num_envs: int, seed: int) -> None:
        self.envs = [spec.make() for _ in range(num_envs)]
        probe = self.envs[0]
        train, npcs = _split(probe, spec.training_agents)
        rng = np.random.default_rng(seed)
        n_act = int(probe.action_space(train[0]).n)
        n_npc_act = int(probe.action_space(npcs[0]).n)
        train_a = spec.trainer_actions(rng, n_act, (ACTION_TABLE, num_envs, len(train))).tolist()
        npc_a = rng.integers(0, n_npc_act, size=(ACTION_TABLE, num_envs, len(npcs))).tolist()
        self.tables = [
            [{**dict(zip(train, train_a[t][e])), **dict(zip(npcs, npc_a[t][e]))} for e in range(num_envs)]
            for t in range(ACTION_TABLE)
        ]
        batch = []
        for e, env in enumerate(self.envs):
            obs, _ = env.reset(seed=seed + e)
            batch.extend(obs[a] for a in npcs)
        self.npc_batch = np.stack(batch)
        self.forward = model.make_forward(seed)
        self._t = 0

    #: Subclass hooks: what is done with each env's step results, and after each vector step.
    _read_env: Callable[[int, tuple[Any, ...]], None] | None = None
    _read_vector: Callable[[], Any] | None = None

    def run(self, n: int) -> float:
        envs, tables, forward, batch = self.envs, self.tables, self.forward, self.npc_batch
        read_env, read_vector = self._read_env, self._read_vector
        clock = time.perf_counter
        env_s = fwd_s = 0.0
        for i in range(self._t, self._t + n):
            t0 = clock()
            table = tables[i % ACTION_TABLE]
            for e, env in enumerate(envs):
                acts = table[e]
                out = env.step({a: acts[a] for a in env.agents})
                if read_env is not None:
                    read_env(e, out)
                if not env.agents:
                    env.reset()
            if read_vector is not None:
                read_vector()
            t1 = clock()
            # Timed on its own but called where a wrapper calls it, between env steps: a tight loop of
            # forwards alone ran up to 4x faster on warm caches and would flatter the floor.
            forward(batch)
            env_s += t1 - t0
            fwd_s += clock() - t1
        self._t += n
        self.last_forward_s = fwd_s
        return env_s + fwd_s

    def close(self) -> None:
        for env in self.envs:
            env.close()


class DictFloorRunner(FloorRunner):
    """The floor plus what the PettingZoo dict API forces on any wrapper that hands a trainer arrays.

    After each env step, every agent's observation is copied out of the dict into its row of a
    preallocated buffer (``view[...] = value``, the cheapest copy measured), the rewards go into an
    array and the done flags are read; after each vector step the trainer's observations are handed
    out as a fresh array, with one info dict per training slot, as an SB3 ``VecEnv`` must. The NPC
    forward runs on the copied NPC rows. Nothing else: no alive masks, no live-row gather, no
    episode bookkeeping, no resets of the copied rows. ``npc_wrapper`` against this row is the cost
    of the wrapper's own work beyond the dict API.
    """

    def __init__(self, spec: EnvSpec, model: NPCModel, num_envs: int, seed: int) -> None:
        super().__init__(spec, model, num_envs, seed)
        probe = self.envs[0]
        train, npcs = _split(probe, spec.training_agents)
        t_space, n_space = probe.observation_space(train[0]), probe.observation_space(npcs[0])
        self.train_obs = np.zeros((num_envs, len(train), *t_space.shape), dtype=t_space.dtype)
        self.npc_obs = np.zeros((num_envs, len(npcs), *n_space.shape), dtype=n_space.dtype)
        self.npc_obs[...] = self.npc_batch.reshape(self.npc_obs.shape)
        self.npc_batch = self.npc_obs.reshape(self.npc_batch.shape)  # the forward reads the copied rows
        self.rewards = np.zeros((num_envs, len(probe.possible_agents)), dtype=np.float32)
        self.views = [
            {**{a: self.train_obs[e, i] for i, a in enumerate(train)},
             **{a: self.npc_obs[e, i] for i, a in enumerate(npcs)}}
            for e in range(num_envs)
        ]
        self.index = {a: i for i, a in enumerate(probe.possible_agents)}
        self._positions: dict[tuple[Any, ...], np.ndarray] = {}
        self.n_slots = num_envs * len(train)
        self.any_done = False
        self._read_env = self._read_step
        self._read_vector = self._hand_out

    def _read_step(self, e: int, out: tuple[Any, ...]) -> None:
        obs, rewards, terms, truncs, _ = out
        views = self.views[e]
        for agent, value in obs.items():
            views[agent][...] = value
        key = tuple(rewards)
        pos = self._positions.get(key)
        if pos is None:
            pos = self._positions[key] = np.array([self.index[a] for a in key], dtype=np.intp)
        self.rewards[e][pos] = list(rewards.values())
        # A wrapper must look at the flags every step (this row does not act on them).
        self.any_done = any(terms.values()) or any(truncs.values())

    def _hand_out(self) -> tuple[np.ndarray, list[dict[str, Any]]]:
        obs = self.train_obs.reshape(self.n_slots, *self.train_obs.shape[2:]).copy()
        return obs, [{} for _ in range(self.n_slots)]


class VecEnvRunner(Runner):
    """A row that steps an SB3-style vector env (``self.venv``) through a table of precomputed actions."""

    venv: Any
    actions: np.ndarray
    _t: int

    def run(self, n: int) -> float:
        venv, actions = self.venv, self.actions
        start = time.perf_counter()
        for i in range(self._t, self._t + n):
            venv.step(actions[i % ACTION_TABLE])
        self._t += n
        return time.perf_counter() - start

    def close(self) -> None:
        self.venv.close()


class WrapperRunner(VecEnvRunner):
    """``nw.make_vec_env`` with the NPC, stepped with precomputed trainer actions.

    :param options: extra keyword arguments for ``make_vec_env`` (checked against its signature)
    :param npc_options: keyword arguments for the NPC adapter (see :meth:`NPCModel.wrapper_npc`)
    """

    def __init__(self, spec: EnvSpec, model: NPCModel, num_envs: int, seed: int, num_workers: int = 0,
                 options: dict[str, Any] | None = None, npc_options: dict[str, Any] | None = None) -> None:
        npc = model.wrapper_npc(npc_options)
        self.venv = nw.make_vec_env(
            spec.make, num_envs=num_envs, npc=npc, training_agents=list(spec.training_agents), seed=seed,
            num_workers=num_workers, device=model.device, **(options or {}),
        )
        self.venv.reset()
        rng = np.random.default_rng(seed)
        n_act = int(self.venv.action_space.n)
        self.actions = spec.trainer_actions(rng, n_act, (ACTION_TABLE, self.venv.num_envs))
        self._t = 0


class PerEnvRunner(VecEnvRunner):
    """A per-env NPC wrapper: an SB3-VecEnv-like loop that runs one NPC forward per env per step.

    Per env and step it builds the action dict from the trainer's actions and that env's NPC
    actions, steps, copies the training agents' observations, rewards and dones into arrays,
    resets the env when it is over (keeping ``terminal_observation``), and calls the NPC forward
    on that env's live NPC observations for the next step. It uses the same bare forward as the
    floor, so the only thing it lacks against ``npc_wrapper`` is batching across envs.
    """

    def __init__(self, spec: EnvSpec, model: NPCModel, num_envs: int, seed: int) -> None:
        self.envs = [spec.make() for _ in range(num_envs)]
        probe = self.envs[0]
        self.train, self.npcs = _split(probe, spec.training_agents)
        obs_space = probe.observation_space(self.train[0])
        n_train = len(self.train)
        self.obs = np.zeros((num_envs, n_train, *obs_space.shape), dtype=obs_space.dtype)
        self.rewards = np.zeros((num_envs, n_train), dtype=np.float32)
        self.dones = np.zeros((num_envs, n_train), dtype=bool)
        self.forward = model.make_forward(seed)
        self.npc_actions: list[dict[Any, int]] = [{} for _ in range(num_envs)]
        for e, env in enumerate(self.envs):
            obs, _ = env.reset(seed=seed + e)
            self._write(e, obs)
        rng = np.random.default_rng(seed)
        self.actions = spec.trainer_actions(
            rng, int(probe.action_space(self.train[0]).n), (ACTION_TABLE, num_envs * n_train)
        )
        self._t = 0
        self.venv = self  # the per-env loop is the vector env that VecEnvRunner.run steps

    def _write(self, e: int, obs: dict[Any, Any]) -> None:
        """Training agents' observations into the slot buffer; the env's NPC forward for next step."""
        for j, a in enumerate(self.train):
            o = obs.get(a)
            if o is None:
                self.obs[e, j] = 0
            else:
                self.obs[e, j] = o
        live = [a for a in self.npcs if a in obs]
        if live:
            acts = self.forward(np.stack([obs[a] for a in live]))
            self.npc_actions[e] = dict(zip(live, acts.tolist()))
        else:
            self.npc_actions[e] = {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step every env with the trainer's ``(num_envs * n_train,)`` actions (SB3's step)."""
        n_train = len(self.train)
        per_env = actions.reshape(len(self.envs), n_train).tolist()
        infos: list[dict[str, Any]] = []
        for e, env in enumerate(self.envs):
            acts = dict(zip(self.train, per_env[e]))
            acts.update(self.npc_actions[e])
            obs, rew, term, trunc, info = env.step({a: acts[a] for a in env.agents})
            for j, a in enumerate(self.train):
                self.rewards[e, j] = rew.get(a, 0.0)
                self.dones[e, j] = term.get(a, False) or trunc.get(a, False)
            slot_infos = [dict(info.get(a, {})) for a in self.train]
            if not env.agents:
                for j, a in enumerate(self.train):
                    if a in obs:
                        slot_infos[j]["terminal_observation"] = obs[a]
                obs, _ = env.reset()
            self._write(e, obs)
            infos.extend(slot_infos)
        return (self.obs.reshape(-1, *self.obs.shape[2:]).copy(), self.rewards.reshape(-1).copy(),
                self.dones.reshape(-1).copy(), infos)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class SuperSuitRunner(VecEnvRunner):
    """SuperSuit's Markov vector env with every agent a slot, stepped with precomputed actions.

    :param num_cpus: ``concat_vec_envs_v1``'s worker processes (0: in this process)
    """

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int, num_cpus: int = 0) -> None:
        import supersuit as ss

        probe = spec.make()
        train, _npcs = _split(probe, spec.training_agents)
        possible = list(probe.possible_agents)
        n_act = int(probe.action_space(possible[0]).n)
        probe.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SuperSuit warns about its own internals
            vec = ss.pettingzoo_env_to_vec_env_v1(spec.supersuit_wrap(spec.make()))
            self.venv = ss.concat_vec_envs_v1(vec, num_envs, num_cpus=num_cpus, base_class="stable_baselines3")
        self.venv.venv.reset(seed=seed)  # SB3VecEnvWrapper.seed() reaches a method ConcatVecEnv lacks
        rng = np.random.default_rng(seed)
        # Trainer-side agents draw the same action mix as in the other rows; the rest uniform.
        is_train = np.array([a in train for a in possible])
        shape = (ACTION_TABLE, num_envs, len(possible))
        acts = np.where(is_train, spec.trainer_actions(rng, n_act, shape), rng.integers(0, n_act, size=shape))
        self.actions = acts.reshape(ACTION_TABLE, -1)
        self._t = 0


# ----------------------------------------------------------------------------------------- measuring
@dataclass
class RowResult:
    """One table row: per-round rates and ratios, and the memory the variant took."""

    env: str
    policy: str
    variant: str
    num_envs: int
    n_agents: int
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    forward_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


@dataclass
class BlockResult:
    """All rows of one (env, policy) block, plus what they were measured with."""

    env: str
    policy: str
    rows: dict[str, RowResult]
    npc_batch: int
    #: Peak RSS of the process (``resource.getrusage``) once this block was measured, MiB.
    peak_rss_mb: float = 0.0


def _open_runner(variant: str, spec: EnvSpec, model: NPCModel, args: argparse.Namespace,
                 options: dict[str, Any]) -> Runner:
    if variant == "floor":
        return FloorRunner(spec, model, args.num_envs, args.seed)
    if variant == "dict_floor":
        return DictFloorRunner(spec, model, args.num_envs, args.seed)
    if variant == "npc_wrapper":
        return WrapperRunner(spec, model, args.num_envs, args.seed, args.num_workers, options, _npc_options(args))
    if variant == "per_env":
        return PerEnvRunner(spec, model, args.num_envs, args.seed)
    if variant == "supersuit":
        return SuperSuitRunner(spec, args.num_envs, args.seed, num_cpus=args.num_workers)
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def _prewarm(spec: EnvSpec, model: NPCModel) -> None:
    """Load the libraries and lazy state every variant shares, so no row's RSS column pays for them."""
    import supersuit  # noqa: F401

    env = spec.make()
    obs, _ = env.reset(seed=0)
    _, npcs = _split(env, spec.training_agents)
    for _ in range(3):
        env.step({a: env.action_space(a).sample() for a in env.agents})
    model.make_forward(0)(np.stack([obs[a] for a in npcs]))
    env.close()


def measure_block(spec: EnvSpec, policy: str, args: argparse.Namespace, options: dict[str, Any]) -> BlockResult:
    """Build every variant for ``spec`` x ``policy``, warm them up, and time them interleaved."""
    probe = spec.make()
    _train, npcs = _split(probe, spec.training_agents)
    n_agents = len(probe.possible_agents)
    model = build_npc(policy, probe.observation_space(npcs[0]), probe.action_space(npcs[0]),
                      torch.device(args.device), args.seed)
    probe.close()
    _prewarm(spec, model)
    variants = [v for v in VARIANTS if v in args.variants]
    if "floor" not in variants:
        raise ValueError("--variants must include floor: every ratio is to the floor")
    runners: dict[str, Runner] = {}
    rows: dict[str, RowResult] = {}
    try:
        for v in variants:
            runners[v] = _open_runner(v, spec, model, args, options)
            runners[v].run(args.warmup)
            rows[v] = RowResult(spec.name, policy, v, args.num_envs, n_agents)
        for r in range(args.repeats):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            secs: dict[str, float] = {}
            for v in order:
                gc.collect()
                secs[v] = runners[v].run(args.steps)
                if v == "floor":
                    rows[v].forward_ms.append(1e3 * runners[v].last_forward_s / args.steps)
            for v in variants:
                rows[v].rates.append(args.steps / secs[v])
                rows[v].ratios.append(secs["floor"] / secs[v])
    finally:
        for runner in runners.values():
            runner.close()
    return BlockResult(spec.name, policy, rows, args.num_envs * len(npcs), _peak_rss_mb())


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def format_table(blocks: Sequence[BlockResult]) -> str:
    """The results as one Markdown table."""
    lines = [
        "| env | NPC policy | variant | vec steps/s | agent steps/s | ms/step | ratio to floor [min-max] |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for block in blocks:
        for row in block.rows.values():
            agent_rate = row.rate * row.num_envs * row.n_agents
            spread = f"{min(row.ratios):.2f}-{max(row.ratios):.2f}"
            name = row.variant
            if row.variant == "floor":
                name = f"floor (fwd {statistics.median(row.forward_ms):.2f} ms, batch {block.npc_batch})"
            elif row.variant == "dict_floor":
                name = "dict_floor (floor + dict API reads)"
            elif row.variant == "supersuit":
                name = "supersuit (no NPC fwd)"
            lines.append(
                f"| {row.env} | {row.policy} | {name} | {_fmt_rate(row.rate)} | {_fmt_rate(agent_rate)} | "
                f"{1e3 / row.rate:.2f} | {row.ratio:.2f} [{spread}] |"
            )
    return "\n".join(lines)


def format_targets(blocks: Sequence[BlockResult]) -> str:
    """The issue's CPU ratios: npc_wrapper / floor and npc_wrapper / per_env, per block."""
    out = []
    for block in blocks:
        rows = block.rows
        if "npc_wrapper" not in rows:
            continue
        parts = [f"npc_wrapper/floor = {rows['npc_wrapper'].ratio:.2f}"]
        if "dict_floor" in rows:
            own = [w / d for w, d in zip(rows["npc_wrapper"].rates, rows["dict_floor"].rates)]
            parts.append(f"npc_wrapper/dict_floor = {statistics.median(own):.2f}")
        if "per_env" in rows:
            per = [w / p for w, p in zip(rows["npc_wrapper"].rates, rows["per_env"].rates)]
            parts.append(f"npc_wrapper/per_env = {statistics.median(per):.2f}")
        parts.append(f"process peak RSS after this block {block.peak_rss_mb:.0f} MiB")
        out.append(f"- {block.env} / {block.policy}: " + ", ".join(parts))
    return "\n".join(out)


# ------------------------------------------------------------------------------------ workers check
def _pistonball_env() -> Any:
    import supersuit as ss
    from pettingzoo.butterfly import pistonball_v6

    env = pistonball_v6.parallel_env(continuous=False, max_cycles=125)
    return ss.resize_v1(ss.color_reduction_v0(env, mode="B"), 32, 32)


def _busy_loop(n: int) -> float:
    start = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - start


def parallel_headroom(n: int = 2_000_000, repeats: int = 3) -> float:
    """How much faster two busy processes finish a fixed amount of work than one (2.0: two free cores).

    Worker processes can only beat in-process stepping by what the machine really gives them; on
    a shared machine that is often far less than its core count.
    """
    import multiprocessing

    ratios = []
    # fork where there is one: the children then need not import this script by name
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(2) as pool:
        pool.map(_busy_loop, [n // 10, n // 10])  # start-up out of the timing
        for _ in range(repeats):  # alternate, median: the load of a shared machine drifts
            alone = _busy_loop(2 * n)
            start = time.perf_counter()
            pool.map(_busy_loop, [n, n])
            ratios.append(alone / (time.perf_counter() - start))
    return statistics.median(ratios)


def workers_check(args: argparse.Namespace) -> str:
    """``num_workers=0`` vs ``2`` on pistonball (32x32 grey obs, half the pistons NPCs, CNN NPC)."""
    num_envs = args.workers_num_envs
    spec, model, n_agents = _pistonball_wrapper_spec(args)
    runners = {w: WrapperRunner(spec, model, num_envs, args.seed, num_workers=w) for w in (0, 2)}
    rates: dict[int, list[float]] = {0: [], 2: []}
    try:
        for runner in runners.values():
            runner.run(args.warmup)
        for r in range(args.workers_repeats):
            for w in ((0, 2) if r % 2 == 0 else (2, 0)):
                rates[w].append(args.workers_steps / runners[w].run(args.workers_steps))
    finally:
        for runner in runners.values():
            runner.close()
    ratio = statistics.median([b / a for a, b in zip(rates[0], rates[2])])
    n_train = len(spec.training_agents)
    lines = [
        (f"pistonball_v6 (continuous=False, color_reduction B, resize 32x32), {num_envs} envs, "
        f"{n_agents - n_train} CNN NPCs + {n_train} training pistons per env, {args.workers_steps} steps x "
        f"{args.workers_repeats} repeats"),
        "",
        "| num_workers | vec steps/s | agent steps/s |",
        "|---:|---:|---:|",
    ]
    for w in (0, 2):
        rate = statistics.median(rates[w])
        lines.append(f"| {w} | {_fmt_rate(rate)} | {_fmt_rate(rate * num_envs * n_agents)} |")
    lines += ["", f"num_workers=2 / num_workers=0 = {ratio:.2f}",
              (f"parallel headroom: two busy processes did 2 units of work {parallel_headroom():.2f}x as fast as "
              "one (2.00 = two free cores; the workers' speed-up cannot exceed it)")]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- turn-based
class AECFloorRunner(Runner):
    """connect_four_v3 in a plain AEC loop, the learner at player_0: ``run(n)`` plays ``n`` learner moves
    in every env, each followed by rounds in which the NPCs of all envs waiting on one move after ONE
    batched masked forward.

    The learner's move is its mask's first legal column (an array op over all envs, no forward). Reads
    are the cheapest a hand-written loop for this env can make (``env.unwrapped``'s dicts); the mover's
    observation and mask are copied into preallocated rows (the forward needs them as arrays); at the
    learner's end its reward and terminal observation are read and the env reset. Nothing else.
    """

    def __init__(self, model: NPCModel, num_envs: int, seed: int) -> None:
        from pettingzoo.classic import connect_four_v3

        self.envs = [connect_four_v3.env() for _ in range(num_envs)]
        self.raws = [env.unwrapped for env in self.envs]
        self.obs = np.zeros((num_envs, 6, 7, 2), np.int8)
        self.mask = np.zeros((num_envs, 7), bool)
        self.final = np.zeros((num_envs, 6, 7, 2), np.int8)
        self.reward = np.zeros(num_envs)
        self.forward = model.make_forward(seed)
        for e, env in enumerate(self.envs):
            env.reset(seed=seed + e)
        self._rounds([e for e in range(num_envs) if not self._decide(e)])

    def _decide(self, e: int) -> bool:
        """Step dead agents (reset at the learner's end) until a live agent is to move; copy its obs and
        mask; whether it is the learner."""
        env, raw = self.envs[e], self.raws[e]
        while True:
            agent = raw.agent_selection
            if raw.terminations[agent] or raw.truncations[agent]:
                if agent == "player_0":
                    self.reward[e] = raw._cumulative_rewards[agent]
                    self.final[e] = env.observe(agent)["observation"]
                    env.reset()
                else:
                    env.step(None)
                continue
            o = env.observe(agent)
            self.obs[e] = o["observation"]
            self.mask[e] = o["action_mask"]
            if agent == "player_0":
                self.reward[e] = raw._cumulative_rewards[agent]
                return True
            return False

    def _rounds(self, waiting: list[int]) -> None:
        envs, forward = self.envs, self.forward
        while waiting:
            for e, a in zip(waiting, forward(self.obs[waiting], self.mask[waiting]).tolist()):
                envs[e].step(a)
            waiting = [e for e in waiting if not self._decide(e)]

    def run(self, n: int) -> float:
        start = time.perf_counter()
        envs = self.envs
        for _ in range(n):
            for env, a in zip(envs, self.mask.argmax(axis=1).tolist()):
                env.step(a)
            self._rounds([e for e in range(len(envs)) if not self._decide(e)])
        return time.perf_counter() - start

    def close(self) -> None:
        for env in self.envs:
            env.close()


class AECWrapperRunner(Runner):
    """``make_vec_env(connect_four_v3.env, npc=<the same network>)``, the learner at player_0, stepped with
    the first legal column of ``venv.action_masks()``."""

    def __init__(self, model: NPCModel, num_envs: int, seed: int, num_workers: int = 0) -> None:
        from pettingzoo.classic import connect_four_v3

        self.venv = nw.make_vec_env(connect_four_v3.env, num_envs=num_envs, npc=model.npc, seed=seed,
                                    training_agents=["player_0"], device=model.device, num_workers=num_workers)
        self.venv.reset()

    def run(self, n: int) -> float:
        venv = self.venv
        start = time.perf_counter()
        for _ in range(n):
            venv.step(venv.action_masks().argmax(axis=1))
        return time.perf_counter() - start

    def close(self) -> None:
        self.venv.close()


def turn_based_section(args: argparse.Namespace) -> str:
    """connect four at ``--turn-num-envs`` envs: the wrapper against the plain AEC loop (issue 13's floor),
    with an SB3 MlpPolicy NPC, masked, one forward per round in both."""
    num_envs = args.turn_num_envs
    model = build_npc("mlp", spaces.Box(0, 1, (6, 7, 2), np.int8), spaces.Discrete(7), torch.device(args.device),
                      args.seed)
    runners = {"aec_floor": AECFloorRunner(model, num_envs, args.seed),
               "npc_wrapper": AECWrapperRunner(model, num_envs, args.seed)}
    times: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}  # process time: less noisy on a shared machine
    try:
        for runner in runners.values():
            runner.run(args.warmup)
        for r in range(args.turn_repeats):
            for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
                start = time.process_time()
                times[name].append(runners[name].run(args.turn_steps))
                cpu[name].append(time.process_time() - start)
    finally:
        for runner in runners.values():
            runner.close()
    ratio = statistics.median([f / w for f, w in zip(times["aec_floor"], times["npc_wrapper"])])
    cpu_ratio = statistics.median([f / w for f, w in zip(cpu["aec_floor"], cpu["npc_wrapper"])])
    lines = [
        (f"connect_four_v3, {num_envs} envs, learner player_0 (first legal column), SB3 MlpPolicy NPC "
         f"(masked), {args.device}, {args.turn_steps} learner moves x {args.turn_repeats} repeats"),
        "",
        "| variant | learner moves/s |",
        "|---|---:|",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {_fmt_rate(num_envs * args.turn_steps / statistics.median(ts))} |")
    lines += ["", f"npc_wrapper / aec_floor = {ratio:.2f} (median of per-round ratios; target >= 0.90); in "
              f"process time {cpu_ratio:.2f}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- ray check
def _pistonball_wrapper_spec(args: argparse.Namespace) -> tuple[EnvSpec, NPCModel, int]:
    """Pistonball with half the pistons CNN NPCs: its spec, the NPC and the agents per env."""
    probe = _pistonball_env()
    npcs = list(probe.possible_agents)[len(probe.possible_agents) // 2:]
    train = [a for a in probe.possible_agents if a not in npcs]
    model = build_npc("cnn", probe.observation_space(npcs[0]), probe.action_space(npcs[0]),
                      torch.device(args.device), args.seed)
    n_agents = len(probe.possible_agents)
    probe.close()
    spec = EnvSpec("pistonball", _pistonball_env, tuple(train), _uniform_actions, lambda env: env)
    return spec, model, n_agents


def _round_trips(backend: Any, n: int) -> tuple[float, float]:
    """Median seconds of a call that brings every Ray worker's buffers back without stepping (a step's
    round trip and transfer, less the envs' own time), and of copying them into the learner's buffers."""
    import ray

    trip, copy = [], []
    for _ in range(n):
        start = time.perf_counter()
        # The batch method that returns its buffers as they are: the step's reply, with no env stepped.
        results = ray.get([actor.run.remote("_obs_now") for actor in backend.actors])
        mid = time.perf_counter()
        backend._copy_buffers([(r,) for r in results])
        trip.append(mid - start)
        copy.append(time.perf_counter() - mid)
    return statistics.median(trip), statistics.median(copy)


def _time_backends(spec: EnvSpec, model: NPCModel, args: argparse.Namespace,
                   measure: Callable[[Any], Any] | None = None) -> tuple[dict[str, list[float]], Any]:
    """Per-round vec steps/s of ``backend="process"`` and ``"ray"`` on ``spec``, interleaved; and what
    ``measure`` returns for the Ray backend (called before the envs close)."""
    kinds = ("process", "ray")
    runners: dict[str, WrapperRunner] = {}
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for kind in kinds:
            runners[kind] = WrapperRunner(spec, model, args.ray_num_envs, args.seed,
                                          num_workers=args.ray_workers, options={"backend": kind})
            runners[kind].run(args.warmup)
        for r in range(args.ray_repeats):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                rates[kind].append(args.ray_steps / runners[kind].run(args.ray_steps))
        measured = measure(runners["ray"].venv.engine.backend) if measure is not None else None
    finally:
        for runner in runners.values():
            runner.close()
    return rates, measured


def ray_check(args: argparse.Namespace) -> str:
    """``backend="ray"`` vs ``backend="process"``, ``--ray-workers`` workers each, on pistonball (32x32
    grey obs, half the pistons CNN NPCs), interleaved; what one step moves through Ray; and both
    backends on simple_tag, whose envs step so fast that the backends' own per-step cost shows.

    The Ray workers run on the cluster this process is connected to, or ``RAY_ADDRESS``'s (spread over
    its nodes: the round trip then includes the network), else on a local Ray the backend starts."""
    import ray

    if __name__ != "__main__":  # imported (the tests): the env factory must travel by value, as from a script
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    num_envs, workers = args.ray_num_envs, args.ray_workers
    spec, model, n_agents = _pistonball_wrapper_spec(args)
    started_ray = not ray.is_initialized()

    how = "started by the backend" if started_ray and not os.environ.get("RAY_ADDRESS") else "connected"

    def measure(backend: Any) -> tuple[float, float, Any, str]:
        nodes = len({node["node_id"] for node in backend.nodes})
        where = (f"Ray at {ray.get_runtime_context().gcs_address} ({how}), the Ray workers on {nodes} "
                 f"node{'s' if nodes > 1 else ''}")
        return (*_round_trips(backend, args.ray_steps), backend.layout, where)

    rates, (trip_s, copy_s, layout, where) = _time_backends(spec, model, args, measure)
    tag = ENV_SPECS["tag"]
    tag_rates, _ = _time_backends(tag, _npc_model(tag, "mlp", args), args)
    ratios = [r / p for p, r in zip(rates["process"], rates["ray"])]
    added_ms = statistics.median([1e3 / r - 1e3 / p for p, r in zip(tag_rates["process"], tag_rates["ray"])])
    sizes = {k: int(np.prod(s.shape)) * s.dtype.itemsize for k, s in buffer_spaces(layout).items()}
    per_env = sum(sizes.values())
    obs = sum(v for k, v in sizes.items() if k.endswith("obs") or k.startswith("npc_obs"))
    action_bytes = 8 * n_agents  # int64 actions, the trainer's and the NPCs'
    step_ms = 1e3 / statistics.median(rates["ray"])
    n_train = len(spec.training_agents)
    lines = [
        (f"pistonball_v6 (continuous=False, color_reduction B, resize 32x32), {num_envs} envs in {workers} "
         f"workers, {n_train} training pistons + {n_agents - n_train} CNN "
         f"NPCs per env, {args.ray_steps} steps x {args.ray_repeats} repeats; {where}"),
        "",
        "| backend | vec steps/s | agent steps/s | ms/step |",
        "|---|---:|---:|---:|",
    ]
    for kind in ("process", "ray"):
        rate = statistics.median(rates[kind])
        agent_rate = _fmt_rate(rate * num_envs * n_agents)
        lines.append(f"| {kind} | {_fmt_rate(rate)} | {agent_rate} | {1e3 / rate:.2f} |")
    tag_ms = {k: 1e3 / statistics.median(v) for k, v in tag_rates.items()}
    lines += [
        "",
        f"ray / process = {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}] (median of "
        "per-round ratios)",
        (f"per step, each env's buffers travel back: {per_env / 1024:.1f} KiB ({obs / 1024:.1f} KiB of "
         f"observations: the training agents', their terminal ones and the NPCs'), "
         f"{per_env * num_envs / 1024:.0f} KiB for all {num_envs} envs; the actions travel out: "
         f"{action_bytes} B per env"),
        (f"Ray round trip of one step without the envs (every worker's buffers brought back): "
         f"{1e3 * trip_s:.2f} ms; copying them into the learner's buffers: {1e6 * copy_s:.0f} us "
         f"({100 * copy_s / (step_ms / 1e3):.2f}% of a Ray step)"),
        (f"simple_tag (fast envs: the backends' own cost shows), the same envs and workers, MLP NPC: process "
         f"{tag_ms['process']:.2f} ms/step, ray {tag_ms['ray']:.2f} ms/step; Ray adds {added_ms:.2f} ms per "
         "step (median of the per-round differences)"),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- memory check
def memory_check(args: argparse.Namespace, out: Callable[[str], None] = print) -> list[tuple[int, float]]:
    """Run the wrapper (first ``--envs`` x first ``--policies``) and sample resident memory.

    :return: ``(steps done, RSS MiB)`` samples, one every ``--memory-every`` vector steps
    """
    spec = ENV_SPECS[args.envs[0]]
    model = _npc_model(spec, args.policies[0], args)
    runner = WrapperRunner(spec, model, args.num_envs, args.seed, args.num_workers, _engine_options(args),
                           _npc_options(args))
    samples: list[tuple[int, float]] = []
    out(f"memory check: {spec.name} / {args.policies[0]}, {args.num_envs} envs, num_workers={args.num_workers}, "
        f"{args.memory_steps} vector steps, RSS every {args.memory_every}")
    out("| vector steps | RSS MiB | peak RSS MiB |")
    out("|---:|---:|---:|")
    try:
        done = 0
        start = time.perf_counter()
        while done < args.memory_steps:
            n = min(args.memory_every, args.memory_steps - done)
            runner.run(n)
            done += n
            gc.collect()
            samples.append((done, _rss_mb()))
            out(f"| {done} | {samples[-1][1]:.1f} | {_peak_rss_mb():.1f} |")
        elapsed = time.perf_counter() - start
    finally:
        runner.close()
    if len(samples) >= 3:
        # The first sample includes warm-up allocations (caches, allocator pools); judge the rest.
        xs = np.array([s for s, _ in samples[1:]], dtype=np.float64)
        ys = np.array([m for _, m in samples[1:]], dtype=np.float64)
        slope = np.polyfit(xs, ys, 1)[0] * args.memory_every
        out(f"\nRSS from sample 2 to last: {ys[0]:.1f} -> {ys[-1]:.1f} MiB ({ys[-1] - ys[0]:+.1f} MiB); "
            f"fitted slope {slope * 1024:+.1f} KiB per {args.memory_every} steps; {elapsed:.0f} s")
    return samples


# -------------------------------------------------------------------------------- inference section
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    """Mean milliseconds per call of ``fn`` (device work included)."""
    for _ in range(3):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return 1e3 * (time.perf_counter() - start) / n


def _captured_forward_ms(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int) -> float:
    """Mean milliseconds per replay of ``logits(x)`` captured in a CUDA graph (the bare-minimum forward)."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad():
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for _ in range(3):
                logits(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits(static_x)
    return _time_calls(graph.replay, n, x.device)


def _instrument_npc_time(venv: Any) -> list[float]:
    """Add every NPC policy's inference wall time to the returned cells: ``[launch s, wait s]``.

    ``act_async`` is the launch (host-side work: copies into pinned memory, kernel or graph launches)
    and calling what it returns is the wait (the device work not yet done by then); a synchronous
    ``act`` counts as launch. With nothing between launch and wait (a bare stepping loop) their sum
    is the NPC latency per step; work in between (the trainer's forward) can only shrink the wait.
    """
    cells = [0.0, 0.0]

    def timed(fn: Callable[..., Any], k: int) -> Callable[..., Any]:
        def call(*a: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*a)
            cells[k] += time.perf_counter() - t0
            return out

        return call

    for pool in venv.pools:
        for member in pool.members:
            if hasattr(member, "act_async"):
                launch = member.act_async
                member.act_async = timed(lambda *a, _launch=launch: timed(_launch(*a), 1), 0)
            else:
                member.act = timed(member.act, 0)
    return cells


def inference_section(args: argparse.Namespace, device: torch.device | None = None) -> str:
    """NPC inference per step inside the wrapper vs a bare (and a CUDA-graph-captured) forward, and overlap.

    Per (env, policy, NPC adapter options): the wrapper's NPC inference time per step (instrumented,
    launch + wait), the per_env row's NPC time (one numpy-to-actions forward per env), a bare forward
    of the full NPC batch already on the device, the same forward captured in a CUDA graph, and a
    trainer-sized forward (the same kind of network on the training slots' observations, copied to
    the device and its argmax back, as a trainer does). *Adapter alone* is the wrapper's NPC adapter
    called on the full batch in a tight loop (launch + wait, no env steps in between to evict the
    host's caches), the figure comparable to the bare and captured forwards, which are timed the
    same way. The wrapper's NPC time is split into the launch (host work in ``act_async``) and the
    wait for the device; overlap is the share of that wait that disappears when the trainer's
    forward runs between launch and wait, as in training.
    Where the adapter takes ``cuda_graphs`` the wrapper is also measured with ``cuda_graphs=True``.

    :param device: defaults to ``--device``; CUDA-graph figures are measured on CUDA only ("n/a" elsewhere)
    """
    device = device or torch.device(args.device)
    cuda = device.type == "cuda"
    options = _engine_options(args)
    n = args.steps
    lines = [
        ("| env | NPC policy | NPC options | NPC batch | wrapper NPC ms/step | launch ms | wait ms | "
         "adapter alone ms | per-env NPC ms/step | per-env / wrapper | bare fwd ms | captured fwd ms | "
         "wrapper / captured | adapter alone / captured | trainer fwd ms | wait ms behind trainer | "
         "wait hidden |"),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.3f}"  # NaN: not measured here

    for env_name in args.envs:
        spec = ENV_SPECS[env_name]
        for policy in args.policies:
            probe = spec.make()
            train, npcs = _split(probe, spec.training_agents)
            model = build_npc(policy, probe.observation_space(npcs[0]), probe.action_space(npcs[0]), device, args.seed)
            trainer = build_npc(policy, probe.observation_space(train[0]), probe.action_space(train[0]), device,
                                args.seed + 1)
            probe.close()
            floor = FloorRunner(spec, model, args.num_envs, args.seed)
            batch = floor.npc_batch
            floor.close()
            x = torch.from_numpy(batch).to(device)
            with torch.inference_mode():
                bare_ms = _time_calls(lambda model=model, x=x: model.logits(x), n, device)
            # What the per_env row pays for NPCs: one numpy -> device -> sampled actions -> numpy round
            # trip per env, each on that env's own NPC rows.
            forward, chunks = model.make_forward(args.seed), np.array_split(batch, args.num_envs)
            per_env_ms = _time_calls(lambda forward=forward, chunks=chunks: [forward(c) for c in chunks], n,
                                     device)
            captured_ms = _captured_forward_ms(model.logits, x, n) if cuda else float("nan")
            option_sets = [_npc_options(args)]
            if cuda and "cuda_graphs" not in option_sets[0] and adapter_supports(policy, "cuda_graphs"):
                option_sets.append({**option_sets[0], "cuda_graphs": True})
            for npc_options in option_sets:
                runner = WrapperRunner(spec, model, args.num_envs, args.seed, args.num_workers, options, npc_options)
                try:
                    venv = runner.venv
                    adapter = venv.pools[0].members[0]
                    rows, starts = np.arange(len(batch)), np.zeros(len(batch), dtype=bool)
                    alone_ms = _time_calls(lambda a=adapter: a.act_async(batch, rows, starts)(), n, device)
                    cells = _instrument_npc_time(venv)
                    runner.run(args.warmup)
                    cells[:] = [0.0, 0.0]
                    runner.run(n)
                    launch_ms, wait_ms = (1e3 * c / n for c in cells)
                    obs_holder = [venv.reset()]

                    def trainer_forward(trainer: NPCModel = trainer, obs_holder: list = obs_holder) -> np.ndarray:
                        with torch.inference_mode():
                            logits = trainer.logits(torch.from_numpy(obs_holder[0]).to(device))
                            return logits.argmax(dim=-1).cpu().numpy()

                    trainer_ms = _time_calls(trainer_forward, n, device)
                    for _ in range(args.warmup):
                        obs_holder[0] = venv.step(trainer_forward())[0]
                    cells[:] = [0.0, 0.0]
                    for _ in range(n):
                        obs_holder[0] = venv.step(trainer_forward())[0]
                    behind_ms = 1e3 * cells[1] / n
                finally:
                    runner.close()
                npc_ms = launch_ms + wait_ms
                label = ", ".join(f"{k}={v}" for k, v in npc_options.items()) or "-"
                lines.append(
                    f"| {env_name} | {policy} | {label} | {len(batch)} | {npc_ms:.3f} | {launch_ms:.3f} | "
                    f"{wait_ms:.3f} | {alone_ms:.3f} | {per_env_ms:.3f} | {per_env_ms / npc_ms:.1f} | "
                    f"{bare_ms:.3f} | "
                    f"{ms(captured_ms)} | {ms(npc_ms / captured_ms)} | {ms(alone_ms / captured_ms)} | "
                    f"{trainer_ms:.3f} | {behind_ms:.3f} | "
                    f"{ms(100 * (1 - behind_ms / wait_ms) if wait_ms > 0 else float('nan'))}% |"
                )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- breakdown
def _add_timer(obj: Any, name: str, cell: list[float]) -> None:
    """Replace ``obj.name`` by a wrapper that adds its wall time to ``cell[0]`` (an instance attribute)."""
    fn = getattr(obj, name)

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            cell[0] += time.perf_counter() - t0

    setattr(obj, name, timed)


def breakdown_section(args: argparse.Namespace) -> str:
    """Where one ``npc_wrapper`` vector step goes, in ms: env steps, per-env bookkeeping, NPC, engine.

    Instruments a running wrapper from outside: the PettingZoo envs' ``step`` (and ``reset``), the
    backend's ``step`` (all sub-envs with their per-env bookkeeping), and the NPC policies'
    inference (see :func:`_instrument_npc_time`); the bare forward is the floor's, on the same batch.
    It reads the in-process backend's ``joints``, so it needs ``num_workers=0``; if the engine's
    internals change it says so instead of guessing.
    """
    if args.num_workers:
        return "breakdown: skipped (needs --num-workers 0: the envs must step in this process)"
    options = _engine_options(args)
    lines = [
        ("| env | NPC policy | step ms | PZ env.step ms | per-env bookkeeping ms | NPC inference ms | "
        "(bare fwd ms) | engine + SB3 front end ms | wrapper's own share |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for env_name in args.envs:
        spec = ENV_SPECS[env_name]
        for policy in args.policies:
            model = _npc_model(spec, policy, args)
            runner = WrapperRunner(spec, model, args.num_envs, args.seed, 0, options, _npc_options(args))
            try:
                backend = runner.venv.engine.backend
                joints = getattr(backend, "joints", None)
                if joints is None or not all(hasattr(j, "env") for j in joints):
                    return "breakdown: unavailable (the in-process backend no longer exposes joints[i].env)"
                env_s, backend_s = [0.0], [0.0]
                for joint in joints:
                    _add_timer(joint.env, "step", env_s)
                    _add_timer(joint.env, "reset", env_s)
                _add_timer(backend, "step", backend_s)
                npc_s = _instrument_npc_time(runner.venv)
                runner.run(args.warmup)
                env_s[0] = backend_s[0] = npc_s[0] = 0.0
                total = runner.run(args.breakdown_steps)
            finally:
                runner.close()
            floor = FloorRunner(spec, model, args.num_envs, args.seed)
            try:
                floor.run(args.warmup)
                floor.run(args.breakdown_steps)
                bare = floor.last_forward_s
            finally:
                floor.close()
            n = args.breakdown_steps
            own = total - env_s[0] - npc_s[0]
            cells = [total, env_s[0], backend_s[0] - env_s[0], npc_s[0], bare, total - backend_s[0] - npc_s[0]]
            lines.append(f"| {env_name} | {policy} | " + " | ".join(f"{1e3 * c / n:.3f}" for c in cells)
                         + f" | {100 * (own + npc_s[0] - bare) / total:.0f}% |")
    lines += ["", ("wrapper's own share = (step - env.step - bare forward) / step: bookkeeping plus the NPC "
              "adapter's overhead over the bare forward; the floor's ratio is about 1 - that share.")]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- profiling
def profile_wrapper(args: argparse.Namespace, out_dir: Path, top: int = 15) -> str:
    """cProfile the ``npc_wrapper`` row of each block; write ``.prof`` files; list top self-time functions.

    :param out_dir: where ``<env>_<policy>.prof`` go (open them with ``python -m pstats`` or snakeviz)
    :param top: functions listed per block (overall and inside ``npc_wrapper/``)
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    package = str(Path(nw.__file__).resolve().parent)
    text = []
    for env_name in args.envs:
        spec = ENV_SPECS[env_name]
        for policy in args.policies:
            model = _npc_model(spec, policy, args)
            runner = WrapperRunner(spec, model, args.num_envs, args.seed, args.num_workers, _engine_options(args),
                           _npc_options(args))
            try:
                runner.run(args.warmup)
                prof = cProfile.Profile()
                prof.enable()
                runner.run(args.steps * args.repeats)
                prof.disable()
            finally:
                runner.close()
            path = out_dir / f"{env_name}_{policy}.prof"
            prof.dump_stats(str(path))
            stats = pstats.Stats(prof).stats  # (file, line, func) -> (cc, ncalls, tottime, cumtime, callers)
            total = sum(v[2] for v in stats.values())
            ranked = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)
            ours = [kv for kv in ranked if str(Path(kv[0][0]).resolve()).startswith(package)]
            ours_total = sum(kv[1][2] for kv in ours)
            text.append(f"### {env_name} / {policy}: {path} (total self time {total:.2f} s; "
                        f"in npc_wrapper/ {ours_total:.2f} s = {100 * ours_total / total:.1f}%)")
            for title, items in (("top self time, all code", ranked[:top]), ("top self time in npc_wrapper/", ours[:top])):
                text.append(f"\n{title}:\n")
                text.append("| self s | share | calls | function |")
                text.append("|---:|---:|---:|---|")
                for (file, line, func), (_, calls, tt, _, _) in items:
                    where = f"{Path(file).name}:{line}({func})" if file != "~" else func
                    text.append(f"| {tt:.3f} | {100 * tt / total:.1f}% | {calls} | {where} |")
            text.append("")
    return "\n".join(text)


# --------------------------------------------------------------------------------------------- main
def _csv(kind: Callable[[str], Any], choices: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        bad = [x for x in items if choices is not None and x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {list(choices or [])}, got {text!r}")
        return items

    return parse


def _engine_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"options take KEY=VALUE (e.g. cuda_graphs=True), got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare string such as a device name
    return key, parsed


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--engine-option`` pairs, refused early when ``make_vec_env`` has no such parameter."""
    params = inspect.signature(nw.make_vec_env).parameters
    options = dict(args.engine_option or [])
    missing = [k for k in options if k not in params]
    if missing:
        raise SystemExit(
            f"make_vec_env has no parameter(s) {missing} in this version of npc_wrapper; "
            f"its parameters are {list(params)}"
        )
    return options


def _npc_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(args.npc_option or [])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the NPC policies run")
    p.add_argument("--num-envs", type=int, default=16, help="PettingZoo envs per vector env")
    p.add_argument("--num-workers", type=int, default=0,
                   help="npc_wrapper's worker processes (SuperSuit's num_cpus); floor and per_env stay in-process")
    # Many short rounds: two runs of 20 x 50 agreed within 0.02 on this shared machine, where 100 x 7
    # gave battle/mlp npc_wrapper/floor anywhere from 0.76 to 0.87.
    p.add_argument("--steps", type=int, default=20, help="vector steps per variant per repeat")
    p.add_argument("--repeats", type=int, default=50, help="interleaved rounds; medians are reported")
    p.add_argument("--warmup", type=int, default=20, help="untimed vector steps per variant before timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads for every row (intra-op threads on small NPC batches mostly spin; "
                        "on a busy 2-core machine 2 threads made a 16-row MLP forward 300x slower)")
    p.add_argument("--envs", type=_csv(str, list(ENV_SPECS)), default=list(ENV_SPECS), help="tag,battle")
    p.add_argument("--policies", type=_csv(str, ["mlp", "cnn"]), default=["mlp", "cnn"], help="mlp,cnn")
    p.add_argument("--variants", type=_csv(str, list(VARIANTS)), default=list(VARIANTS), help=",".join(VARIANTS))
    p.add_argument("--engine-option", type=_engine_option, action="append", metavar="KEY=VALUE",
                   help="extra make_vec_env keyword (repeatable), only if this npc_wrapper version has it")
    p.add_argument("--npc-option", type=_engine_option, action="append", metavar="KEY=VALUE",
                   help="extra keyword for the NPC adapter (TorchPolicy / SB3Policy, e.g. cuda_graphs=True), "
                        "only if this npc_wrapper version has it")
    p.add_argument("--workers-check", action="store_true", help="also time num_workers=0 vs 2 on pistonball")
    p.add_argument("--workers-num-envs", type=int, default=4, help="envs in the workers check (even)")
    p.add_argument("--workers-steps", type=int, default=30, help="vector steps per repeat in the workers check")
    p.add_argument("--workers-repeats", type=int, default=7, help="interleaved rounds in the workers check")
    p.add_argument("--ray-check", action="store_true",
                   help="also time backend='ray' against backend='process' on pistonball (needs ray)")
    p.add_argument("--ray-num-envs", type=int, default=16, help="envs in the ray check")
    p.add_argument("--ray-workers", type=int, default=2, help="workers of each backend in the ray check")
    p.add_argument("--ray-steps", type=int, default=30, help="vector steps per repeat in the ray check")
    p.add_argument("--ray-repeats", type=int, default=15, help="interleaved rounds in the ray check")
    p.add_argument("--breakdown-steps", type=int, default=100,
                   help="vector steps timed in the step breakdown")
    p.add_argument("--turn-based", action="store_true",
                   help="only the turn-based section: connect four, the wrapper vs a plain AEC loop")
    p.add_argument("--turn-num-envs", type=int, default=64, help="envs in the turn-based section")
    p.add_argument("--turn-steps", type=int, default=10, help="learner moves per repeat in the turn-based section")
    p.add_argument("--turn-repeats", type=int, default=40, help="interleaved rounds in the turn-based section")
    p.add_argument("--memory-check", action="store_true",
                   help="only run the wrapper for --memory-steps and sample RSS (first --envs / --policies)")
    p.add_argument("--memory-steps", type=int, default=200_000, help="vector steps in the memory check")
    p.add_argument("--memory-every", type=int, default=10_000, help="RSS sample interval in vector steps")
    p.add_argument("--source-digest", action="store_true",
                   help="print the digest of npc_wrapper's modules and this script (as the report's header "
                        "does) and exit")
    p.add_argument("--profile", type=Path, metavar="DIR", default=None,
                   help="after the table, cProfile the npc_wrapper rows and write DIR/<env>_<policy>.prof")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)")
    counts = ("num_envs", "steps", "repeats", "torch_threads", "workers_steps", "workers_repeats",
              "breakdown_steps", "ray_num_envs", "ray_workers", "ray_steps", "ray_repeats")
    if min(getattr(args, c) for c in counts) < 1 or args.warmup < 0:
        p.error(", ".join("--" + c.replace("_", "-") for c in counts) + " must be >= 1, --warmup >= 0")
    if args.num_workers and args.num_envs % args.num_workers:
        p.error(f"--num-envs {args.num_envs} must be a multiple of --num-workers {args.num_workers}")
    if args.workers_num_envs % 2:
        p.error("--workers-num-envs must be even (2 workers split the envs evenly)")
    if args.ray_num_envs % args.ray_workers:
        p.error(f"--ray-num-envs {args.ray_num_envs} must be a multiple of --ray-workers {args.ray_workers}")
    return args


def source_digest(package: Path | None = None, script: Path | None = None) -> str:
    """A digest of the measured code: every ``.py`` file of the package and this script, names and bytes.

    It names the code even where the checkout's git metadata is stale or missing (a copied tree on a
    lent GPU machine); ``--source-digest`` prints it for any checkout, to match a log to a commit.
    """
    package = package or Path(nw.__file__).resolve().parent
    script = script or Path(__file__).resolve()
    h = hashlib.sha256()
    files = [(f"{package.name}/{f.relative_to(package).as_posix()}", f)
             for f in sorted(package.rglob("*.py"))]
    for name, path in files + [(f"scripts/{script.name}", script)]:
        data = path.read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:12]


def _source_state() -> str:
    """The commit the npc_wrapper package was measured at, whether its files had local changes, and the
    digest of the code itself."""
    import subprocess

    root = Path(nw.__file__).resolve().parent.parent
    digest = f"source digest {source_digest()}"
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "npc_wrapper"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"version {nw.__version__} (not a git checkout), {digest}"
    changes = " + uncommitted changes in npc_wrapper/" if dirty else ""
    return f"version {nw.__version__}, commit {commit}{changes}, {digest}"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} CPUs, {gpu}; Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def main(argv: Sequence[str] | None = None) -> list[BlockResult]:
    """Run the benchmark and print its report; returns the measured blocks (empty in memory-check mode)."""
    args = parse_args(argv)
    if args.source_digest:
        print(source_digest())
        return []
    options = _engine_options(args)
    torch.set_num_threads(args.torch_threads)
    print(f"# npc_wrapper benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {_machine()}")
    print(f"settings: device={args.device} num_envs={args.num_envs} num_workers={args.num_workers} "
          f"steps={args.steps} repeats={args.repeats} warmup={args.warmup} torch threads={args.torch_threads} "
          f"make_vec_env options={options or '{}'} NPC adapter options={_npc_options(args) or '{}'}")
    print(f"npc_wrapper: {_source_state()}\n")
    if args.memory_check:
        memory_check(args)
        return []
    if args.turn_based:
        print("## turn-based: connect four\n\n" + turn_based_section(args))
        return []
    blocks = []
    for env_name in args.envs:
        for policy in args.policies:
            blocks.append(measure_block(ENV_SPECS[env_name], policy, args, options))
    print(format_table(blocks))
    print("\n" + format_targets(blocks))
    print(f"\npeak RSS of this process: {_peak_rss_mb():.0f} MiB (resource.getrusage)")
    print("\n## where an npc_wrapper step goes\n\n" + breakdown_section(args))
    if args.workers_check:
        print("\n## workers check\n\n" + workers_check(args))
    if args.ray_check:
        print("\n## ray check\n\n" + ray_check(args))
    if args.device == "cuda":
        print("\n## GPU inference\n\n" + inference_section(args))
    if args.profile is not None:
        print("\n## profile of the npc_wrapper rows\n\n" + profile_wrapper(args, args.profile))
    return blocks


if __name__ == "__main__":
    main()

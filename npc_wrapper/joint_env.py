"""One PettingZoo env seen as arrays: the per-agent dict API in, fixed-layout buffers out.

A :class:`JointEnv` is the only place that touches the PettingZoo dict API (the per-agent Python
work that API forces). It writes observations into preallocated buffers laid out by
:class:`~npc_wrapper.agents.AgentLayout`, tracks which agents are alive, and resets its env
itself when the episode ends (all agents done, or, with ``reset_when_training_agents_dead``, every
training agent done), keeping the training agents' terminal observations. It runs in the main
process or in a worker process; the :class:`JointBuffers` it writes to are then shared memory.
:func:`check_parallel_env` says whether an env is a PettingZoo ``ParallelEnv`` at all.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv

from npc_wrapper.agents import AgentLayout
from npc_wrapper.masks import MASK_KEY, OBSERVATION_KEY, ActionMask, mask_width, served_observation_space

__all__ = ["JointBuffers", "JointEnv", "buffer_spaces", "check_parallel_env", "env_actions"]


def buffer_spaces(layout: AgentLayout) -> dict[str, spaces.Box]:
    """Shape and dtype of each per-env buffer, as Box spaces (also the worker's shared-memory layout)."""

    def box(shape: tuple[int, ...], dtype: Any) -> spaces.Box:
        return spaces.Box(low=-np.inf if np.dtype(dtype).kind == "f" else 0, high=np.inf if np.dtype(
            dtype).kind == "f" else 1, shape=shape, dtype=dtype)

    obs = layout.observation_space
    out = {
        "train_obs": box((layout.n_train, *obs.shape), obs.dtype),
        "final_obs": box((layout.n_train, *obs.shape), obs.dtype),
        "reward": box((layout.n_agents,), np.float64),
        "terminated": box((layout.n_agents,), np.int8),
        "truncated": box((layout.n_agents,), np.int8),
        "alive": box((layout.n_agents,), np.int8),
        "env_done": box((1,), np.int8),
        # Action masks (all allowed where the env gives none), and whether the env gives them in infos.
        "train_mask": box((layout.n_train, _width(layout.action_space)), np.int8),
        "info_masks": box((1,), np.int8),
    }
    for g, group in enumerate(layout.groups):
        out[f"npc_obs_{g}"] = box((len(group.agents), *group.observation_space.shape), group.observation_space.dtype)
        out[f"npc_mask_{g}"] = box((len(group.agents), _width(group.action_space)), np.int8)
    return out


def _width(space: spaces.Space) -> int:
    """The mask width of ``space``'s actions, 0 for spaces without discrete choices."""
    maskable = isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))
    return mask_width(space) if maskable else 0


@dataclass
class JointBuffers:
    """Views into the buffers of one sub-env (or of a batch of sub-envs, leading axis = env).

    ``reward``/``terminated``/``truncated`` describe the step just taken, for the agents alive at its
    start; ``alive`` is after the step (after the reset, if the env was reset); ``final_obs`` holds
    the training agents' terminal observations for those done at this step. ``train_mask`` /
    ``npc_mask`` hold the agents' legal actions (all allowed where the env gives no masks);
    ``info_masks`` says the env gives them in infos.
    """

    train_obs: np.ndarray
    final_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    alive: np.ndarray
    env_done: np.ndarray
    npc_obs: list[np.ndarray]
    train_mask: np.ndarray
    info_masks: np.ndarray
    npc_mask: list[np.ndarray]

    @classmethod
    def allocate(cls, layout: AgentLayout, leading: tuple[int, ...] = ()) -> JointBuffers:
        specs = buffer_spaces(layout)
        arrays = {k: np.zeros(leading + s.shape, dtype=s.dtype) for k, s in specs.items()}
        return cls.from_arrays(arrays, len(layout.groups))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_groups: int) -> JointBuffers:
        return cls(
            train_obs=arrays["train_obs"],
            final_obs=arrays["final_obs"],
            reward=arrays["reward"],
            terminated=arrays["terminated"].view(np.bool_),
            truncated=arrays["truncated"].view(np.bool_),
            alive=arrays["alive"].view(np.bool_),
            env_done=arrays["env_done"].view(np.bool_),
            npc_obs=[arrays[f"npc_obs_{g}"] for g in range(n_groups)],
            train_mask=arrays["train_mask"].view(np.bool_),
            info_masks=arrays["info_masks"].view(np.bool_),
            npc_mask=[arrays[f"npc_mask_{g}"].view(np.bool_) for g in range(n_groups)],
        )

    def as_arrays(self) -> dict[str, np.ndarray]:
        out = {
            "train_obs": self.train_obs,
            "final_obs": self.final_obs,
            "reward": self.reward,
            "terminated": self.terminated.view(np.int8),
            "truncated": self.truncated.view(np.int8),
            "alive": self.alive.view(np.int8),
            "env_done": self.env_done.view(np.int8),
            "train_mask": self.train_mask.view(np.int8),
            "info_masks": self.info_masks.view(np.int8),
        }
        out.update({f"npc_obs_{g}": a for g, a in enumerate(self.npc_obs)})
        out.update({f"npc_mask_{g}": a.view(np.int8) for g, a in enumerate(self.npc_mask)})
        return out

    def at(self, i: int) -> JointBuffers:
        """The views of sub-env ``i`` of a batch."""
        return JointBuffers(
            self.train_obs[i], self.final_obs[i], self.reward[i], self.terminated[i], self.truncated[i],
            self.alive[i], self.env_done[i], [a[i] for a in self.npc_obs], self.train_mask[i],
            self.info_masks[i], [a[i] for a in self.npc_mask],
        )


def _picker(indices: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """``values -> tuple(values[i] for i in indices)``, in C where it can (``itemgetter`` of one index
    returns the bare item)."""
    if len(indices) > 1:
        return operator.itemgetter(*indices)
    return lambda values: tuple(values[i] for i in indices)


def _as_env_actions(actions: np.ndarray, space: spaces.Space) -> list[list[Any]]:
    """Per-env lists of per-agent actions ``(E, n, ...)`` in the form PettingZoo envs expect: Python
    ints for Discrete, arrays otherwise."""
    if isinstance(space, spaces.Discrete):
        return actions.tolist()
    # A copy: envs may keep the action they were given.
    return [list(env) for env in np.array(actions, dtype=space.dtype)]


def env_actions(
    layout: AgentLayout, train_actions: np.ndarray, npc_actions: Sequence[np.ndarray]
) -> list[list[Any]]:
    """Each env's actions for :meth:`JointEnv.step`, converted for a batch of envs at once.

    :param train_actions: ``(E, n_train, ...)``
    :param npc_actions: each NPC group's ``(E, n_g, ...)``
    """
    out = _as_env_actions(train_actions, layout.action_space)
    for group, acts in zip(layout.groups, npc_actions):
        out = [mine + theirs for mine, theirs in zip(out, _as_env_actions(acts, group.action_space))]
    return out


def check_parallel_env(env: Any, what: str = "env_fn") -> None:
    """Raise ``TypeError`` unless ``env`` is a PettingZoo ``ParallelEnv``; ``what`` names its maker."""
    api = ("possible_agents", "reset", "step", "observation_space", "action_space")
    missing = [m for m in api if not hasattr(env, m)]
    # AEC envs hide agent_selection until reset, so test the type (wrappers subclass AECEnv too).
    aec = isinstance(env, AECEnv)
    if missing or aec:
        kind = "an AEC env" if aec else f"{type(env).__name__} (missing {missing})"
        raise TypeError(
            f"{what} must return a PettingZoo ParallelEnv, got {kind}; "
            "use the env's parallel_env() constructor or pettingzoo.utils.conversions.aec_to_parallel"
        )


def _check_same_env(env: Any, layout: AgentLayout) -> None:
    """Every sub-env must be the kind of env the layout was built from (the first one)."""
    where = "an env built by env_fn differs from the first env, from which the agent split was made"
    if tuple(env.possible_agents) != layout.possible_agents:
        raise ValueError(
            f"{where}: its possible_agents are {list(env.possible_agents)}, the first env's "
            f"{list(layout.possible_agents)}; every env_fn must build the same kind of env"
        )
    expected = [(a, layout.observation_space, layout.action_space) for a in layout.training]
    expected += [(a, g.observation_space, g.action_space) for g in layout.groups for a in g.agents]
    for agent, obs_space, act_space in expected:
        served = served_observation_space(env.observation_space(agent))
        if served != obs_space or env.action_space(agent) != act_space:
            raise ValueError(
                f"{where}: agent {agent!r} has observation space {env.observation_space(agent)} and action "
                f"space {env.action_space(agent)} there, {obs_space} and {act_space} in the first env; "
                "every env_fn must build the same kind of env"
            )


class JointEnv:
    """A PettingZoo ``ParallelEnv`` stepped with arrays.

    :param env: the PettingZoo parallel env
    :param layout: where each agent lives in the buffers
    :param buffers: this env's buffers (written in place)
    :param reset_when_training_agents_dead: reset the env as soon as no training agent is alive
    """

    def __init__(
        self,
        env: Any,
        layout: AgentLayout,
        buffers: JointBuffers,
        reset_when_training_agents_dead: bool = True,
    ) -> None:
        _check_same_env(env, layout)
        self.env = env
        self.layout = layout
        self.buf = buffers
        self.reset_when_training_agents_dead = reset_when_training_agents_dead
        self._pos = {a: i for i, a in enumerate(layout.possible_agents)}
        # Position of each agent in a step's action list (layout order).
        order = [*layout.training, *(a for group in layout.groups for a in group.agents)]
        self._act_pos = {a: i for i, a in enumerate(order)}
        self._act_pickers: dict[tuple[Any, ...], Callable[[Sequence[Any]], tuple[Any, ...]]] = {}
        # agent -> its row of the obs buffers (a view): one dict lookup and one copy per agent per step.
        # [i, ...] rather than [i]: a view even for scalar (Discrete) observations.
        self._obs_view: dict[Any, np.ndarray] = {
            a: buffers.train_obs[i, ...] for i, a in enumerate(layout.training)
        }
        for g, group in enumerate(layout.groups):
            self._obs_view.update({a: buffers.npc_obs[g][i, ...] for i, a in enumerate(group.agents)})
        # Action masks: each agent's row (all actions allowed until the env says otherwise), and how to
        # read its masks. Agents with classic Dict observations are served their observation entry.
        self._mask_view: dict[Any, np.ndarray] = {}
        self._mask_spec: dict[Any, ActionMask] = {}
        rows = [(a, layout.action_space, buffers.train_mask[i, ...]) for i, a in enumerate(layout.training)]
        rows += [(a, g.action_space, buffers.npc_mask[k][i, ...])
                 for k, g in enumerate(layout.groups) for i, a in enumerate(g.agents)]
        for agent, space, view in rows:
            if view.size:
                view[...] = True
                self._mask_view[agent], self._mask_spec[agent] = view, ActionMask(space)
        masked_npcs = [a for g in layout.groups if g.masked for a in g.agents]
        self._dict_agents = frozenset([*(layout.training if layout.masked else ()), *masked_npcs])
        self._info_masks = False  # set at each reset: whether the env gives masks in its infos
        self._train_pos = layout.train_index
        self._group_pos = [layout.group_index(g) for g in range(len(layout.groups))]
        self._was_alive = np.zeros(layout.n_agents, dtype=bool)
        self._alive_now = np.zeros(layout.n_agents, dtype=bool)
        self._in_env = np.zeros(layout.n_agents, dtype=bool)
        # Agents done in this episode that the env still lists in env.agents: dead to us until they leave.
        self._lingering = np.zeros(layout.n_agents, dtype=bool)
        self._pos_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._flags_set = False  # whether terminated/truncated/env_done may hold a True from the last step
        #: The training agents' infos from the last step (or reset), per training slot: the env's own
        #: dicts, not copies (callers copy before adding keys), ``None`` where the env gave none.
        self.train_infos: list[dict[str, Any] | None] = [None] * layout.n_train
        #: The training agents' infos from the env's last reset (the env's own dicts, as above).
        self.reset_infos: list[dict[str, Any] | None] = [None] * layout.n_train

    def _write_obs(self, obs: dict[Any, Any]) -> None:
        views = self._obs_view
        if self._dict_agents:
            self._write_dict_obs(obs)
            return
        try:
            for agent, value in obs.items():
                views[agent][...] = value
        except KeyError as e:
            raise self._unknown_agent(e.args[0], "observations") from None

    def _write_dict_obs(self, obs: dict[Any, Any]) -> None:
        """:meth:`_write_obs` where some agents observe classic Dicts: their entry, and their mask."""
        views, dict_agents = self._obs_view, self._dict_agents
        for agent, value in obs.items():
            view = views.get(agent)
            if view is None:
                raise self._unknown_agent(agent, "observations")
            if agent in dict_agents:
                view[...] = value[OBSERVATION_KEY]
                self._mask_spec[agent].write(value[MASK_KEY], self._mask_view[agent], agent)
            else:
                view[...] = value

    def _write_info_masks(self, infos: dict[Any, Any]) -> None:
        """Each agent's mask from its ``info["action_mask"]`` (all actions allowed where it has none)."""
        views, specs = self._mask_view, self._mask_spec
        for agent, info in infos.items():
            view = views.get(agent)
            if view is not None:
                mask = info.get(MASK_KEY) if info else None
                if mask is None:
                    view[...] = True
                else:
                    specs[agent].write(mask, view, agent)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        obs, infos = self.env.reset(seed=seed, options=options)
        buf = self.buf
        buf.train_obs[...] = 0
        for a in buf.npc_obs:
            a[...] = 0
        self._write_obs(obs)
        self._info_masks = any(MASK_KEY in info for info in infos.values() if info)
        buf.info_masks[...] = self._info_masks
        if self._info_masks:
            self._write_info_masks(infos)
        buf.alive[...] = False
        buf.alive[self._positions(self.env.agents)] = True
        self._lingering[...] = False
        self.reset_infos = self.train_infos = list(map(infos.get, self.layout.training))

    def step(self, actions: Sequence[Any]) -> None:
        """Step with every agent's action as the env takes it: the training agents', then each NPC
        group's, in layout order (see :func:`env_actions`).

        Only agents in ``env.agents`` are sent actions (PettingZoo forbids actions for dead agents).
        """
        buf, layout = self.buf, self.layout
        live = tuple(self.env.agents)
        pick = self._act_pickers.get(live) or self._act_picker(live)
        obs, rewards, terms, truncs, infos = self.env.step(dict(zip(live, pick(actions))))
        pos = self._positions(rewards)
        if len(pos) != layout.n_agents:  # agents without a reward in this step get 0
            buf.reward[...] = 0.0
        buf.reward[pos] = list(rewards.values())
        self._write_obs(obs)
        if self._info_masks:
            self._write_info_masks(infos)
        step_infos = list(map(infos.get, layout.training))
        if not (any(terms.values()) or any(truncs.values())) and len(self.env.agents) == len(live):
            # Fast path, nearly every step: nobody left, so flags and alive masks stay as they were.
            if self._flags_set:
                buf.terminated[...] = False
                buf.truncated[...] = False
                buf.env_done[...] = False
                self._flags_set = False
            self.train_infos = step_infos
            return

        was_alive, alive_now = self._was_alive, self._alive_now
        was_alive[...] = buf.alive
        self._flags_set = True
        buf.terminated[...] = False
        buf.truncated[...] = False
        buf.terminated[self._positions(terms)] = list(terms.values())
        buf.truncated[self._positions(truncs)] = list(truncs.values())
        in_env = self._in_env
        in_env[...] = False
        in_env[self._positions(self.env.agents)] = True
        # An agent that vanished without a done flag is treated as terminated.
        vanished = was_alive & ~in_env & ~buf.terminated & ~buf.truncated
        buf.terminated |= vanished
        # Agents that report done but linger in env.agents are dead to us until they leave it; an
        # agent that enters env.agents (late, or again after leaving it) starts a life of its own.
        self._lingering |= was_alive & (buf.terminated | buf.truncated)
        self._lingering &= in_env
        np.logical_and(in_env, ~(self._lingering | buf.terminated | buf.truncated), out=alive_now)

        train_alive = alive_now[self._train_pos]
        done = not alive_now.any() or (self.reset_when_training_agents_dead and not train_alive.any())
        buf.env_done[...] = done
        if done:
            buf.final_obs[...] = buf.train_obs
            # Copies now: the reset may refill info dicts the env hands out again.
            step_infos = [dict(info) if info else None for info in step_infos]
            self.reset()
            self.train_infos = step_infos
            return
        self.train_infos = step_infos
        buf.alive[...] = alive_now
        died = was_alive[self._train_pos] & ~train_alive
        if died.any():
            buf.final_obs[died] = buf.train_obs[died]
            buf.train_obs[died] = 0
        for g, group_pos in enumerate(self._group_pos):
            gone = ~alive_now[group_pos]
            if gone.any():
                buf.npc_obs[g][gone] = 0

    def deliver_reset(self) -> None:
        """NEXT_STEP autoreset's step after an episode end, instead of :meth:`step`: the env is not
        stepped; the buffers say nothing happened (zero rewards, no dones) and the infos are the
        reset's. The engine decides when (it holds NEXT_STEP's state)."""
        buf = self.buf
        buf.reward[...] = 0.0
        buf.terminated[...] = False
        buf.truncated[...] = False
        self._flags_set = False
        buf.env_done[...] = False
        self.train_infos = self.reset_infos

    def _act_picker(self, live: tuple[Any, ...]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """The picker of ``live``'s actions out of a step's action list; cached per live tuple."""
        try:
            indices = [self._act_pos[a] for a in live]
        except KeyError as e:
            raise self._unknown_agent(e.args[0], "live agents") from None
        if len(self._act_pickers) > 256:  # live sets change with deaths; keep the cache small
            self._act_pickers.clear()
        pick = self._act_pickers[live] = _picker(indices)
        return pick

    def _positions(self, agents: Any) -> np.ndarray:
        """Positions in ``possible_agents`` of ``agents`` (a dict's keys or a list), cached per key tuple."""
        key = tuple(agents)
        idx = self._pos_cache.get(key)
        if idx is None:
            if len(self._pos_cache) > 256:  # live sets change with deaths; keep the cache small
                self._pos_cache.clear()
            try:
                idx = self._pos_cache[key] = np.array([self._pos[a] for a in key], dtype=np.intp)
            except KeyError as e:
                raise self._unknown_agent(e.args[0], "agents or step results") from None
        return idx

    def _unknown_agent(self, agent: Any, where: str) -> ValueError:
        return ValueError(
            f"the env's {where} include agent {agent!r}, which is not in its possible_agents "
            f"{list(self.layout.possible_agents)}"
        )

    def close(self) -> None:
        self.env.close()

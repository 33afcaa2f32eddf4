"""Real (non-mock) PettingZoo test environments shared by the test suite.

Import them as ``from tests.envs import ScriptedParallelEnv, RecordingParallelEnv``
(``tests`` is a package; ``tests/conftest.py`` makes sure the repository root is on
``sys.path``).

* :class:`ScriptedParallelEnv` -- a small, fully deterministic ``ParallelEnv`` whose
  observations and rewards encode the step number, the agent index, the last
  action each agent received and the episode id (the reset seed), so tests can
  check exactly what a wrapper did.
* :class:`RecordingParallelEnv` -- a transparent wrapper around any ``ParallelEnv``
  that logs every action dict passed to ``step`` and every ``reset`` seed.
* :func:`simple_tag` -- the real mpe2 ``simple_tag`` the tests play (25 cycles, discrete actions).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.utils import BaseParallelWrapper

__all__ = [
    "RecordingEnvFactory",
    "RecordingParallelEnv",
    "ScriptedParallelEnv",
    "default_reward",
    "is_integer_action",
    "simple_tag",
]

AgentID = Hashable

#: Range of episode ids drawn for *unseeded* resets: ``[0, 2**20)`` (exact in float32).
EPISODE_ID_HIGH = 2**20


def is_integer_action(action: Any) -> bool:
    """True for a scalar integer action: ``int``, ``np.integer`` or a 0-d integer array (not bool)."""
    if isinstance(action, (bool, np.bool_)):
        return False
    if isinstance(action, (int, np.integer)):
        return True
    return isinstance(action, np.ndarray) and action.shape == () and np.issubdtype(action.dtype, np.integer)


def default_reward(agent: AgentID, agent_index: int, step: int, action: Any) -> float:
    """``step + 0.01 * agent_index`` (+ ``0.001 * action`` for scalar integer actions)."""
    reward = float(step) + 0.01 * agent_index
    if is_integer_action(action):
        reward += 0.001 * int(action)
    return float(reward)


def _action_scalar(action: Any) -> float:
    """What ``obs[2]`` shows for the last action: the int, or the first element of the action."""
    if is_integer_action(action):
        return float(int(action))
    try:
        flat = np.asarray(action, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return 0.0
    return float(flat[0]) if flat.size else 0.0


class ScriptedParallelEnv(ParallelEnv):
    """Small deterministic PettingZoo ``ParallelEnv`` for exact contract tests.

    Time: ``reset`` sets the step counter ``t = 0``; the ``k``-th ``step`` call after a
    reset is step ``t = k`` (1-based). Everything below refers to that ``t``.

    Episode id: ``reset(seed=s)`` sets ``episode_id = s`` and re-seeds an internal
    ``np.random.default_rng(s)``; an unseeded ``reset()`` draws
    ``episode_id = rng.integers(0, 2**20)`` from that generator (so unseeded resets
    after a seeded one are deterministic; before any seeded reset the generator is
    entropy-seeded, like a real env). Available as ``env.episode_id`` and
    ``info["episode_id"]``.

    Observations (per agent; ``i`` = index of the agent in ``possible_agents``):

    * float Box (default ``shape=(3,)``, ``float32``): flat layout
      ``[t, i, last_action, episode_id, episode_id, ...]`` -- ``last_action`` is
      ``-1`` right after reset, else the integer action the agent got at the previous
      step (or the first element of a non-integer action). The ``episode_id`` slots
      only exist when the observation has more than 3 elements. Values are clipped
      to the space's bounds (default bounds are infinite).
    * integer Box (e.g. ``uint8`` images of shape ``(8, 8, 3)``): every element is
      ``(t * 7 + i * 31 + episode_id) % 256`` (for ``uint8``; other integer Boxes use
      the size of their ``[low, high]`` range instead of 256, offset by ``low``).
    * ``Discrete(n)``: ``(t + i) % n``; ``MultiBinary``/``MultiDiscrete``/``Dict``/
      ``Tuple``: built recursively from the same numbers (see ``_make_obs``).

    Rewards: ``reward_fn(agent, agent_index, t, action)``; default
    :func:`default_reward` = ``t + 0.01 * i`` plus ``0.001 * action`` for integer actions.

    Late agents: an agent in ``join_steps`` is not in ``agents`` at reset; it joins at the end of
    step ``join_steps[agent]`` (its observation and info come with that step, no reward or flags).

    Episode end: at step ``t == max_steps`` every live agent gets ``truncation=True``;
    an agent in ``death_steps`` gets ``termination=True`` at step ``death_steps[agent]``;
    at step ``terminate_all_at`` every live agent gets ``termination=True``. Flags are
    computed independently (both can be True). Agents that are terminated or
    truncated are removed from ``self.agents`` after the step and never come back
    before the next reset.

    Infos: ``{"step": t, "agent": agent, "episode_id": episode_id}``.

    Strictness (real checks a wrapper must satisfy): ``step`` raises ``RuntimeError``
    before the first reset or when no agent is alive, and ``ValueError`` when the
    action dict contains an unknown or dead agent, misses a live agent, or (with
    ``validate_actions=True``) holds an action that is not valid for the agent's
    action space (see ``_check_action``).

    The step/reset results only hold fresh objects: the env keeps no reference to
    returned arrays, and never mutates the caller's action values.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "name": "scripted_v0",
        "render_modes": ["rgb_array"],
        "is_parallelizable": True,
    }

    def __init__(
        self,
        *,
        agents: Sequence[AgentID] | None = None,
        obs_shape: tuple[int, ...] = (3,),
        obs_dtype: Any = np.float32,
        action_space: spaces.Space | None = None,
        per_agent_spaces: Mapping[AgentID, tuple[spaces.Space, spaces.Space]] | None = None,
        max_steps: int = 10,
        death_steps: Mapping[AgentID, int] | None = None,
        join_steps: Mapping[AgentID, int] | None = None,
        terminate_all_at: int | None = None,
        reward_fn: Callable[[AgentID, int, int, Any], float] | None = None,
        render_mode: str | None = None,
        validate_actions: bool = True,
    ):
        super().__init__()
        possible = list(agents) if agents is not None else ["a_0", "a_1", "b_0"]
        if not possible:
            raise ValueError("ScriptedParallelEnv needs at least one agent")
        if len(set(possible)) != len(possible):
            raise ValueError(f"duplicate agent ids: {possible}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}")

        self.possible_agents: list[AgentID] = possible
        self._index: dict[AgentID, int] = {a: i for i, a in enumerate(possible)}
        self.max_steps = int(max_steps)
        self.death_steps: dict[AgentID, int] = dict(death_steps or {})
        unknown = set(self.death_steps) - set(possible)
        if unknown:
            raise ValueError(f"death_steps names unknown agents: {sorted(map(str, unknown))}")
        self.join_steps: dict[AgentID, int] = dict(join_steps or {})
        unknown = set(self.join_steps) - set(possible)
        if unknown:
            raise ValueError(f"join_steps names unknown agents: {sorted(map(str, unknown))}")
        self.terminate_all_at = terminate_all_at
        self.reward_fn = reward_fn if reward_fn is not None else default_reward
        self.render_mode = render_mode
        self.validate_actions = validate_actions

        default_obs_space = self._default_obs_space(tuple(obs_shape), np.dtype(obs_dtype))
        default_act_space = action_space if action_space is not None else spaces.Discrete(4)
        per_agent = dict(per_agent_spaces or {})
        unknown = set(per_agent) - set(possible)
        if unknown:
            raise ValueError(f"per_agent_spaces names unknown agents: {sorted(map(str, unknown))}")
        # Every agent gets its own space objects (like real envs), and the same object on
        # every observation_space(agent)/action_space(agent) call.
        self.observation_spaces: dict[AgentID, spaces.Space] = {}
        self.action_spaces: dict[AgentID, spaces.Space] = {}
        for a in possible:
            obs_sp, act_sp = per_agent.get(a, (default_obs_space, default_act_space))
            self.observation_spaces[a] = copy.deepcopy(obs_sp)
            self.action_spaces[a] = copy.deepcopy(act_sp)

        self.agents: list[AgentID] = []  # empty until the first reset
        self.episode_id: int | None = None
        self.num_steps = 0  # step counter t of the current episode
        self.num_resets = 0
        self.closed = False
        self._rng: np.random.Generator | None = None
        self._last_action: dict[AgentID, float] = {}

    # ------------------------------------------------------------------ spaces
    @staticmethod
    def _default_obs_space(shape: tuple[int, ...], dtype: np.dtype) -> spaces.Box:
        if np.issubdtype(dtype, np.floating):
            return spaces.Box(low=-np.inf, high=np.inf, shape=shape, dtype=dtype)
        if dtype == np.uint8:
            return spaces.Box(low=0, high=255, shape=shape, dtype=np.uint8)
        raise ValueError(f"obs_dtype must be a float dtype or np.uint8, got {dtype}")

    def observation_space(self, agent: AgentID) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: AgentID) -> spaces.Space:
        return self.action_spaces[agent]

    def agent_index(self, agent: AgentID) -> int:
        """Index of ``agent`` in ``possible_agents`` (the ``i`` used in obs and rewards)."""
        return self._index[agent]

    # ------------------------------------------------------------ observations
    def _fill_value(self, agent: AgentID) -> int:
        return self.num_steps * 7 + self._index[agent] * 31 + int(self.episode_id or 0)

    def _make_obs(self, agent: AgentID, space: spaces.Space) -> Any:
        t, i = self.num_steps, self._index[agent]
        if isinstance(space, spaces.Box):
            if np.issubdtype(space.dtype, np.floating):
                flat = np.full(int(np.prod(space.shape)), float(self.episode_id or 0), dtype=np.float64)
                layout = [float(t), float(i), self._last_action.get(agent, -1.0)]
                n = min(len(layout), flat.size)
                flat[:n] = layout[:n]
                obs = flat.reshape(space.shape)
                with np.errstate(invalid="ignore"):
                    obs = np.clip(obs, space.low, space.high)
                return obs.astype(space.dtype)
            low = np.asarray(space.low, dtype=np.int64)
            high = np.asarray(space.high, dtype=np.int64)
            value = self._fill_value(agent)
            obs = low + value % (high - low + 1)
            return np.broadcast_to(obs, space.shape).astype(space.dtype)
        if isinstance(space, spaces.Discrete):
            return np.int64(space.start + (t + i) % space.n)
        if isinstance(space, spaces.MultiBinary):
            return np.full(space.shape, (t + i) % 2, dtype=space.dtype)
        if isinstance(space, spaces.MultiDiscrete):
            return (space.start + (t + i) % space.nvec).astype(space.dtype)
        if isinstance(space, spaces.Dict):
            return {k: self._make_obs(agent, sub) for k, sub in space.spaces.items()}
        if isinstance(space, spaces.Tuple):
            return tuple(self._make_obs(agent, sub) for sub in space.spaces)
        raise TypeError(f"ScriptedParallelEnv cannot build observations for {space!r}")

    def _observe(self, agents: Sequence[AgentID]) -> dict[AgentID, Any]:
        return {a: self._make_obs(a, self.observation_spaces[a]) for a in agents}

    def _info(self, agent: AgentID) -> dict[str, Any]:
        return {"step": self.num_steps, "agent": agent, "episode_id": self.episode_id}

    # ---------------------------------------------------------------- actions
    @staticmethod
    def _check_action(space: spaces.Space, action: Any) -> bool:
        """Whether ``action`` is valid for ``space``.

        ``Discrete``: a scalar integer (python/numpy int or 0-d int array) in range --
        a shape-(1,) array is rejected. ``Box``: array-like of exactly ``space.shape``,
        finite, within bounds (dtype is not checked, so float64 is fine for a float32
        Box). Other spaces: ``space.contains(action)``.
        """
        if isinstance(space, spaces.Discrete):
            return is_integer_action(action) and space.start <= int(action) < space.start + space.n
        if isinstance(space, spaces.Box):
            try:
                arr = np.asarray(action, dtype=np.float64)
            except (TypeError, ValueError):
                return False
            if arr.shape != space.shape or not np.all(np.isfinite(arr)):
                return False
            return bool(np.all(arr >= space.low) and np.all(arr <= space.high))
        try:
            return bool(space.contains(action))
        except Exception:  # noqa: BLE001 - any failure means "not a valid action"
            return False

    # ------------------------------------------------------------------- API
    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[AgentID, Any], dict[AgentID, dict[str, Any]]]:
        if seed is not None:
            seed = int(seed)
            self._rng = np.random.default_rng(seed)
            self.episode_id = seed
        else:
            if self._rng is None:
                self._rng = np.random.default_rng()
            self.episode_id = int(self._rng.integers(0, EPISODE_ID_HIGH))
        self.num_resets += 1
        self.num_steps = 0
        self.agents = [a for a in self.possible_agents if a not in self.join_steps]
        self._last_action = {}
        obs = self._observe(self.agents)
        infos = {a: self._info(a) for a in self.agents}
        return obs, infos

    def step(self, actions: dict[AgentID, Any]):
        if self.episode_id is None:
            raise RuntimeError("ScriptedParallelEnv.step() called before reset()")
        if not self.agents:
            raise RuntimeError("ScriptedParallelEnv.step() called with no live agents; call reset()")
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions must be a dict keyed by agent, got {type(actions).__name__}")
        live = set(self.agents)
        extra = [a for a in actions if a not in live]
        if extra:
            dead = [a for a in extra if a in self._index]
            unknown = [a for a in extra if a not in self._index]
            raise ValueError(
                f"actions given for agents that are not alive: dead={dead!r} unknown={unknown!r}; "
                f"live agents: {self.agents!r}"
            )
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"no action given for live agents {missing!r}")
        if self.validate_actions:
            for a in self.agents:
                if not self._check_action(self.action_spaces[a], actions[a]):
                    raise ValueError(
                        f"invalid action {actions[a]!r} (type {type(actions[a]).__name__}) for agent "
                        f"{a!r} with action space {self.action_spaces[a]!r}"
                    )

        self.num_steps += 1
        t = self.num_steps
        stepping = list(self.agents)
        rewards: dict[AgentID, float] = {}
        for a in stepping:
            rewards[a] = float(self.reward_fn(a, self._index[a], t, actions[a]))
            self._last_action[a] = _action_scalar(actions[a])

        all_dead = self.terminate_all_at is not None and t >= self.terminate_all_at
        terminations = {a: bool(all_dead or self.death_steps.get(a, math.inf) <= t) for a in stepping}
        truncations = {a: t >= self.max_steps for a in stepping}
        joining = [a for a in self.possible_agents if self.join_steps.get(a) == t and t < self.max_steps]
        obs = self._observe(stepping + joining)
        infos = {a: self._info(a) for a in stepping + joining}
        alive = {a for a in stepping if not (terminations[a] or truncations[a])} | set(joining)
        self.agents = [a for a in self.possible_agents if a in alive]
        return obs, rewards, terminations, truncations, infos

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gymnasium.logger.warn("ScriptedParallelEnv.render() called without a render_mode")
            return None
        value = (self.num_steps * 7 + int(self.episode_id or 0)) % 256
        return np.full((16, 16, 3), value, dtype=np.uint8)

    def close(self) -> None:
        self.closed = True


class RecordingParallelEnv(BaseParallelWrapper):
    """Transparent ``ParallelEnv`` wrapper that records what was passed to it.

    * ``action_log``: one entry per ``step`` call -- a new dict with deep copies of the
      action values exactly as passed (types kept: ``np.int64`` stays ``np.int64``),
      so later in-place changes to the caller's buffers do not alter the log.
    * ``reset_seeds``: the ``seed`` argument of every ``reset`` call (``None`` included).
    * ``reset_options``: the ``options`` argument of every ``reset`` call.
    * ``close_count``: number of ``close`` calls.

    Everything else (spaces, ``possible_agents``, ``agents``, ``metadata``,
    ``render_mode``, ``render``, ``state``, ``unwrapped``, other public attributes)
    is forwarded to the wrapped env.
    """

    def __init__(self, env: ParallelEnv):
        super().__init__(env)
        self.action_log: list[dict[AgentID, Any]] = []
        self.reset_seeds: list[int | None] = []
        self.reset_options: list[dict[str, Any] | None] = []
        self.close_count = 0

    # Explicit forwarding (instead of relying on __getattr__) so these can never be
    # shadowed by an attribute set on the wrapper.
    @property
    def possible_agents(self) -> list[AgentID]:
        return self.env.possible_agents

    @property
    def agents(self) -> list[AgentID]:
        return self.env.agents

    @property
    def metadata(self) -> dict[str, Any]:
        return self.env.metadata

    @property
    def render_mode(self) -> str | None:
        return getattr(self.env, "render_mode", None)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        self.reset_seeds.append(seed)
        self.reset_options.append(copy.deepcopy(options))
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: dict[AgentID, Any]):
        self.action_log.append({agent: copy.deepcopy(a) for agent, a in actions.items()})
        return self.env.step(actions)

    def render(self):
        return self.env.render()

    def close(self) -> None:
        self.close_count += 1
        return self.env.close()

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.action_log.clear()
        self.reset_seeds.clear()
        self.reset_options.clear()
        self.close_count = 0

    def __repr__(self) -> str:
        return f"RecordingParallelEnv({self.env!r})"


class RecordingEnvFactory:
    """Builds recording scripted envs and keeps them, so tests can inspect them after ``close()``.

    :param kwargs: :class:`ScriptedParallelEnv` arguments (``obs_shape`` defaults to ``(4,)``)
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("obs_shape", (4,))
        self.kwargs = kwargs
        self.envs: list[RecordingParallelEnv] = []

    def __call__(self) -> RecordingParallelEnv:
        env = RecordingParallelEnv(ScriptedParallelEnv(**self.kwargs))
        self.envs.append(env)
        return env


def simple_tag(continuous: bool = False, max_cycles: int = 25) -> ParallelEnv:
    """mpe2's ``simple_tag`` (3 predators, 1 prey, 2 obstacles) with short episodes: an env factory.

    :param continuous: continuous actions (``Box``) instead of ``Discrete(5)``
    :param max_cycles: episode length
    """
    # mpe2 (and pygame under it) stays out of the workers that import this module to unpickle an env.
    from mpe2 import simple_tag_v3

    return simple_tag_v3.parallel_env(continuous_actions=continuous, max_cycles=max_cycles)

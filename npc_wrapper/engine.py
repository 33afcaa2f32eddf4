"""The engine both vector-env front ends share: NPC inference, slots, episode bookkeeping.

Per vector step the engine sends the trainer's actions and the precomputed NPC actions to every
sub-env, reads back the buffers, turns them into per-slot rewards, dones and infos with array
operations, and then runs each NPC policy once on the live NPC rows of all envs, so the NPC
actions for the next step are ready (and, on a GPU, computed while the trainer picks its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from npc_wrapper.agents import AgentLayout, SlotMap, build_layout
from npc_wrapper.arguments import check_count, check_seed
from npc_wrapper.backends import check_backend, make_backend
from npc_wrapper.errors import NPCOutputError
from npc_wrapper.joint_env import buffer_spaces, check_parallel_env
from npc_wrapper.masks import ActionMask
from npc_wrapper.memory import available_memory, format_bytes
from npc_wrapper.npcs.device import resolve_device
from npc_wrapper.npcs.policies import ConstantPolicy, NPCPolicy, RandomPolicy, check_npc_policy
from npc_wrapper.npcs.pool import NPCPool
from npc_wrapper.npcs.resolve import as_npc_policy
from npc_wrapper.workers import Backend

__all__ = ["NPCEngine", "StepResult", "Ended", "PADDING_KEY", "EPISODE_KEY", "check_buffer_memory"]

#: NPC policies whose actions are in their space by construction (sampled from it, or one action checked
#: once): every other policy's actions are checked at every step.
_IN_SPACE_BY_CONSTRUCTION = (RandomPolicy, ConstantPolicy)

#: Info key set on a slot whose agent was dead at the start of the step (its transition is padding).
PADDING_KEY = "npc_wrapper/padding"
#: Info key set on every training slot of an env whose episode ended: team returns and outcome.
EPISODE_KEY = "npc_wrapper/episode"

EnvFn = Callable[[], Any]


def _copy_info(info: dict[str, Any] | None) -> dict[str, Any]:
    """A slot's own info dict: backends hand over the env's dicts, which an env may share between agents."""
    return dict(info) if info else {}


#: The autoreset modes the engine implements (SB3's is SAME_STEP).
_AUTORESET_MODES = {m.value.lower(): m for m in (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP)}


def _autoreset_mode(value: str | AutoresetMode) -> AutoresetMode:
    """``value`` (an ``AutoresetMode`` or its name, any case, ``"next_step"`` or ``"NextStep"``) as an
    ``AutoresetMode`` the engine implements, or a ``ValueError``."""
    key = value.value if isinstance(value, AutoresetMode) else str(value)
    mode = _AUTORESET_MODES.get(key.lower().replace("_", ""))
    if mode is None:
        raise ValueError(
            f"autoreset_mode must be AutoresetMode.SAME_STEP or AutoresetMode.NEXT_STEP ('same_step' or "
            f"'next_step'), got {value!r}"
        )
    return mode


def _integer_space(space: spaces.Space) -> bool:
    return isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))


def _numeric(space: spaces.Space, a: np.ndarray) -> bool:
    """Whether ``a``'s dtype can hold actions of ``space``: integers or floats (bools for ``MultiBinary``);
    bool, complex, string and object arrays would be cast or compared into nonsense."""
    return a.dtype.kind in "iuf" or (a.dtype.kind == "b" and isinstance(space, spaces.MultiBinary))


def _outside(space: spaces.Space, a: np.ndarray) -> np.ndarray:
    """Per row of ``a`` (``(n, *space.shape)``), whether the action is not in ``space``."""
    n = len(a)
    if isinstance(space, spaces.Discrete):
        bad = (a < space.start) | (a >= space.start + space.n)
    elif isinstance(space, spaces.MultiDiscrete):
        bad = ((a < space.start) | (a >= space.start + space.nvec)).reshape(n, -1).any(axis=1)
    elif isinstance(space, spaces.MultiBinary):
        bad = ((a != 0) & (a != 1)).reshape(n, -1).any(axis=1)
    elif isinstance(space, spaces.Box):
        bad = ~((a >= space.low) & (a <= space.high)).reshape(n, -1).all(axis=1)  # NaN is outside too
    else:
        bad = np.array([not space.contains(x) for x in a], dtype=bool)
    # Whole numbers from a float tensor are fine for integer spaces (sent as ints); fractions are not.
    if a.dtype.kind == "f" and _integer_space(space):
        bad = bad | (a != np.floor(a)).reshape(n, -1).any(axis=1)
    return bad


def _rounding_bounds(space: spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    """``space``'s bounds widened by 4 float32 steps at each bound's magnitude (0 where unbounded).

    SB3 unscales squashed (tanh) actions as ``low + 0.5 * (a + 1) * (high - low)`` in float32 without
    clipping (SAC, TD3): a saturated actor lands up to one float32 step past a bound (0.70000005 for 0.7).
    """
    step = np.spacing(np.maximum(np.abs(space.low), np.abs(space.high)).astype(np.float32))
    step = np.where(np.isfinite(step), 4 * step, 0).astype(np.float64)
    return space.low - step, space.high + step


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when it is one ascending run: slicing makes views, fancy indexing copies."""
    if len(index) and (np.diff(index) == 1).all():
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _close_after_error(env: Any) -> None:
    """Close an env whose construction step failed, without hiding that failure: ``env`` may be anything
    ``env_fn`` returned (``None``, a half-built env), and the error being raised is the one to see."""
    close = getattr(env, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - the construction error is raised instead
            pass


def check_buffer_memory(buffers: Mapping[str, spaces.Box], num_envs: int) -> None:
    """Refuse ``num_envs`` whose buffers alone exceed the memory available, before any is allocated.

    :param buffers: one env's buffers (:func:`~npc_wrapper.joint_env.buffer_spaces` or its turn-based
        counterpart)
    """
    per_env = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in buffers.values())
    available = available_memory()
    if available is not None and num_envs * per_env > available:
        raise ValueError(
            f"num_envs={num_envs} needs at least {format_bytes(num_envs * per_env)} for the wrapper's "
            f"buffers alone ({format_bytes(per_env)} per env), more than the {format_bytes(available)} of "
            "memory available; lower num_envs"
        )


@dataclass
class Ended:
    """How a slot's episode ended: its terminal observation and Monitor-style statistics."""

    final_obs: np.ndarray | dict[str, np.ndarray]  # a dict where a turn-based env serves Dict observations
    ret: float
    length: int
    time: float


@dataclass
class StepResult:
    """One vector step, per training slot (``num_envs * n_train`` slots, env-major).

    ``infos`` hold the env's infos for the training agents plus ``npc_wrapper/padding`` and
    ``npc_wrapper/episode``; each front end adds its own API's keys from ``ended``.
    """

    obs: np.ndarray | dict[str, np.ndarray]  # a dict where a turn-based env serves Dict observations
    reward: np.ndarray
    #: The env's flags for the agents alive at the step's start (both may be set).
    terminated: np.ndarray
    truncated: np.ndarray
    infos: list[dict[str, Any]]
    #: Infos of the sub-env resets that happened in this step, by slot (only the reset envs' slots).
    reset_infos: dict[int, dict[str, Any]]
    #: The slots whose episode ended at this step.
    ended: dict[int, Ended]


class NPCEngine:
    """Runs ``num_envs`` copies of a PettingZoo parallel env with NPC agents driven by frozen policies.

    See :func:`npc_wrapper.make_vec_env` for the parameters.

    :param probe: the first env, already built by ``env_fns[0]`` (the engine owns it from then on)
    :param autoreset_mode: what a step returns for an env whose episode ended (see
        :func:`npc_wrapper.make_vector_env`): ``SAME_STEP`` returns the next episode's first
        observation at once, ``NEXT_STEP`` the terminal one, and the next step only delivers the
        reset, without stepping the env. The engine keeps all of NEXT_STEP's state.
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        npc: Any = "random",
        training_agents_pct: float | None = 0.5,
        training_agents: Sequence[Any] | None = None,
        num_workers: int = 0,
        device: str | torch.device = "auto",
        reset_when_training_agents_dead: bool = True,
        deterministic_npc: bool = False,
        trusted: bool = False,
        start_method: str | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.SAME_STEP,
        backend: str = "process",
        ray_address: str | None = None,
        worker_resources: Mapping[str, Any] | None = None,
        step_timeout: float | None = None,
        *,
        probe: Any = None,
    ) -> None:
        try:
            self.autoreset_mode = _autoreset_mode(autoreset_mode)
            if not env_fns:
                raise ValueError("num_envs must be at least 1")
            num_workers = check_count(num_workers, "num_workers", 0, "0 steps the envs in this process")
            step_timeout = check_backend(
                backend, num_workers, start_method, ray_address, worker_resources, step_timeout
            )
            resolve_device(device)  # checked even when no NPC runs on it
        except BaseException:
            if probe is not None:
                _close_after_error(probe)
            raise
        self.num_envs = len(env_fns)
        # The first env, built here or by the factory (which looks at it to pick the engine).
        probe = env_fns[0]() if probe is None else probe
        try:
            self.layout: AgentLayout = self._build_layout(probe, npc, training_agents_pct, training_agents)
            self.metadata = dict(getattr(probe, "metadata", {}) or {})
            self.render_mode = getattr(probe, "render_mode", None)
            self.pools = [self._make_pool(g, device, deterministic_npc, trusted) for g in range(len(self.layout.groups))]
            self._check_unshared()
        except BaseException:
            _close_after_error(probe)
            raise
        self.backend: Backend = self._build_backend(
            backend, env_fns, probe, num_workers, reset_when_training_agents_dead, start_method, ray_address,
            worker_resources, step_timeout,
        )

        layout = self.layout
        self.n_train = layout.n_train
        #: Which slot is which training agent of which sub-env.
        self.slots = SlotMap(self.num_envs, self.n_train)
        self._group_sizes = [len(grp.agents) for grp in layout.groups]
        self._slot_obs_shape = (self.slots.num_slots, *layout.observation_space.shape)
        E = self.num_envs
        act = layout.action_space
        floating_box = isinstance(act, spaces.Box) and np.issubdtype(act.dtype, np.floating)
        self._act_rounding = _rounding_bounds(act) if floating_box else None
        self._rows = [E * len(grp.agents) for grp in layout.groups]
        self._all_rows = [np.arange(n) for n in self._rows]
        self._episode_start = [np.ones(n, dtype=bool) for n in self._rows]
        self._gathered = [  # live NPC rows' observations, once some NPCs are dead
            np.zeros((n, *grp.observation_space.shape), dtype=grp.observation_space.dtype)
            for n, grp in zip(self._rows, layout.groups)
        ]
        self._member = [np.zeros(E, dtype=np.intp) for _ in layout.groups]
        #: Each NPC group's and the training agents' action masks (``None``: no discrete actions).
        self._mask_specs = [
            ActionMask(g.action_space) if _integer_space(g.action_space) else None for g in layout.groups
        ]
        act_space = layout.action_space
        self._train_mask_spec = ActionMask(act_space) if _integer_space(act_space) else None
        self._slot_return = np.zeros(self.slots.num_slots, dtype=np.float64)
        self._slot_length = np.zeros(self.slots.num_slots, dtype=np.int64)
        self._team_return = np.zeros((E, 2), dtype=np.float64)  # training team, NPC team
        self._env_length = np.zeros(E, dtype=np.int64)
        # NEXT_STEP autoreset: envs whose episode ended at the last step and whose reset the next step
        # delivers (the backend does not step them then). Always False in SAME_STEP.
        self._held = np.zeros(E, dtype=bool)
        # The observations the held envs' slots show (terminal or padding) until their reset is delivered.
        held_shape = self._slot_obs_shape if self.autoreset_mode is AutoresetMode.NEXT_STEP else (0,)
        self._held_obs = np.zeros(held_shape, dtype=layout.observation_space.dtype)
        self._rng = np.random.default_rng()
        self._t_start = time.time()
        self._needs_reset = True
        self.closed = False
        self._init_step_state()

    @property
    def observation_space(self) -> spaces.Space:
        """What one slot observes (the front ends' single observation space)."""
        return self.layout.observation_space

    # ------------------------------------------------------------------ construction
    def _build_layout(
        self, probe: Any, npc: Any, training_agents_pct: float | None, training_agents: Sequence[Any] | None
    ) -> AgentLayout:
        """The agent split of the first env (``probe``), which must be the kind of env this engine steps."""
        check_parallel_env(probe)
        layout = build_layout(probe, npc, training_agents_pct, training_agents)
        check_buffer_memory(buffer_spaces(layout), self.num_envs)
        return layout

    def _build_backend(
        self, backend: str, env_fns: Sequence[EnvFn], probe: Any, num_workers: int,
        reset_when_training_agents_dead: bool, start_method: str | None, ray_address: str | None,
        worker_resources: Mapping[str, Any] | None, step_timeout: float | None,
    ) -> Backend:
        """The backend stepping the sub-envs (``probe`` is the first one, already built; see
        :func:`~npc_wrapper.backends.make_backend`)."""
        return make_backend(
            backend, env_fns, probe, self.layout, num_workers, reset_when_training_agents_dead, start_method,
            ray_address, worker_resources, step_timeout,
        )

    def _init_step_state(self) -> None:
        """The arrays of this engine's way of stepping: agent positions, NPC actions, liveness."""
        layout, E = self.layout, self.num_envs
        self._train_pos = _as_slice(layout.train_index)
        self._npc_pos = _as_slice(layout.npc_index)
        self._group_pos = [_as_slice(layout.group_index(g)) for g in range(len(layout.groups))]
        self._npc_actions = [
            np.zeros((E, len(grp.agents), *grp.action_space.shape), dtype=grp.action_space.dtype)
            for grp in layout.groups
        ]
        self._pending: list[
            tuple[int, np.ndarray | None, Callable[[], np.ndarray], NPCPolicy, np.ndarray | None]
        ] = []
        self._alive = np.zeros((E, layout.n_agents), dtype=bool)
        self._joined = np.zeros((E, layout.n_agents), dtype=bool)

    def _make_pool(self, g: int, device: Any, deterministic: bool, trusted: bool) -> NPCPool:
        group = self.layout.groups[g]
        spec = group.spec
        if not isinstance(spec, NPCPool):
            spec = as_npc_policy(spec, group.observation_space, group.action_space,
                                 device=device, deterministic=deterministic, trusted=trusted)
        pool = spec if isinstance(spec, NPCPool) else NPCPool([spec])
        for member in pool.members:
            self._check_member(g, member)
        return pool

    def _check_member(self, g: int, member: NPCPolicy) -> None:
        """Dry-run ``member`` on NPC group ``g``'s spaces; where the env gives the group action masks,
        refuse a policy that cannot take them (it would play illegal actions)."""
        group = self.layout.groups[g]
        check_npc_policy(member, list(group.agents), group.observation_space, group.action_space)
        if group.masked and not member.takes_mask and type(member) is not ConstantPolicy:
            raise ValueError(
                f"NPC policy {member!r} for agents {list(group.agents)} does not take action masks, but the "
                "env gives those agents masks: it would play illegal actions. Give a callable a `mask` "
                "parameter (fn(obs, mask)), set takes_mask = True on an NPCPolicy subclass whose act() "
                "accepts mask=None, or use 'random', a torch module or an SB3 model (masks applied to their "
                "logits)"
            )

    def _check_unshared(self) -> None:
        owner: dict[int, int] = {}
        for g, pool in enumerate(self.pools):
            for member in pool.members:
                if owner.setdefault(id(member), g) != g:
                    groups = [self.layout.groups[i].agents for i in (owner[id(member)], g)]
                    raise ValueError(
                        f"the same NPC policy object {member!r} drives two groups of NPC agents {groups}; "
                        "policies keep per-row state, so give each group its own instance"
                    )

    # ------------------------------------------------------------------ reset / step
    def reset(
        self,
        seeds: Sequence[int | None],
        options: Sequence[Mapping[str, Any] | None] | None = None,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Reset the sub-envs and return every training slot's obs and the reset slots' infos.

        :param seeds: one per sub-env; sub-env ``i`` is reset with ``seeds[i]``. The NPCs are seeded
            from the first seed given (NPC sampling is batched over all envs, so it has one stream)
        :param options: one ``options`` dict (or ``None``) per sub-env, passed to its ``reset``
        :param mask: which sub-envs to reset (default: all). The others keep their episode; their
            slots' obs are returned as they are and their infos are empty. The NPCs are reseeded
            only by a reset of every sub-env.
        """
        self._assert_open()
        E = self.num_envs
        if len(seeds) != E or (options is not None and len(options) != E):
            raise ValueError(f"reset needs one seed and one options entry per sub-env ({E})")
        for seed in seeds:
            check_seed(seed, "the reset seed")
        envs = np.ones(E, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).reshape(E)
        partial = not envs.all()
        if partial and self._needs_reset:
            raise RuntimeError(
                "the first reset() must reset every sub-env; pass no reset_mask (or an all-True one) "
                "the first time"
            )
        # Finish forwards launched for the step that will not come: a full reset starts every row
        # anew, a partial one keeps the actions of the envs that play on.
        self._collect_npc_actions()
        if not partial:
            given = [s for s in seeds if s is not None]
            if given:
                self._seed_npcs(int(given[0]))
            elif self._needs_reset:
                self._seed_npcs(None)
        env_infos = self.backend.reset(
            [s if r else None for s, r in zip(seeds, envs)],
            [dict(o) if o else None for o in options] if options is not None else [None] * E,
            None if not partial else envs,
        )
        self._needs_reset = False
        return self._reset_result(env_infos, envs, partial)

    def _reset_result(
        self, env_infos: Any, envs: np.ndarray, partial: bool
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The slots' observations and infos after the backend reset ``envs`` (all, unless ``partial``),
        which gave ``env_infos``; the episodes' bookkeeping starts anew there."""
        # NEXT_STEP: an ended env that is not reset now keeps showing its terminal obs, as in Gymnasium's
        # vector envs; the backend already holds its next episode's first obs, which its next step delivers.
        shown = self.slots.per_slot(self._held & ~envs)
        buf = self.backend.buffers
        self._alive[envs] = buf.alive[envs]
        reset_slots = self.slots.per_slot(envs)
        self._slot_return[reset_slots] = 0
        self._slot_length[reset_slots] = 0
        self._team_return[envs] = 0
        self._env_length[envs] = 0
        self._held[envs] = False
        self._start_episodes(envs)
        infos = [_copy_info(info) if r else {} for env, r in zip(env_infos, envs) for info in env]
        self._check_train_masks()
        self._launch_npcs(envs if partial else None)
        obs = buf.train_obs.reshape(self._slot_obs_shape).copy()
        if shown.any():
            obs[shown] = self._held_obs[shown]
        return obs, infos

    def _seed_npcs(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)
        for g, pool in enumerate(self.pools):
            rows = self.num_envs * len(self.layout.groups[g].agents)
            for m, member in enumerate(pool.members):
                member.reset(rows, None if seed is None else seed + 7919 * (g + 1) + m)

    def _start_episodes(self, envs: np.ndarray) -> None:
        """Mark the NPC rows of ``envs`` as episode starts and draw each env's pool member."""
        n = int(envs.sum())
        if n == 0:
            return
        for g, pool in enumerate(self.pools):
            self._member[g][envs] = pool.draw(self._rng, n)
            start = self._episode_start[g].reshape(self.num_envs, -1)
            start[envs] = True

    def _launch_npcs(self, envs: np.ndarray | None = None) -> None:
        """Start one forward per NPC policy over the live rows it drives, for the coming step.

        The forwards run while the trainer picks its actions (asynchronously on CUDA);
        :meth:`_collect_npc_actions` waits for them.

        :param envs: only the rows of these sub-envs (a partial reset); the others keep their actions
        """
        buf = self.backend.buffers
        pending = self._pending
        masked = self._npc_masks_given()
        for g, pool in enumerate(self.pools):
            obs = buf.npc_obs[g].reshape(self._rows[g], *buf.npc_obs[g].shape[2:])
            masks = buf.npc_mask[g].reshape(self._rows[g], -1) if masked[g] else None
            alive = self._alive[:, self._group_pos[g]]
            if envs is not None:
                alive = alive & envs[:, None]
            alive = alive.reshape(-1)
            start = self._episode_start[g]
            if len(pool) == 1 and alive.all():
                member = pool.members[0]
                mask = None if masks is None else masks.copy()  # the buffer is rewritten by the next step
                wait = self._act_async(g, member, obs, self._all_rows[g], start, mask)
                pending.append((g, None, wait, member, mask))
            else:
                member_of_row = np.repeat(self._member[g], self._group_sizes[g]) if len(pool) > 1 else None
                gathered, offset = self._gathered[g], 0
                for m, member in enumerate(pool.members):
                    rows = np.flatnonzero(alive if member_of_row is None else alive & (member_of_row == m))
                    if len(rows):
                        # Each member's live rows go to their own part of a preallocated buffer. The
                        # rows are valid indices; mode="raise" with out= would copy through a temporary.
                        part = gathered[offset:offset + len(rows)]
                        np.take(obs, rows, axis=0, out=part, mode="clip")
                        offset += len(rows)
                        mask = None if masks is None else masks[rows]
                        wait = self._act_async(g, member, part, rows, start[rows], mask)
                        pending.append((g, rows, wait, member, mask))
            start[...] = False

    def _npc_masks_given(self) -> list[bool]:
        """Per NPC group, whether the env gives its agents masks (in their observations, or in infos)."""
        in_infos = bool(self.backend.buffers.info_masks.any())
        groups = self.layout.groups
        return [g.masked or (in_infos and spec is not None) for g, spec in zip(groups, self._mask_specs)]

    def _act_async(
        self, g: int, member: NPCPolicy, obs: np.ndarray, rows: np.ndarray, start: np.ndarray,
        mask: np.ndarray | None,
    ) -> Callable[[], np.ndarray]:
        """Launch ``member`` on ``rows``, with their masks if it takes them (after checking that each row
        allows an action: an all-false mask is the env's bug)."""
        if mask is None:
            return member.act_async(obs, rows, start)
        group = self.layout.groups[g]
        self._mask_specs[g].check(mask, lambda i: group.agents[rows[i] % len(group.agents)])
        if member.takes_mask:
            return member.act_async(obs, rows, start, mask)
        return member.act_async(obs, rows, start)

    def _collect_npc_actions(self) -> None:
        """Wait for the launched NPC forwards and scatter their actions into the action buffers."""
        try:
            for g, rows, wait, member, mask in self._pending:
                out = self._npc_actions[g].reshape(self._rows[g], *self._npc_actions[g].shape[2:])
                actions = self._wait_npc(g, rows, wait)
                if type(member) not in _IN_SPACE_BY_CONSTRUCTION:  # exact types: a subclass may act otherwise
                    actions = self._check_npc_actions(g, member, actions, rows)
                if mask is not None and type(member) is not RandomPolicy:  # random draws among legal actions
                    self._check_legal(g, member, actions, self._all_rows[g] if rows is None else rows, mask)
                if rows is None:
                    out[...] = actions
                else:
                    out[rows] = actions
        finally:
            self._pending.clear()

    def _wait_npc(self, g: int, rows: np.ndarray | None, wait: Callable[[], np.ndarray]) -> np.ndarray:
        """The actions of a launched NPC forward over group ``g``'s ``rows`` (``None``: all); an output
        fault comes back naming where it happened."""
        try:
            return wait()
        except NPCOutputError as e:  # the policy knows its rows, the engine their envs
            where = self._row_place(g, rows, e.rows[0])
            raise NPCOutputError(f"{e}; first in {where}", e.rows) from None

    def _row_place(self, g: int, rows: np.ndarray | None, i: int) -> str:
        """Where entry ``i`` of a forward over NPC group ``g``'s ``rows`` (``None``: all) acts: its env,
        agent and the step of the env's episode the action is for."""
        row = int(i if rows is None else rows[i])
        agents = self.layout.groups[g].agents
        env = row // len(agents)
        step = int(self._env_length[env]) + 1
        return f"env {env} (agent {agents[row % len(agents)]!r}), step {step} of its episode"

    def _check_npc_actions(
        self, g: int, member: NPCPolicy, actions: Any, rows: np.ndarray | None
    ) -> np.ndarray:
        """``member``'s actions for its ``rows`` (``None``: all of group ``g``'s), or a ``ValueError`` naming
        it: numpy would otherwise broadcast, truncate or cast them silently into the env's actions."""
        space = self.layout.groups[g].action_space
        n = self._rows[g] if rows is None else len(rows)
        a = np.asarray(actions)
        if a.shape == (n, 1) and isinstance(space, spaces.Discrete):
            a = a.reshape(n)
        if not _numeric(space, a):
            raise ValueError(
                f"{self._npc_where(g, member)} returned actions of dtype {a.dtype} "
                f"({a.ravel()[:1].tolist()!r}...); it must return numbers in its action space {space}"
            )
        if a.shape != (n, *space.shape):
            raise ValueError(
                f"{self._npc_where(g, member)} returned actions of shape {a.shape} for {n} live rows; it "
                f"must return one action per row it is given, shape {(n, *space.shape)}"
            )
        bad = _outside(space, a)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            nan = " (NaN: a diverged network?)" if a.dtype.kind == "f" and np.isnan(a[i]).any() else ""
            raise ValueError(
                f"{self._npc_where(g, member)} returned action {a[i].tolist()!r}, which is outside its "
                f"action space {space}{nan}, in {self._row_place(g, rows, i)}"
            )
        return a

    def _npc_where(self, g: int, member: NPCPolicy) -> str:
        """Names ``member`` and the agents it drives, in errors (formatted only for one: its repr is slow)."""
        return f"NPC policy {member!r} (agents {list(self.layout.groups[g].agents)})"

    def validate_actions(self, actions: Any) -> np.ndarray:
        """The trainer's actions as ``(num_slots, *action_shape)``, or a ``ValueError`` saying what is wrong."""
        space = self.layout.action_space
        a = np.asarray(actions)
        if not _numeric(space, a):
            raise TypeError(
                f"actions must be integers or floats (bools for a MultiBinary space), got dtype {a.dtype}; "
                f"each slot's action is in {space}"
            )
        num_slots = self.slots.num_slots
        expected = (num_slots, *space.shape)
        if a.shape != expected and not (isinstance(space, spaces.Discrete) and a.shape == (num_slots, 1)):
            raise ValueError(
                f"actions must have shape {expected} (num_envs={self.num_envs} x {self.n_train} training agents, "
                f"env-major, each in {space}), got shape {a.shape}"
            )
        a = a.reshape(expected)
        bad = _outside(space, a)
        if bad.any() and self._act_rounding is not None:
            low, high = self._act_rounding
            if ((a >= low) & (a <= high)).all():  # only rounding past a bound (SB3's SAC/TD3): snap to it
                return np.clip(a, space.low, space.high)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            hint = (
                "; clip actions to the bounds first (SB3 does; with Gymnasium, wrap the vector env in "
                "gymnasium.wrappers.vector.ClipAction)" if isinstance(space, spaces.Box) else ""
            )
            raise ValueError(
                f"action {a[i].tolist()!r} for slot {i} (env {self.slots.env(i)}, agent "
                f"{self._slot_agent(i)!r}) is outside the action space {space}{hint}"
            )
        return a.astype(space.dtype) if a.dtype.kind == "f" and _integer_space(space) else a

    @property
    def has_masks(self) -> bool:
        """Whether the env gives the training agents action masks (see :meth:`action_masks`): in their
        observations, or in their infos (known from the first reset)."""
        if self._train_mask_spec is None:
            return False
        return self.layout.masked or bool(self.backend.buffers.info_masks.any())

    def action_masks(self) -> np.ndarray:
        """Every slot's legal actions now, bool ``(num_slots, width)``; a dead agent's slot allows all."""
        masks = self.backend.buffers.train_mask.reshape(self.slots.num_slots, -1).copy()
        masks[~self.slot_alive()] = True
        return masks

    def _check_train_masks(self) -> None:
        """Raise ``ValueError`` naming the agent where a live training agent's mask allows no action."""
        if self.has_masks:
            alive = np.flatnonzero(self.slot_alive())
            masks = self.backend.buffers.train_mask.reshape(self.slots.num_slots, -1)[alive]
            self._train_mask_spec.check(masks, lambda i: self._slot_agent(int(alive[i])))

    def _check_legal(
        self, g: int, member: NPCPolicy, actions: np.ndarray, rows: np.ndarray, mask: np.ndarray
    ) -> None:
        """Raise ``ValueError`` naming the policy, agent, action and legal actions where an NPC's action
        is illegal under its mask."""
        legal = self._mask_specs[g].allows(mask, actions)
        if not legal.all():
            i = int(np.flatnonzero(~legal)[0])
            group = self.layout.groups[g]
            raise ValueError(
                f"NPC policy {member!r} played {np.asarray(actions[i]).tolist()!r} for agent "
                f"{group.agents[rows[i] % len(group.agents)]!r}, an action its mask forbids (legal: "
                f"{np.flatnonzero(mask[i]).tolist()} of the mask's {mask.shape[1]} flags)"
            )

    def _slot_agent(self, slot: int) -> Any:
        """The agent slot ``slot`` plays."""
        return self.layout.training[self.slots.agent(slot)]

    def step(self, actions: Any, validated: bool = False) -> StepResult:
        """Step every sub-env with the trainer's actions (one per slot) and the NPCs' actions.

        :param validated: ``actions`` already came from :meth:`validate_actions`
        """
        self._assert_open()
        if self._needs_reset:
            raise RuntimeError("step() was called before reset(): call reset() once before the first step")
        a = actions if validated else self.validate_actions(actions)
        slots = self.slots
        self._collect_npc_actions()
        step_infos, reset_infos = self.backend.step(slots.by_env(a), self._npc_actions, self._held)
        buf = self.backend.buffers
        was_alive = self._alive  # train_was may be a view of it (slots in one run): read before its update
        train_was = was_alive[:, self._train_pos]  # (E, n_train)

        reward = buf.reward
        slot_reward = (reward[:, self._train_pos] * train_was).reshape(-1)
        self._slot_return += slot_reward
        self._slot_length += train_was.reshape(-1)
        self._team_return[:, 0] += slots.by_env(slot_reward).sum(axis=1)
        self._team_return[:, 1] += (reward[:, self._npc_pos] * was_alive[:, self._npc_pos]).sum(axis=1)
        held = self._held.copy()
        self._env_length += ~held

        terminated = (buf.terminated[:, self._train_pos] & train_was).reshape(-1)
        truncated = (buf.truncated[:, self._train_pos] & train_was).reshape(-1)
        done = terminated | truncated
        env_done = buf.env_done.reshape(-1).copy()

        infos = [dict(info) if info else {} for env in step_infos for info in env]  # _copy_info, inlined
        for i in np.flatnonzero(~train_was.reshape(-1)):
            infos[i][PADDING_KEY] = True
        ended: dict[int, Ended] = {}
        if done.any():
            final_obs = buf.final_obs.reshape(self._slot_obs_shape)
            elapsed = round(time.time() - self._t_start, 6)
            ret, length = self._slot_return, self._slot_length
            ended = {
                int(i): Ended(final_obs[i].copy(), float(ret[i]), int(length[i]), elapsed)
                for i in np.flatnonzero(done)
            }
            self._slot_return[done] = 0
            self._slot_length[done] = 0

        slot_reset_infos: dict[int, dict[str, Any]] = {}
        if env_done.any():
            for e in np.flatnonzero(env_done):
                episode = self._episode_summary(e)
                for j, k in enumerate(slots.of_env(e)):
                    infos[k][EPISODE_KEY] = dict(episode)
                    slot_reset_infos[k] = _copy_info(reset_infos[e][j])
            self._team_return[env_done] = 0
            self._env_length[env_done] = 0

        # NPCs that entered their env this step (late or respawned) start an episode of their own.
        joined = np.greater(buf.alive, self._alive, out=self._joined)
        if joined.any():
            for g, pos in enumerate(self._group_pos):
                self._episode_start[g] |= joined[:, pos].reshape(-1)
        self._alive[...] = buf.alive
        obs = buf.train_obs.reshape(self._slot_obs_shape).copy()
        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            # The ended envs' slots show their terminal observations now (slots dead before: padding)
            # and their reset at the next step, which is padding for them (the env is not stepped)
            # and starts the episode.
            slots.by_env(obs)[env_done] = 0
            for i, e in ended.items():
                obs[i] = e.final_obs
            self._alive[env_done] = False
            self._held[...] = env_done
            if env_done.any():  # only the ended envs' slots: reset() reads no other held slot
                shown = slots.per_slot(env_done)
                self._held_obs[shown] = obs[shown]
            self._start_episodes(held)
        else:
            self._start_episodes(env_done)
        self._check_train_masks()
        self._launch_npcs()
        return StepResult(obs, slot_reward, terminated, truncated, infos, slot_reset_infos, ended)

    def _episode_summary(self, e: int) -> dict[str, Any]:
        train_ret, npc_ret = (float(x) for x in self._team_return[e])
        outcome = "win" if train_ret > npc_ret else "loss" if train_ret < npc_ret else "draw"
        names = [pool.members[self._member[g][e]].name for g, pool in enumerate(self.pools)]
        return {
            "train_return": train_ret,
            "npc_return": npc_ret,
            "length": int(self._env_length[e]),
            "outcome": outcome,
            "npc": names[0] if len(names) == 1 else names,
        }

    def add_npc(self, policy: NPCPolicy, group: int = 0, weight: float | None = None) -> int:
        """Add ``policy`` to NPC group ``group``'s pool; envs may draw it from their next episode start.

        The policy is dry-run checked against the group's spaces first. Returns its pool index.
        """
        self._check_member(group, policy)
        policy.reset(self._rows[group], int(self._rng.integers(2**31)))
        return self.pools[group].add(policy, weight)

    def npc_playing(self, group: int = 0) -> np.ndarray:
        """The pool index of the member each env is playing in its current episode."""
        return self._member[group].copy()

    def remove_npc(self, index: int, group: int = 0) -> NPCPolicy:
        """Remove pool member ``index`` of NPC group ``group``; refused while an env is playing it."""
        playing = self._member[group]
        index = self.pools[group].index(index)  # -1 would pass the check below and shift every env
        if (playing == index).any():
            raise ValueError(
                f"NPC pool member {index} ({self.pools[group].members[index].name}) is playing in envs "
                f"{np.flatnonzero(playing == index).tolist()}; set its weight to 0 and remove it after their episodes end"
            )
        member = self.pools[group].remove(index)
        playing[playing > index] -= 1
        return member

    # ------------------------------------------------------------------ sub-env access
    def slot_alive(self) -> np.ndarray:
        """Whether each slot's agent is alive now (``False``: its observation is padding)."""
        return self._alive[:, self._train_pos].reshape(-1).copy()

    def for_envs(self, envs: Sequence[int], fn: Callable[[int], Any]) -> list[Any]:
        """``fn(e)`` once per distinct sub-env ``e`` of ``envs``, its result given to every entry that
        names ``e`` (a sub-env's slots share the env: calling it once per slot would repeat the call)."""
        self._assert_open()
        results = {e: fn(e) for e in dict.fromkeys(envs)}
        return [results[e] for e in envs]

    def render(self, env: int = 0) -> Any:
        """Sub-env ``env``'s ``render()``."""
        self._assert_open()
        return self.backend.call(env, "render", (), {})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.backend.close()

    def _assert_open(self) -> None:
        if self.closed:
            raise RuntimeError("this NPC vector env is closed; make a new one")

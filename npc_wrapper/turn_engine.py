"""The engine for turn-based (PettingZoo AEC) games: the learner's moves in, its next turns out.

A vector step plays every env's learner move, then *rounds*: while some env waits on an NPC, each
NPC policy runs once over the waiting rows of all envs (one forward per pool member, masks
applied), and those envs play the moves, up to the learner's next turn. NPC actions cannot be
computed ahead, as in parallel envs: an NPC's observation depends on the learner's move. The rest
(pools, seeding, action checks, episode statistics, NEXT_STEP autoreset, sub-env access) is
:class:`~npc_wrapper.engine.NPCEngine`'s. See :mod:`npc_wrapper.turn_env` for the per-env rules:
rewards, episode ends, seats and hands that end before the learner's first move.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from pettingzoo import AECEnv

from npc_wrapper.engine import EPISODE_KEY, Ended, EnvFn, NPCEngine, StepResult, check_buffer_memory
from npc_wrapper.masks import MASK_KEY, OBSERVATION_KEY
from npc_wrapper.npcs.policies import NPCPolicy, RandomPolicy
from npc_wrapper.npcs.pool import NPCPool
from npc_wrapper.turn_env import (
    LEARNER,
    MaskCheck,
    Reached,
    TurnLayout,
    build_turn_layout,
    turn_buffer_spaces,
)
from npc_wrapper.turn_workers import TurnInProcessBackend, TurnWorkerBackend
from npc_wrapper.workers import Backend

__all__ = ["TurnEngine", "NO_MOVE_KEY", "check_turn_env"]

#: Info key on a step in which episodes ended before the learner's first move (reset again at once):
#: ``{"episodes": n, "train_return": r}``, the learner's reward in them (credited to no step).
NO_MOVE_KEY = "npc_wrapper/no_move"


def check_turn_env(env: Any, what: str = "env_fn") -> None:
    """Raise ``TypeError`` unless ``env`` is a PettingZoo ``AECEnv``; ``what`` names its maker."""
    if not isinstance(env, AECEnv):
        raise TypeError(
            f"{what} must return a PettingZoo AECEnv for a turn-based engine, got {type(env).__name__}"
        )


def _copy(info: dict[str, Any] | None) -> dict[str, Any]:
    return dict(info) if info else {}


class TurnEngine(NPCEngine):
    """Runs ``num_envs`` copies of a PettingZoo AEC env: one learner seat per env, NPCs in the others.

    See :func:`npc_wrapper.make_vec_env` for the parameters.

    :param seat: ``"fixed"``: the learner plays the seat ``training_agents`` / ``training_agents_pct``
        picks; ``"random"``: each env draws the learner's seat at every episode start among the seats
        with that seat's spaces
    :param dict_observations: the slots observe the learner's whole classic ``Dict`` observation
        (``observation`` and ``action_mask``, as the env gives it) instead of its ``observation`` entry;
        the masks are served as well, as without it
    """

    layout: TurnLayout

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        *,
        seat: str = "fixed",
        dict_observations: bool = False,
        reset_when_training_agents_dead: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        """:param engine_kwargs: :class:`~npc_wrapper.engine.NPCEngine`'s other parameters"""
        self.seat = seat
        self.dict_observations = dict_observations
        self._reset_when_training_agents_dead = reset_when_training_agents_dead
        self._backend_kind = engine_kwargs.get("backend", "process")
        super().__init__(env_fns, reset_when_training_agents_dead=True, **engine_kwargs)

    # ------------------------------------------------------------------ construction
    def _build_layout(
        self, probe: Any, npc: Any, training_agents_pct: float | None, training_agents: Sequence[Any] | None
    ) -> TurnLayout:
        # The arguments only a turn-based engine takes are checked here, where a failure closes the probe.
        check_turn_env(probe)
        if not self._reset_when_training_agents_dead:
            raise ValueError(
                "reset_when_training_agents_dead=False does not apply to a turn-based (AEC) env: its episode "
                "ends with the learner's; leave it True"
            )
        if self._backend_kind == "ray":
            raise ValueError(
                "backend='ray' does not step turn-based (AEC) envs yet: use backend='process' (worker "
                "processes on this machine) or num_workers=0"
            )
        layout = build_turn_layout(probe, npc, training_agents_pct, training_agents, self.seat)
        if self.dict_observations and not layout.masked:
            learner = layout.training[0]
            raise ValueError(
                f"dict_observations=True serves the learner's whole classic Dict observation "
                f"('{OBSERVATION_KEY}' and '{MASK_KEY}'), but agent {learner!r} observes "
                f"{probe.observation_space(learner)}: leave dict_observations=False"
            )
        check_buffer_memory(turn_buffer_spaces(layout), self.num_envs)
        return layout

    @property
    def observation_space(self) -> spaces.Space:
        """The learner's served observation space: the ``observation`` entry of a classic ``Dict``, or
        with ``dict_observations`` the whole ``Dict``."""
        layout = self.layout
        if self.dict_observations:
            return layout.observation_spaces[layout.seats[0]]
        return layout.observation_space

    def _build_backend(
        self, backend: str, env_fns: Sequence[EnvFn], probe: Any, num_workers: int,
        reset_when_training_agents_dead: bool, start_method: str | None, ray_address: str | None,
        worker_resources: Mapping[str, Any] | None, step_timeout: float | None,
    ) -> Backend:
        if num_workers == 0:
            return TurnInProcessBackend([probe] + [fn() for fn in env_fns[1:]], self.layout)
        probe.close()
        return TurnWorkerBackend(env_fns, num_workers, self.layout, start_method, step_timeout)

    def _init_step_state(self) -> None:
        layout, E = self.layout, self.num_envs
        # One NPC moves per waiting env per round: one action per env per group.
        self._npc_actions = [
            np.zeros((E, *g.action_space.shape), g.action_space.dtype) for g in layout.groups
        ]
        # Masks are checked (an agent to move must have a legal action) on the rows gathered anyway.
        self._check_masks = MaskCheck(layout)
        self._gathered_masks = [
            np.zeros((E, 0 if m is None else m.width), dtype=bool) for m in self._mask_specs
        ]
        #: The learner infos of each env at its last turn, and at its episode's first turn.
        self._step_infos: list[dict[str, Any] | None] = [None] * E
        self._reset_infos: list[dict[str, Any] | None] = [None] * E
        #: Whether the learner's masks come in its observations (known from the space), or have come in
        #: a learner info (masks from infos).
        self._obs_masks = layout.masked
        self._info_masks = False
        # dict_observations: the masks as the env's Dict gives them, and those the held envs show.
        self._mask_dtype = self.observation_space[MASK_KEY].dtype if self.dict_observations else None
        held = len(self._held_obs) if self.dict_observations else 0
        self._held_mask = np.zeros((held, layout.mask_width), dtype=bool)

    @property
    def has_masks(self) -> bool:
        """Whether the env gives the learner action masks (in its observations, or in its infos so far)."""
        return self._obs_masks or self._info_masks

    def action_masks(self) -> np.ndarray:
        """The learner's legal actions at its current turn, one row per slot (bool ``(num_envs, width)``)."""
        return self.backend.buffers.train_mask.copy()

    def slot_alive(self) -> np.ndarray:
        """Always ``True``: a slot is the learner at its turn."""
        return np.ones(self.num_envs, dtype=bool)

    def _slot_agent(self, slot: int) -> Any:
        return self.layout.possible_agents[int(self.backend.buffers.seat[slot, 0])]

    # ------------------------------------------------------------------ reset / step
    def _collect_npc_actions(self) -> None:
        """Nothing to wait for: the NPCs' forwards run inside the step, round by round."""

    def _reset_result(
        self, reached: Reached, envs: np.ndarray, partial: bool
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        shown = self._held & ~envs  # NEXT_STEP: an ended env that is not reset keeps its terminal obs
        self._slot_return[envs] = 0
        self._slot_length[envs] = 0
        self._team_return[envs] = 0
        self._env_length[envs] = 0
        self._held[envs] = False
        self._take(reached, envs)
        self._rounds()
        self._check_masks.learners(self.backend.buffers, np.flatnonzero(envs))
        infos = [_copy(self._reset_infos[e]) if r else {} for e, r in enumerate(envs.tolist())]
        buf = self.backend.buffers
        obs = buf.train_obs.copy()
        mask = buf.train_mask.copy() if self.dict_observations else None
        if shown.any():
            obs[shown] = self._held_obs[shown]
            if mask is not None:
                mask[shown] = self._held_mask[shown]
        return self._served(obs, mask), infos

    def _served(self, obs: np.ndarray, mask: np.ndarray | None) -> Any:
        """What the slots observe: ``obs``, or with ``dict_observations`` the classic Dict of ``obs`` and
        ``mask`` (bool, cast to the env's mask dtype)."""
        return obs if mask is None else {OBSERVATION_KEY: obs, MASK_KEY: self._served_mask(mask)}

    def _served_mask(self, mask: np.ndarray) -> np.ndarray:
        return mask.astype(self._mask_dtype)

    def step(self, actions: Any, validated: bool = False) -> StepResult:
        """Play every env's learner move (one per slot), then the NPCs' moves up to its next turn."""
        self._assert_open()
        if self._needs_reset:
            raise RuntimeError("step() was called before reset(): call reset() once before the first step")
        a = actions if validated else self.validate_actions(actions)
        held = self._held.copy()
        active = ~held
        moves = a.reshape(self.num_envs, *self.layout.action_space.shape)
        self._take(self.backend.step_learners(moves, active), active)
        self._rounds()
        buf = self.backend.buffers
        self._check_masks.learners(buf, np.flatnonzero(active))
        reward = np.where(held, 0.0, buf.reward[:, 0])
        terminated = buf.terminated[:, 0] & active
        truncated = buf.truncated[:, 0] & active
        done = terminated | truncated
        self._slot_return += reward
        self._slot_length += active
        self._team_return[:, 0] += reward
        self._team_return[:, 1] += np.where(held, 0.0, buf.npc_reward[:, 0])
        self._env_length += active

        infos = [dict(info) if info else {} for info in self._step_infos]  # _copy, inlined
        no_move = buf.no_move[:, 0] * active
        for e in np.flatnonzero(no_move):
            infos[e][NO_MOVE_KEY] = {
                "episodes": int(no_move[e]), "train_return": float(buf.no_move_return[e, 0])
            }
        ended: dict[int, Ended] = {}
        reset_infos: dict[int, dict[str, Any]] = {}
        if done.any():
            elapsed = round(time.time() - self._t_start, 6)
            for e in np.flatnonzero(done):
                e = int(e)
                ret, length = float(self._slot_return[e]), int(self._slot_length[e])
                ended[e] = Ended(buf.final_obs[e].copy(), ret, length, elapsed)
                infos[e][EPISODE_KEY] = self._episode_summary(e)
                reset_infos[e] = _copy(self._reset_infos[e])
            self._slot_return[done] = 0
            self._slot_length[done] = 0
            self._team_return[done] = 0
            self._env_length[done] = 0
        obs = buf.train_obs.copy()
        mask = buf.train_mask.copy() if self.dict_observations else None
        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            # The ended envs show their terminal observations now; the next step delivers the reset, which
            # the env has already played up to the learner's first turn (without stepping it again).
            for e, end in ended.items():
                obs[e] = end.final_obs
            self._held[...] = done
            self._held_obs[done] = obs[done]
            if mask is not None:
                mask[done] = buf.final_mask[done]
                self._held_mask[done] = mask[done]
        if mask is not None:
            for e, end in ended.items():
                end.final_obs = {
                    OBSERVATION_KEY: end.final_obs, MASK_KEY: self._served_mask(buf.final_mask[e])
                }
        return StepResult(self._served(obs, mask), reward, terminated, truncated, infos, reset_infos, ended)

    def _take(self, reached: Reached, stepped: np.ndarray) -> None:
        """Keep the learner infos of the envs that came to their learner's turn in a backend call, and
        start the NPC episodes (pool draws, ``episode_start``) of ``stepped`` envs that began one in it."""
        for e, (step_info, reset_info) in reached.items():
            self._step_infos[e], self._reset_infos[e] = step_info, reset_info
            if not self._info_masks and step_info and MASK_KEY in step_info:
                self._info_masks = True
        started = self.backend.buffers.new_episode[:, 0] & stepped
        if started.any():
            self._start_episodes(started)

    def _rounds(self) -> None:
        """While some env waits on an NPC: one forward per NPC policy over the waiting rows of all envs,
        then one backend call that plays those moves."""
        buf = self.backend.buffers
        turn = buf.turn[:, 0]  # a view: each backend call updates it
        while True:
            waiting = turn != LEARNER
            if not waiting.any():
                return
            for g, pool in enumerate(self.pools):
                envs = np.flatnonzero(turn == g)
                if len(envs):
                    self._npc_moves(g, pool, envs)
            self._take(self.backend.step_npcs(self._npc_actions), waiting)

    def _npc_moves(self, g: int, pool: NPCPool, envs: np.ndarray) -> None:
        """The moves of group ``g``'s NPCs to move in ``envs``: one forward per pool member over its rows."""
        buf = self.backend.buffers
        rows = envs * self._group_sizes[g] + buf.turn_row[envs, 0]
        all_obs = buf.npc_obs[g].reshape(self._rows[g], *buf.npc_obs[g].shape[2:])
        all_masks = buf.npc_mask[g].reshape(self._rows[g], -1)
        start = self._episode_start[g]
        members = self._member[g][envs] if len(pool) > 1 else None
        for m, member in enumerate(pool.members):
            which = slice(None) if members is None else np.flatnonzero(members == m)
            mine = rows[which]
            if not len(mine):
                continue
            # The rows are valid indices; mode="raise" with out= would copy through a temporary.
            obs = np.take(all_obs, mine, axis=0, out=self._gathered[g][:len(mine)], mode="clip")
            mask = None
            if self._mask_specs[g] is not None:
                mask = np.take(all_masks, mine, axis=0, out=self._gathered_masks[g][:len(mine)], mode="clip")
                self._check_masks.npcs(g, mask, mine)
            actions = self._wait_npc(g, mine, self._npc_forward(member, obs, mine, start[mine], mask))
            actions = self._check_npc_actions(g, member, actions, mine)
            if mask is not None and type(member) is not RandomPolicy:  # random draws among legal actions
                self._check_legal(g, member, actions, mine, mask)
            self._npc_actions[g][envs[which]] = actions
            start[mine] = False

    @staticmethod
    def _npc_forward(
        member: NPCPolicy, obs: np.ndarray, rows: np.ndarray, start: np.ndarray, mask: np.ndarray | None
    ) -> Callable[[], np.ndarray]:
        """``member``'s forward for ``rows``, given their masks if it takes them."""
        if mask is not None and member.takes_mask:
            return member.act_async(obs, rows, start, mask)
        return member.act_async(obs, rows, start)

    def _episode_summary(self, e: int) -> dict[str, Any]:
        summary = super()._episode_summary(e)
        summary["seat"] = self.layout.possible_agents[int(self.backend.buffers.ended_seat[e, 0])]
        return summary

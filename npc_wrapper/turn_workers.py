"""Stepping turn-based sub-envs in-process or in worker processes, a round at a time.

The turn-based counterparts of :mod:`npc_wrapper.workers`' backends. A vector step is a few calls:
the learners' moves (:meth:`~TurnInProcessBackend.step_learners`), then, while some env waits on an
NPC, the NPCs' moves (:meth:`~TurnInProcessBackend.step_npcs`) after one batched forward per NPC
policy in the main process. With workers each call is one round trip to every worker: the batch
object's :meth:`TurnBatchEnv.step_learners` / :meth:`TurnBatchEnv.step_npcs` run there (reached
through Gymnasium's ``AsyncVectorEnv.step`` with a ``phase``), and its buffers come back through
shared memory. Each call returns the learner infos of the envs that came to their learner's turn
in it (see :data:`~npc_wrapper.turn_env.Reached`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from npc_wrapper.turn_env import (
    LEARNER,
    Reached,
    TurnBuffers,
    TurnJointEnv,
    TurnLayout,
    reset_turns,
    step_learners,
    step_npcs,
    turn_buffer_spaces,
)
from npc_wrapper.workers import (
    EnvFn,
    InProcessBackend,
    JointBatchEnv,
    WorkerBackend,
    action_box,
    batch_spaces,
)

__all__ = ["TurnInProcessBackend", "TurnBatchEnv", "TurnWorkerBackend"]

#: A reset's seeds and options, one per env.
Seeds = Sequence["int | None"]
Options = Sequence["dict[str, Any] | None"]
#: ``TurnBatchEnv.step``'s ``phase``: the learners' moves, or the NPCs'.
LEARNERS, NPCS = 0, 1


def _turn_envs(envs: list[Any], layout: TurnLayout) -> tuple[TurnBuffers, list[TurnJointEnv]]:
    """One :class:`TurnJointEnv` per env of ``envs``, writing into one new batch of buffers."""
    buffers = TurnBuffers.allocate(layout, (len(envs),))
    try:
        joints = [TurnJointEnv(env, layout, buffers.at(i)) for i, env in enumerate(envs)]
    except BaseException:  # an env that does not fit the layout: close them all, not just that one
        for env in envs:
            env.close()
        raise
    return buffers, joints


class TurnInProcessBackend(InProcessBackend):
    """All turn-based sub-envs in the main process, writing straight into the wrapper's buffers.

    :param envs: the PettingZoo AEC envs (already built)
    :param layout: their seats and NPC rows
    """

    def __init__(self, envs: list[Any], layout: TurnLayout) -> None:
        self.num_envs = len(envs)
        self.buffers, self.joints = _turn_envs(envs, layout)

    def reset(self, seeds: Seeds, options: Options, mask: np.ndarray | None = None) -> Reached:
        """Reset env ``i`` with ``seeds[i]`` and ``options[i]`` where ``mask`` is set (default: all)."""
        return reset_turns(self.joints, seeds, options, None if mask is None else mask.tolist())

    def step_learners(self, actions: np.ndarray, active: np.ndarray) -> Reached:
        """Play the learner move ``actions[e]`` in every env ``e`` with ``active[e]``."""
        return step_learners(self.joints, actions, active.tolist())

    def step_npcs(self, npc_actions: list[np.ndarray]) -> Reached:
        """Play the NPC move of every env waiting on an NPC (see :func:`~npc_wrapper.turn_env.step_npcs`)."""
        waiting = np.flatnonzero(self.buffers.turn[:, 0] != LEARNER).tolist()
        return step_npcs(self.joints, npc_actions, waiting=waiting)


class TurnBatchEnv(JointBatchEnv):
    """A worker's share of the turn-based sub-envs, as one Gymnasium env whose observation is its
    buffers. Its round protocol is two methods, :meth:`step_learners` and :meth:`step_npcs`; ``step``
    dispatches to them by ``action["phase"]`` for ``AsyncVectorEnv``.

    :param env_fns: factories of this worker's sub-envs
    :param first: index of this worker's first sub-env in the whole vector
    :param layout: the sub-envs' seats and NPC rows (without NPC specs)
    """

    def __init__(self, env_fns: Sequence[EnvFn], first: int, layout: TurnLayout) -> None:
        self.env_fns = list(env_fns)
        self.first = first
        self.layout = layout
        n = len(self.env_fns)
        self.observation_space = batch_spaces(turn_buffer_spaces(layout), n)
        self.action_space = spaces.Dict(turn_action_spaces(layout, n))
        self.joints: list[TurnJointEnv] | None = None  # type: ignore[assignment]
        self.buffers: TurnBuffers | None = None  # type: ignore[assignment]

    def _build(self) -> list[TurnJointEnv]:  # type: ignore[override]
        if self.joints is None:
            self.buffers, self.joints = _turn_envs([fn() for fn in self.env_fns], self.layout)
        return self.joints

    def _reset(self, options: dict[str, Any]):
        reached = reset_turns(self._build(), *self._reset_args(options), self.first)
        return self.buffers.as_arrays(), {"reached": list(reached.items())}

    def step_learners(self, actions: np.ndarray, active: np.ndarray) -> Reached:
        """Play the learner move ``actions[e]`` in every env ``e`` of this worker with ``active[e]``."""
        return step_learners(self._build(), actions, active.tolist(), self.first)

    def step_npcs(self, npc_actions: Sequence[np.ndarray]) -> Reached:
        """Play the NPC move of every env of this worker waiting on an NPC."""
        return step_npcs(self._build(), npc_actions, self.first)

    def _step(self, action: dict[str, np.ndarray]):
        if int(action["phase"][0]) == LEARNERS:
            reached = self.step_learners(action["learner"], action["active"].astype(bool))
        else:
            reached = self.step_npcs([action[f"npc_{g}"] for g in range(len(self.layout.groups))])
        # As a list: AsyncVectorEnv would merge a dict's keys across the workers.
        return self.buffers.as_arrays(), 0.0, False, False, {"reached": list(reached.items())}


def turn_action_spaces(layout: TurnLayout, n: int) -> dict[str, spaces.Box]:
    """What a batch of ``n`` turn-based sub-envs takes per call: the phase, the learners' moves and which
    envs move, and one move per env per NPC group."""
    out = {
        "phase": spaces.Box(0, 1, (1,), np.int64),
        "learner": action_box((n,), layout.action_space),
        "active": spaces.Box(0, 1, (n,), np.int8),
    }
    out.update({f"npc_{g}": action_box((n,), group.action_space) for g, group in enumerate(layout.groups)})
    return out


class TurnWorkerBackend(WorkerBackend):
    """Turn-based sub-envs split evenly over ``num_workers`` processes; one round trip per call.

    :param env_fns: one factory per sub-env
    :param num_workers: processes; must divide ``len(env_fns)``
    :param layout: the sub-envs' seats and NPC rows
    :param start_method: multiprocessing start method (``None``: the platform default)
    :param step_timeout: seconds the workers may take to answer one call (``None``: no limit)
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        num_workers: int,
        layout: TurnLayout,
        start_method: str | None = None,
        step_timeout: float | None = None,
    ) -> None:
        super().__init__(env_fns, num_workers, layout, True, start_method, step_timeout)
        # One call's actions, every entry present (AsyncVectorEnv splits them by its action space; the
        # phase decides which the workers read), reused from call to call.
        per = self.num_envs // num_workers
        self._request = {
            k: np.zeros((num_workers, *s.shape), s.dtype) for k, s in turn_action_spaces(layout, per).items()
        }

    @staticmethod
    def _batch_class(reset_when_training_agents_dead: bool) -> Callable[..., gym.Env]:
        return TurnBatchEnv

    def _views(self, obs: dict[str, np.ndarray]) -> TurnBuffers:  # type: ignore[override]
        flat = {k: v.reshape(self.num_envs, *v.shape[2:]) for k, v in obs.items()}
        return TurnBuffers.from_arrays(flat, len(self.layout.groups))

    def reset(self, seeds: Seeds, options: Options, mask: np.ndarray | None = None) -> Reached:
        return self._merge(self._reset_workers(seeds, options, mask))

    def step_learners(self, actions: np.ndarray, active: np.ndarray) -> Reached:
        request = self._request
        request["phase"][:] = LEARNERS
        request["learner"].reshape(-1)[...] = actions.reshape(-1)
        request["active"].reshape(-1)[...] = active
        return self._call()

    def step_npcs(self, npc_actions: list[np.ndarray]) -> Reached:
        request = self._request
        request["phase"][:] = NPCS
        for g, a in enumerate(npc_actions):
            request[f"npc_{g}"].reshape(a.shape)[...] = a
        return self._call()

    def _call(self) -> Reached:
        _, _, _, _, infos = self._guard(lambda: self._step_within_timeout(self._request))
        return self._merge(infos)

    @staticmethod
    def _merge(infos: dict[str, Any]) -> Reached:
        """The workers' :data:`Reached` items as one dict (their env indices are already global)."""
        return {e: pair for worker in infos["reached"] for e, pair in worker}

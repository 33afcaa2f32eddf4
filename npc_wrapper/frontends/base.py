"""What both front ends share: the engine behind them, the agent split, the NPC pools and the
PettingZoo env behind each slot.

A front end only translates the engine's per-slot arrays and infos into its API's step, reset and
info conventions; everything else lives here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from npc_wrapper.engine import NPCEngine
from npc_wrapper.npcs.policies import NPCPolicy
from npc_wrapper.npcs.pool import NPCPool

__all__ = ["FrontEnd"]


class FrontEnd:
    """The API-independent part of :class:`~npc_wrapper.SB3VecEnv` and
    :class:`~npc_wrapper.GymnasiumVectorEnv`.

    Sub-env access goes through the engine's ``for_envs``: a sub-env's slots share one PettingZoo
    env, so each sub-env is called once and its result given to each of its slots.

    :param engine: the shared engine that steps the sub-envs and runs the NPCs
    """

    def __init__(self, engine: NPCEngine) -> None:
        self.engine = engine
        self.render_mode = engine.render_mode
        #: Slot <-> sub-env arithmetic: slot ``k`` is training agent ``slots.agent(k)`` of sub-env
        #: ``slots.env(k)`` (see :class:`~npc_wrapper.agents.SlotMap`).
        self.slots = engine.slots

    @property
    def training_agents(self) -> list[Any]:
        """Agents driven by the trainer, in slot order within each env."""
        return list(self.engine.layout.training)

    @property
    def npc_agents(self) -> list[Any]:
        """Agents driven by NPC policies."""
        return [a for g in self.engine.layout.groups for a in g.agents]

    @property
    def num_sub_envs(self) -> int:
        """Number of PettingZoo envs (``num_envs`` counts slots, one per training agent per env)."""
        return self.engine.num_envs

    @property
    def pools(self) -> list[NPCPool]:
        """The NPC pool of each NPC group (see :class:`npc_wrapper.NPCPool`)."""
        return self.engine.pools

    def add_npc(self, policy: NPCPolicy, group: int = 0, weight: float | None = None) -> int:
        """Add an NPC policy to a group's pool (see :meth:`NPCEngine.add_npc`); returns its index."""
        return self.engine.add_npc(policy, group, weight)

    def slot_alive(self) -> np.ndarray:
        """Whether each slot's agent is alive now; ``False`` marks padding observations."""
        return self.engine.slot_alive()

    def _get_each(self, envs: Sequence[int], name: str) -> list[Any]:
        """Attribute ``name`` of each sub-env of ``envs``, found through its wrappers."""
        backend = self.engine.backend
        return self.engine.for_envs(envs, lambda e: backend.get_attr(e, name))

    def _set_each(self, envs: Sequence[int], name: str, per_env: Sequence[Any]) -> None:
        """Set ``name`` to ``per_env[e]`` on each sub-env ``e`` of ``envs``, on the wrapper that owns it."""
        backend = self.engine.backend
        self.engine.for_envs(envs, lambda e: backend.set_attr(e, name, per_env[e]))

    def _call_each(
        self, envs: Sequence[int], name: str, args: tuple, kwargs: dict[str, Any], or_get: bool = False
    ) -> list[Any]:
        """Method ``name`` of each sub-env of ``envs`` called with ``args`` and ``kwargs`` (see
        :meth:`~npc_wrapper.workers.Backend.call` for ``or_get``)."""
        backend = self.engine.backend
        return self.engine.for_envs(envs, lambda e: backend.call(e, name, args, kwargs, or_get=or_get))

    def _render_each(self, envs: Sequence[int]) -> list[Any]:
        """Each sub-env of ``envs``'s ``render()``."""
        return self.engine.for_envs(envs, self.engine.render)

"""The NPCs: frozen policies that act for the NPC agents inside ``step()``.

:mod:`~npc_wrapper.npcs.policies` (the :class:`~npc_wrapper.npcs.policies.NPCPolicy` interface and
its adapters; a leaf that loads nothing), :mod:`~npc_wrapper.npcs.pool` (several policies for one
group of agents, one drawn per env per episode), :mod:`~npc_wrapper.npcs.device` (batches to the
policy's device and back) and :mod:`~npc_wrapper.npcs.resolve` (an ``npc=`` argument, checkpoint
URIs included, to a policy, through :mod:`npc_wrapper.checkpoints`). The package itself imports
none of them; the public names are in :mod:`npc_wrapper`.
"""

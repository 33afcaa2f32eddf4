"""npc-wrapper: train one policy against fixed NPC policies in any PettingZoo parallel env.

:func:`make_vec_env` (Stable-Baselines3) and :func:`make_vector_env` (Gymnasium, CleanRL-style)
take a PettingZoo ``ParallelEnv`` factory, run the NPC agents' policy batched inside ``step()``,
and expose only the training agents' observation and action slots to the trainer.
"""

from __future__ import annotations

from npc_wrapper.agents import SlotMap, split_agents
from npc_wrapper.checkpoints import load_npc
from npc_wrapper.config import CheckpointConfig, DualPolicyConfig, LeagueConfig
from npc_wrapper.engine import EPISODE_KEY, PADDING_KEY
from npc_wrapper.factory import make_vec_env, make_vector_env
from npc_wrapper.frontends import GymnasiumVectorEnv, SB3VecEnv
from npc_wrapper.league import LeagueCallback
from npc_wrapper.npcs.policies import (
    CallablePolicy,
    ConstantPolicy,
    NPCPolicy,
    RandomPolicy,
    SB3Policy,
    TorchPolicy,
)
from npc_wrapper.npcs.pool import NPCPool
from npc_wrapper.npcs.resolve import as_npc_policy

#: Former names of :class:`SB3VecEnv` and :class:`GymnasiumVectorEnv` (three letters apart).
NPCVecEnv = SB3VecEnv
NPCVectorEnv = GymnasiumVectorEnv

__all__ = [
    "make_vec_env",
    "make_vector_env",
    "SB3VecEnv",
    "GymnasiumVectorEnv",
    "NPCVecEnv",
    "NPCVectorEnv",
    "NPCPolicy",
    "NPCPool",
    "RandomPolicy",
    "ConstantPolicy",
    "CallablePolicy",
    "TorchPolicy",
    "SB3Policy",
    "as_npc_policy",
    "load_npc",
    "CheckpointConfig",
    "DualPolicyConfig",
    "LeagueConfig",
    "LeagueCallback",
    "split_agents",
    "SlotMap",
    "PADDING_KEY",
    "EPISODE_KEY",
]

__version__ = "0.1.0"

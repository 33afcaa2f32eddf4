"""The two front ends over one :class:`~npc_wrapper.engine.NPCEngine`, thin adapters over :class:`FrontEnd`.

* :class:`SB3VecEnv`: a Stable-Baselines3 ``VecEnv`` (built by :func:`npc_wrapper.make_vec_env`);
* :class:`GymnasiumVectorEnv`: a Gymnasium ``VectorEnv`` (built by :func:`npc_wrapper.make_vector_env`).
"""

from __future__ import annotations

from npc_wrapper.frontends.base import FrontEnd
from npc_wrapper.frontends.gymnasium import GymnasiumVectorEnv
from npc_wrapper.frontends.sb3 import SB3VecEnv

__all__ = ["FrontEnd", "SB3VecEnv", "GymnasiumVectorEnv"]

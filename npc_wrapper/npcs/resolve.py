"""What a user passes as ``npc=`` becomes an :class:`~npc_wrapper.npcs.policies.NPCPolicy`.

:func:`as_npc_policy` takes ``"random"``, ``"noop"``, a checkpoint URI or
:class:`~npc_wrapper.config.CheckpointConfig` (loaded by :func:`~npc_wrapper.checkpoints.load_npc`,
which may give an :class:`~npc_wrapper.npcs.pool.NPCPool`), a ``torch.nn.Module``, a
Stable-Baselines3 model, a plain callable or an ``NPCPolicy``.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
from gymnasium import spaces

from npc_wrapper.checkpoints.load import load_npc
from npc_wrapper.config import CheckpointConfig
from npc_wrapper.npcs.policies import (
    CallablePolicy,
    ConstantPolicy,
    NPCPolicy,
    RandomPolicy,
    SB3Policy,
    TorchPolicy,
)
from npc_wrapper.npcs.pool import NPCPool

__all__ = ["as_npc_policy"]

_SCRIPTED = {"random": RandomPolicy, "noop": ConstantPolicy}


def as_npc_policy(
    npc: Any,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    *,
    device: str | torch.device = "auto",
    deterministic: bool = False,
    trusted: bool = False,
) -> NPCPolicy | NPCPool:
    """Turn an ``npc=`` argument into an :class:`NPCPolicy` for one group of NPC agents (an
    :class:`NPCPool` when a checkpoint selector picks several checkpoints).

    :param npc: ``"random"``, ``"noop"``, a checkpoint URI or path (``file://...``,
        ``wandb://...``), ``"pkg.module:callable"``, a :class:`~npc_wrapper.CheckpointConfig`
        (selectors, pools, ``policy_class``), an :class:`NPCPolicy`, a
        ``torch.nn.Module``, an SB3 model (anything with ``predict``) or a callable
        ``obs_batch -> actions``
    :param observation_space: the NPC agents' observation space
    :param action_space: the NPC agents' action space
    :param device: where torch policies run
    :param deterministic: greedy actions instead of sampling
    :param trusted: allow checkpoint formats that run code (see :func:`~npc_wrapper.checkpoints.load_npc`)
    """
    if isinstance(npc, NPCPolicy):
        return npc
    if isinstance(npc, (str, CheckpointConfig)):
        if isinstance(npc, str) and npc in _SCRIPTED:
            return _SCRIPTED[npc](observation_space, action_space)
        if isinstance(npc, str) and not any(c in npc for c in "/:.") and not os.path.exists(npc):
            close = difflib.get_close_matches(npc.lower(), list(_SCRIPTED), n=1, cutoff=0.6)
            if close:  # a typo of a built-in name would otherwise read as a missing checkpoint
                raise ValueError(
                    f"npc={npc!r} is no built-in NPC and no checkpoint file: did you mean {close[0]!r}? "
                    f"(built-in NPCs: {list(_SCRIPTED)})"
                )
        return load_npc(
            npc, observation_space, action_space, device=device, deterministic=deterministic, trusted=trusted
        )
    if isinstance(npc, torch.nn.Module) and not hasattr(npc, "predict"):
        return TorchPolicy(npc, observation_space, action_space, device=device, deterministic=deterministic)
    if hasattr(npc, "predict"):
        return SB3Policy(npc, observation_space, action_space, device=device, deterministic=deterministic)
    if callable(npc):
        return CallablePolicy(npc, observation_space, action_space)
    raise TypeError(
        f"npc={npc!r} is not a policy: pass 'random', 'noop', a checkpoint URI, an NPCPolicy, a "
        "torch.nn.Module, a Stable-Baselines3 model or a callable obs_batch -> actions"
    )

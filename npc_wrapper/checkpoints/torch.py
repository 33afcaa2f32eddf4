"""torch checkpoints as NPC policies: state_dicts, TorchScript and pickled modules.

A state_dict (``torch.save(net.state_dict(), path)``, also under ``"state_dict"`` /
``"model_state_dict"``) is loaded with ``torch.load(weights_only=True)`` into ``policy_class``;
TorchScript and full pickled modules run code, so they need ``trusted``. The network runs as a
:class:`~npc_wrapper.npcs.policies.TorchPolicy`. This module is named after the format, so it and
its package import torch absolutely (``import torch`` is always the library).
"""

from __future__ import annotations

import inspect
import logging
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces

from npc_wrapper.checkpoints.bounded import Limits, archive_bytes, open_zip
from npc_wrapper.checkpoints.safe_pickle import torch_load
from npc_wrapper.checkpoints.uri import import_object
from npc_wrapper.config import CheckpointConfig
from npc_wrapper.errors import (
    TRUST_HINT,
    CheckpointError,
    TrustRequiredError,
    byte_size,
    corrupt_checkpoint,
    short_repr,
    shorten,
)
from npc_wrapper.npcs.policies import NPCPolicy, TorchPolicy, check_npc_policy

__all__ = ["load_torch"]

logger = logging.getLogger(__name__)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The state_dict in a ``torch.load`` result: the dict itself or under a usual key."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "policy", "agent"):
            if _is_state_dict(obj.get(key)):
                return obj[key]
    what = f"a dict with keys {short_repr(list(obj)[:10])}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise CheckpointError(
        f"{path} holds {what}, not a state_dict (a dict of tensors, possibly under 'state_dict' or "
        "'model_state_dict') nor a torch module"
    )


class _SpacesOnly(types.SimpleNamespace):
    """Stands in for the ``envs`` argument of CleanRL-style agents: just the NPC agents' spaces."""


def _build_module(
    cfg: CheckpointConfig, state: Mapping[str, torch.Tensor], path: Path, obs: spaces.Space, act: spaces.Space
) -> torch.nn.Module:
    if cfg.policy_class is None:
        keys = short_repr(list(state)[:3])
        raise CheckpointError(
            f"{path} holds a state_dict ({len(state)} tensors, e.g. {keys}) but no network class; name it "
            "with policy_class='pkg.module:Class' (checkpoint_npc.policy_class in config) and its "
            "constructor arguments with policy_kwargs"
        )
    cls = import_object(cfg.policy_class, "policy_class")
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise CheckpointError(f"policy_class {cfg.policy_class!r} is not a torch.nn.Module class")
    kwargs = dict(cfg.policy_kwargs)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    # Spaces the class asks for by name come from the NPC agents (CleanRL agents take ``envs``).
    if "observation_space" in params:
        kwargs.setdefault("observation_space", obs)
    if "action_space" in params:
        kwargs.setdefault("action_space", act)
    if "envs" in params:
        kwargs.setdefault(
            "envs",
            _SpacesOnly(
                single_observation_space=obs, single_action_space=act, observation_space=obs, action_space=act
            ),
        )
    try:
        module = cls(**kwargs)
    except Exception as e:
        raise CheckpointError(
            f"cannot build policy_class {cfg.policy_class}(**{cfg.policy_kwargs}) for {path}: "
            f"{type(e).__name__}: {e}"
        ) from e
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"the state_dict in {path} does not fit {cfg.policy_class}(**{cfg.policy_kwargs}); the NPC "
            f"agents have observation space {obs} and action space {act}. {shorten(str(e), 1000)}"
        ) from e
    return module


class _ActorHead(torch.nn.Module):
    """CleanRL agents without ``forward``: their ``actor`` maps observations to logits."""

    def __init__(self, agent: torch.nn.Module) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.agent.actor(x)


class _SampledAction(torch.nn.Module):
    """Agents with only ``get_action_and_value``: the sampled action it returns."""

    def __init__(self, agent: torch.nn.Module) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.agent.get_action_and_value(x)[0]


def _forward_module(module: torch.nn.Module, path: Path, deterministic: bool) -> torch.nn.Module:
    """A module whose ``forward`` maps observations to logits or actions."""
    if isinstance(module, torch.jit.ScriptModule) or type(module).forward is not torch.nn.Module.forward:
        return module
    if isinstance(getattr(module, "actor", None), torch.nn.Module) and not hasattr(module, "network"):
        return _ActorHead(module)
    if callable(getattr(module, "get_action_and_value", None)):
        if deterministic:
            logger.warning(
                "%s (%s) has no forward() or actor head: its actions are sampled by get_action_and_value, "
                "so deterministic NPCs are not deterministic; add forward(obs) -> logits",
                type(module).__name__,
                path,
            )
        return _SampledAction(module)
    raise CheckpointError(
        f"{type(module).__name__} from {path} has no forward(); give the class forward(obs) -> logits or "
        "actions (CleanRL-style agents with an 'actor' head or get_action_and_value also work)"
    )


def _check_size(path: Path, fmt: str, limits: Limits) -> None:
    """Refuse a file whose tensors would take more than ``limits.file``: an archive's records as declared
    (they may be compressed), a legacy file's size."""
    if fmt == "torch":
        with open_zip(path, f"checkpoint {path}") as z:
            archive_bytes(z, limits.file, limits, f"checkpoint {path}")
    elif (size := path.stat().st_size) > limits.file:
        raise limits.refuse(f"checkpoint {path}", f"holds {byte_size(size)},", limits.file)


def load_torch(
    path: Path,
    fmt: str,
    obs: spaces.Space,
    act: spaces.Space,
    cfg: CheckpointConfig,
    *,
    trusted: bool,
    device: Any,
    deterministic: bool,
    name: str,
    limits: Limits,
) -> NPCPolicy:
    """The NPC policy of a torch checkpoint: TorchScript (``trusted`` only), a state_dict with
    ``cfg.policy_class``, or (``trusted`` only) a pickled module; dry-run on the NPC agents' spaces.

    :param fmt: ``"torchscript"``, ``"torch"`` or ``"torch-legacy"`` (from ``detect_format``)
    :param obs: the NPC agents' observation space
    :param act: the NPC agents' action space
    :param cfg: ``policy_class`` and ``policy_kwargs`` for state_dicts
    :param trusted: allow formats that run code
    :param device: where the network runs
    :param deterministic: greedy actions
    :param name: the NPC's name in episode infos
    :param limits: what an untrusted file's records may hold in all (torch allocates each as declared)
    """
    if fmt == "torchscript":
        if not trusted:
            raise TrustRequiredError(
                f"{path} is a TorchScript module, and TorchScript is code: it runs when the module is loaded "
                "and at every forward, and can read and write files (torch.ops.aten.save). Save a state_dict "
                "instead (torch.save(model.state_dict(), path) and name the class with policy_class), or, if "
                f"you trust this checkpoint, {TRUST_HINT}"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", DeprecationWarning
                )  # torch.jit.load is deprecated in favour of export
                module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise corrupt_checkpoint(path, e) from e
    else:
        if not trusted:
            _check_size(path, fmt, limits)
        obj = torch_load(str(path), str(path), trusted)
        if isinstance(obj, torch.nn.Module):  # only reachable with trusted: a full pickled module
            module = obj
        else:
            module = _build_module(cfg, _find_state_dict(obj, path), path, obs, act)
        module = _forward_module(module, path, deterministic)
    policy = TorchPolicy(module, obs, act, device=device, deterministic=deterministic, name=name)
    try:
        check_npc_policy(policy, None, obs, act)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the NPC agents: {e}") from e
    return policy

"""Stable-Baselines3 model zips as NPC policies, loaded without unpickling unless trusted.

The policy is rebuilt from the zip's own data (policy class, keyword arguments, spaces) and its
``policy.pth`` weights, for any algorithm whose policy class comes with SB3 or sb3-contrib; it
runs as an :class:`~npc_wrapper.npcs.policies.SB3Policy`.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import io
import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file

from npc_wrapper.checkpoints.bounded import (
    MAX_KWARGS_VALUES,
    Budget,
    Limits,
    archive_bytes,
    loads_json,
    open_zip,
    read_member,
)
from npc_wrapper.checkpoints.safe_pickle import refused_global, safe_loads, torch_load
from npc_wrapper.errors import (
    CheckpointError,
    CheckpointLimitError,
    corrupt_checkpoint,
    short_repr,
    shorten,
)
from npc_wrapper.npcs.policies import NPCPolicy, SB3Policy, observation_fits

__all__ = ["check_sb3_zip", "load_sb3", "read_sb3_data"]


def read_sb3_data(z: Any, path: Path, limits: Limits) -> dict[str, Any]:
    """The JSON object in the ``data`` member of the SB3 model zip ``z`` (at ``path``), read within
    ``limits`` (nothing in it is decoded).

    :raises CheckpointError: no such member, corrupt, past a limit, or not a JSON object
    """
    label = f"SB3 model {path}"
    raw = read_member(z, "data", limits.data, limits, label)
    try:
        data = loads_json(raw, f"{label}: its member 'data'")
    except CheckpointError:
        raise
    except ValueError as e:
        raise corrupt_checkpoint(f"{path} (member 'data')", e) from e
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{label}: its member 'data' holds a JSON {type(data).__name__}, not the object model.save() "
            "writes; the file is corrupt or not a Stable-Baselines3 model"
        )
    return data


def _decode_sb3_entry(data: Mapping[str, Any], key: str, path: Path, budget: Budget) -> Any:
    if key not in data:
        raise CheckpointError(
            f"SB3 model {path} has no {key!r} entry in its data file; was it saved with Stable-Baselines3's "
            "model.save()?"
        )
    value = data[key]
    if not (isinstance(value, dict) and ":serialized:" in value):
        return value  # plain JSON
    try:
        raw = base64.b64decode(value[":serialized:"])
    except (ValueError, TypeError, binascii.Error) as e:
        raise corrupt_checkpoint(f"{path} (entry {key!r})", e) from e
    return safe_loads(raw, f"SB3 model {path}: its {key!r}", budget)


def _values(obj: Any, limit: int) -> int:
    """How many values ``obj`` holds, shared ones counted each time they appear (as building from them
    would), counted up to ``limit + 1`` only."""
    count, stack = 0, [obj]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def _frozen_lr(progress_remaining: float) -> float:
    """Learning-rate schedule for rebuilt policies: NPCs never train."""
    return 0.0


def _check_spaces(path: Path, stored_obs: Any, stored_act: Any, obs: spaces.Space, act: spaces.Space) -> None:
    if not isinstance(stored_obs, spaces.Space) or not isinstance(stored_act, spaces.Space):
        raise CheckpointError(f"SB3 model {path} does not record its observation and action spaces")
    if not (observation_fits(stored_obs, obs) and stored_act == act):
        raise CheckpointError(
            f"checkpoint {path} does not fit the NPC agents. It was trained on\n  observation space "
            f"{shorten(str(stored_obs), 500)}\n  action space      {shorten(str(stored_act), 500)}\nbut the NPC agents it should drive have\n  "
            f"observation space {obs}\n  action space      {act}\nUse it for agents with the spaces it was "
            f"trained on (an npc={{pattern: uri}} mapping picks agents), or train a checkpoint on these "
            "agents (make_vec_env(..., training_agents=[...]))"
        )


def _rebuild_error(policy_class: type, path: Any, data_kwargs: Any, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot rebuild the {policy_class.__name__} of SB3 model {path} with policy_kwargs "
        f"{short_repr(data_kwargs)}: {type(e).__name__}: {shorten(str(e), 300)}"
    )


def _network_shapes(
    policy_class: type, obs: spaces.Space, act: spaces.Space, kwargs: dict[str, Any], path: Path,
    data_kwargs: dict[str, Any],
) -> dict[str, tuple[int, ...]]:
    """The shapes of the state_dict of the network the data describes, from a skeleton built on the
    meta device, which allocates nothing: an untrusted ``policy_kwargs`` (``net_arch=[60000, 60000]``)
    is measured before anything is built or read for it."""
    count = _values(data_kwargs, MAX_KWARGS_VALUES)
    if count > MAX_KWARGS_VALUES:
        raise CheckpointLimitError(
            f"SB3 model {path}: its policy_kwargs hold more than {MAX_KWARGS_VALUES} values (the limit; "
            f"{short_repr(data_kwargs)}), each a layer or setting to build: the file is malformed"
        )
    # SB3 moves sub-networks to ``self.device`` (the first parameter's, else the CPU): keep them on meta.
    on_meta = type(
        policy_class.__name__, (policy_class,), {"device": property(lambda _: torch.device("meta"))}
    )
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # gSDE validates its noise with .item()
    try:
        with torch.device("meta"):
            skeleton = on_meta(obs, act, **kwargs)
    except Exception as e:
        raise _rebuild_error(policy_class, path, data_kwargs, e) from e
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    return {k: (tuple(v.shape), v.element_size()) for k, v in skeleton.state_dict().items()}


def _read_weights(z: Any, path: Path, network: int, limits: Limits) -> Any:
    """The state_dict in ``policy.pth``, read within what a network of ``network`` bytes needs: the
    member decompressed, and the records of the torch archive it is (torch allocates each at its
    declared size)."""
    label = f"{path} (policy.pth)"
    limit = limits.weights(network)
    raw = read_member(z, "policy.pth", limit, limits, f"SB3 model {path}")
    with open_zip(raw, label) as archive:
        archive_bytes(archive, limit, limits, label)
    return torch_load(io.BytesIO(raw), label, trusted=False)


def _check_weight_shapes(
    policy_class: type, expected: dict[str, tuple[int, ...]], state: Any, path: Path,
    data_kwargs: dict[str, Any],
) -> None:
    """Compare the weights with the network the data describes before building it for real."""
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"the weights in {path} (policy.pth) are a {type(state).__name__}, not a state_dict"
        )
    found = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    problems = [
        f"{k}: {found[k]} in the file, {shape} in the network"
        for k, shape in expected.items()
        if k in found and found[k] != shape
    ]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing {missing[:5]}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:5]}")
    if problems:
        raise CheckpointError(
            f"the weights in {path} (policy.pth) do not fit the {policy_class.__name__} its data describes "
            f"(policy_kwargs {short_repr(data_kwargs)}): {shorten('; '.join(problems[:5]), 1000)}"
        )


def _load_trusted(path: Path) -> tuple[dict[str, Any], Any]:
    """SB3's own loader: the data (unpickled) and the policy's state_dict."""
    try:
        data, params, _ = load_from_zip_file(path, device="cpu", print_system_info=False)
    except Exception as e:  # corrupt members, missing classes in a trusted pickle
        refused = refused_global(e) if isinstance(e, pickle.UnpicklingError) else None
        if refused:
            name, blocked = refused
            what = f"module {blocked}" if blocked else "it"
            raise CheckpointError(
                f"SB3 model {path}: its weights hold pickled code (they refer to {name}), and torch "
                f"refuses {what} even for trusted models (Stable-Baselines3 loads weights with "
                "weights_only=True). A model saved with model.save() holds no such objects: re-save it "
                "from the model, or do not use this file"
            ) from e
        raise CheckpointError(
            f"cannot load SB3 model {path} (trusted): {type(e).__name__}: {shorten(str(e), 300)}"
        ) from e
    if "policy" not in params:
        raise CheckpointError(f"SB3 model {path} has no policy weights (policy.pth)")
    return data or {}, params["policy"]


def check_sb3_zip(path: Path, limits: Limits | None = None) -> None:
    """Raise a ``CheckpointError`` unless the SB3 model zip at ``path`` reads: its ``data`` a JSON
    object and its ``policy.pth`` a torch archive whose records' checksums hold, each within the
    limits. Nothing is unpickled (a torn save, an empty zip, a damaged member are all caught).

    :param limits: default: every limit at its most (the spaces are not known)
    """
    limits = limits or Limits()
    label = f"{path} (policy.pth)"
    with open_zip(path, f"SB3 model {path}") as z:
        read_sb3_data(z, path, limits)
        raw = read_member(z, "policy.pth", limits.file, limits, f"SB3 model {path}")
    with open_zip(raw, label) as archive:
        archive_bytes(archive, limits.file, limits, label)
        try:
            bad = archive.testzip()
        except (OSError, ValueError, EOFError) as e:
            raise corrupt_checkpoint(label, e) from e
        if bad is not None or not any(n.endswith("data.pkl") for n in archive.namelist()):
            raise CheckpointError(f"cannot read checkpoint {label}: it is not a complete torch archive")


def load_sb3(
    path: Path,
    obs: spaces.Space,
    act: spaces.Space,
    *,
    trusted: bool,
    device: Any,
    deterministic: bool,
    name: str,
    limits: Limits,
) -> NPCPolicy:
    """The NPC policy of the SB3 model zip at ``path``, rebuilt for the NPC agents' spaces.

    Untrusted: the data is read within ``limits`` and its entries decoded by the allow-list
    (:func:`safe_loads`), the network it describes is measured on the meta device, and only then are
    the weights read (``torch.load(weights_only=True)``, within what that network needs) and their
    shapes compared with it. Trusted: SB3's own loader, without limits.

    :param obs: the NPC agents' observation space
    :param act: the NPC agents' action space
    :param trusted: allow pickled code (SB3's own loader)
    :param device: where the policy runs
    :param deterministic: greedy actions
    :param name: the NPC's name in episode infos
    :param limits: what reading it may take (:class:`~npc_wrapper.checkpoints.bounded.Limits`)
    """
    if trusted:
        data, state = _load_trusted(path)
        policy_class, kwargs = data.get("policy_class"), data.get("policy_kwargs") or {}
        stored_obs, stored_act = data.get("observation_space"), data.get("action_space")
        _check_policy(policy_class, kwargs, path)
        _check_spaces(path, stored_obs, stored_act, obs, act)
        data_kwargs, kwargs = dict(kwargs), _build_kwargs(policy_class, kwargs, data)
    else:
        with open_zip(path, f"SB3 model {path}") as z:
            data = read_sb3_data(z, path, limits)
            budget = Budget(limits)
            policy_class = _decode_sb3_entry(data, "policy_class", path, budget)
            kwargs = _decode_sb3_entry(data, "policy_kwargs", path, budget) or {}
            _check_policy(policy_class, kwargs, path)
            stored_obs = _decode_sb3_entry(data, "observation_space", path, budget)
            stored_act = _decode_sb3_entry(data, "action_space", path, budget)
            _check_spaces(path, stored_obs, stored_act, obs, act)
            data_kwargs, kwargs = dict(kwargs), _build_kwargs(policy_class, kwargs, data)
            expected = _network_shapes(policy_class, stored_obs, stored_act, kwargs, path, data_kwargs)
            # Weights that fit a network hold at least its bytes: bounding them bounds the network.
            network = sum(math.prod(shape) * size for shape, size in expected.values())
            state = _read_weights(z, path, network, limits)
        _check_weight_shapes(
            policy_class, {k: shape for k, (shape, _) in expected.items()}, state, path, data_kwargs
        )
    try:
        policy = policy_class(stored_obs, stored_act, **kwargs)
    except Exception as e:
        raise _rebuild_error(policy_class, path, data_kwargs, e) from e
    try:
        policy.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"the weights in {path} (policy.pth) do not fit the {policy_class.__name__} its data describes: "
            f"{shorten(str(e), 1000)}"
        ) from e
    policy.set_training_mode(False)
    if getattr(policy, "use_sde", False) and hasattr(policy, "reset_noise"):
        policy.reset_noise()
    return SB3Policy(policy, obs, act, device=device, deterministic=deterministic, name=name)


def _check_policy(policy_class: Any, kwargs: Any, path: Path) -> None:
    if not (isinstance(policy_class, type) and issubclass(policy_class, BasePolicy)):
        raise CheckpointError(
            f"SB3 model {path}: policy_class {short_repr(policy_class)} is not a Stable-Baselines3 policy "
            "class"
        )
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"SB3 model {path}: policy_kwargs is {type(kwargs).__name__}, not a mapping")


def _build_kwargs(policy_class: type, kwargs: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The policy's constructor arguments, as the algorithm passes them (``_setup_model``): most policies
    take an lr schedule and on-policy ones ``use_sde``; ARS policies take neither."""
    kwargs = dict(kwargs)
    params = inspect.signature(policy_class.__init__).parameters
    use_sde = data.get("use_sde")
    if isinstance(use_sde, bool) and "use_sde" in params:
        kwargs.setdefault("use_sde", use_sde)
    if "lr_schedule" in params:
        kwargs["lr_schedule"] = _frozen_lr
    return kwargs

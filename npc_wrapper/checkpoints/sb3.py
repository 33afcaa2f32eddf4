"""Stable-Baselines3 model zips as NPC policies, loaded without unpickling unless trusted.

The policy is rebuilt from the zip's own data (policy class, keyword arguments, spaces) and its
``policy.pth`` weights, for any algorithm whose policy class comes with SB3 or sb3-contrib; it
runs as an :class:`~npc_wrapper.npcs.policies.SB3Policy`.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file

from npc_wrapper.checkpoints.safe_pickle import refused_global, safe_loads, torch_load
from npc_wrapper.errors import CheckpointError, corrupt_checkpoint
from npc_wrapper.npcs.policies import NPCPolicy, SB3Policy, observation_fits

__all__ = ["load_sb3"]


def _decode_sb3_entry(data: Mapping[str, Any], key: str, path: Path) -> Any:
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
    except (ValueError, TypeError) as e:
        raise corrupt_checkpoint(f"{path} (entry {key!r})", e) from e
    return safe_loads(raw, f"SB3 model {path}: its {key!r}")


def _frozen_lr(progress_remaining: float) -> float:
    """Learning-rate schedule for rebuilt policies: NPCs never train."""
    return 0.0


def _check_spaces(path: Path, stored_obs: Any, stored_act: Any, obs: spaces.Space, act: spaces.Space) -> None:
    if not isinstance(stored_obs, spaces.Space) or not isinstance(stored_act, spaces.Space):
        raise CheckpointError(f"SB3 model {path} does not record its observation and action spaces")
    if not (observation_fits(stored_obs, obs) and stored_act == act):
        raise CheckpointError(
            f"checkpoint {path} does not fit the NPC agents. It was trained on\n  observation space "
            f"{stored_obs}\n  action space      {stored_act}\nbut the NPC agents it should drive have\n  "
            f"observation space {obs}\n  action space      {act}\nUse it for agents with the spaces it was "
            f"trained on (an npc={{pattern: uri}} mapping picks agents), or train a checkpoint on these "
            "agents (make_vec_env(..., training_agents=[...]))"
        )


def _rebuild_error(policy_class: type, path: Any, data_kwargs: Any, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot rebuild the {policy_class.__name__} of SB3 model {path} with policy_kwargs "
        f"{data_kwargs}: {type(e).__name__}: {e}"
    )


def _check_weight_shapes(
    policy_class: type,
    obs: spaces.Space,
    act: spaces.Space,
    kwargs: dict[str, Any],
    state: Any,
    path: Path,
    data_kwargs: dict[str, Any],
) -> None:
    """Compare the weights with the network the data describes before building it for real.

    An untrusted ``policy_kwargs`` (``net_arch=[60000, 60000]``) would otherwise allocate and
    initialise a huge network before the weights show it is wrong. The skeleton is built on the
    meta device, which allocates nothing.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"the weights in {path} (policy.pth) are a {type(state).__name__}, not a state_dict"
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
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
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
            f"(policy_kwargs {data_kwargs}): {'; '.join(problems[:5])}"
        )


def load_sb3(
    path: Path,
    obs: spaces.Space,
    act: spaces.Space,
    *,
    trusted: bool,
    device: Any,
    deterministic: bool,
    name: str,
) -> NPCPolicy:
    """The NPC policy of the SB3 model zip at ``path``, rebuilt for the NPC agents' spaces.

    Untrusted: the data entries are decoded by the allow-list (:func:`safe_loads`), the weights by
    ``torch.load(weights_only=True)``, and their shapes are checked against the network the data
    describes before it is built. Trusted: SB3's own loader.

    :param obs: the NPC agents' observation space
    :param act: the NPC agents' action space
    :param trusted: allow pickled code (SB3's own loader)
    :param device: where the policy runs
    :param deterministic: greedy actions
    :param name: the NPC's name in episode infos
    """
    if trusted:
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
            raise CheckpointError(f"cannot load SB3 model {path} (trusted): {type(e).__name__}: {e}") from e
        data = data or {}
        if "policy" not in params:
            raise CheckpointError(f"SB3 model {path} has no policy weights (policy.pth)")
        state = params["policy"]
        policy_class, kwargs = data.get("policy_class"), data.get("policy_kwargs") or {}
        stored_obs, stored_act = data.get("observation_space"), data.get("action_space")
    else:
        try:
            with zipfile.ZipFile(path) as z:
                data = json.loads(z.read("data").decode("utf-8"))
                weights = z.read("policy.pth")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise corrupt_checkpoint(path, e) from e
        policy_class = _decode_sb3_entry(data, "policy_class", path)
        kwargs = _decode_sb3_entry(data, "policy_kwargs", path) or {}
        stored_obs = _decode_sb3_entry(data, "observation_space", path)
        stored_act = _decode_sb3_entry(data, "action_space", path)
        state = torch_load(io.BytesIO(weights), f"{path} (policy.pth)", trusted=False)
    if not (isinstance(policy_class, type) and issubclass(policy_class, BasePolicy)):
        raise CheckpointError(
            f"SB3 model {path}: policy_class {policy_class!r} is not a Stable-Baselines3 policy class"
        )
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"SB3 model {path}: policy_kwargs is {type(kwargs).__name__}, not a mapping")
    _check_spaces(path, stored_obs, stored_act, obs, act)

    data_kwargs, kwargs = dict(kwargs), dict(kwargs)
    # Build it as the algorithm does (``_setup_model``): most policies take an lr schedule and
    # on-policy ones ``use_sde``; ARS policies take neither.
    params = inspect.signature(policy_class.__init__).parameters
    use_sde = data.get("use_sde")
    if isinstance(use_sde, bool) and "use_sde" in params:
        kwargs.setdefault("use_sde", use_sde)
    if "lr_schedule" in params:
        kwargs["lr_schedule"] = _frozen_lr
    if not trusted:
        _check_weight_shapes(policy_class, stored_obs, stored_act, kwargs, state, path, data_kwargs)
    try:
        policy = policy_class(stored_obs, stored_act, **kwargs)
    except Exception as e:
        raise _rebuild_error(policy_class, path, data_kwargs, e) from e
    try:
        policy.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"the weights in {path} (policy.pth) do not fit the {policy_class.__name__} its data describes: "
            f"{e}"
        ) from e
    policy.set_training_mode(False)
    if getattr(policy, "use_sde", False) and hasattr(policy, "reset_noise"):
        policy.reset_noise()
    return SB3Policy(policy, obs, act, device=device, deterministic=deterministic, name=name)

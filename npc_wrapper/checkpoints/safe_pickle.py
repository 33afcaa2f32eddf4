"""Reading pickles from untrusted checkpoints without running code from them.

Two mechanisms. :func:`safe_loads` decodes the cloudpickled entries of an SB3 model's ``data``
file (policy class, its keyword arguments, spaces) with an allow-list unpickler: it *calls* only
gymnasium space and numpy array constructors, and only *names* Stable-Baselines3, sb3-contrib,
``torch.nn`` and ``torch.optim`` classes (a named class cannot be called by the pickle).
:func:`torch_load` reads weights with ``torch.load(weights_only=True)`` and, for what that refuses,
needs ``trusted`` before it runs the full unpickler.
"""

from __future__ import annotations

import importlib
import io
import pickle
import re
import warnings
from typing import Any

import torch

from npc_wrapper.errors import TRUST_HINT, TrustRequiredError, corrupt_checkpoint

__all__ = ["refused_global", "safe_loads", "torch_load"]


class _Disallowed(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Ref:
    """A class named by a pickle, held without being callable (so the pickle cannot call it)."""

    __slots__ = ("obj",)

    def __init__(self, obj: type) -> None:
        object.__setattr__(self, "obj", obj)

    def __setattr__(self, key: str, value: Any) -> None:
        raise pickle.UnpicklingError("class references are read-only")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("class references are read-only")


#: Globals that may be *called* while unpickling: gymnasium spaces and numpy array/RNG rebuilding.
_CONSTRUCTIBLE = frozenset(
    {
        ("gymnasium.spaces.box", "Box"),
        ("gymnasium.spaces.discrete", "Discrete"),
        ("gymnasium.spaces.multi_discrete", "MultiDiscrete"),
        ("gymnasium.spaces.multi_binary", "MultiBinary"),
        ("gymnasium.spaces.dict", "Dict"),
        ("gymnasium.spaces.tuple", "Tuple"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._pcg64", "PCG64DXSM"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random._philox", "Philox"),
        ("numpy.random._sfc64", "SFC64"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("collections", "OrderedDict"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
    }
)


def _referable(module: str, name: str) -> type | None:
    """A class the pickle may *name* (not call): torch modules/optimizers from SB3, sb3-contrib or torch."""
    root = module.split(".")[0]
    if root not in ("stable_baselines3", "sb3_contrib", "torch"):
        return None
    if root == "torch" and not module.startswith(("torch.nn.", "torch.optim")):
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    if isinstance(obj, type) and issubclass(obj, (torch.nn.Module, torch.optim.Optimizer)):
        return obj
    return None


class _SafeUnpickler(pickle.Unpickler):
    """Decodes the cloudpickled entries of an SB3 ``data`` file without running code from it."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CONSTRUCTIBLE:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core.* aliases under numpy 2
                obj: Any = importlib.import_module(module)
            return getattr(obj, name)
        ref = _referable(module, name)
        if ref is not None:
            return _Ref(ref)
        raise _Disallowed(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Disallowed(f"persistent id {pid!r}")


def _unref(obj: Any) -> Any:
    if isinstance(obj, _Ref):
        return obj.obj
    if isinstance(obj, dict):
        return {k: _unref(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unref(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unref(v) for v in obj)
    return obj


def safe_loads(raw: bytes, what: str) -> Any:
    """Unpickle ``raw`` with the allow-list: spaces and arrays rebuilt, SB3/torch classes only named.

    :param raw: the pickle
    :param what: what holds it, for errors (``"SB3 model PATH: its 'policy_class'"``)
    :raises TrustRequiredError: the pickle needs more than the allow-list rebuilds
    """
    try:
        return _unref(_SafeUnpickler(io.BytesIO(raw)).load())
    except _Disallowed as e:
        raise TrustRequiredError(
            f"{what} refers to {e.name}, which cannot be rebuilt without running code "
            "stored in the file (only Stable-Baselines3, sb3-contrib, torch.nn/torch.optim and gymnasium "
            f"space classes are rebuilt safely). If you trust this checkpoint, {TRUST_HINT}"
        ) from e
    except Exception as e:  # anything beyond naming classes and rebuilding spaces needs the real unpickler
        raise TrustRequiredError(
            f"{what} entry cannot be decoded safely ({type(e).__name__}: {e}). If you "
            f"trust this checkpoint, {TRUST_HINT}"
        ) from e


def refused_global(e: BaseException) -> tuple[str, str | None] | None:
    """What ``torch.load(weights_only=True)`` refused to unpickle: the global, and the module when torch
    blocks that module outright (``os``, ``posix``, ``sys``...)."""
    blocked = re.search(r"unsupported GLOBAL ([\w.]+) whose module ([\w.]+) is blocked", str(e))
    if blocked:
        return blocked.group(1), blocked.group(2)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    return (found.group(1), None) if found else None


def torch_load(source: Any, label: str, trusted: bool) -> Any:
    """``torch.load(weights_only=True)``; a pickled object needs ``trusted`` (then the full unpickler).

    :param source: a path or a file object
    :param label: names the file in errors
    :param trusted: allow the full unpickler for what the safe one refuses
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = refused_global(e)
        if not refused:
            raise corrupt_checkpoint(label, e) from e
        if not trusted:
            name, blocked = refused
            why = f" from module {blocked}, which torch's safe loader blocks outright" if blocked else ""
            raise TrustRequiredError(
                f"{label} holds pickled code (it refers to {name}{why}), and loading it would run code "
                "stored in the file. Save a state_dict instead (torch.save(model.state_dict(), path) and "
                f"name the class with policy_class), or, if you trust this checkpoint, {TRUST_HINT}"
            ) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError... for damaged files
        raise corrupt_checkpoint(label, e) from e
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        return torch.load(source, map_location="cpu", weights_only=False)
    except Exception as e:
        raise corrupt_checkpoint(label, e) from e

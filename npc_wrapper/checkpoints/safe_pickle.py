"""Reading pickles from untrusted checkpoints without running code from them, within limits.

Two mechanisms. :func:`safe_loads` decodes the cloudpickled entries of an SB3 model's ``data`` file
(policy class, its keyword arguments, spaces) with an allow-list unpickler built on Python's own
pickle machine, so that every operation is checked:

* it *calls* only gymnasium space and numpy array constructors, after charging what each would
  allocate to the checkpoint's :class:`~npc_wrapper.checkpoints.bounded.Budget` (the bounds of a
  ``Box`` of shape (11000, 11000) are refused before they exist);
* it only *names* Stable-Baselines3, sb3-contrib, ``torch.nn`` and ``torch.optim`` classes (a named
  class cannot be called by the pickle), and sets the state of objects it made only;
* it stops after :data:`~npc_wrapper.checkpoints.bounded.MAX_PICKLE_OPS` operations and refuses values
  nested deeper than :data:`~npc_wrapper.checkpoints.bounded.MAX_DEPTH`, reference cycles, and spaces
  without their attributes. Shared references stay shared: a 264-byte pickle of 2**24 shared leaves
  is 25 objects, never copied out.

:func:`torch_load` reads weights with ``torch.load(weights_only=True)`` and, for what that refuses,
needs ``trusted`` before it runs the full unpickler.
"""

from __future__ import annotations

import importlib
import inspect
import io
import math
import pickle
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from npc_wrapper.checkpoints.bounded import MAX_DEPTH, MAX_PICKLE_OPS, Budget
from npc_wrapper.errors import (
    TRUST_HINT,
    CheckpointError,
    CheckpointLimitError,
    TrustRequiredError,
    corrupt_checkpoint,
    shorten,
)

__all__ = ["refused_global", "safe_loads", "torch_load"]


class _Disallowed(pickle.UnpicklingError):
    """The pickle asks for something the allow-list does not rebuild: only the real unpickler would."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = shorten(name, 120)


class _Limit(pickle.UnpicklingError):
    """The pickle passes a limit (operations, nesting)."""


class _Malformed(pickle.UnpicklingError):
    """The pickle decodes to something no checkpoint holds (a space without its attributes, a cycle)."""


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


def _count(shape: Any) -> int:
    """The number of elements of ``shape`` (an int or a sequence of them), as declared."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise _Malformed(f"shape {shorten(repr(dims), 80)} is not a tuple of sizes")
    return math.prod(int(d) for d in dims)


def _itemsize(dtype: Any) -> int:
    return int(np.dtype(dtype).itemsize)


_BOX = inspect.signature(spaces.Box)


def _box_bytes(*args: Any, **kwargs: Any) -> int:
    """A Box's bounds at their declared shape (broadcast from scalars), and their masks."""
    given = _BOX.bind(*args, **kwargs).arguments
    shape = given.get("shape")
    n = _count(shape) if shape is not None else max(np.size(given["low"]), np.size(given["high"]))
    return n * (2 * _itemsize(given.get("dtype", np.float32)) + 2)


def _ndarray_bytes(shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> int:
    return _count(shape) * _itemsize(dtype)


#: What calling each constructible class allocates, from its arguments (the rest allocate nothing sized).
_CLASS_BYTES: dict[type, Callable[..., int]] = {
    spaces.Box: _box_bytes,
    spaces.MultiBinary: lambda n, *args, **kwargs: _count(n),
    spaces.MultiDiscrete: lambda nvec, *args, **kwargs: 16 * int(np.size(nvec)),
    np.ndarray: _ndarray_bytes,
}

#: What calling each constructible function allocates.
_FUNCTION_BYTES: dict[str, Callable[..., int]] = {
    "_reconstruct": lambda subtype, shape, dtype: _count(shape) * _itemsize(dtype),
    "_frombuffer": lambda buf, dtype, shape, order: _count(shape) * _itemsize(dtype),
    "scalar": lambda dtype, *args: _itemsize(dtype),
}


def _array_state_bytes(state: Any) -> int:
    """What ``ndarray.__setstate__((version,) shape, dtype, is_fortran, data)`` allocates."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _Malformed("an array's state is not (shape, dtype, is_fortran, data)")
    return _count(state[-4]) * _itemsize(state[-3])


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` for what protocols 0 and 1 write for plain objects: ``object.__new__``
    (any other base would run that base's constructor with arguments from the pickle)."""
    if base is not object or state is not None:
        raise _Disallowed(f"copyreg._reconstructor with base {shorten(repr(base), 80)}")
    return object.__new__(cls)


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


def _counted(op: Callable[[Any], None]) -> Callable[[Any], None]:
    def counted(self: _SafeUnpickler) -> None:
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise _Limit(f"takes more than {MAX_PICKLE_OPS} pickle operations (the limit)")
        op(self)

    return counted


class _SafeUnpickler(pickle._Unpickler):  # the Python machine: each operation can be checked
    """Decodes the cloudpickled entries of an SB3 ``data`` file without running code from it.

    :param budget: what the spaces and arrays it builds may allocate, shared by the entries of one file
    """

    def __init__(self, raw: bytes, budget: Budget, what: str) -> None:
        super().__init__(io.BytesIO(raw))
        self.budget, self.what, self.ops = budget, what, 0
        #: Objects ``find_class`` returned: the pickle may call allowed ones, never set their state.
        self.globals: dict[int, Any] = {}
        #: Nesting of the tuples made so far (kept alive with them): a deep tuple would overflow the C
        #: stack when hashed, so none is made.
        self.tuples: dict[int, tuple[tuple[Any, ...], int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CONSTRUCTIBLE:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core.* aliases under numpy 2
                obj: Any = getattr(importlib.import_module(module), name)
            if (module, name) == ("copyreg", "_reconstructor"):
                obj = _reconstructor
            elif name in _FUNCTION_BYTES:
                obj = self._charging(obj, _FUNCTION_BYTES[name], f"{module}.{name}")
        else:
            ref = _referable(module, name)
            if ref is None:
                raise _Disallowed(f"{module}.{name}")
            obj = _Ref(ref)
        self.globals[id(obj)] = obj
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise _Disallowed(f"persistent id {shorten(repr(pid), 80)}")

    def _charging(self, func: Callable[..., Any], nbytes: Callable[..., int], name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.budget.charge(nbytes(*args, **kwargs), f"{self.what} ({name})")
            return func(*args, **kwargs)

        return call

    def _call(self, func: Any, args: Any, kwargs: Any) -> Any:
        if isinstance(func, _Ref):
            raise _Disallowed(f"a call of {func.obj.__module__}.{func.obj.__qualname__}")
        if id(func) not in self.globals or not callable(func):
            raise _Disallowed(f"a call of a {type(func).__name__}")
        if func in _CLASS_BYTES:
            self.budget.charge(_CLASS_BYTES[func](*args, **kwargs), f"{self.what} ({func.__name__})")
        return func(*args, **kwargs)

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if not isinstance(cls, type) or id(cls) not in self.globals:
            raise _Disallowed(f"creating a {type(cls).__name__}")
        if cls is np.ndarray:
            self.budget.charge(_ndarray_bytes(*args, **kwargs), f"{self.what} (numpy.ndarray)")
        return cls.__new__(cls, *args, **kwargs)

    # -------------------------------------------------------------------- the checked operations
    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, {})

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args, {})

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args, kwargs)

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ (protocols 0 and 1)
        self.append(self._call(klass, args, {}) if args else self._new(klass, (), {}))

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        if id(inst) in self.globals or isinstance(inst, type):
            raise _Disallowed(f"setting the state of {shorten(repr(inst), 80)}")
        if isinstance(inst, np.ndarray):
            self.budget.charge(_array_state_bytes(state), f"{self.what} (numpy.ndarray)")
        super().load_build()

    def _container(self, kind: type, op: str) -> Any:
        obj = self.stack[-1]
        if not isinstance(obj, kind):
            raise _Malformed(f"{op} on a {type(obj).__name__}")
        return obj

    def load_append(self) -> None:
        value = self.stack.pop()
        self._container(list, "APPEND").append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._container(list, "APPENDS").extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._container(dict, "SETITEM")[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._container(dict, "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._container(set, "ADDITEMS").update(items)

    def _track(self, t: tuple[Any, ...]) -> tuple[Any, ...]:
        depth = 1
        for item in t:
            if type(item) is tuple and (known := self.tuples.get(id(item))) is not None and known[0] is item:
                depth = max(depth, known[1] + 1)
        if depth > MAX_DEPTH:
            raise _Limit(f"nests tuples more than {MAX_DEPTH} deep (the limit)")
        self.tuples[id(t)] = (t, depth)
        return t

    def load_tuple(self) -> None:
        items = self.pop_mark()  # before ``self.append`` is looked up: popping the mark replaces it
        self.append(self._track(tuple(items)))

    def load_tuple1(self) -> None:
        self.stack[-1] = self._track((self.stack[-1],))

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self._track((self.stack[-2], self.stack[-1]))]

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self._track((self.stack[-3], self.stack[-2], self.stack[-1]))]


_SafeUnpickler.dispatch = {
    code: _counted(getattr(_SafeUnpickler, op.__name__)) for code, op in pickle._Unpickler.dispatch.items()
}


# ------------------------------------------------------------------------------ the decoded value
#: The attributes each space must have (a space made without its constructor has none).
_SPACE_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    spaces.Box: ("low", "high", "bounded_below", "bounded_above"),
    spaces.Discrete: ("n", "start"),
    spaces.MultiDiscrete: ("nvec", "start"),
    spaces.MultiBinary: ("n",),
    spaces.Dict: ("spaces",),
    spaces.Tuple: ("spaces",),
}


def _space_problem(space: spaces.Space) -> str | None:
    """What is wrong with a decoded space, if anything: missing attributes, bounds of the wrong shape."""
    kind = next((k for k in _SPACE_ATTRIBUTES if isinstance(space, k)), None)
    if kind is None:
        return f"a {type(space).__name__}, which the allow-list does not rebuild"
    attributes = vars(space)
    missing = [a for a in ("_shape", "dtype", *_SPACE_ATTRIBUTES[kind]) if a not in attributes]
    if missing:
        return f"a {kind.__name__} without its attributes {missing}"
    shape = attributes["_shape"]
    if shape is not None and not (isinstance(shape, tuple) and all(isinstance(d, (int, np.integer)) for d in shape)):
        return f"a {kind.__name__} whose shape is not a tuple of sizes"
    if isinstance(space, spaces.Box):
        for name in ("low", "high", "bounded_below", "bounded_above"):
            value = attributes[name]
            if not isinstance(value, np.ndarray) or value.shape != shape:
                return f"a Box whose {name} is not an array of its shape {shape}"
    if isinstance(space, spaces.Dict) and not (
        isinstance(space.spaces, dict) and all(isinstance(s, spaces.Space) for s in space.spaces.values())
    ):
        return "a Dict whose spaces are not a mapping of spaces"
    if isinstance(space, spaces.Tuple) and not (
        isinstance(space.spaces, tuple) and all(isinstance(s, spaces.Space) for s in space.spaces)
    ):
        return "a Tuple whose spaces are not a tuple of spaces"
    return None


def _children(obj: Any) -> list[Any] | None:
    """What ``obj`` holds, for the walk over the decoded value (``None``: a leaf)."""
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, spaces.Space):
        return list(vars(obj).values())
    return None


def _rebuilt(obj: Any, done: dict[int, Any]) -> Any:
    """``obj`` with its items replaced by theirs in ``done`` (the same object if none changed)."""
    if isinstance(obj, dict):
        items = [(done[id(k)], done[id(v)]) for k, v in obj.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, obj.items(), strict=True)):
            return obj
        return type(obj)(items)
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [done[id(v)] for v in obj]
        if all(v is v0 for v, v0 in zip(items, obj, strict=True)):
            return obj
        return type(obj)(items)
    if isinstance(obj, spaces.Space):
        problem = _space_problem(obj)
        if problem is not None:
            raise _Malformed(problem)
    return obj


def _resolve(root: Any) -> Any:
    """The decoded value with named classes in place of their references, each object visited once
    (shared references stay shared), walked without recursion; refuses nesting deeper than
    :data:`MAX_DEPTH`, reference cycles and malformed spaces."""
    done: dict[int, Any] = {}
    path: set[int] = set()  # the objects being walked: an object met again among them is a cycle
    stack: list[tuple[Any, list[Any] | None]] = [(root, None)]
    while stack:
        obj, kids = stack.pop()
        key = id(obj)
        if kids is not None:  # its children are done
            path.discard(key)
            done[key] = _rebuilt(obj, done)
            continue
        if key in done:
            continue
        if key in path:
            raise _Malformed("a value that contains itself (a reference cycle)")
        if isinstance(obj, _Ref):
            done[key] = obj.obj
            continue
        found = _children(obj)
        if found is None:
            done[key] = obj
            continue
        path.add(key)
        if len(path) > MAX_DEPTH:
            raise _Limit(f"nests values more than {MAX_DEPTH} deep (the limit)")
        stack.append((obj, found))
        stack.extend((kid, None) for kid in found)
    return done[id(root)]


def safe_loads(raw: bytes, what: str, budget: Budget) -> Any:
    """Unpickle ``raw`` with the allow-list: spaces and arrays rebuilt, SB3/torch classes only named.

    :param raw: the pickle
    :param what: what holds it, for errors (``"SB3 model PATH: its 'policy_class'"``)
    :param budget: what the spaces and arrays it builds may allocate (shared by one file's entries)
    :raises TrustRequiredError: the pickle needs more than the allow-list rebuilds
    :raises CheckpointLimitError: it passes a limit (allocation, operations, nesting)
    :raises CheckpointError: it decodes to something no checkpoint holds
    """
    try:
        return _resolve(_SafeUnpickler(raw, budget, what).load())
    except CheckpointError:
        raise
    except _Disallowed as e:
        raise TrustRequiredError(
            f"{what} refers to {e.name}, which cannot be rebuilt without running code "
            "stored in the file (only Stable-Baselines3, sb3-contrib, torch.nn/torch.optim and gymnasium "
            f"space classes are rebuilt safely). If you trust this checkpoint, {TRUST_HINT}"
        ) from e
    except (_Limit, RecursionError) as e:
        detail = str(e) if isinstance(e, _Limit) else f"nests values too deep (more than {MAX_DEPTH})"
        raise CheckpointLimitError(f"{what} {detail}: it is malformed; nothing was loaded") from e
    except _Malformed as e:
        raise CheckpointError(f"{what} is malformed: it decodes to {e}; re-save the model") from e
    except Exception as e:  # anything beyond naming classes and rebuilding spaces needs the real unpickler
        raise TrustRequiredError(
            f"{what} entry cannot be decoded safely ({type(e).__name__}: {shorten(str(e), 200)}). If you "
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

"""NPC policies from checkpoints: URIs, selectors, format detection and safe loading.

:func:`load_npc` turns a URI or a :class:`~npc_wrapper.config.CheckpointConfig` into an
:class:`~npc_wrapper.policies.NPCPolicy` (one checkpoint) or an :class:`~npc_wrapper.pool.NPCPool`
(several, when a selector picks more than one).

URIs: ``file://PATH`` or a plain ``PATH`` (a checkpoint file, or a directory of them),
``wandb://entity/project/[type/]name[:version]``, ``"random"``, ``"noop"``, ``"pkg.module:callable"``.

Selectors (``type``): ``specific`` (the file or version named), ``latest`` (newest ``range``),
``top`` (best ``range`` by ``metadata[metric]``), ``rand`` (``range`` at random, seeded), ``all``.
File metadata comes from a sidecar JSON (``<file>.json`` or ``<stem>.json``) or, for SB3 models,
from the model itself (``num_timesteps``); wandb metadata is the artifact's metadata.

Formats, detected from the file's content: Stable-Baselines3 ``.zip`` (any algorithm whose policy
class comes with SB3 or sb3-contrib), TorchScript (``trusted`` only: it is code), and ``torch.save``
state_dicts with ``policy_class``. Nothing is unpickled from a checkpoint unless ``trusted``:
state_dicts load with ``torch.load(weights_only=True)``, and an SB3 model's pickled entries (policy
class, its keyword arguments, spaces) are decoded by an allow-list unpickler that only rebuilds
gymnasium spaces and numpy arrays and only *names* SB3/sb3-contrib/``torch.nn``/``torch.optim``
classes. Anything else is refused with an error saying how to opt in.
"""

from __future__ import annotations

import base64
import functools
import importlib
import inspect
import io
import json
import logging
import math
import os
import pickle
import re
import types
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import torch
from gymnasium import spaces

from npc_wrapper.config import IMPORT_SPEC, CheckpointConfig
from npc_wrapper.policies import (
    CallablePolicy,
    ConstantPolicy,
    NPCPolicy,
    RandomPolicy,
    SB3Policy,
    TorchPolicy,
    check_npc_policy,
    observation_fits,
)
from npc_wrapper.pool import NPCPool

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "Candidate",
    "CheckpointError",
    "ParsedURI",
    "TrustRequiredError",
    "detect_format",
    "load_npc",
    "parse_uri",
    "select_checkpoints",
]

logger = logging.getLogger(__name__)

#: File suffixes treated as checkpoints when a URI names a directory.
CHECKPOINT_SUFFIXES = (".zip", ".pt", ".pth", ".ckpt", ".jit", ".ts", ".bin")
#: Metadata keys that order checkpoints by training progress (first one every candidate has wins).
_STEP_KEYS = ("step", "global_step", "num_timesteps", "timesteps", "agent_step", "epoch")
_FORMAT_NAMES = {
    "sb3": "Stable-Baselines3 model (.zip)",
    "torchscript": "TorchScript module",
    "torch": "torch.save archive",
    "torch-legacy": "torch.save file (legacy pickle format)",
}
#: How loader errors say to opt in to trust; command-line front ends replace it with their own flag.
TRUST_HINT = (
    "pass trusted=True (in code) or set trusted: true (checkpoint_npc.trusted in config); only do this for "
    "checkpoints you trust, because loading then runs code stored in the file"
)


class CheckpointError(ValueError):
    """A checkpoint could not be found, selected, read or fitted to the NPC agents."""


class TrustRequiredError(CheckpointError):
    """Loading this checkpoint would run code stored in it; it needs ``trusted=True``."""


def _corrupt(label: str | os.PathLike[str], e: BaseException) -> CheckpointError:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return CheckpointError(
        f"cannot read checkpoint {label}: the file is corrupt or truncated "
        f"({type(e).__name__}{': ' + detail if detail else ''}); re-save or re-download it. Nothing was "
        "loaded"
    )


# ---------------------------------------------------------------------------------------- URIs
@dataclass(frozen=True)
class ParsedURI:
    """What a ``uri`` names.

    :param kind: ``"scripted"`` (random/noop), ``"import"`` (``pkg.module:callable``), ``"file"``
        (a file or directory) or ``"wandb"``
    :param value: the scripted name, the import spec, a ``Path`` or a ``WandbURI``
    :param text: the URI as given
    """

    kind: str
    value: Any
    text: str


def parse_uri(uri: str | os.PathLike[str]) -> ParsedURI:
    """Classify a ``uri``: scripted NPC, importable callable, local path or wandb artifact."""
    text = os.fspath(uri)
    if text in ("random", "noop"):
        return ParsedURI("scripted", text, text)
    if text.startswith("wandb://"):
        from npc_wrapper.wandb_source import parse_wandb_uri

        return ParsedURI("wandb", parse_wandb_uri(text), text)
    if text.startswith("file:/"):
        return ParsedURI("file", _file_uri_path(text), text)
    scheme = re.match(r"^([A-Za-z][\w+.-]*)://", text)
    if scheme:
        raise CheckpointError(
            f"unsupported URI scheme {scheme.group(1)!r}:// in {text!r}; use file://PATH, a plain path, "
            "wandb://entity/project/[type/]name[:version], 'random', 'noop' or 'pkg.module:callable'"
        )
    path = Path(text).expanduser()
    if not path.exists() and IMPORT_SPEC.match(text):
        return ParsedURI("import", text, text)
    return ParsedURI("file", path, text)


def _file_uri_path(text: str) -> Path:
    """The path of ``file:///abs``, ``file://localhost/abs``, ``file:/abs`` (RFC 8089) or ``file://rel``."""
    rest = text.removeprefix("file://") if text.startswith("file://") else text.removeprefix("file:")
    if rest == "localhost" or rest.startswith("localhost/"):
        rest = rest.removeprefix("localhost")
    if not rest:
        # An empty path would otherwise be the current directory.
        raise CheckpointError(
            f"{text!r} names no file; give file:///abs/path (or file://localhost/abs/path, file:/abs/path) "
            "or file://rel/path"
        )
    return Path(unquote(rest)).expanduser()


def _import_object(spec: str, what: str) -> Any:
    """Import ``pkg.module:attr`` (``attr`` may be dotted)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise CheckpointError(
            f"cannot import module {module_name!r} named by {what} {spec!r} ({e}); make sure it is installed "
            "or on PYTHONPATH, or, if you meant a file, check the path exists"
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise CheckpointError(
                f"module {module_name!r} has no attribute {attr!r} (named by {what} {spec!r})"
            ) from e
    return obj


# ----------------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    """One checkpoint a selector can pick.

    :param name: the NPC's name in episode infos (file stem, or ``name:vN`` for wandb)
    :param source: where it comes from (file path or pinned wandb URI), for logs and errors
    :param metadata: sidecar JSON / embedded / artifact metadata
    :param version: ``N`` of a wandb ``vN``
    :param mtime: file modification time
    :param number: the last integer in the file name (``ckpt_0300.pt`` -> 300)
    :param fetch: returns the local file (or directory) holding the checkpoint, downloading if needed
    """

    name: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    mtime: float | None = None
    number: int | None = None
    fetch: Callable[[], Path] | None = None

    def local_path(self) -> Path:
        """The local file or directory of this checkpoint (downloads a wandb artifact once)."""
        if self.fetch is None:
            return Path(self.source)
        return self.fetch()


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{what} {path} is not valid JSON ({type(e).__name__}: {e}); fix or remove it"
        ) from e


def sidecar_metadata(path: Path) -> dict[str, Any]:
    """Metadata from ``<file>.json`` or ``<stem>.json`` next to the checkpoint (the first that exists)."""
    for side in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if side.is_file():
            meta = _read_json(side, f"the metadata file of checkpoint {path.name}:")
            if not isinstance(meta, dict):
                raise CheckpointError(
                    f"metadata file {side} must hold a JSON object, got {type(meta).__name__}"
                )
            return meta
    return {}


def _embedded_metadata(path: Path) -> dict[str, Any]:
    """``num_timesteps`` of an SB3 model (read from its JSON, nothing unpickled), as step/epoch fallbacks."""
    if path.suffix.lower() != ".zip":
        return {}
    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data").decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        logger.debug("no embedded metadata in %s: %s", path, e)
        return {}
    n = data.get("num_timesteps") if isinstance(data, dict) else None
    if isinstance(n, int) and not isinstance(n, bool):
        return {"num_timesteps": n, "step": n, "epoch": n}
    return {}


def _file_candidate(path: Path) -> Candidate:
    meta = sidecar_metadata(path)
    for key, value in _embedded_metadata(path).items():
        meta.setdefault(key, value)
    numbers = re.findall(r"\d+", path.stem)
    return Candidate(
        name=path.stem,
        source=str(path),
        metadata=meta,
        mtime=path.stat().st_mtime,
        number=int(numbers[-1]) if numbers else None,
        fetch=lambda p=path: p,
    )


def _file_candidates(path: Path, uri: str) -> list[Candidate]:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (from uri {uri!r}); check the path")
    if path.is_file():
        return [_file_candidate(path)]
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in CHECKPOINT_SUFFIXES
    )
    if not files:
        present = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"directory {path} (from uri {uri!r}) holds no checkpoint files "
            f"({', '.join(CHECKPOINT_SUFFIXES)}); it has {present or 'nothing'}"
        )
    cands = [_file_candidate(p) for p in files]
    stems = [c.name for c in cands]
    if len(set(stems)) != len(stems):  # model.pt and model.zip: name them by file name
        for c, p in zip(cands, files, strict=True):
            c.name = p.name
    return cands


def _wandb_candidates(parsed: ParsedURI, cfg: CheckpointConfig) -> list[Candidate]:
    from npc_wrapper.wandb_source import WandbSource

    wuri = parsed.value
    source = WandbSource(cache_dir=cfg.cache_dir)
    if cfg.type == "specific":
        versions = [source.resolve(wuri)]
    else:
        if wuri.version is not None:
            raise CheckpointError(
                f"{wuri} names version {wuri.version!r}, but type {cfg.type!r} selects among all versions of "
                f"the artifact; drop ':{wuri.version}' from the uri, or use type: specific"
            )
        versions = source.list_versions(wuri)
    return [
        Candidate(
            name=av.name,
            source=str(av.pinned_uri),
            metadata=dict(av.metadata),
            version=av.version,
            fetch=functools.partial(source.fetch, av),
        )
        for av in versions
    ]


# ------------------------------------------------------------------------------------ selectors
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_finite(cands: list[Candidate], key: str, where: str) -> None:
    """NaN compares false with everything (a NaN metric would sort first), so it cannot rank."""
    bad = {c.name: c.metadata[key] for c in cands if not math.isfinite(c.metadata[key])}
    if bad:
        raise CheckpointError(
            f"metadata[{key!r}] is not a finite number for {list(bad)} in {where} ({bad}), so they cannot be "
            f"ordered; fix {key!r} in their sidecar JSON (<checkpoint>.json) or artifact metadata"
        )


def _recency(cands: list[Candidate], where: str) -> tuple[list[Candidate], str]:
    """``cands`` oldest to newest, and what the order is based on."""
    if all(c.version is not None for c in cands):
        return sorted(cands, key=lambda c: (c.version, c.name)), "artifact version"
    for key in _STEP_KEYS:
        if all(_is_number(c.metadata.get(key)) for c in cands):
            _check_finite(cands, key, where)
            return sorted(cands, key=lambda c: (c.metadata[key], c.name)), f"metadata {key!r}"
    if all(c.number is not None for c in cands):
        return sorted(cands, key=lambda c: (c.number, c.name)), "the number in the file name"
    return sorted(cands, key=lambda c: (c.mtime or 0.0, c.name)), "file modification time"


def _select(cands: list[Candidate], cfg: CheckpointConfig, where: str) -> list[Candidate]:
    n, k, kind = len(cands), cfg.range, cfg.type
    names = [c.name for c in cands]
    if kind == "specific":
        if n != 1:
            raise CheckpointError(
                f"{where} holds {n} checkpoints {names}; type 'specific' needs the uri to name one of them "
                "(a file, or a wandb version), or use type latest, top, rand or all to select among them"
            )
        return cands
    if kind in ("latest", "top", "rand") and k > n:
        raise CheckpointError(
            f"type {kind!r} with range={k} needs {k} checkpoints, but {where} holds {n}: {names}"
        )
    if kind == "latest":
        ordered, basis = _recency(cands, where)
        logger.info("NPC checkpoints in %s ordered by %s", where, basis)
        return ordered[::-1][:k]
    if kind == "top":
        metric = cfg.metric
        missing = [c.name for c in cands if metric not in c.metadata]
        have = len(cands) - len(missing)
        if have < k:
            keys = sorted({key for c in cands for key in c.metadata})
            raise CheckpointError(
                f"type 'top' with range={k} ranks by metadata[{metric!r}], but only {have} checkpoints in "
                f"{where} have it ({missing} do not); available metadata keys: {keys or 'none'}. "
                f"Set metric to one of them, lower range, or add {metric!r} to the checkpoints' sidecar JSON "
                "(<checkpoint>.json) or artifact metadata"
            )
        if missing:
            # Early checkpoints of a run often have no score yet (no episode had ended): rank the rest.
            logger.warning("type 'top': %s in %s have no %r and are not ranked", missing, where, metric)
            cands = [c for c in cands if metric in c.metadata]
        bad = [c.name for c in cands if not _is_number(c.metadata[metric])]
        if bad:
            raise CheckpointError(
                f"type 'top' needs numeric metadata[{metric!r}], but it is not a number for {bad} in {where}"
            )
        _check_finite(cands, metric, where)
        # Ties (win rates often tie) go to the newest, not to the first file name (step_200 before step_300).
        newest_first = _recency(cands, where)[0][::-1]
        return sorted(newest_first, key=lambda c: -float(c.metadata[metric]))[:k]
    if kind == "rand":
        rng = np.random.default_rng(cfg.seed)
        picked = rng.choice(n, size=k, replace=False)
        return [cands[i] for i in picked]
    ordered, _ = _recency(cands, where)  # "all": every checkpoint, oldest first
    return ordered


def _candidates_for(cfg: CheckpointConfig) -> tuple[ParsedURI, list[Candidate], str]:
    if cfg.uri is None:
        raise CheckpointError(
            "checkpoint_npc.uri is not set; give a wandb:// or file:// URI, a path, 'random', 'noop' or "
            "'pkg.module:callable'"
        )
    parsed = parse_uri(cfg.uri)
    if parsed.kind == "wandb":
        return parsed, _wandb_candidates(parsed, cfg), str(parsed.value)
    if parsed.kind == "file":
        return parsed, _file_candidates(parsed.value, parsed.text), str(parsed.value)
    return parsed, [], parsed.text


def _choose(cfg: CheckpointConfig) -> tuple[ParsedURI, list[Candidate]]:
    """Parse ``cfg.uri`` and apply the selector (scripted NPCs select nothing)."""
    parsed, cands, where = _candidates_for(cfg)
    if parsed.kind not in ("file", "wandb"):
        return parsed, []
    chosen = _select(cands, cfg, where)
    logger.info(
        "NPC checkpoints: selected %s of %d in %s (type=%s, range=%d%s)",
        [c.name for c in chosen],
        len(cands),
        where,
        cfg.type,
        cfg.range,
        f", metric={cfg.metric}" if cfg.type == "top" else "",
    )
    return parsed, chosen


def select_checkpoints(spec: str | os.PathLike[str] | CheckpointConfig) -> list[Candidate]:
    """The checkpoints ``spec`` selects, without loading them (wandb: without downloading).

    :param spec: a URI or a :class:`~npc_wrapper.config.CheckpointConfig`
    """
    parsed, chosen = _choose(_as_config(spec))
    if parsed.kind not in ("file", "wandb"):
        raise CheckpointError(
            f"{parsed.text!r} is a scripted NPC, not a checkpoint; there is nothing to select"
        )
    return chosen


# -------------------------------------------------------------------------------- format sniffing
def detect_format(path: str | os.PathLike[str]) -> str:
    """The checkpoint format of a file, from its content.

    :return: ``"sb3"``, ``"torchscript"``, ``"torch"`` (``torch.save`` archive) or ``"torch-legacy"``
    :raises CheckpointError: missing, empty, truncated or unrecognised files
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; a checkpoint file is needed here")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint file {path} is empty (0 bytes): the save or download did not complete"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise _corrupt(path, e) from e
        if "data" in names and "policy.pth" in names:
            return "sb3"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        raise CheckpointError(
            f"{path} is a zip archive but not a checkpoint format this library reads (it holds {names[:8]}); "
            "expected a Stable-Baselines3 model (model.save), a TorchScript module (torch.jit.save) or a "
            "torch.save state_dict"
        )
    if head.startswith(b"PK"):
        raise CheckpointError(
            f"cannot read checkpoint {path}: it starts like a zip archive but its end is missing or damaged, "
            "so the file is corrupt or truncated; re-save or re-download it. Nothing was loaded"
        )
    if head[:1] == b"\x80":  # pickle protocol opcode: torch.save(..., _use_new_zipfile_serialization=False)
        return "torch-legacy"
    raise CheckpointError(
        f"{path} is not a checkpoint format this library reads (Stable-Baselines3 .zip, TorchScript, "
        f"torch.save state_dict); it starts with {head!r}. The file may be corrupt or truncated"
    )


# ----------------------------------------------------------------------- SB3 models without pickle
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
        raise _corrupt(f"{path} (entry {key!r})", e) from e
    try:
        return _unref(_SafeUnpickler(io.BytesIO(raw)).load())
    except _Disallowed as e:
        raise TrustRequiredError(
            f"SB3 model {path}: its {key!r} refers to {e.name}, which cannot be rebuilt without running code "
            "stored in the file (only Stable-Baselines3, sb3-contrib, torch.nn/torch.optim and gymnasium "
            f"space classes are rebuilt safely). If you trust this checkpoint, {TRUST_HINT}"
        ) from e
    except Exception as e:  # anything beyond naming classes and rebuilding spaces needs the real unpickler
        raise TrustRequiredError(
            f"SB3 model {path}: its {key!r} entry cannot be decoded safely ({type(e).__name__}: {e}). If you "
            f"trust this checkpoint, {TRUST_HINT}"
        ) from e


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


def _load_sb3(
    path: Path,
    obs: spaces.Space,
    act: spaces.Space,
    *,
    trusted: bool,
    device: Any,
    deterministic: bool,
    name: str,
) -> NPCPolicy:
    from stable_baselines3.common.policies import BasePolicy

    if trusted:
        from stable_baselines3.common.save_util import load_from_zip_file

        try:
            data, params, _ = load_from_zip_file(path, device="cpu", print_system_info=False)
        except Exception as e:  # corrupt members, missing classes in a trusted pickle
            refused = _refused_global(e) if isinstance(e, pickle.UnpicklingError) else None
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
            raise _corrupt(path, e) from e
        policy_class = _decode_sb3_entry(data, "policy_class", path)
        kwargs = _decode_sb3_entry(data, "policy_kwargs", path) or {}
        stored_obs = _decode_sb3_entry(data, "observation_space", path)
        stored_act = _decode_sb3_entry(data, "action_space", path)
        state = _torch_load(io.BytesIO(weights), f"{path} (policy.pth)", trusted=False)
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


# ------------------------------------------------------------------------------- torch formats
def _refused_global(e: BaseException) -> tuple[str, str | None] | None:
    """What ``torch.load(weights_only=True)`` refused to unpickle: the global, and the module when torch
    blocks that module outright (``os``, ``posix``, ``sys``...)."""
    blocked = re.search(r"unsupported GLOBAL ([\w.]+) whose module ([\w.]+) is blocked", str(e))
    if blocked:
        return blocked.group(1), blocked.group(2)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    return (found.group(1), None) if found else None


def _torch_load(source: Any, label: str, trusted: bool) -> Any:
    """``torch.load(weights_only=True)``; a pickled object needs ``trusted`` (then the full unpickler)."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(e)
        if not refused:
            raise _corrupt(label, e) from e
        if not trusted:
            name, blocked = refused
            why = f" from module {blocked}, which torch's safe loader blocks outright" if blocked else ""
            raise TrustRequiredError(
                f"{label} holds pickled code (it refers to {name}{why}), and loading it would run code "
                "stored in the file. Save a state_dict instead (torch.save(model.state_dict(), path) and "
                f"name the class with policy_class), or, if you trust this checkpoint, {TRUST_HINT}"
            ) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError... for damaged files
        raise _corrupt(label, e) from e
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        return torch.load(source, map_location="cpu", weights_only=False)
    except Exception as e:
        raise _corrupt(label, e) from e


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
    what = f"a dict with keys {list(obj)[:10]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
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
        keys = list(state)[:3]
        raise CheckpointError(
            f"{path} holds a state_dict ({len(state)} tensors, e.g. {keys}) but no network class; name it "
            "with policy_class='pkg.module:Class' (checkpoint_npc.policy_class in config) and its "
            "constructor arguments with policy_kwargs"
        )
    cls = _import_object(cfg.policy_class, "policy_class")
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
            f"agents have observation space {obs} and action space {act}. {e}"
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


def _load_torch(
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
) -> NPCPolicy:
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
            raise _corrupt(path, e) from e
    else:
        obj = _torch_load(str(path), str(path), trusted)
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


def _checkpoint_in_dir(root: Path, source: str) -> Path:
    """The one checkpoint file in a downloaded artifact directory."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    ckpts = [p for p in files if p.suffix.lower() in CHECKPOINT_SUFFIXES]
    if not ckpts:
        ckpts = [p for p in files if p.suffix.lower() not in (".json", ".md", ".txt", ".yaml", ".yml")]
    if len(ckpts) != 1:
        raise CheckpointError(
            f"{source} ({root}) holds {len(ckpts)} checkpoint files "
            f"{[str(p.relative_to(root)) for p in ckpts]}; an artifact version must hold exactly one (log "
            "each checkpoint as its own version)"
        )
    return ckpts[0]


def _load_candidate(
    cand: Candidate,
    obs: spaces.Space,
    act: spaces.Space,
    cfg: CheckpointConfig,
    *,
    trusted: bool,
    device: Any,
    deterministic: bool,
) -> NPCPolicy:
    path = cand.local_path()
    if path.is_dir():
        path = _checkpoint_in_dir(path, cand.source)
    fmt = detect_format(path)
    logger.info("NPC %r: %s detected as %s", cand.name, path, _FORMAT_NAMES[fmt])
    if fmt == "sb3":
        return _load_sb3(
            path, obs, act, trusted=trusted, device=device, deterministic=deterministic, name=cand.name
        )
    return _load_torch(
        path, fmt, obs, act, cfg, trusted=trusted, device=device, deterministic=deterministic, name=cand.name
    )


# ----------------------------------------------------------------------------------- scripted
def _load_import(spec: str, obs: spaces.Space, act: spaces.Space) -> NPCPolicy:
    obj = _import_object(spec, "uri")
    label = spec.rpartition(":")[2]
    if isinstance(obj, NPCPolicy):
        return obj
    if isinstance(obj, type):
        if issubclass(obj, NPCPolicy):
            try:
                return obj(obs, act)
            except TypeError as e:
                raise CheckpointError(
                    f"{spec} is an NPCPolicy class; it must accept (observation_space, action_space): {e}"
                ) from e
        if issubclass(obj, torch.nn.Module):
            raise CheckpointError(
                f"{spec} is a torch module class, not a policy: load its weights with uri=<checkpoint file> "
                f"and policy_class={spec!r}"
            )
        raise CheckpointError(
            f"{spec} is a class that is not an NPCPolicy; give an NPCPolicy subclass or a function obs_batch "
            "-> actions"
        )
    if callable(obj):
        return CallablePolicy(obj, obs, act, name=label)
    raise CheckpointError(
        f"{spec} is a {type(obj).__name__}, not a function obs_batch -> actions or an NPCPolicy class"
    )


# ------------------------------------------------------------------------------------ entry point
def _as_config(spec: str | os.PathLike[str] | CheckpointConfig) -> CheckpointConfig:
    if isinstance(spec, CheckpointConfig):
        spec.validate()
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return CheckpointConfig(uri=os.fspath(spec))
    raise TypeError(f"expected a URI string or a CheckpointConfig, got {type(spec).__name__}: {spec!r}")


def load_npc(
    spec: str | os.PathLike[str] | CheckpointConfig,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    *,
    device: str | torch.device = "auto",
    deterministic: bool = False,
    trusted: bool = False,
) -> NPCPolicy | NPCPool:
    """Load the NPC policy a URI or :class:`~npc_wrapper.config.CheckpointConfig` names.

    :param spec: ``file://PATH``, a plain path (file or directory), ``wandb://...``, ``"random"``,
        ``"noop"``, ``"pkg.module:callable"``, or a ``CheckpointConfig`` (selector, pool weights,
        ``policy_class`` for state_dicts, ``trusted``...)
    :param observation_space: the NPC agents' observation space
    :param action_space: the NPC agents' action space
    :param device: where the network runs (``"auto"``: CUDA when available)
    :param deterministic: greedy actions (or set ``CheckpointConfig.deterministic``)
    :param trusted: allow formats that run code: pickles, TorchScript (or set ``CheckpointConfig.trusted``)
    :return: an :class:`NPCPolicy` for one checkpoint; an :class:`NPCPool` whose members are named
        after their checkpoints when the selector picks several
    :raises CheckpointError: missing/corrupt files, formats needing ``trusted``, selector problems,
        spaces that do not fit (the message shows both; torch networks are dry-run on them)

    Example (from a clone of the repository; the shipped prey of mpe2 simple_tag, whose observations
    ``npc-train`` pads to 16 values)::

        >>> from gymnasium import spaces
        >>> import npc_wrapper as nw
        >>> prey_obs = spaces.Box(-float("inf"), float("inf"), (16,), "float32")
        >>> nw.load_npc(
        ...     "file://npc_wrapper/data/simple_tag_npc.zip", prey_obs, spaces.Discrete(5), device="cpu"
        ... )
        SB3Policy(name='simple_tag_npc', obs=Box(-inf, inf, (16,), float32), act=Discrete(5))
    """
    cfg = _as_config(spec)
    deterministic = deterministic or cfg.deterministic
    trusted = trusted or cfg.trusted
    parsed, chosen = _choose(cfg)
    if parsed.kind in ("scripted", "import"):
        if cfg.type != "specific":
            raise CheckpointError(
                f"uri {parsed.text!r} is a scripted NPC; selectors (type={cfg.type!r}) apply to checkpoint "
                "files, directories and wandb artifacts. Set type: specific"
            )
        logger.info("NPC: scripted %s", parsed.text)
        if parsed.value == "random":
            return RandomPolicy(observation_space, action_space)
        if parsed.value == "noop":
            return ConstantPolicy(observation_space, action_space, action=cfg.noop_action)
        return _load_import(parsed.value, observation_space, action_space)
    if cfg.weights is not None and len(cfg.weights) != len(chosen):
        raise CheckpointError(
            f"checkpoint_npc.weights has {len(cfg.weights)} entries but {len(chosen)} checkpoints were "
            f"selected ({[c.name for c in chosen]}); give one weight per checkpoint"
        )
    members = [
        _load_candidate(
            c,
            observation_space,
            action_space,
            cfg,
            trusted=trusted,
            device=device,
            deterministic=deterministic,
        )
        for c in chosen
    ]
    if len(members) == 1:
        return members[0]
    return NPCPool(members, cfg.weights)

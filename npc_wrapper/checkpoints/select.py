"""Checkpoint candidates and the selectors that pick among them.

A URI that names a directory offers its checkpoint files (:data:`CHECKPOINT_SUFFIXES`), a W&B URI
the versions of its artifact. Selectors (``type``): ``specific`` (the file or version named),
``latest`` (newest ``range``), ``top`` (best ``range`` by ``metadata[metric]``), ``rand`` (``range``
at random, seeded), ``all``. File metadata comes from a sidecar JSON (``<file>.json`` or
``<stem>.json``) or, for SB3 models, from the model itself (``num_timesteps``); W&B metadata is the
artifact's metadata. Nothing is loaded or downloaded here.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npc_wrapper.checkpoints.bounded import (
    Limits,
    contained,
    open_zip,
    read_json_file,
)
from npc_wrapper.checkpoints.sb3 import read_sb3_data
from npc_wrapper.checkpoints.uri import ParsedURI, parse_uri
from npc_wrapper.checkpoints.wandb import WandbSource
from npc_wrapper.config import CheckpointConfig
from npc_wrapper.errors import CheckpointError, CheckpointLimitError, shorten

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "Candidate",
    "as_config",
    "choose",
    "select_checkpoints",
    "sidecar_metadata",
]

logger = logging.getLogger(__name__)

#: File suffixes treated as checkpoints when a URI names a directory.
CHECKPOINT_SUFFIXES = (".zip", ".pt", ".pth", ".ckpt", ".jit", ".ts", ".bin")
#: Metadata keys that order checkpoints by training progress (first one every candidate has wins).
_STEP_KEYS = ("step", "global_step", "num_timesteps", "timesteps", "agent_step", "epoch")


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


def sidecar_metadata(path: Path) -> dict[str, Any]:
    """Metadata from ``<file>.json`` or ``<stem>.json`` next to the checkpoint (the first that exists)."""
    for side in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if side.is_file():
            meta = read_json_file(side, f"the metadata file of checkpoint {path.name}:")
            if not isinstance(meta, dict):
                raise CheckpointError(
                    f"metadata file {side} must hold a JSON object, got {type(meta).__name__}"
                )
            return meta
    return {}


def _embedded_metadata(path: Path, limits: Limits) -> dict[str, Any]:
    """``num_timesteps`` of an SB3 model (read from its JSON, nothing unpickled), as step/epoch fallbacks.

    A file that is not a readable SB3 model has none (loading it says why, if it is chosen); one past
    a limit is refused here, as loading it would be.
    """
    if path.suffix.lower() != ".zip":
        return {}
    try:
        with open_zip(path, f"SB3 model {path}") as z:
            data = read_sb3_data(z, path, limits)
    except CheckpointLimitError:
        raise
    except (CheckpointError, ValueError) as e:
        logger.debug("no embedded metadata in %s: %s", path, e)
        return {}
    n = data.get("num_timesteps")
    if isinstance(n, int) and not isinstance(n, bool):
        return {"num_timesteps": n, "step": n, "epoch": n}
    return {}


def _file_candidate(path: Path, limits: Limits) -> Candidate:
    meta = sidecar_metadata(path)
    for key, value in _embedded_metadata(path, limits).items():
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


def _file_candidates(path: Path, uri: str, limits: Limits) -> list[Candidate]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path} (from uri {shorten(uri)!r}); check the path") from None
    except OSError as e:  # a name too long, a loop of links...
        raise CheckpointError(
            f"uri {shorten(uri)!r} does not name a readable file ({e.strerror or type(e).__name__}); check "
            "the path"
        ) from e
    if stat.S_ISREG(mode):
        return [_file_candidate(path, limits)]
    if not stat.S_ISDIR(mode):
        raise CheckpointError(
            f"checkpoint {path} (from uri {shorten(uri)!r}) is a device, a named pipe or a socket, not a "
            "checkpoint file or a directory of them"
        )
    files = sorted(
        contained(path, p, "checkpoint directory")
        for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in CHECKPOINT_SUFFIXES
    )
    if not files:
        present = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(
            f"directory {path} (from uri {shorten(uri)!r}) holds no checkpoint files "
            f"({', '.join(CHECKPOINT_SUFFIXES)}); it has {present or 'nothing'}"
        )
    cands = [_file_candidate(p, limits) for p in files]
    stems = [c.name for c in cands]
    if len(set(stems)) != len(stems):  # model.pt and model.zip: name them by file name
        for c, p in zip(cands, files, strict=True):
            c.name = p.name
    return cands


def _wandb_candidates(parsed: ParsedURI, cfg: CheckpointConfig) -> list[Candidate]:
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


def as_config(spec: str | os.PathLike[str] | CheckpointConfig) -> CheckpointConfig:
    """``spec`` as a validated :class:`~npc_wrapper.config.CheckpointConfig` (a URI becomes its ``uri``)."""
    if isinstance(spec, CheckpointConfig):
        spec.validate()
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return CheckpointConfig(uri=os.fspath(spec))
    raise TypeError(f"expected a URI string or a CheckpointConfig, got {type(spec).__name__}: {spec!r}")


def _candidates_for(cfg: CheckpointConfig, limits: Limits) -> tuple[ParsedURI, list[Candidate], str]:
    if cfg.uri is None:
        raise CheckpointError(
            "checkpoint_npc.uri is not set; give a wandb:// or file:// URI, a path, 'random', 'noop' or "
            "'pkg.module:callable'"
        )
    parsed = parse_uri(cfg.uri)
    if parsed.kind == "wandb":
        return parsed, _wandb_candidates(parsed, cfg), str(parsed.value)
    if parsed.kind == "file":
        return parsed, _file_candidates(parsed.value, parsed.text, limits), str(parsed.value)
    return parsed, [], parsed.text


def choose(cfg: CheckpointConfig, limits: Limits | None = None) -> tuple[ParsedURI, list[Candidate]]:
    """Parse ``cfg.uri`` and apply the selector (scripted NPCs select nothing).

    :param limits: of reading the files for their metadata (default: ``cfg.max_checkpoint_bytes``, or
        every default limit at its most)
    """
    limits = limits or Limits(cfg.max_checkpoint_bytes)
    parsed, cands, where = _candidates_for(cfg, limits)
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
    parsed, chosen = choose(as_config(spec))
    if parsed.kind not in ("file", "wandb"):
        raise CheckpointError(
            f"{parsed.text!r} is a scripted NPC, not a checkpoint; there is nothing to select"
        )
    return chosen

"""Reading untrusted checkpoint files within limits.

A checkpoint is small on disk, but what it declares can be huge: a zip member that decompresses to
gigabytes, JSON nested deeper than a parser recurses, a symlink to a file elsewhere, a named pipe
that never ends. Everything the loader reads from an untrusted file goes through here, and each
refusal is one line naming the file and the limit (a :class:`~npc_wrapper.errors.CheckpointLimitError`).

The limits of one checkpoint (:class:`Limits`) are proportional to what the NPC agents need: the
``data`` of an SB3 zip and the spaces it declares scale with the agents' spaces, its
``policy.pth`` with the network its ``data`` describes, all under :data:`DEFAULT_MAX_BYTES`. An
explicit ``max_checkpoint_bytes`` replaces every byte limit; ``trusted=True`` lifts them (a trusted
checkpoint loads with its format's own loader). Nesting is bounded by :data:`MAX_DEPTH` and pickles
by :data:`MAX_PICKLE_OPS`, whatever the byte limits.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from gymnasium import spaces

from npc_wrapper.errors import (
    LIMIT_HINT,
    CheckpointError,
    CheckpointLimitError,
    byte_size,
    corrupt_checkpoint,
    shorten,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "MAX_JSON_FILE_BYTES",
    "MAX_KWARGS_VALUES",
    "MAX_PICKLE_OPS",
    "MAX_ZIP_DIRECTORY_BYTES",
    "Budget",
    "Limits",
    "archive_bytes",
    "contained",
    "loads_json",
    "member_chunks",
    "nesting",
    "open_zip",
    "read_json_file",
    "read_member",
    "regular_file",
    "space_bytes",
]

MiB = 1 << 20
#: The most bytes any default limit allows: a member decompressed, the spaces declared, a torch file.
DEFAULT_MAX_BYTES = 256 * MiB
#: How deep JSON and pickled values may nest (a legitimate SB3 ``data`` nests less than 10 deep).
MAX_DEPTH = 100
#: Pickle operations one pickled entry may take (each makes at most one object: the node count).
MAX_PICKLE_OPS = 1_000_000
#: Values an SB3 model's ``policy_kwargs`` may hold (each ``net_arch`` entry is a layer to build).
MAX_KWARGS_VALUES = 1_000
#: Bytes of a metadata sidecar or a W&B cache index.
MAX_JSON_FILE_BYTES = 64 * MiB
#: Bytes of a zip archive's central directory (the list of its members, parsed before anything else).
MAX_ZIP_DIRECTORY_BYTES = 4 * MiB
_CHUNK = MiB


def space_bytes(space: spaces.Space) -> int:
    """What building ``space`` allocates: a Box's bounds and their masks, a MultiDiscrete's vectors
    (others hold no arrays; a Dict or Tuple the sum of its spaces)."""
    if isinstance(space, spaces.Box):
        return int(space.low.nbytes + space.high.nbytes + 2 * space.low.size)
    if isinstance(space, spaces.MultiDiscrete):
        return int(2 * space.nvec.nbytes)
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape, dtype=np.int64))
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        subspaces = space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces
        return sum(space_bytes(s) for s in subspaces)
    return 0


@dataclass(frozen=True)
class Limits:
    """The byte limits of loading one untrusted checkpoint for NPC agents.

    :param explicit: ``max_checkpoint_bytes`` as given: every limit is then this; ``None``: the
        defaults, proportional to ``need`` and never above :data:`DEFAULT_MAX_BYTES`
    :param need: bytes the NPC agents' spaces hold (:func:`space_bytes`); ``None`` when they are not
        known (choosing among files, checking a run's own checkpoints): every default is then the most
    """

    explicit: int | None = None
    need: int | None = None

    @classmethod
    def of(cls, obs: spaces.Space, act: spaces.Space, max_bytes: int | None, trusted: bool = False) -> Limits:
        """The limits for NPC agents with spaces ``obs`` and ``act``; none in bytes for a trusted checkpoint
        (nesting stays bounded: deeper JSON cannot be parsed at all)."""
        return cls(sys.maxsize if trusted else max_bytes, space_bytes(obs) + space_bytes(act))

    def _default(self, value: int) -> int:
        if self.explicit is not None:
            return self.explicit
        return DEFAULT_MAX_BYTES if self.need is None else min(DEFAULT_MAX_BYTES, value)

    @property
    def data(self) -> int:
        """An SB3 zip's ``data``: its spaces and the last observations of each env, as base64 pickles."""
        return self._default(16 * MiB + 64 * (self.need or 0))

    @property
    def declared(self) -> int:
        """What the pickles in ``data`` may allocate in all (spaces' bounds, arrays): they must equal the
        agents' spaces."""
        return self._default(MiB + 4 * (self.need or 0))

    def weights(self, network: int) -> int:
        """``policy.pth`` of a network of ``network`` bytes (its tensors, plus the archive's own); weights
        that fit a network hold at least its bytes, so this bounds the network built from them too."""
        return self._default(2 * network + MiB)

    @property
    def file(self) -> int:
        """A torch checkpoint's members in all (the network is not known before it is read)."""
        return self._default(DEFAULT_MAX_BYTES)

    def refuse(self, label: str, what: str, limit: int) -> CheckpointLimitError:
        """The error for ``label`` (the file, and which part of it) whose ``what`` exceeds ``limit`` bytes.

        :param what: ``"decompresses to 1.0 GiB,"``...
        """
        if self.explicit is not None:
            why = "max_checkpoint_bytes"
        else:
            why = "the default limit" + (" for these NPC agents" if self.need is not None else "")
        return CheckpointLimitError(
            f"{label} {what} more than {byte_size(limit)} ({why}); nothing more was read. {LIMIT_HINT}"
        )


class Budget:
    """Bytes the pickles of one checkpoint may still allocate: one total for all its spaces and arrays,
    so that many moderate Boxes add up.

    :param limits: the checkpoint's limits (``limits.declared`` is the total)
    """

    def __init__(self, limits: Limits) -> None:
        self.limits, self.used = limits, 0

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` about to be allocated for ``what``; refuse past the limit.

        :param what: the file, the entry and the call (``"SB3 model PATH: its 'observation_space' (Box)"``)
        """
        self.used += nbytes
        if self.used > self.limits.declared:
            raise self.limits.refuse(
                what, f"declares spaces and arrays of {byte_size(self.used)} in all,", self.limits.declared
            )


def regular_file(path: Path, label: str) -> int:
    """The size of ``path``, a regular file (a symlink to one too); anything else is refused without
    being opened: reading a device never ends, reading a named pipe may never start.

    :param label: how errors name it
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{label} not found: {path}") from e
    except OSError as e:
        raise CheckpointError(f"cannot read {label} {path}: {e.strerror or type(e).__name__}") from e
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, a named pipe or a socket"
        raise CheckpointError(f"{label} {path} is {kind}, not a regular file; give a checkpoint file")
    return st.st_size


def _directory_bytes(f: IO[bytes]) -> int:
    """The size of a zip's central directory from its end record (0 when there is none: zipfile says why)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    tail_len = min(size, 22 + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return 0
    directory = int(struct.unpack_from("<I", tail, at + 12)[0])
    locator = at - 20
    if directory == 0xFFFFFFFF and locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        f.seek(struct.unpack_from("<Q", tail, locator + 8)[0])
        record = f.read(56)  # the zip64 end record: its directory size is at byte 40
        directory = int(struct.unpack_from("<Q", record, 40)[0]) if len(record) == 56 else 0
    return directory


def open_zip(source: Path | bytes, label: str) -> zipfile.ZipFile:
    """``source`` (a file or bytes) as a zip archive whose list of members is within
    :data:`MAX_ZIP_DIRECTORY_BYTES`: ``zipfile`` parses the whole list when it opens one.

    :param label: how errors name it
    :raises CheckpointError: not a readable zip; too many members
    """
    try:
        if isinstance(source, Path):
            with open(source, "rb") as f:
                directory = _directory_bytes(f)
        else:
            directory = _directory_bytes(io.BytesIO(source))
        if directory > MAX_ZIP_DIRECTORY_BYTES:
            raise CheckpointLimitError(
                f"{label} lists {byte_size(directory)} of zip members, more than the limit of "
                f"{byte_size(MAX_ZIP_DIRECTORY_BYTES)}; it is not a checkpoint this library writes or reads"
            )
        return zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, struct.error) as e:
        if isinstance(e, CheckpointError):
            raise
        raise corrupt_checkpoint(label, e) from e


def member_chunks(z: zipfile.ZipFile, name: str, limit: int, limits: Limits, label: str) -> Iterator[bytes]:
    """The member ``name`` of ``z`` decompressed, in chunks, refused once it passes ``limit`` bytes (its
    declared size first: nothing is decompressed for a member that declares too much).

    :param limits: says which limit it is in the error
    :param label: the archive, for errors
    :raises CheckpointError: no such member; corrupt; larger than ``limit``
    """
    what = f"{label}: its member {name!r}"
    try:
        info = z.getinfo(name)
    except KeyError as e:
        raise CheckpointError(f"{label} has no member {name!r}: the file is incomplete or not a checkpoint") from e
    if info.file_size > limit:
        raise limits.refuse(what, f"decompresses to {byte_size(info.file_size)},", limit)
    total = 0
    try:
        with z.open(info) as f:
            while chunk := f.read(_CHUNK):
                total += len(chunk)
                if total > limit:  # zipfile stops at the declared size; this holds whatever it does
                    raise limits.refuse(what, "decompresses to", limit)
                yield chunk
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
        raise corrupt_checkpoint(what, e) from e


def read_member(z: zipfile.ZipFile, name: str, limit: int, limits: Limits, label: str) -> bytes:
    """:func:`member_chunks` joined: the member ``name`` of ``z``, at most ``limit`` bytes."""
    return b"".join(member_chunks(z, name, limit, limits, label))


def archive_bytes(z: zipfile.ZipFile, limit: int, limits: Limits, label: str) -> int:
    """What the members of ``z`` (a torch archive) declare in all, refused past ``limit``: torch
    allocates each record at its declared size before decompressing it."""
    total = sum(info.file_size for info in z.infolist())
    if total > limit:
        raise limits.refuse(label, f"holds {byte_size(total)} of tensors and records,", limit)
    return total


def nesting(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deep the lists and dicts of a JSON value nest, counted without recursion up to ``limit + 1``
    (deeper values stop there)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else None
        if items is None:
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        stack.extend((v, depth + 1) for v in items)
    return deepest


def loads_json(raw: bytes | str, label: str) -> Any:
    """JSON nested at most :data:`MAX_DEPTH` deep (the parser recurses: a deeper document would
    exhaust the stack).

    :param label: the file, for errors
    :raises CheckpointLimitError: nested too deep
    :raises ValueError: not JSON (the caller says what the file is)
    """
    try:
        value = json.loads(raw)
    except RecursionError:
        value, depth = None, math.inf
    else:
        depth = nesting(value)
    if depth > MAX_DEPTH:
        raise CheckpointLimitError(
            f"{label} is JSON nested too deep (more than {MAX_DEPTH} levels, the limit); it is malformed: "
            "re-save or remove it"
        )
    return value


def read_json_file(path: Path, label: str) -> Any:
    """The JSON in ``path``, a regular file of at most :data:`MAX_JSON_FILE_BYTES`, nested at most
    :data:`MAX_DEPTH` deep.

    :param label: what the file is, for errors (``"the metadata file of checkpoint a.zip:"``)
    :raises CheckpointError: not a regular file, too large, too deep, or not JSON
    """
    size = regular_file(path, label)
    if size > MAX_JSON_FILE_BYTES:
        raise CheckpointLimitError(
            f"{label} {path} holds {byte_size(size)}, more than the limit of {byte_size(MAX_JSON_FILE_BYTES)} "
            "for a JSON metadata file; fix or remove it"
        )
    try:
        with open(path, "rb") as f:
            return loads_json(f.read(MAX_JSON_FILE_BYTES + 1), f"{label} {path}")
    except CheckpointError:
        raise
    except (OSError, ValueError) as e:
        # A JSON error says where it failed; a decoding error would quote the file's bytes.
        detail = f": {shorten(str(e), 120)}" if isinstance(e, json.JSONDecodeError) else ""
        raise CheckpointError(
            f"{label} {path} is not valid JSON ({type(e).__name__}{detail}); fix or remove it"
        ) from e


def contained(root: Path, path: Path, label: str) -> Path:
    """``path`` (found under the directory ``root``), refused if it is a symbolic link, or under one,
    that leads outside ``root``: a checkpoint directory or a W&B download names its own files only.

    :param label: what ``root`` is, for errors (``"checkpoint directory"``, ``"W&B download"``)
    """
    inside = root.resolve()
    if not path.resolve().is_relative_to(inside):
        raise CheckpointError(
            f"{path} in {label} {root} is a symbolic link to a file outside it, which is not followed: a "
            "checkpoint directory may only link to its own files. Remove the link, or give the file it "
            "points to as the uri"
        )
    return path

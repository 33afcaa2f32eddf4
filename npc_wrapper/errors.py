"""Every exception the package raises on purpose, and the shared wording of checkpoint errors.

``CheckpointError`` is a ``ValueError`` (bad input: a URI, a file, a selector), so code that
catches ``ValueError`` around ``make_vec_env`` also catches a checkpoint that cannot be loaded.
A :class:`CheckpointLimitError` is one that holds or declares more than a loading limit allows.
The W&B errors are checkpoint errors of ``wandb://`` URIs. :class:`NoEpisodeEnds` is a
``RuntimeError``: the env runs, but its episodes never end. :class:`NPCOutputError` is a
``ValueError``: an NPC's network gave NaN or infinite output. :class:`SaveError` is an ``OSError``: a file the
league saves (a snapshot, its state) could not be written.

The command-line programs' own ``CLIError`` lives in :mod:`npc_wrapper.cli.common`: it only
carries a message to print as one line, and nothing outside the CLI raises it.
"""

from __future__ import annotations

import errno
import os
import reprlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "LIMIT_HINT",
    "TRUST_HINT",
    "CheckpointError",
    "CheckpointLimitError",
    "NPCOutputError",
    "NoEpisodeEnds",
    "SaveError",
    "TrustRequiredError",
    "WandbError",
    "WandbNotFoundError",
    "WandbUnavailableError",
    "byte_size",
    "saving",
    "corrupt_checkpoint",
    "short_repr",
    "shorten",
]

#: How loader errors say to opt in to trust; command-line front ends replace it with their own flag.
TRUST_HINT = (
    "pass trusted=True (in code) or set trusted: true (checkpoint_npc.trusted in config); only do this for "
    "checkpoints you trust, because loading then runs code stored in the file"
)

#: How limit errors say to raise a limit (trust lifts them: a trusted checkpoint loads as it is).
LIMIT_HINT = (
    "If the checkpoint is this large by design, raise the limit with max_checkpoint_bytes=N (in code, or "
    "checkpoint_npc.max_checkpoint_bytes in config), or load it as trusted (trusted=True, --trusted), which "
    "lifts the limits"
)


class CheckpointError(ValueError):
    """A checkpoint could not be found, selected, read or fitted to the NPC agents."""


class CheckpointLimitError(CheckpointError):
    """A checkpoint holds or declares more than a loading limit allows (bytes, nesting, operations); it was
    not read further."""


class TrustRequiredError(CheckpointError):
    """Loading this checkpoint would run code stored in it; it needs ``trusted=True``."""


class WandbError(CheckpointError):
    """A ``wandb://`` checkpoint could not be resolved or downloaded."""


class WandbUnavailableError(WandbError):
    """W&B could not be reached or refused the credentials, and the cache could not answer."""


class WandbNotFoundError(WandbError):
    """W&B answered that the artifact, version or collection does not exist."""


class SaveError(OSError):
    """A file could not be written (a full disk, a file-size limit, permissions): the message says which
    and why, in one line. Writes are atomic, so the files saved before are intact."""


@contextmanager
def saving(what: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """Raise an ``OSError`` of the block, which writes ``path``, as a :class:`SaveError` whose one-line
    message says what, where and why (with the errno name: a write past a file-size limit names no file
    by itself).

    :param what: what is being written (``"checkpoint"``)
    :param path: where
    """
    try:
        yield
    except SaveError:
        raise  # an inner block's, already worded
    except OSError as e:
        code = f" ({errno.errorcode[e.errno]})" if e.errno in errno.errorcode else ""
        raise SaveError(f"cannot write {what} {path}: {e.strerror or shorten(str(e))}{code}") from e


class NoEpisodeEnds(RuntimeError):
    """No episode that counts ended for the bound's number of vector steps: an env without a time limit.

    :param message: what happened and what to change
    :param steps: the bound that ran out (vector steps without a counted episode end)
    :param played: the episodes recorded before it ran out
    """

    def __init__(self, message: str, steps: int, played: int) -> None:
        super().__init__(message)
        self.steps = steps
        self.played = played

    def __reduce__(self) -> tuple[type, tuple[str, int, int]]:
        # Pickle rebuilds an exception from its args, which hold the message alone.
        return type(self), (str(self), self.steps, self.played)


class NPCOutputError(ValueError):
    """An NPC policy's network gave output it cannot act on: NaN or infinite logits or actions, as a
    diverged checkpoint gives (sampling would silently pick action 0).

    :param message: which policy, and what it gave
    :param rows: the entries of the batch it was given whose output was invalid, ascending
    """

    def __init__(self, message: str, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows

    def __reduce__(self) -> tuple[type, tuple[str, list[int]]]:
        return type(self), (str(self), self.rows)


def corrupt_checkpoint(label: str | os.PathLike[str], e: BaseException) -> CheckpointError:
    """The error for a checkpoint file that cannot be read: ``label`` names it, ``e`` is what failed."""
    if isinstance(e, UnicodeDecodeError):  # its message quotes the file's bytes
        detail = "not UTF-8 text"
    else:
        detail = shorten(str(e).strip().splitlines()[0], 200) if str(e).strip() else ""
    return CheckpointError(
        f"cannot read checkpoint {label}: the file is corrupt or truncated "
        f"({type(e).__name__}{': ' + detail if detail else ''}); re-save or re-download it. Nothing was "
        "loaded"
    )


def shorten(text: str, limit: int = 200) -> str:
    """``text`` on one line and at most about ``limit`` characters: a message quotes untrusted input
    (a URI, a value from a file) without printing all of it.

    >>> shorten("x" * 1000, 10)
    'xxxxxxxxxx... (1000 characters)'
    """
    text = " ".join(str(text).split()) if "\n" in str(text) else str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` for subclasses of the builtin containers too (``OrderedDict``), whose own ``repr``
    would print everything."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict = 4, 8, 8, 8
        self.maxset = self.maxfrozenset = 8
        self.maxstring = self.maxother = 60

    def repr1(self, x: Any, level: int) -> str:
        for base in (dict, list, tuple, set, frozenset):
            if isinstance(x, base) and type(x) is not base:
                return str(getattr(self, f"repr_{base.__name__}")(x, level))
        return str(super().repr1(x, level))


_REPR = _BoundedRepr()


def short_repr(obj: Any, limit: int = 300) -> str:
    """A ``repr`` of ``obj`` bounded in depth, items and length, whatever it holds (shared references
    nested 24 deep print as a few dozen characters, not 2**24 leaves).

    >>> short_repr({"net_arch": [1] * 20000})
    "{'net_arch': [1, 1, 1, 1, 1, 1, 1, 1, ...]}"
    """
    return shorten(_REPR.repr(obj), limit)


def byte_size(nbytes: int) -> str:
    """``nbytes`` in the unit that reads best (``"16.0 MiB"``).

    >>> byte_size(256 * 2**20)
    '256.0 MiB'
    """
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"

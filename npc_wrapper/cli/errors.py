"""How the command-line programs report bad input: one line naming what to change, exit status 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from npc_wrapper.errors import TRUST_HINT, SaveError, saving

__all__ = ["CLIError", "one_line", "die", "with_trust_flag", "writing"]


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, before any training."""


def one_line(msg: Any) -> str:
    """Collapse a (possibly multi-line) message into one line.

    :param msg: the message, or an exception whose text is the message
    """
    lines = [" ".join(part.split()) for part in str(msg).splitlines()]
    return "; ".join(line for line in lines if line)


def die(prog: str, msg: Any, code: int = 2) -> NoReturn:
    """Print ``prog: error: msg`` as one line on stderr and exit with ``code``.

    :param prog: the program's name (``npc-train``)
    :param msg: the message, or the exception carrying it
    :param code: the exit status
    """
    print(f"{prog}: error: {one_line(msg)}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def with_trust_flag(text: str, flag: str) -> str:
    """A loader message whose trust advice (written for code and configs) names the program's own ``flag``.

    :param text: the loader's message
    :param flag: the program's option that grants trust (``--trusted``)
    """
    return text.replace(
        TRUST_HINT, f"pass {flag} (only for checkpoints you trust: loading then runs code stored in the file)"
    )


@contextmanager
def writing(what: str, path: str | os.PathLike[str], advice: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` (a full disk, a file-size limit, permissions) into a
    one-line :class:`CLIError` that says what could not be written, where, and why.

    :param what: what is being written (``"checkpoint"``)
    :param path: where
    :param advice: what to do about it, appended to the message
    """
    try:
        with saving(what, path):
            yield
    except SaveError as e:
        raise CLIError(f"{e}; {advice}" if advice else str(e)) from e

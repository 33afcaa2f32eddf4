"""What a checkpoint URI names: a scripted NPC, an importable callable, a local path or a W&B artifact.

``random`` and ``noop`` are scripted NPCs; ``pkg.module:callable`` names your own bot (when no file of
that name exists); ``file://PATH`` (RFC 8089 forms too) or a plain ``PATH`` is a checkpoint file or a
directory of them; ``wandb://entity/project/[type/]name[:version]`` is a W&B artifact.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from npc_wrapper.checkpoints.wandb import parse_wandb_uri
from npc_wrapper.config import IMPORT_SPEC
from npc_wrapper.errors import CheckpointError, shorten

__all__ = ["ParsedURI", "import_object", "parse_uri"]


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
        return ParsedURI("wandb", parse_wandb_uri(text), text)
    if text.startswith("file:/"):
        return ParsedURI("file", _file_uri_path(text), text)
    scheme = re.match(r"^([A-Za-z][\w+.-]*)://", text)
    if scheme:
        raise CheckpointError(
            f"unsupported URI scheme {shorten(scheme.group(1), 40)!r}:// in {shorten(text)!r}; use file://PATH, "
            "a plain path, wandb://entity/project/[type/]name[:version], 'random', 'noop' or "
            "'pkg.module:callable'"
        )
    path = Path(text).expanduser()
    if IMPORT_SPEC.match(text) and not _exists(path, text):
        return ParsedURI("import", text, text)
    return ParsedURI("file", path, text)


def _exists(path: Path, text: str) -> bool:
    """Whether ``path`` exists; a name the OS cannot look up (too long) is an error naming the uri."""
    try:
        return path.exists()
    except OSError as e:
        raise CheckpointError(
            f"uri {shorten(text)!r} does not name a readable file ({e.strerror or type(e).__name__})"
        ) from e


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


def import_object(spec: str, what: str) -> Any:
    """Import ``pkg.module:attr`` (``attr`` may be dotted); a ``CheckpointError`` naming ``what`` if it fails.

    :param spec: ``"pkg.module:attr"``
    :param what: what named it (``"uri"``, ``"policy_class"``), for the message
    """
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

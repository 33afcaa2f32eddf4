"""Checkpoints: loading NPC policies from them, and writing them.

Loading (:func:`load_npc`) reads untrusted files without running code from them unless
``trusted``: :mod:`~npc_wrapper.checkpoints.uri` says what a URI names,
:mod:`~npc_wrapper.checkpoints.select` picks among a directory's files or a W&B artifact's
versions (:mod:`~npc_wrapper.checkpoints.wandb`), and :mod:`~npc_wrapper.checkpoints.load` detects
each file's format and hands it to its loader (:mod:`~npc_wrapper.checkpoints.sb3`,
:mod:`~npc_wrapper.checkpoints.torch`, both over :mod:`~npc_wrapper.checkpoints.safe_pickle`), all
reading untrusted files within the limits of :mod:`~npc_wrapper.checkpoints.bounded`.
Writing: :mod:`~npc_wrapper.checkpoints.store` (atomic saves, ``step_<n>.zip``, league snapshots).
"""

from __future__ import annotations

from npc_wrapper.checkpoints.load import detect_format, load_npc
from npc_wrapper.checkpoints.select import (
    CHECKPOINT_SUFFIXES,
    Candidate,
    select_checkpoints,
    sidecar_metadata,
)
from npc_wrapper.checkpoints.uri import ParsedURI, parse_uri
from npc_wrapper.errors import TRUST_HINT, CheckpointError, CheckpointLimitError, TrustRequiredError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "TRUST_HINT",
    "Candidate",
    "CheckpointError",
    "CheckpointLimitError",
    "ParsedURI",
    "TrustRequiredError",
    "detect_format",
    "load_npc",
    "parse_uri",
    "select_checkpoints",
    "sidecar_metadata",
]

"""The command-line programs: ``npc-train`` (Hydra), ``npc-eval`` and ``npc-plot``.

Their pieces are importable for scripts and notebooks: :func:`compose_config` builds the same
config as the command line (imported lazily, so ``python -m npc_wrapper.cli.train`` does not
import the module twice) and ``npc_wrapper.cli.train.train`` runs a job from it
(``npc_wrapper.cli.train`` is the module).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_missing = [m for m in ("hydra", "omegaconf") if importlib.util.find_spec(m) is None]
if _missing:
    raise ImportError(
        f"npc-train, npc-eval and npc-plot need {' and '.join(_missing)}: pip install 'npc-wrapper[train]'"
    )

from npc_wrapper.cli.common import CLIError, TrainConfig, config_dir, data_path
from npc_wrapper.evaluation import EpisodeStats, wilson_interval

__all__ = [
    "CLIError",
    "TrainConfig",
    "EpisodeStats",
    "compose_config",
    "config_dir",
    "data_path",
    "wilson_interval",
]


def __getattr__(name: str) -> Any:
    if name == "compose_config":
        # import_module: 'from npc_wrapper.cli import train' would look the name up here again, forever.
        return importlib.import_module("npc_wrapper.cli.train").compose_config
    raise AttributeError(f"module 'npc_wrapper.cli' has no attribute {name!r}")

"""The command-line programs: ``npc-train`` (Hydra), ``npc-eval`` and ``npc-plot``.

The entry points are ``train.py``, ``evaluate.py`` and ``plot.py``; what they share lives beside them:
``config.py`` (finding and composing the configs), ``schema.py`` (every key), ``checks.py`` (checks
before anything is built), ``build.py`` (env, model), ``run_dir.py`` (a run directory's layout and
resume point), ``model_eval.py`` (evaluations around training), ``tracking.py`` (logger, W&B),
``callbacks.py``, ``metrics.py``, ``algos.py``, ``envs.py`` and ``errors.py``.

Their pieces are importable for scripts and notebooks: :func:`compose_config` builds the same
config as the command line and ``npc_wrapper.cli.train.train`` runs a job from it.
"""

from __future__ import annotations

import importlib.util

_missing = [m for m in ("hydra", "omegaconf") if importlib.util.find_spec(m) is None]
if _missing:
    raise ImportError(
        f"npc-train, npc-eval and npc-plot need {' and '.join(_missing)}: pip install 'npc-wrapper[train]'"
    )

from npc_wrapper.cli.config import compose_config, config_dir, data_path
from npc_wrapper.cli.errors import CLIError
from npc_wrapper.cli.metrics import EpisodeStats, wilson_interval
from npc_wrapper.cli.schema import TrainConfig

__all__ = [
    "CLIError",
    "TrainConfig",
    "EpisodeStats",
    "compose_config",
    "config_dir",
    "data_path",
    "wilson_interval",
]

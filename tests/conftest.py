"""Shared pytest setup.

Test helpers live in the ``tests`` package; import them as
``from tests.envs import ScriptedParallelEnv, RecordingParallelEnv``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Headless / offline defaults; set before any test module imports wandb or pygame.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# The Ray clusters tests start stay on the loopback address (Ray otherwise binds its services to the
# machine's network address); read by ray when it is imported, so set before any test imports it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Two cores shared by the envs, the trainer and (in some tests) worker processes: torch's default
# thread pool oversubscribes them and slows SB3 training in tests many times over.
import torch  # noqa: E402

torch.set_num_threads(1)

# Make ``import tests.envs`` work however pytest is started (from the repo root or
# elsewhere, any import mode). Child processes started with spawn/forkserver inherit
# sys.path from this process, so they can unpickle ``tests.envs`` classes too.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
# ... and for plain subprocesses (e.g. a CLI started with subprocess.run).
_pythonpath = os.environ.get("PYTHONPATH", "")
if _REPO_ROOT not in _pythonpath.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, _pythonpath) if p)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Remove the handlers a test added to the root logger (npc-train's Hydra job logging adds a
    stream handler on the sys.stderr of that moment, a capture that is closed once the test ends:
    every later log record then prints a '--- Logging error ---' traceback into another test's stderr)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)

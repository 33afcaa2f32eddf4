"""Shared pytest setup.

Test helpers live in the ``tests`` package; import them as
``from tests.envs import ScriptedParallelEnv, RecordingParallelEnv``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Headless / offline defaults; set before any test module imports wandb or pygame.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

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

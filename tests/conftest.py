"""Shared pytest setup and fixtures.

Fixtures every test file may use: ``kind`` (each front end in turn), ``make_venv`` (that front
end's factory) and ``recording_npc`` (a scripted NPC that records its calls). Helpers used at
module level (env classes and factories, checkpoint agents) live in the ``tests`` package; import
them as ``from tests.envs import ScriptedParallelEnv, RecordingParallelEnv, simple_tag``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

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

import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

import npc_wrapper as nw  # noqa: E402


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


#: The two front ends, by the names the ``kind`` fixture gives them.
FRONT_ENDS: dict[str, Callable[..., Any]] = {"sb3": nw.make_vec_env, "gym": nw.make_vector_env}


@pytest.fixture(params=list(FRONT_ENDS))
def kind(request: pytest.FixtureRequest) -> str:
    """Each front end in turn: ``"sb3"`` (:func:`npc_wrapper.make_vec_env`) and ``"gym"``
    (:func:`npc_wrapper.make_vector_env`); a test that takes it runs once for each."""
    return request.param


@pytest.fixture
def make_venv(kind: str) -> Callable[..., Any]:
    """The factory of front end ``kind`` (the test runs once for each front end)."""
    return FRONT_ENDS[kind]


class NPCCall(NamedTuple):
    """One ``act`` call of a :class:`RecordingNPC`."""

    obs: np.ndarray
    rows: list[int]
    episode_start: list[bool]


class RecordingNPC(nw.NPCPolicy):
    """A scripted NPC: always takes ``action`` and records every call (the construction's dry run
    included) in ``calls``.

    :param action: the action of every row
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, action: int = 0) -> None:
        super().__init__(observation_space, action_space, name=f"recording{action}")
        self.action = action
        self.calls: list[NPCCall] = []

    def act(self, obs: np.ndarray, rows: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        self.calls.append(NPCCall(np.array(obs, copy=True), rows.tolist(), episode_start.tolist()))
        return np.full(len(rows), self.action, dtype=np.int64)


@pytest.fixture
def recording_npc() -> type[RecordingNPC]:
    """:class:`RecordingNPC`, to build one: ``recording_npc(observation_space, action_space, action=1)``."""
    return RecordingNPC

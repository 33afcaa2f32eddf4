"""The docstring examples of the public API run as written (doctest)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

MODULES = [
    "npc_wrapper.agents",
    "npc_wrapper.arguments",
    "npc_wrapper.backends",
    "npc_wrapper.checkpoints.load",
    "npc_wrapper.cli.progress",
    "npc_wrapper.factory",
    "npc_wrapper.frontends.gymnasium",
    "npc_wrapper.frontends.sb3",
    "npc_wrapper.memory",
    "npc_wrapper.npcs.policies",
    "npc_wrapper.npcs.pool",
    "npc_wrapper.ray_workers",
]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # examples name files of the repository (the shipped checkpoint)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
    )

"""The docstring examples of the public API run as written (doctest), and the README names only
import paths, names and files that exist."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

import npc_wrapper as nw

MODULES = [
    "npc_wrapper.agents",
    "npc_wrapper.arguments",
    "npc_wrapper.backends",
    "npc_wrapper.bots",
    "npc_wrapper.checkpoints.load",
    "npc_wrapper.cli.progress",
    "npc_wrapper.factory",
    "npc_wrapper.frontends.gymnasium",
    "npc_wrapper.frontends.sb3",
    "npc_wrapper.masks",
    "npc_wrapper.memory",
    "npc_wrapper.npcs.policies",
    "npc_wrapper.npcs.pool",
    "npc_wrapper.ray_workers",
    "npc_wrapper.turn_env",
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


README = (REPO / "README.md").read_text()


def _resolve(dotted: str) -> object:
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_readme_code_imports_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    lines = [line.strip() for b in blocks for line in b.splitlines()]
    imports = [line for line in lines if re.match(r"(import|from) ", line)]
    assert len(imports) >= 5
    for line in imports:
        exec(line, {})  # noqa: S102 - the README's own import lines


def test_readme_names_and_paths_exist() -> None:
    names = set(re.findall(r"\bnw\.([A-Za-z_]\w*)", README))
    assert {"make_vec_env", "make_vector_env"} <= names
    assert not [n for n in sorted(names) if not hasattr(nw, n)], "README names missing from npc_wrapper"
    for dotted in sorted(set(re.findall(r"\bnpc_wrapper(?:\.[A-Za-z_]\w*)+", README))):
        _resolve(dotted)
    files = set(re.findall(r"\bnpc_wrapper/[\w/]+\.\w+", README))
    assert files and not [f for f in sorted(files) if not (REPO / f).is_file()], "README names missing files"

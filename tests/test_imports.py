"""The package's import structure (CONTRIBUTING.md's layering rules): every module imports on its own,
no import cycle, each layer imports only its own or lower layers, and no import inside a function
except of an optional dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import npc_wrapper

PACKAGE_DIR = Path(npc_wrapper.__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name

#: What may be imported inside a function: packages a user installs only for the feature that needs them
#: (an extra of pyproject.toml, or none), so ``import npc_wrapper`` works without them.
OPTIONAL = {
    "wandb": "the wandb extra (wandb:// checkpoints, W&B tracking)",
    "sb3_contrib": "the contrib extra (MaskablePPO, RecurrentPPO...)",
    "matplotlib": "the train extra's npc-plot",
    "cv2": "SB3's human rendering, as SB3 does it",
    "ray": "Ray backends",
    "moviepy": "videos",
    "imageio": "videos",
    "imageio_ffmpeg": "videos (imageio's ffmpeg plugin)",
    "sky": "SkyPilot launches",
    "mpe2": "an env package (the mpe extra)",
    "magent2": "an env package (the magent extra)",
    "mettagrid": "an env package (the mettagrid extra)",
    "pettingzoo.butterfly": "an env package (the butterfly extra)",
    "pettingzoo.sisl": "an env package (the sisl extra)",
}
#: Optional only in some modules: omegaconf comes with the train extra, which the CLI needs but the
#: configs' plain-dict path does not.
OPTIONAL_IN = {"omegaconf": {f"{PACKAGE}.config"}}
#: Package modules imported inside a function, each because it imports an optional dependency.
OPTIONAL_MODULES = {
    f"{PACKAGE}.ray_workers": "the Ray backend: imports ray (about 0.7 s), only for backend='ray'",
}

#: The layers, top first, as module names relative to the package (a name covers its submodules; the
#: longest match wins). A module imports only from its own layer or one below it.
LAYERS = [
    ["cli"],
    ["league", "evaluation"],
    ["factory"],
    ["frontends"],
    ["engine", "turn_engine"],
    ["backends"],
    ["ray_workers"],
    ["workers", "turn_workers"],
    ["joint_env", "turn_env"],
    ["npcs.resolve"],
    ["checkpoints"],
    ["npcs.pool", "bots"],
    ["npcs.policies"],
    ["npcs.device", "npcs"],
    ["agents", "arguments", "config", "errors", "memory"],
    ["masks"],
]


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <node.module> import ...`` written in ``module``."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Every module name an import statement names (``from pkg import sub`` names ``pkg.sub`` where it
    is a module of the package)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    source = _absolute(module, node)
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: its top level, including under ``if``/``try``,
    but not under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                pending += [*node.body, *node.orelse]
        elif isinstance(node, ast.Try):
            handlers = [s for h in node.handlers for s in h.body]
            pending += [*node.body, *node.orelse, *node.finalbody, *handlers]
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules its top-level imports name."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        names = {n for node in _top_level_imports(tree) for n in _imported(module, node)}
        graph[module] = {n for n in names if n in MODULES and n != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_resolves_relative_and_submodule_imports() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.engine" in graph[f"{PACKAGE}.frontends.base"]  # from npc_wrapper.engine import ...
    assert f"{PACKAGE}.checkpoints" in graph[PACKAGE]  # from npc_wrapper.checkpoints import load_npc
    assert len(graph) == len(MODULES) > 40


def test_no_import_cycle_between_the_package_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of a package module (the package root: -1, above every layer)."""
    name = module.removeprefix(PACKAGE).removeprefix(".")
    if not name:
        return -1
    found = [
        (len(e), i) for i, layer in enumerate(LAYERS) for e in layer if name == e or name.startswith(e + ".")
    ]
    assert found, f"{module} is in no layer: add it to LAYERS in tests/test_imports.py and to CONTRIBUTING.md"
    return max(found)[1]


def test_each_layer_imports_only_its_own_and_lower_layers() -> None:
    bad = [
        f"{src} (layer {LAYERS[layer_of(src)]}) imports {dst} (layer {LAYERS[layer_of(dst)]})"
        for src, targets in import_graph().items()
        for dst in sorted(targets)
        if layer_of(dst) < layer_of(src) or layer_of(dst) == -1
    ]
    assert not bad, "imports against the layering of CONTRIBUTING.md:\n" + "\n".join(bad)


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    """Each module is imported with none of the package loaded before it (an import cycle can hide
    behind an import order that happens to work), and the core package pulls in no optional
    dependency."""
    script = textwrap.dedent(
        """
        import importlib, sys
        optional = sys.argv[1].split(",")
        import npc_wrapper
        pulled = sorted({m.split(".")[0] for m in sys.modules} & set(optional))
        assert not pulled, f"import npc_wrapper imported optional dependencies {pulled}"
        for name in sys.argv[2:]:
            for loaded in [m for m in sys.modules if m == "npc_wrapper" or m.startswith("npc_wrapper.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as e:
                sys.exit(f"import {name}: {type(e).__name__}: {e}")
        """
    )
    roots = {name.split(".")[0] for name in [*OPTIONAL, *OPTIONAL_IN]}
    optional = sorted(roots - {"pettingzoo"})
    result = subprocess.run(
        [sys.executable, "-c", script, ",".join(optional), *MODULES],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_no_import_inside_a_function_except_optional_dependencies() -> None:
    bad = set()  # a set: a nested function's import is inside its outer function too
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                for name in _imported(module, node):
                    allowed = name in OPTIONAL_MODULES or any(
                        name == o or name.startswith(o + ".") for o in OPTIONAL
                    ) or any(
                        (name == o or name.startswith(o + ".")) and module in where
                        for o, where in OPTIONAL_IN.items()
                    )
                    if not allowed:
                        bad.add(f"{path.relative_to(PACKAGE_DIR.parent)}:{node.lineno} imports {name}")
    assert not bad, "imports inside functions (move them to the top, or add an optional dependency to " \
        "OPTIONAL):\n" + "\n".join(sorted(bad))

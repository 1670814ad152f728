"""The package's folders are its layers, and each imports only the layers below it:

    base (errors, paths, files, limits, log) <- core <- formats <- host <- libvirt <- apply <- hook <- cli

A reader who opens `core/` knows nothing there touches the host; one who opens `apply/` finds the one place
where devices move. These tests read the sources (every import, lazy ones in functions included) and fail on an
import that goes up, on a cycle between modules, and on a core that loads lxml or a host seam."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testpaths import PLUGIN

LAYERS = ["base", "core", "formats", "host", "libvirt", "apply", "hook", "cli"]
BASE = {"isogroup", "isogroup.errors", "isogroup.paths", "isogroup.files", "isogroup.limits", "isogroup.log"}


def _module_name(path: object) -> str:
    rel = Path(str(path)).relative_to(PLUGIN.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PLUGIN.rglob("*.py"))}


def _imports(name: str, tree: ast.Module, known: set[str]) -> Iterator[str]:
    """Every isogroup module `name` imports, resolved to a module (not a symbol)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target == "isogroup" or target.startswith("isogroup."):
                yield target


def layer(module: str) -> int:
    if module in BASE:
        return 0
    if module == "isogroup.__main__":
        return LAYERS.index("cli")
    top = module.split(".")[1]
    assert top in LAYERS, f"{module} is in no layer: put it in one of {', '.join(LAYERS[1:])} or the base"
    return LAYERS.index(top)


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_goes_down(module: str) -> None:
    up = [
        f"{module} ({LAYERS[layer(module)]}) imports {target} ({LAYERS[layer(target)]})"
        for target in _imports(module, MODULES[module], set(MODULES))
        if layer(target) > layer(module)
    ]
    assert not up


def test_no_import_cycles() -> None:
    graph = {m: {t for t in _imports(m, tree, set(MODULES)) if t in MODULES and t != m} for m, tree in MODULES.items()}
    # A package's __init__ importing its own modules is not a cycle of the code's design.
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles


def test_the_core_touches_nothing_on_the_host() -> None:
    """Importing every core module loads neither lxml nor any module of the layers above."""
    core = sorted(m for m in MODULES if m.startswith("isogroup.core"))
    code = f"import sys; import {', '.join(core)}; "
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lxml', 'libvirt', 'pyudev', 'subprocess')"
    code += " or (m.startswith('isogroup.') and m.split('.')[1] not in ('core', 'errors', 'paths'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

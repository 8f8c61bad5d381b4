"""Data flows one way: the front end (spec, layers, graph, passes) knows no later stage, the
backends generate code from the graph without the runtime or the driver, the runtime loads
and runs without training or compiling, and training builds on the runtime. Checked on the
imports each module makes, at any depth (a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package folder -> the cnncompiler packages and modules it may not import
FORBIDDEN = {
    "cnncompiler/spec": ("backends", "runtime", "train", "compiler", "passes"),
    "cnncompiler/layers": ("backends", "runtime", "train", "compiler", "passes", "graph"),
    "cnncompiler/graph": ("backends", "runtime", "train", "compiler", "passes"),
    "cnncompiler/passes": ("backends", "runtime", "train", "compiler"),
    "backends": ("runtime", "train", "compiler", "compile_worker", "cli", "cli_build"),
    "cnncompiler/runtime": ("backends", "train", "compiler", "passes_unused"),
}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the cnncompiler modules a file imports (relative imports resolved
    against its package; backends/ installs as cnncompiler.backends)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "backends":
        parts = ["cnncompiler", *parts]
    package = parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("cnncompiler")}


def _cases():
    for folder, banned in FORBIDDEN.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield pytest.param(path, banned, id=str(path.relative_to(ROOT)))


@pytest.mark.parametrize("path, banned", list(_cases()))
def test_imports_flow_one_way(path, banned):
    bad = sorted(name for name in imported_modules(path)
                 if any(name == f"cnncompiler.{b}" or name.startswith(f"cnncompiler.{b}.")
                        for b in banned))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"

"""The pass manager: runs named passes in order and re-checks the graph after each one.

    g, reports = optimize(g, level=2)                  # -O2
    g, reports = optimize(g, passes=["fold-batchnorm"])  # --passes fold-batchnorm
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import networkx as nx

from ..errors import CnncError
from ..graph.build import layer_node
from ..graph.check import infer_shapes
from ..suggest import did_you_mean
from .cleanup import drop_dropout, drop_identity, eliminate_dead
from .fusion import fold_batchnorm, fuse_epilogue
from .rewrite import PassReport


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[nx.DiGraph], tuple[nx.DiGraph, PassReport]]
    summary: str


PASSES = {p.name: p for p in (
    Pass("eliminate-dead", eliminate_dead, "remove layers whose output reaches no model output"),
    Pass("drop-dropout", drop_dropout, "remove dropout (the identity at inference)"),
    Pass("drop-identity", drop_identity, "remove layers that pass their input through"),
    Pass("fold-batchnorm", fold_batchnorm, "fold batch norm into the conv/dense weights before it"),
    Pass("fuse-epilogue", fuse_epilogue,
         "fuse activations, batch norms and a residual add into the conv/dense before them"),
)}

LEVELS = {
    0: [],
    1: ["eliminate-dead", "drop-dropout", "drop-identity", "fold-batchnorm"],
    2: ["eliminate-dead", "drop-dropout", "drop-identity", "fold-batchnorm", "fuse-epilogue"],
}


def resolve_passes(level: int | None = None, passes: list[str] | None = None) -> list[Pass]:
    if passes is not None:
        out = []
        for name in passes:
            if name not in PASSES:
                hint = did_you_mean(name, PASSES)
                raise CnncError(f"unknown pass '{name}'" + (f"; {hint}" if hint else "")
                                + "; passes: " + ", ".join(PASSES))
            out.append(PASSES[name])
        return out
    if level not in LEVELS:
        raise CnncError(f"unknown optimisation level -O{level}; use -O0, -O1 or -O2")
    return [PASSES[n] for n in LEVELS[level]]


def optimize(g: nx.DiGraph, level: int = 2, passes: list[str] | None = None
             ) -> tuple[nx.DiGraph, list[PassReport]]:
    """Run the passes; the graph is re-checked after each, and must keep its output shapes."""
    reports = []
    # lists, not dicts: removing a dropout listed as an output next to its input makes that
    # input appear twice among the outputs
    want = [(o, layer_node(g, o).shape) for o in g.graph["outputs"]]
    for p in resolve_passes(level, passes):
        g, report = p.run(g)
        errors = [d for d in infer_shapes(g) if d.severity == "error"]
        got = [(o, layer_node(g, o).shape) for o in g.graph["outputs"]]
        if errors or [s for _, s in got] != [s for _, s in want]:
            detail = "; ".join(d.format() for d in errors) or f"outputs {want} became {got}"
            raise CnncError(f"internal error: pass '{p.name}' broke the graph: {detail}")
        reports.append(report)
    return g, reports


def format_reports(reports: list[PassReport]) -> str:
    lines = []
    for r in reports:
        lines += [f"{r.name}: {a}" for a in r.applied]
        lines += [f"{r.name}: declined: {d}" for d in r.declined]
        if not r.applied and not r.declined:
            lines.append(f"{r.name}: nothing to do")
    return "\n".join(lines)

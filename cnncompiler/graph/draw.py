"""Pictures of a checked graph: Graphviz DOT text, rendered to SVG or PNG.

``.dot`` is written directly. ``.svg`` and ``.png`` are rendered by Graphviz's ``dot`` when it
is installed; without it, SVG is drawn by a small built-in layered layout, and PNG asks for
Graphviz.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

import networkx as nx

from ..errors import CnncError
from ..layers import fmt_shape
from .build import layer_node, topo_layers


def _label(g: nx.DiGraph, name: str) -> str:
    node = layer_node(g, name)
    layer = node.layer
    if name == "input":
        return f"input\\n{fmt_shape(node.shape)}"
    keys = ", ".join(f"{k}={_short(v)}" for k, v in layer.settings().items()
                     if k in ("filters", "units", "kernel", "stride", "groups", "dilation", "rate"))
    return f"{name}\\n{layer.type_name}" + (f"\\n{keys}" if keys else "")


def _short(value) -> str:
    if isinstance(value, tuple) and value and all(v == value[0] for v in value):
        return str(value[0])
    return str(value).replace(" ", "")


def _quoted(text: str) -> str:
    """A DOT string literal; the spec's name may hold quotes or backslashes."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def to_dot(g: nx.DiGraph) -> str:
    """DOT text: one box per layer, edges labelled with the shape they carry."""
    ids = {n: f"n{i}" for i, n in enumerate(topo_layers(g))}
    lines = [f'digraph {_quoted(g.graph["name"])} {{', "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
             'fontname="Helvetica", fontsize=10];', '  edge [fontname="Helvetica", fontsize=9];']
    for n, nid in ids.items():
        label = _label(g, n).replace('"', '\\"')
        lines.append(f'  {nid} [label="{label}"];')
    for n, nid in ids.items():
        for src in dict.fromkeys(layer_node(g, n).inputs):
            shape = layer_node(g, src).shape
            lines.append(f'  {ids[src]} -> {nid} [label="{fmt_shape(shape) if shape else "?"}"];')
    for out in g.graph["outputs"]:
        lines.append(f'  {ids[out]} [penwidth=2];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layered_svg(g: nx.DiGraph) -> str:
    """An SVG drawn without Graphviz: layers ranked by longest path from the input."""
    order = topo_layers(g)
    rank = {}
    for n in order:
        rank[n] = max((rank[s] + 1 for s in layer_node(g, n).inputs), default=0)
    columns: dict[int, list[str]] = {}
    for n in order:
        columns.setdefault(rank[n], []).append(n)
    box_w, box_h, gap_x, gap_y = 170, 46, 30, 40
    width = max(len(c) for c in columns.values()) * (box_w + gap_x) + gap_x
    height = len(columns) * (box_h + gap_y) + gap_y
    pos = {}
    for r, names in columns.items():
        offset = (width - len(names) * (box_w + gap_x) + gap_x) / 2
        for i, n in enumerate(names):
            pos[n] = (offset + i * (box_w + gap_x), gap_y + r * (box_h + gap_y))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
             f'font-family="Helvetica" font-size="10">',
             '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="8" refY="4" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>']
    for n in order:
        x2, y2 = pos[n]
        for src in dict.fromkeys(layer_node(g, n).inputs):
            x1, y1 = pos[src]
            a = (x1 + box_w / 2, y1 + box_h)
            b = (x2 + box_w / 2, y2)
            parts.append(f'<line x1="{a[0]:.0f}" y1="{a[1]:.0f}" x2="{b[0]:.0f}" y2="{b[1]:.0f}" '
                         'stroke="#555" marker-end="url(#a)"/>')
            shape = layer_node(g, src).shape
            parts.append(f'<text x="{(a[0] + b[0]) / 2 + 4:.0f}" y="{(a[1] + b[1]) / 2 + 3:.0f}" '
                         f'fill="#333">{html.escape(fmt_shape(shape) if shape else "?")}</text>')
    for n in order:
        x, y = pos[n]
        stroke = 2 if n in g.graph["outputs"] else 1
        parts.append(f'<rect x="{x:.0f}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
                     f'fill="#eef3fb" stroke="#333" stroke-width="{stroke}"/>')
        for j, text in enumerate(_label(g, n).split("\\n")):
            parts.append(f'<text x="{x + box_w / 2:.0f}" y="{y + 14 + 12 * j}" '
                         f'text-anchor="middle">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render(g: nx.DiGraph, path: str | Path) -> str:
    """Write the picture to ``path`` (.dot, .svg or .png); returns how it was made."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("dot", "gv", "svg", "png"):
        what = f"unknown picture format '.{fmt}'" if fmt else "the name has no extension"
        raise CnncError(f"cannot draw to '{path}': {what}; use .svg, .png or .dot")
    dot_text = to_dot(g)
    dot = None if fmt in ("dot", "gv") else shutil.which("dot")
    if fmt == "png" and not dot:
        raise CnncError("drawing PNG needs Graphviz's 'dot' (apt-get install graphviz); "
                        "or draw to .svg or .dot instead")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt in ("dot", "gv"):
            path.write_text(dot_text, encoding="utf-8")
            return "dot text"
        if dot:
            return _run_graphviz(dot, fmt, dot_text, path)
        path.write_text(_layered_svg(g), encoding="utf-8")
        return "built-in layout"
    except OSError as exc:
        raise CnncError(f"cannot write {path}: {exc.strerror or exc}") from None


def _run_graphviz(dot: str, fmt: str, dot_text: str, path: Path) -> str:
    try:
        proc = subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=dot_text.encode(),
                              capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise CnncError(f"graphviz took more than 120 s to draw {path}; "
                        "draw to .dot and render it yourself") from None
    if proc.returncode != 0:
        raise CnncError(f"graphviz failed to draw {path}: "
                        f"{proc.stderr.decode(errors='replace').strip()}")
    return "graphviz"

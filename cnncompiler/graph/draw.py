"""Pictures of a checked graph: Graphviz DOT text, rendered to SVG or PNG.

``.dot`` is written directly. ``.svg`` and ``.png`` are rendered by Graphviz's ``dot`` when it
is installed; without it, SVG is drawn by a built-in layered (Sugiyama) layout from the
pure-Python grandalf, in which skip connections run beside the boxes, and PNG asks for Graphviz.
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
    if name in g.graph["inputs"]:
        return f"{name}\\ninput {fmt_shape(node.shape)}" if name != "input" else \
            f"input\\n{fmt_shape(node.shape)}"
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


# -- the built-in layout ----------------------------------------------------------------------
# Without Graphviz the picture is laid out by grandalf's Sugiyama layout: layers in ranks by
# longest path from the input, a route point ("dummy") in every rank that a long edge crosses, so
# a skip connection gets a column of its own beside the boxes. An edge runs straight down
# through each rank it crosses (at its route point, where no box stands) and as a curve across
# the gap between two ranks (where no box stands at all), so it never passes through a box.

_CHAR_WIDTH = 6.0      # px per character of 10 px Helvetica, a little generous
_LABEL_CHAR_WIDTH = 5.4  # and of the 9 px shape labels
_LINE_HEIGHT = 12.0
_BOX_PAD_X, _BOX_PAD_Y = 10.0, 7.0
_MIN_BOX_WIDTH = 60.0
_SPACE_X = 24.0        # between neighbours in a rank
_GAP_Y = 38.0          # between ranks: room for the curves and a shape label
_ROUTE_WIDTH = 8.0     # what a route point occupies in its rank
_PORT_STEP = 12.0      # between the ends of edges that meet one side of a box
_MARGIN = 12.0


class _View:
    """Size (w, h) and, once laid out, centre (xy) of a box or route point; grandalf reads
    and writes these attributes. ``band`` is the (top, bottom) of its rank."""

    def __init__(self, w: float, h: float):
        self.w, self.h = w, h
        self.xy: tuple[float, float] = (0.0, 0.0)
        self.band: tuple[float, float] = (0.0, 0.0)

    @property
    def left(self) -> float:
        return self.xy[0] - self.w / 2

    @property
    def top(self) -> float:
        return self.xy[1] - self.h / 2


# each edge (source, target) -> its route points, top to bottom
_Routes = dict[tuple[str, str], list[_View]]
# each edge -> the x where it leaves its source's bottom and reaches its target's top
_Ports = dict[tuple[str, str], tuple[float, float]]


def _box_view(lines: list[str]) -> _View:
    """A box big enough for its lines of text."""
    width = max(_MIN_BOX_WIDTH, _CHAR_WIDTH * max(len(line) for line in lines) + 2 * _BOX_PAD_X)
    return _View(width, _LINE_HEIGHT * len(lines) + 2 * _BOX_PAD_Y)


def _layout(g: nx.DiGraph, views: dict[str, _View]) -> _Routes:
    """Place every box (sets each view's xy and band); returns each edge's route points, the
    views in the ranks strictly between its two layers, top to bottom."""
    routes: _Routes = {}
    left = _MARGIN
    # grandalf lays out one connected part at a time; the parts stand side by side
    for names in _components(g):
        left = _layout_component(g, names, views, routes, left) + _SPACE_X
    return routes


def _layout_component(g: nx.DiGraph, names: list[str], views: dict[str, _View],
                      routes: _Routes, left: float) -> float:
    """Lay out one connected part with its left edge at ``left``, adding its edges' route
    points to ``routes``; returns where its right edge is."""
    from grandalf.graphs import Edge, Vertex, graph_core
    from grandalf.layouts import SugiyamaLayout

    vertices = {n: Vertex(n) for n in names}
    for n, vertex in vertices.items():
        vertex.view = views[n]
    edges = {(a, b): Edge(vertices[a], vertices[b]) for a, b in g.subgraph(names).edges}
    sugiyama = SugiyamaLayout(graph_core(list(vertices.values()), list(edges.values())))
    sugiyama.xspace, sugiyama.yspace = _SPACE_X, _GAP_Y
    # the graph is acyclic: no edge to turn round, and the roots are known
    sugiyama.init_all(roots=[vertices[n] for n in names if not g.in_degree(n)],
                      inverted_edges=[])
    inner_points = {key: [ctrl[r] for r in sorted(ctrl)[1:-1]]
                    for key, edge in edges.items() if (ctrl := sugiyama.ctrls.get(edge))}
    for points in inner_points.values():
        for point in points:
            point.view = _View(_ROUTE_WIDTH, _ROUTE_WIDTH)
    sugiyama.draw(3)  # three rounds of reducing crossings: cheap at the sizes of CNNs
    ranks = [list(rank) for rank in sugiyama.layers]
    for rank in ranks:
        _separate(rank)
    right = _move_to(ranks, left, _MARGIN)
    for rank in ranks:
        _set_band(rank)
    for key in edges:
        routes[key] = [point.view for point in inner_points.get(key, [])]
    return right


def _components(g: nx.DiGraph) -> list[list[str]]:
    """The connected parts of the graph, each in topological order, the input's part first."""
    order = {n: i for i, n in enumerate(topo_layers(g))}
    parts = [sorted(part, key=order.__getitem__) for part in nx.weakly_connected_components(g)]
    return sorted(parts, key=lambda part: order[part[0]])


def _separate(rank: list) -> None:
    """Push apart neighbours that overlap: grandalf's placement (the mean of four alignments)
    can leave boxes of different widths closer than their half-widths plus the spacing."""
    rank.sort(key=lambda v: v.view.xy[0])
    for before, after in zip(rank, rank[1:]):
        least = before.view.xy[0] + (before.view.w + after.view.w) / 2 + _SPACE_X
        if after.view.xy[0] < least:
            after.view.xy = (least, after.view.xy[1])


def _set_band(rank: list) -> None:
    """Every view of a rank learns the rank's top and bottom: between two bands, no box."""
    band = (min(v.view.top for v in rank), max(v.view.top + v.view.h for v in rank))
    for v in rank:
        v.view.band = band


def _move_to(ranks: list[list], left: float, top: float) -> float:
    """Move a laid-out component so that its top left corner is at (left, top); returns where
    its right edge then is."""
    views = [v.view for rank in ranks for v in rank]
    dx, dy = left - min(view.left for view in views), top - min(view.top for view in views)
    for view in views:
        view.xy = (view.xy[0] + dx, view.xy[1] + dy)
    return max(view.left + view.w for view in views)


def _ports(view: _View, neighbour_xs: list[float]) -> list[float]:
    """Where edges meet one side of a box, spread along it in the order of the x they come
    from or go to, so that they neither share a point nor cross at the box."""
    step = min(_PORT_STEP, (view.w - 2 * _BOX_PAD_X) / max(len(neighbour_xs) - 1, 1))
    first = view.xy[0] - step * (len(neighbour_xs) - 1) / 2
    slots = sorted(range(len(neighbour_xs)), key=lambda i: neighbour_xs[i])
    xs = [0.0] * len(neighbour_xs)
    for slot, i in enumerate(slots):
        xs[i] = first + slot * step
    return xs


def _heads_for(edge: tuple[str, str], views: dict[str, _View], routes: _Routes) -> float:
    """The x an edge heads for when it leaves its source: its first route point or target."""
    return (routes[edge] or [views[edge[1]]])[0].xy[0]


def _comes_from(edge: tuple[str, str], views: dict[str, _View], routes: _Routes) -> float:
    """The x an edge comes from when it reaches its target: its last route point or source."""
    return (routes[edge] or [views[edge[0]]])[-1].xy[0]


def _edge_ports(g: nx.DiGraph, views: dict[str, _View], routes: _Routes) -> _Ports:
    """The x where each edge leaves its source's bottom and reaches its target's top."""
    leave, reach = {}, {}
    for n in g.nodes:
        out_edges, in_edges = list(g.out_edges(n)), list(g.in_edges(n))
        leave.update(zip(out_edges, _ports(views[n], [_heads_for(e, views, routes)
                                                      for e in out_edges])))
        reach.update(zip(in_edges, _ports(views[n], [_comes_from(e, views, routes)
                                                     for e in in_edges])))
    return {e: (leave[e], reach[e]) for e in g.edges}


def _edge_path(source: _View, route: list[_View], target: _View, x_out: float,
               x_in: float) -> str:
    """SVG path data: down from the source's bottom to its band's bottom, then, for each rank
    below, a curve across the gap and a straight run down that rank's band (at the route point),
    ending at the target's top."""
    bottom = source.top + source.h
    parts = [f"M{x_out:.1f},{bottom:.1f}", _down(x_out, bottom, source.band[1])]
    x, y = x_out, source.band[1]
    for point in route:
        parts += [_across(x, y, point.xy[0], point.band[0]),
                  _down(point.xy[0], point.band[0], point.band[1])]
        x, y = point.xy[0], point.band[1]
    parts += [_across(x, y, x_in, target.band[0]), _down(x_in, target.band[0], target.top)]
    return " ".join(part for part in parts if part)


def _down(x: float, y_from: float, y_to: float) -> str:
    """A straight run down inside a band; nothing where there is no way to go."""
    return f"L{x:.1f},{y_to:.1f}" if y_to > y_from else ""


def _across(x_from: float, y_from: float, x_to: float, y_to: float) -> str:
    """A curve across the gap between two bands; its vertical tangents at both ends keep it
    inside the gap, where no box stands."""
    middle = (y_from + y_to) / 2
    return f"C{x_from:.1f},{middle:.1f} {x_to:.1f},{middle:.1f} {x_to:.1f},{y_to:.1f}"


def _shape_labels(g: nx.DiGraph, views: dict[str, _View], routes: _Routes,
                  ports: _Ports) -> list[tuple[float, float, str, str]]:
    """The shape each layer gives, written once in the gap under its box, beside where its
    edges leave, on the side they do not turn to: (x, baseline y, text-anchor, text)."""
    labels = []
    for n, view in views.items():
        leaving = [(ports[e][0], _heads_for(e, views, routes)) for e in g.out_edges(n)]
        if not leaving:
            continue
        turns_right = any(towards > start + 1 for start, towards in leaving)
        turns_left = any(towards < start - 1 for start, towards in leaving)
        if turns_right and not turns_left:
            x, anchor = min(start for start, _ in leaving) - 4, "end"
        else:
            x, anchor = max(start for start, _ in leaving) + 4, "start"
        shape = layer_node(g, n).shape
        labels.append((x, view.band[1] + 11, anchor, fmt_shape(shape) if shape else "?"))
    return labels


def _label_span(x: float, anchor: str, text: str) -> tuple[float, float]:
    """The left and right of a shape label, as far as a guess at the text's width goes."""
    width = _LABEL_CHAR_WIDTH * len(text)
    return (x - width, x) if anchor == "end" else (x, x + width)


def _bounds(views: dict[str, _View], routes: _Routes,
            labels: list[tuple[float, float, str, str]]) -> tuple[float, float, float]:
    """Left, right and bottom of the drawing with its margin (the top is 0); a label may stick
    out to the left of the first box."""
    spans = [_label_span(x, anchor, text) for x, _, anchor, text in labels]
    everything = list(views.values()) + [v for route in routes.values() for v in route]
    left = min([0.0] + [span[0] - _MARGIN for span in spans])
    right = max([v.left + v.w for v in everything] + [span[1] for span in spans]) + _MARGIN
    return left, right, max(v.band[1] for v in everything) + _MARGIN


def _svg_header(left: float, right: float, bottom: float) -> str:
    """The opening tag, sized to the drawing, and the arrowhead every edge ends in."""
    width = right - left
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{bottom:.0f}" '
            f'viewBox="{left:.0f} 0 {width:.0f} {bottom:.0f}" font-family="Helvetica" '
            'font-size="10">\n'
            '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" '
            'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>')


def _edge_svg(edge: tuple[str, str], views: dict[str, _View], route: list[_View],
              ports: tuple[float, float]) -> str:
    """One edge: its path, titled 'source -> target' (shown on hover)."""
    src, dst = edge
    d = _edge_path(views[src], route, views[dst], *ports)
    return (f'<g class="edge"><title>{html.escape(f"{src} -> {dst}")}</title>'
            f'<path d="{d}" fill="none" stroke="#555" marker-end="url(#arrow)"/></g>')


def _label_svg(x: float, y: float, anchor: str, text: str) -> str:
    """One shape label, in the gap under the box whose output it names."""
    return (f'<text class="shape" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="9" '
            f'fill="#333">{html.escape(text)}</text>')


def _box_svg(name: str, view: _View, lines: list[str], is_output: bool) -> str:
    """One layer: a rounded box with its text, titled with its name (shown on hover)."""
    parts = [f'<g class="layer"><title>{html.escape(name)}</title>',
             f'<rect x="{view.left:.1f}" y="{view.top:.1f}" width="{view.w:.1f}" '
             f'height="{view.h:.1f}" rx="6" fill="#eef3fb" stroke="#333" '
             f'stroke-width="{2 if is_output else 1}"/>']
    for j, text in enumerate(lines):
        baseline = view.top + _BOX_PAD_Y + _LINE_HEIGHT * (j + 1) - 3
        parts.append(f'<text x="{view.xy[0]:.1f}" y="{baseline:.1f}" text-anchor="middle">'
                     f'{html.escape(text)}</text>')
    return "".join(parts) + "</g>"


def _layered_svg(g: nx.DiGraph) -> str:
    """An SVG drawn without Graphviz, by the built-in layered layout: edges first, then the
    shape labels, then the boxes on top."""
    lines = {n: _label(g, n).split("\\n") for n in topo_layers(g)}
    views = {n: _box_view(text) for n, text in lines.items()}
    routes = _layout(g, views)
    ports = _edge_ports(g, views, routes)
    labels = _shape_labels(g, views, routes, ports)
    body = ([_edge_svg(edge, views, route, ports[edge]) for edge, route in routes.items()]
            + [_label_svg(*label) for label in labels]
            + [_box_svg(n, views[n], text, n in g.graph["outputs"]) for n, text in lines.items()])
    return "\n".join([_svg_header(*_bounds(views, routes, labels)), *body, "</svg>"]) + "\n"


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

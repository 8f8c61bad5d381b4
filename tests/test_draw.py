"""The pictures of ``cnnc graph``: the built-in layered layout (every layer one box, every edge
one path, no edge drawn through a box, shape labels outside the boxes) and Graphviz where it is
installed."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from cnncompiler.graph import draw, load_checked

from conftest import SPECS

SVG = "{http://www.w3.org/2000/svg}"

# a skip edge over six layers, one from the input to the end, and names of very different
# lengths, so that the boxes of one rank differ in width
LONG_SKIP = """\
name: long-skip
input: [4, 8, 8]
layers:
  - {name: stem, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: a_rather_long_layer_name, type: relu}
  - {name: b, type: conv2d, filters: 4, kernel: 1}
  - {name: c, type: relu}
  - {name: d, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: e, type: relu}
  - {name: skip_sum, type: add, inputs: [stem, e]}
  - {name: tail, type: relu}
  - {name: from_the_input, type: add, inputs: [input, tail]}
  - {type: flatten}
  - {name: fc, type: dense, units: 10}
"""


def random_dag_spec(seed: int) -> str:
    """A spec of relu chains joined by adds to random earlier layers: many long edges and
    ranks of boxes of very different widths, the cases where placement goes wrong."""
    rng = random.Random(seed)
    names = ["input"]
    lines = [f"name: random-{seed}", "input: [2]", "layers:"]
    for i in range(rng.randint(8, 30)):
        name = f"l{i}" + "_wide" * rng.choice([0, 0, 1, 4])
        if len(names) > 2 and rng.random() < 0.4:
            others = rng.sample(names[:-1], min(len(names) - 1, rng.choice([1, 1, 2])))
            inputs = ", ".join([names[-1]] + others)
            lines.append(f"  - {{name: {name}, type: add, inputs: [{inputs}]}}")
        else:
            lines.append(f"  - {{name: {name}, type: relu, inputs: [{rng.choice(names[-3:])}]}}")
        names.append(name)
    return "\n".join(lines) + "\n"


def spec_path(which: str, tmp_path: Path) -> Path:
    """A classic spec by its name, or 'long-skip' or 'random-SEED' written under tmp_path."""
    if which != "long-skip" and not which.startswith("random-"):
        return SPECS / f"{which}.yaml"
    path = tmp_path / f"{which}.yaml"
    path.write_text(LONG_SKIP if which == "long-skip" else random_dag_spec(int(which[7:])))
    return path


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """Draw a spec with the built-in layout (Graphviz hidden); returns its graph and SVG root."""
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)

    def _drawn(which: str):
        g, _ = load_checked(spec_path(which, tmp_path))
        out = tmp_path / "picture.svg"
        assert draw.render(g, out) == "built-in layout"
        return g, ET.parse(out).getroot()

    return _drawn


# -- reading the picture back -----------------------------------------------------------------

def boxes(root) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(layer name, (left, top, right, bottom)) for every layer box, in drawing order."""
    found = []
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "layer":
            rect = group.find(f"{SVG}rect")
            x, y = float(rect.get("x")), float(rect.get("y"))
            w, h = float(rect.get("width")), float(rect.get("height"))
            found.append((group.findtext(f"{SVG}title"), (x, y, x + w, y + h)))
    return found


def edge_paths(root) -> list[tuple[str, str]]:
    """(title 'source -> target', path data) for every edge."""
    return [(group.findtext(f"{SVG}title"), group.find(f"{SVG}path").get("d"))
            for group in root.iter(f"{SVG}g") if group.get("class") == "edge"]


def polyline(d: str, steps: int = 24) -> list[tuple[float, float]]:
    """The points of an SVG path made of absolute M, L and C commands; curves are cut into
    ``steps`` straight pieces, which stay inside the curve's control polygon."""
    tokens = re.findall(r"[MLC]|-?\d+(?:\.\d+)?(?:e-?\d+)?", d)
    points: list[tuple[float, float]] = []
    i = 0
    while i < len(tokens):
        command = tokens[i]
        assert command in "MLC", f"unexpected path command {command!r} in {d!r}"
        count = 6 if command == "C" else 2
        numbers = [float(t) for t in tokens[i + 1:i + 1 + count]]
        i += 1 + count
        if command == "C":
            points += bezier(points[-1], *zip(numbers[0::2], numbers[1::2]), steps)
        else:
            points.append((numbers[0], numbers[1]))
    return points


def bezier(p0, p1, p2, p3, steps: int) -> list[tuple[float, float]]:
    def at(t: float, a: float, b: float, c: float, d: float) -> float:
        return (1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t ** 2 * c + t ** 3 * d
    return [(at(k / steps, p0[0], p1[0], p2[0], p3[0]), at(k / steps, p0[1], p1[1], p2[1], p3[1]))
            for k in range(1, steps + 1)]


def enters(p, q, box, margin: float = 0.5) -> bool:
    """Whether the segment p-q passes through the interior of ``box`` (shrunk by ``margin``, so
    that an edge that starts or ends on a box's border does not count)."""
    left, top, right, bottom = box[0] + margin, box[1] + margin, box[2] - margin, box[3] - margin
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    # Liang-Barsky: clip the segment's parameter range against the four sides in turn
    for step, room in ((-dx, p[0] - left), (dx, right - p[0]), (-dy, p[1] - top),
                       (dy, bottom - p[1])):
        if step == 0:
            if room < 0:
                return False
            continue
        t = room / step
        if step < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def edges_through_boxes(root) -> list[tuple[str, str]]:
    """(edge, layer) for every edge whose path passes through the inside of a layer's box; the
    boxes of its own two layers count too, since a path should leave and reach them at their
    border."""
    found = []
    for title, d in edge_paths(root):
        points = polyline(d)
        xs, ys = [x for x, _ in points], [y for _, y in points]
        for name, box in boxes(root):
            # only boxes that meet the path's bounding box can be entered (this keeps it fast)
            if box[0] > max(xs) or box[2] < min(xs) or box[1] > max(ys) or box[3] < min(ys):
                continue
            if any(enters(p, q, box) for p, q in zip(points, points[1:])):
                found.append((title, name))
    return found


# -- the built-in layout ----------------------------------------------------------------------

# random-84 and random-126 are ranks where grandalf alone puts boxes on top of each other
SPECS_DRAWN = ["resnet18", "googlenet", "long-skip", "lenet5", "random-84", "random-126"]


@pytest.mark.parametrize("which", SPECS_DRAWN)
def test_every_layer_is_one_box_and_every_edge_one_path(drawn, which):
    g, root = drawn(which)
    assert root.tag == f"{SVG}svg"
    names = Counter(name for name, _ in boxes(root))
    assert names == Counter(list(g.nodes))
    titles = Counter(title for title, _ in edge_paths(root))
    assert titles == Counter(f"{src} -> {dst}" for src, dst in g.edges)


@pytest.mark.parametrize("which", SPECS_DRAWN)
def test_no_two_boxes_overlap(drawn, which):
    _, root = drawn(which)
    placed = boxes(root)
    overlapping = [(a, b) for i, (a, box_a) in enumerate(placed) for b, box_b in placed[:i]
                   if box_a[0] < box_b[2] and box_b[0] < box_a[2]
                   and box_a[1] < box_b[3] and box_b[1] < box_a[3]]
    assert overlapping == []


@pytest.mark.parametrize("which", SPECS_DRAWN + [f"random-{seed}" for seed in range(20, 30)])
def test_no_edge_passes_through_a_box(drawn, which):
    _, root = drawn(which)
    assert edges_through_boxes(root) == []


@pytest.mark.parametrize("which", ["resnet18", "googlenet", "long-skip"])
def test_every_edge_leaves_its_source_and_reaches_its_target(drawn, which):
    _, root = drawn(which)
    where = dict(boxes(root))
    for title, d in edge_paths(root):
        src, dst = title.split(" -> ")
        points = polyline(d)
        (x0, y0), (x1, y1) = points[0], points[-1]
        left, _, right, bottom = where[src]
        assert left < x0 < right and y0 == pytest.approx(bottom), title
        left, top, right, _ = where[dst]
        assert left < x1 < right and y1 == pytest.approx(top), title


@pytest.mark.parametrize("which", ["resnet18", "googlenet", "long-skip"])
def test_shape_labels_lie_outside_every_box(drawn, which):
    g, root = drawn(which)
    labels = [t for t in root.iter(f"{SVG}text") if t.get("class") == "shape"]
    # one label per layer whose output some other layer reads
    assert len(labels) == sum(1 for n in g.nodes if g.out_degree(n))
    for label in labels:
        x, y = float(label.get("x")), float(label.get("y"))
        # generous: 6 px a character at 9 px Helvetica, from 8 px above the baseline to 3 below
        width = 6 * len(label.text)
        left = x - width if label.get("text-anchor") == "end" else x
        extent = (left, y - 8, left + width, y + 3)
        overlapping = [name for name, box in boxes(root)
                       if extent[0] < box[2] and box[0] < extent[2]
                       and extent[1] < box[3] and box[1] < extent[3]]
        assert overlapping == [], f"label {label.text!r} at ({x}, {y}) overlaps {overlapping}"


def test_the_skip_edge_is_routed_beside_the_chain(drawn):
    _, root = drawn("long-skip")
    where = dict(boxes(root))
    path = dict(edge_paths(root))["stem -> skip_sum"]
    xs = [x for x, _ in polyline(path)]
    chain = where["c"]
    assert max(xs) >= chain[2] or min(xs) <= chain[0], "the skip edge runs down the chain"


def test_the_check_finds_an_edge_drawn_through_a_box():
    """The geometric check itself: an edge from a to c drawn straight down through b."""
    picture = f"""<svg xmlns="{SVG[1:-1]}">
      <g class="layer"><title>a</title><rect x="0" y="0" width="100" height="40"/></g>
      <g class="layer"><title>b</title><rect x="0" y="80" width="100" height="40"/></g>
      <g class="layer"><title>c</title><rect x="0" y="160" width="100" height="40"/></g>
      <g class="edge"><title>a -&gt; c</title><path d="M50,40 L50,60 C50,100 50,120 50,160"/></g>
      <g class="edge"><title>a -&gt; b</title><path d="M50,40 C50,60 50,60 50,80"/></g>
      <g class="edge"><title>b -&gt; c</title><path d="M40,120 L40,160"/></g>
    </svg>"""
    assert edges_through_boxes(ET.fromstring(picture)) == [("a -> c", "b")]


def test_importing_cnnc_does_not_load_the_layout_library():
    code = ("import sys, cnncompiler, cnncompiler.cli, cnncompiler.graph.draw; "
            "print('grandalf' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- Graphviz ---------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graphviz_draws_every_layer_and_edge(tmp_path):
    g, _ = load_checked(SPECS / "resnet18.yaml")
    out = tmp_path / "resnet18.svg"
    assert draw.render(g, out) == "graphviz"
    groups = Counter(group.get("class") for group in ET.parse(out).getroot().iter(f"{SVG}g"))
    assert groups["node"] == g.number_of_nodes() and groups["edge"] == g.number_of_edges()

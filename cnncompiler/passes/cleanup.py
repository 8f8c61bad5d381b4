"""Inference simplifications: drop dropout, identity-like layers, and dead layers."""

from __future__ import annotations

import networkx as nx

from ..graph.build import layer_node
from ..layers.activation import Dropout, Identity
from ..layers.adaptive import AdaptivePool2d
from ..layers.dense import Flatten
from ..layers.merge import Concat
from ..layers.pool import AvgPoolBase, MaxPoolBase
from .rewrite import PassReport, bypass, copy_graph


def drop_dropout(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Dropout is the identity at inference: remove it."""
    g, report = copy_graph(g), PassReport("drop-dropout")
    for name in [n for n in g if isinstance(layer_node(g, n).layer, Dropout)]:
        bypass(g, name)
        report.applied.append(f"removed dropout '{name}'")
    return g, report


def _is_identity(layer, in_shapes) -> str | None:
    """Why a layer computes its input unchanged, or None."""
    if isinstance(layer, Identity):
        return "identity layer"
    # a max or average of one element (an Lp pool of one is |x|, not x)
    if isinstance(layer, (MaxPoolBase, AvgPoolBase)) and set(layer.kernel) == {1} and \
            set(layer.stride) == {1} and \
            (layer.padding in ("valid", "same") or all(p == (0, 0) for p in layer.padding)):
        return "1-wide pooling with stride 1"
    # bins of one position each: VGG's and AlexNet's avgpool at their own input size
    if isinstance(layer, AdaptivePool2d) and tuple(layer.output_size) == tuple(in_shapes[0][1:]):
        return "adaptive pooling to its input's size"
    if isinstance(layer, Concat) and len(in_shapes) == 1:
        return "concat of one input"
    if isinstance(layer, Flatten) and len(in_shapes[0]) == 1:
        return "flatten of a flat input"
    return None


def drop_identity(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Remove layers that pass their input through unchanged."""
    g, report = copy_graph(g), PassReport("drop-identity")
    for name in list(g):
        node = layer_node(g, name)
        if len(node.inputs) != 1:
            continue
        why = _is_identity(node.layer, [layer_node(g, node.inputs[0]).shape])
        if why:
            bypass(g, name)
            report.applied.append(f"removed '{name}' ({why})")
    return g, report


def eliminate_dead(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Remove layers whose output reaches no model output."""
    g, report = copy_graph(g), PassReport("eliminate-dead")
    live = set(g.graph["inputs"])  # an unused input is still an argument of the model
    for out in g.graph["outputs"]:
        live |= nx.ancestors(g, out) | {out}
    for name in [n for n in g if n not in live]:
        g.remove_node(name)
        report.applied.append(f"removed '{name}' (reaches no output)")
    return g, report

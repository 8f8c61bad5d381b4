"""Inference simplifications: drop dropout, identity-like layers, and dead layers."""

from __future__ import annotations

import networkx as nx

from .rewrite import PassReport, bypass, copy_graph


def drop_dropout(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Dropout is the identity at inference: remove it."""
    g, report = copy_graph(g), PassReport("drop-dropout")
    for name in [n for n in g if g.nodes[n]["layer"].type_name == "dropout"]:
        bypass(g, name)
        report.applied.append(f"removed dropout '{name}'")
    return g, report


_PLAIN_POOLS = ("maxpool2d", "avgpool2d", "maxpool1d", "avgpool1d")


def _is_identity(layer, in_shapes) -> str | None:
    """Why a layer computes its input unchanged, or None."""
    t = layer.type_name
    if t == "identity":
        return "identity layer"
    if t in _PLAIN_POOLS and set(layer.kernel) == {1} and set(layer.stride) == {1} and \
            (layer.padding in ("valid", "same") or all(p == (0, 0) for p in layer.padding)):
        return "1-wide pooling with stride 1"
    if t == "concat" and len(in_shapes) == 1:
        return "concat of one input"
    if t == "flatten" and len(in_shapes[0]) == 1:
        return "flatten of a flat input"
    return None


def drop_identity(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Remove layers that pass their input through unchanged."""
    g, report = copy_graph(g), PassReport("drop-identity")
    for name in list(g):
        node = g.nodes[name]
        if name == "input" or len(node["inputs"]) != 1:
            continue
        why = _is_identity(node["layer"], node.get("in_shapes") or [g.nodes[node["inputs"][0]]["shape"]])
        if why:
            bypass(g, name)
            report.applied.append(f"removed '{name}' ({why})")
    return g, report


def eliminate_dead(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Remove layers whose output reaches no model output."""
    g, report = copy_graph(g), PassReport("eliminate-dead")
    live = {"input"}
    for out in g.graph["outputs"]:
        live |= nx.ancestors(g, out) | {out}
    for name in [n for n in g if n not in live]:
        g.remove_node(name)
        report.applied.append(f"removed '{name}' (reaches no output)")
    return g, report

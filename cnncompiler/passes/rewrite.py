"""Small graph edits that passes are made of. Each works on a copy the pass owns."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from ..graph.build import layer_node, param_names, set_inputs


@dataclass
class PassReport:
    """What a pass did, and what it looked at and declined, with the reason."""

    name: str
    applied: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"pass": self.name, "applied": self.applied, "declined": self.declined}


def copy_graph(g: nx.DiGraph) -> nx.DiGraph:
    """A copy whose node and graph attribute dicts are new (values are shared, never mutated)."""
    h = g.copy()
    h.graph = dict(g.graph)
    h.graph["outputs"] = list(g.graph["outputs"])
    return h


def redirect_users(g: nx.DiGraph, old: str, new: str) -> None:
    """Every reader of ``old`` (and the graph outputs) reads ``new`` instead."""
    for user in list(g.successors(old)):
        set_inputs(g, user, tuple(new if s == old else s for s in layer_node(g, user).inputs))
    g.graph["outputs"] = [new if o == old else o for o in g.graph["outputs"]]


def bypass(g: nx.DiGraph, name: str) -> None:
    """Remove a one-input layer, connecting its readers to its input."""
    (src,) = layer_node(g, name).inputs
    redirect_users(g, name, src)
    g.remove_node(name)


def consumers(g: nx.DiGraph, name: str) -> list[str]:
    """Readers of ``name``, counting a graph output as a reader called '<output>'."""
    readers = list(g.successors(name))
    return readers + (["<output>"] * g.graph["outputs"].count(name))


def absorb(g: nx.DiGraph, keep: str, gone: str, layer, inputs, extra_params: dict) -> None:
    """Replace ``keep`` with ``layer`` reading ``inputs``, taking over ``gone``'s readers,
    and remove ``gone``. ``extra_params`` maps new local names to global parameter names."""
    names = dict(param_names(g, keep)) | extra_params
    node = g.nodes[keep]
    node["layer"] = layer
    node["param_names"] = names
    node["merged"] = tuple(node.get("merged", (keep,))) + (gone,)
    node.pop("param_specs", None)
    set_inputs(g, keep, tuple(inputs))
    redirect_users(g, gone, keep)
    g.remove_node(gone)

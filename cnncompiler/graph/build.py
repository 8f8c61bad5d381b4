"""Stage 2: the parsed spec becomes a networkx DiGraph of layer nodes.

Node ``n`` (the layer's global name, ``'input'`` for the model input) holds:

- ``layer``: the Layer dataclass (type and settings),
- ``inputs``: the producers in order (a DiGraph keeps one edge per pair, so the order and
  repeats such as ``concat: [a, a]`` live here; edges mirror them for graph algorithms),
- ``loc`` and ``notes``: where the layer was written, and the block expansion it came from,
- after shape inference, ``shape`` (per sample) and ``param_specs``.

Graph attributes: ``name``, ``path``, ``input_shape``, ``outputs``, ``train``, ``text``.
Every later stage (checker, passes, lowering, runtime) works on this graph.
"""

from __future__ import annotations

import networkx as nx

from ..layers import Input
from ..spec import Spec


def build_graph(spec: Spec) -> nx.DiGraph:
    g = nx.DiGraph(name=spec.name, path=spec.path, input_shape=spec.input_shape,
                   outputs=list(spec.outputs), train=spec.train, text=spec.text)
    g.add_node("input", layer=Input(shape=spec.input_shape), inputs=(), loc=spec.input_loc,
               notes=())
    for decl in spec.layers:
        g.add_node(decl.name, layer=decl.layer, inputs=decl.inputs, loc=decl.loc,
                   notes=decl.notes)
        for src in decl.inputs:
            g.add_edge(src, decl.name)
    return g


def node_inputs(g: nx.DiGraph, name: str) -> tuple[str, ...]:
    return g.nodes[name]["inputs"]


def param_names(g: nx.DiGraph, name: str) -> dict[str, str]:
    """Local parameter name -> global name (``conv1.weight``). Passes that merge layers keep
    the original global names here, so weights saved for the spec still load."""
    node = g.nodes[name]
    if "param_names" in node:
        return node["param_names"]
    return {local: f"{name}.{local}" for local in node.get("param_specs", {})}


def topo_layers(g: nx.DiGraph) -> list[str]:
    """Layer names in a stable topological order (spec order where the graph allows)."""
    order = {n: i for i, n in enumerate(g.nodes)}
    # a spec lists a layer after its inputs almost always: then spec order is the answer, and
    # checking that is linear (the general sort took 0.28 s for 20,000 layers)
    if all(order[u] < order[v] for u, v in g.edges):
        return list(g.nodes)
    return list(nx.lexicographical_topological_sort(g, key=lambda n: order[n]))


def users(g: nx.DiGraph, name: str) -> list[str]:
    """Layers reading ``name``'s output (graph outputs not counted)."""
    return list(g.successors(name))

"""The compiled function's weight arguments as arrays, computed with numpy alone.

Their order and shapes are the graph's (``graph.signature``); here the spec's PyTorch-named
weights become those arguments (``Layer.prepare``: batch norm folded, for instance), each in
the layout the backend asked for.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..graph import layer_node, param_names, topo_layers
from ..graph.layouts import apply_layout

def kernel_arguments(g: nx.DiGraph, params: dict[str, np.ndarray],
                     layouts: dict[str, str] | None = None) -> list[np.ndarray]:
    """The prepared weights in signature order, from the spec's (PyTorch-named) weights, each
    in the layout the backend asked for (``layouts``: argument name -> layout string)."""
    layouts = layouts or {}
    out = []
    for node in topo_layers(g):
        names = param_names(g, node)
        if not names:
            continue
        local = {k: params[glob] for k, glob in names.items()}
        prepared = layer_node(g, node).layer.prepare(local)
        out += [np.ascontiguousarray(apply_layout(layouts.get(f"{node}:{k}"), prepared[k]),
                                     dtype=np.float32) for k in sorted(prepared)]
    return out

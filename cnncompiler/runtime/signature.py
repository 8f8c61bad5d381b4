"""The compiled function's weight arguments as arrays, computed with numpy alone.

Their order and shapes are the graph's (``graph.signature``); here the spec's PyTorch-named
weights become those arguments (``Layer.prepare``: batch norm folded, for instance), each in
the layout the backend asked for, and checked against the shape the compiled function
declared for it (``layout_shape`` of the graph's shape): the CPU functions do not check their
weights again on every call (``backends/cpu/arg_checks.py``).
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..errors import ArtifactError
from ..graph import layer_node, param_names, topo_layers
from ..graph.layouts import apply_layout, layout_shape
from ..graph.signature import prepared_shapes


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
        shapes = prepared_shapes(g, node)
        out += [_argument(node, k, prepared[k], shapes.get(k), layouts.get(f"{node}:{k}"))
                for k in sorted(prepared)]
    return out


def _argument(node: str, key: str, array: np.ndarray, shape, layout: str | None) -> np.ndarray:
    """One prepared weight in ``layout``, as the compiled function declared it: float32,
    C-contiguous, of ``layout_shape(layout, shape)``."""
    packed = np.ascontiguousarray(apply_layout(layout, array), dtype=np.float32)
    want = None if shape is None else layout_shape(layout, shape)
    if packed.shape != want:
        raise ArtifactError(f"layer '{node}': its prepared argument '{key}' has shape "
                            f"{packed.shape} in layout {layout or 'plain'}, where the compiled "
                            f"function takes {want}; recompile the model with this cnnc")
    return packed

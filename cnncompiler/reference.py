"""The numpy reference executor: runs a checked graph layer by layer with each layer's own
numpy reference. It is the oracle compiled code is tested against, in float32 or float64.

    outputs = run_reference(g, x, params)            # inference
    outputs = run_reference(g, x, params, training=True, state=state)
"""

from __future__ import annotations

import numpy as np
import networkx as nx

from .graph import by_input_name, layer_node, param_names, topo_layers


def init_params(g: nx.DiGraph, seed: int = 0) -> dict[str, np.ndarray]:
    """New weights for every layer, initialised as PyTorch does, from one seeded generator.

    Layers are visited in graph order, so the same spec and seed always give the same weights.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name in topo_layers(g):
        names = param_names(g, name)
        for local, spec in layer_node(g, name).param_specs.items():
            out[names[local]] = spec.initial(rng)
    return out


def layer_params(g: nx.DiGraph, name: str, params: dict, dtype) -> dict[str, np.ndarray]:
    return {local: np.asarray(params[glob], dtype=dtype)
            for local, glob in param_names(g, name).items()}


def run_reference(g: nx.DiGraph, x: np.ndarray, params: dict, *, dtype=None,
                  training: bool = False, state: dict | None = None,
                  keep: bool = False) -> dict[str, np.ndarray]:
    """Run the graph on ``x`` (an array, or {input name: array} for several inputs); returns
    {output name: array}, or every layer's value with ``keep``.

    With ``training``, layers use their training behaviour; ``state`` (a dict) receives each
    layer's updates (batch-norm running statistics, dropout masks) under its name.
    """
    fed = by_input_name(g, x)
    dtype = np.dtype(dtype or next(iter(fed.values())).dtype)
    values = {name: np.asarray(fed[name], dtype) for name in g.graph["inputs"]}
    state = {} if state is None else state
    for name in topo_layers(g):
        if name in values:
            continue
        node = layer_node(g, name)
        xs = [values[src] for src in node.inputs]
        p = layer_params(g, name, params, dtype)
        if training:
            layer_state = state.setdefault(name, {})
            y = node.layer.reference_train(xs, p, layer_state)
        else:
            y = node.layer.reference(xs, p)
        values[name] = np.asarray(y, dtype)
    if keep:
        return values
    return {out: values[out] for out in g.graph["outputs"]}

"""The compiled function's weight arguments ("kernel arguments"), computed without TVM.

The compiled ``main(x, *kernel_args)`` takes each layer's prepared weights (``Layer.prepare``:
batch norm folded, for instance) in a fixed order. Both the compiler and the runtime derive
that order and those arrays from the optimised graph, so a loaded artifact can turn
PyTorch-named weights into kernel arguments with numpy alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..graph import param_names, topo_layers
from .layouts import apply_layout

FLOAT = "float32"


@dataclass(frozen=True)
class KernelArg:
    """One argument of the compiled function: a prepared weight of one layer."""

    node: str
    key: str
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.node}:{self.key}"


def kernel_name(node: str) -> str:
    """A PrimFunc name for a layer (TVM names are C identifiers)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", node)
    return name if name[:1].isalpha() else f"l_{name}"


def prepared_shapes(g: nx.DiGraph, node: str) -> dict[str, tuple[int, ...]]:
    """Shapes of a layer's kernel arguments, found by preparing zero weights."""
    specs = g.nodes[node].get("param_specs", {})
    if not specs:
        return {}
    zeros = {local: np.zeros(spec.shape, np.float32) for local, spec in specs.items()}
    return {k: tuple(v.shape) for k, v in g.nodes[node]["layer"].prepare(zeros).items()}


def kernel_signature(g: nx.DiGraph) -> list[KernelArg]:
    """The compiled function's weight arguments, in order."""
    return [KernelArg(node, key, shape)
            for node in topo_layers(g)
            for key, shape in sorted(prepared_shapes(g, node).items())]


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
        prepared = g.nodes[node]["layer"].prepare(local)
        out += [np.ascontiguousarray(apply_layout(layouts.get(f"{node}:{k}"), prepared[k]),
                                     dtype=np.float32) for k in sorted(prepared)]
    return out

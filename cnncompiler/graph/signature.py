"""The compiled function's weight arguments ("kernel arguments"): their names, order and
shapes, by arithmetic on the checked graph. The compiler and the runtime both read them here.

The compiled ``main(x, *kernel_args)`` takes each layer's prepared weights (``Layer.prepare``:
batch norm folded, for instance) in a fixed order: layers in graph order, each layer's
arguments by name.

    [a.name for a in kernel_signature(g)][:3]
    # ['conv1:bias', 'conv1:weight', 'layer1.0.conv1:bias']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import networkx as nx

from ..layers import BATCH
from .build import layer_node, topo_layers


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
    """Shapes of a layer's kernel arguments, from its shape rule (``kernel_arg_shapes``)."""
    data = layer_node(g, node)
    if not data.param_specs:
        return {}
    in_shapes = [layer_node(g, src).shape for src in data.inputs]
    return {k: tuple(s) for k, s in data.layer.kernel_arg_shapes(in_shapes).items()}


def leading_axis(g: nx.DiGraph, name: str) -> str:
    """The symbolic first axis of a node's tensor, as signatures, manifests and ONNX name it:
    'N', the batch's samples, or 'R_<input>', the rows of an input without the batch axis."""
    lead = layer_node(g, name).lead
    return "N" if lead in (None, BATCH) else f"R_{lead}"


def kernel_signature(g: nx.DiGraph) -> list[KernelArg]:
    """The compiled function's weight arguments, in order."""
    return [KernelArg(node, key, shape)
            for node in topo_layers(g)
            for key, shape in sorted(prepared_shapes(g, node).items())]

"""Fusion: a conv or dense layer and the batch norms, activations and residual add after it
become one ``fused`` layer, lowered to one kernel.

    conv2d -> batchnorm -> add(shortcut) -> relu     ==>    fused(conv2d; bn folded, add, relu)

A layer is only absorbed when the layer before it has no other reader: its output would
otherwise be needed on its own. Each pass reports what it fused and what it declined, and why.
"""

from __future__ import annotations

import networkx as nx

from ..graph.build import layer_node, param_names, topo_layers
from ..layers.conv import ConvBase
from ..layers.dense import Dense
from ..layers.fused import Fused, step_arg
from ..layers.merge import Add
from ..layers.norm import BatchNorm
from ..layers.pointwise import Pointwise
from .rewrite import PassReport, absorb, consumers, copy_graph

# the layers a kernel with an epilogue computes first: a sum of products per output element
BASES = (ConvBase, Dense)


def _fusable(layer) -> bool:
    return isinstance(layer, (*BASES, Fused))


def _as_fused(layer) -> Fused:
    return layer if isinstance(layer, Fused) else Fused(base=layer, steps=())


def _sole_reader(g: nx.DiGraph, name: str) -> tuple[str | None, str]:
    readers = consumers(g, name)
    if len(readers) == 1 and readers[0] != "<output>":
        return readers[0], ""
    shown = ", ".join(f"'{r}'" if r != "<output>" else "the model output" for r in readers)
    return None, f"'{name}' has {len(readers)} readers ({shown})"


def _step_params(g: nx.DiGraph, layer: str, index: int) -> dict[str, str]:
    return {step_arg(index, local): glob for local, glob in param_names(g, layer).items()}


def fold_batchnorm(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Fold a batch norm straight after a conv or dense layer into its weights and bias."""
    g, report = copy_graph(g), PassReport("fold-batchnorm")
    for name in topo_layers(g):
        if name not in g or not _fusable(layer_node(g, name).layer):
            continue
        while True:
            fused = _as_fused(layer_node(g, name).layer)
            bns = [r for r in g.successors(name) if isinstance(layer_node(g, r).layer, BatchNorm)]
            if not bns:
                break
            reader, why = _sole_reader(g, name)
            if reader is None:
                report.declined.append(f"batchnorm '{bns[0]}' not folded into '{name}': {why}")
                break
            if fused.folded != len(fused.steps):
                report.declined.append(
                    f"batchnorm '{reader}' not folded into '{name}': it follows "
                    f"{fused.steps[-1].type_name}, so it cannot change the weights (fuse-epilogue "
                    "applies it as a per-channel scale and shift)")
                break
            new = Fused(base=fused.base, steps=fused.steps + (layer_node(g, reader).layer,))
            absorb(g, name, reader, new, layer_node(g, name).inputs,
                   _step_params(g, reader, len(fused.steps)))
            report.applied.append(f"folded batchnorm '{reader}' into {fused.base.type_name} "
                                  f"'{name}' weights")
    return g, report


def _epilogue_step(g, name, reader, fused: Fused):
    """(step, inputs, extra params) to absorb ``reader`` after ``name``, or (None, reason)."""
    layer = layer_node(g, reader).layer
    inputs = layer_node(g, name).inputs
    if isinstance(layer, (Pointwise, BatchNorm)):
        return (layer, inputs, _step_params(g, reader, len(fused.steps))), None
    if isinstance(layer, Add):
        add_inputs = layer_node(g, reader).inputs
        if len(add_inputs) != 2:
            return None, f"add '{reader}' has {len(add_inputs)} inputs; a kernel fuses one residual"
        if add_inputs[0] == add_inputs[1]:
            return None, f"add '{reader}' adds '{name}' to itself"
        if fused.has_residual:
            return None, f"'{name}' already fuses a residual add"
        other = add_inputs[1] if add_inputs[0] == name else add_inputs[0]
        return (layer, (inputs[0], other), {}), None
    return None, ""


def fuse_epilogue(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Absorb activations, later batch norms and one residual add into the conv/dense before."""
    g, report = copy_graph(g), PassReport("fuse-epilogue")
    for name in topo_layers(g):
        if name not in g or not _fusable(layer_node(g, name).layer):
            continue
        while True:
            fused = _as_fused(layer_node(g, name).layer)
            reader, why = _sole_reader(g, name)
            if reader is None:
                fusable = [r for r in g.successors(name)
                           if _epilogue_step(g, name, r, fused)[0] is not None]
                if fusable:
                    report.declined.append(f"'{fusable[0]}' not fused into '{name}': {why}")
                break
            found, reason = _epilogue_step(g, name, reader, fused)
            if found is None:
                if reason:
                    report.declined.append(f"'{reader}' not fused into '{name}': {reason}")
                break
            step, inputs, extra = found
            new = Fused(base=fused.base, steps=fused.steps + (step,))
            absorb(g, name, reader, new, inputs, extra)
            report.applied.append(f"fused {step.type_name} "
                                  f"'{reader}' into '{name}' ({new.describe()})")
    return g, report

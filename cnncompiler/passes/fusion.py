"""Fusion: a conv or dense layer and the batch norms, activations and residual add after it
become one ``fused`` layer, lowered to one kernel.

    conv2d -> batchnorm -> add(shortcut) -> relu     ==>    fused(conv2d; bn folded, add, relu)

A layer is only absorbed when the layer before it has no other reader: its output would
otherwise be needed on its own. Each pass reports what it fused and what it declined, and why.
"""

from __future__ import annotations

import networkx as nx

from ..graph.build import param_names, topo_layers
from ..layers.fused import ACTIVATIONS, Fused, activation_step
from .rewrite import PassReport, absorb, consumers, copy_graph

BASES = ("conv2d", "conv1d", "dense")


def _fusable(layer) -> bool:
    return layer.type_name in BASES or layer.type_name == "fused"


def _as_fused(layer) -> Fused:
    return layer if layer.type_name == "fused" else Fused(base=layer, steps=())


def _sole_reader(g: nx.DiGraph, name: str) -> tuple[str | None, str]:
    readers = consumers(g, name)
    if len(readers) == 1 and readers[0] != "<output>":
        return readers[0], ""
    shown = ", ".join(f"'{r}'" if r != "<output>" else "the model output" for r in readers)
    return None, f"'{name}' has {len(readers)} readers ({shown})"


def _bn_params(g: nx.DiGraph, bn: str, index: int) -> dict[str, str]:
    return {f"{index}.{local}": glob for local, glob in param_names(g, bn).items()}


def fold_batchnorm(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Fold a batch norm straight after a conv or dense layer into its weights and bias."""
    g, report = copy_graph(g), PassReport("fold-batchnorm")
    for name in topo_layers(g):
        if name not in g or not _fusable(g.nodes[name]["layer"]):
            continue
        while True:
            fused = _as_fused(g.nodes[name]["layer"])
            bns = [r for r in g.successors(name) if g.nodes[r]["layer"].type_name == "batchnorm"]
            if not bns:
                break
            reader, why = _sole_reader(g, name)
            if reader is None:
                report.declined.append(f"batchnorm '{bns[0]}' not folded into '{name}': {why}")
                break
            if fused.folded != len(fused.steps):
                report.declined.append(
                    f"batchnorm '{reader}' not folded into '{name}': it follows "
                    f"{fused.steps[-1][0]}, so it cannot change the weights (fuse-epilogue "
                    "applies it as a per-channel scale and shift)")
                break
            step = ("batchnorm", g.nodes[reader]["layer"].eps)
            new = Fused(base=fused.base, steps=fused.steps + (step,))
            absorb(g, name, reader, new, g.nodes[name]["inputs"],
                   _bn_params(g, reader, len(fused.steps)))
            report.applied.append(f"folded batchnorm '{reader}' into {fused.base.type_name} "
                                  f"'{name}' weights")
    return g, report


def _epilogue_step(g, name, reader, fused: Fused):
    """(step, inputs, extra params) to absorb ``reader`` after ``name``, or (None, reason)."""
    layer = g.nodes[reader]["layer"]
    t = layer.type_name
    inputs = g.nodes[name]["inputs"]
    if t in ACTIVATIONS:
        return (activation_step(layer), inputs, {}), None
    if t == "batchnorm":
        return (("batchnorm", layer.eps), inputs, _bn_params(g, reader, len(fused.steps))), None
    if t == "add":
        add_inputs = g.nodes[reader]["inputs"]
        if len(add_inputs) != 2:
            return None, f"add '{reader}' has {len(add_inputs)} inputs; a kernel fuses one residual"
        if add_inputs[0] == add_inputs[1]:
            return None, f"add '{reader}' adds '{name}' to itself"
        if fused.has_residual:
            return None, f"'{name}' already fuses a residual add"
        other = add_inputs[1] if add_inputs[0] == name else add_inputs[0]
        return (("add",), (inputs[0], other), {}), None
    return None, ""


def fuse_epilogue(g: nx.DiGraph) -> tuple[nx.DiGraph, PassReport]:
    """Absorb activations, later batch norms and one residual add into the conv/dense before."""
    g, report = copy_graph(g), PassReport("fuse-epilogue")
    for name in topo_layers(g):
        if name not in g or not _fusable(g.nodes[name]["layer"]):
            continue
        while True:
            fused = _as_fused(g.nodes[name]["layer"])
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
            report.applied.append(f"fused {step[0]} "
                                  f"'{reader}' into '{name}' ({new.describe()})")
    return g, report

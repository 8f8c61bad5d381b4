"""Which layers precision ``mixed`` computes on tensor cores, and whether float16 holds their
weights: facts about the optimised graph that the compiler (before building) and the runtime
(before new weights reach a built model) both check.

    model = cnncompiler.load("build/resnet18")      # compiled with --precision mixed
    model.load_params("finetuned.safetensors")      # InputError if a folded weight > 65504
"""

from __future__ import annotations

import numpy as np

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


def runs_on_tensor_cores(layer) -> bool:
    """Does ``mixed`` compute this layer (a conv or dense, possibly fused) on tensor cores?
    Grouped and depthwise convolutions keep their float32 schedules."""
    from cnncompiler.layers.conv import ConvBase
    from cnncompiler.layers.dense import Dense
    from cnncompiler.layers.fused import Fused

    base = layer.base if isinstance(layer, Fused) else layer
    if isinstance(base, Dense):
        return True
    return isinstance(base, ConvBase) and getattr(base, "groups", 1) == 1


def tensor_core_layers(g) -> list[str]:
    """The optimised graph's layers that ``mixed`` runs on tensor cores, in graph order."""
    from cnncompiler.graph import layer_node, topo_layers

    return [name for name in topo_layers(g) if name not in g.graph["inputs"]
            and runs_on_tensor_cores(layer_node(g, name).layer)]


def fp16_overflow(g, params: dict) -> tuple[str, float] | None:
    """The first tensor-core layer whose weight, in the form the kernel reads it (batch norm
    folded in), float16 cannot hold, with its largest magnitude; None when every one fits.
    A NaN counts as not held."""
    from cnncompiler.graph import layer_node, param_names

    for name in tensor_core_layers(g):
        names = param_names(g, name)
        local = {k: params[glob] for k, glob in names.items()}
        weight = np.asarray(layer_node(g, name).layer.prepare(local)["weight"], np.float64)
        largest = float(np.abs(weight).max()) if weight.size else 0.0
        if not largest <= FP16_MAX:
            return name, largest
    return None


def fp16_overflow_message(name: str, largest: float) -> str:
    return (f"layer '{name}': a weight of magnitude {largest:.6g} (batch norm folded in) is "
            f"outside float16's range (|w| <= {FP16_MAX:g}), which precision 'mixed' casts its "
            "conv and dense weights to")

"""The precision policy of a build: which kernels compute in what.

    fp32    every kernel reads, computes and accumulates in float32 (the default everywhere)
    mixed   CUDA only: convolutions (groups 1) and dense layers run on tensor cores, their
            operands rounded to float16 and their products accumulated in float32; the fused
            epilogue (bias, folded batch norm, scale and shift, residual add, activation) and
            every other layer stay float32, and so do the activations stored between layers

Under ``mixed`` a kernel argument that float16 cannot hold (a prepared weight with
``|w| > 65504``, batch norm folded in) is refused at compile time, naming its layer: it would
silently become an infinity. The runtime checks weights loaded later the same way
(``cnncompiler.graph.precision``).
"""

from __future__ import annotations

import numpy as np

from cnncompiler.errors import CompileError
from cnncompiler.graph.precision import fp16_overflow, fp16_overflow_message, runs_on_tensor_cores

PRECISIONS = ("fp32", "mixed")
DEFAULT_PRECISION = "fp32"


def check_precision(precision: str | None, target_kind: str, arch: str | None = None) -> str:
    """The precision policy to build with, or a CompileError saying what is accepted."""
    precision = precision or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise CompileError(f"unknown precision '{precision}'; use one of "
                           f"{', '.join(PRECISIONS)}")
    if precision == "mixed" and target_kind != "cuda":
        raise CompileError("precision 'mixed' is a CUDA policy (float16 operands on tensor "
                           f"cores); received target '{target_kind}'; compile with --target "
                           "cuda, or use --precision fp32 on the CPU")
    digits = "".join(c for c in (arch or "") if c.isdigit())
    if precision == "mixed" and digits and int(digits) < 70:
        raise CompileError(f"precision 'mixed' needs tensor cores (sm_70 or newer); received "
                           f"--arch {arch}; use --precision fp32 for it")
    return precision


def check_fp16_weights(g, params: dict) -> None:
    """Refuse weights float16 cannot hold, in the form the kernels read them (batch norm
    folded into the conv's weight), naming the layer and its largest magnitude."""
    overflow = fp16_overflow(g, params)
    if overflow is not None:
        raise CompileError(f"{fp16_overflow_message(*overflow)}; rescale the weights, or "
                           "compile with --precision fp32")


def round_fp16(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to float16 (to nearest even), back in float32."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def run_mixed_reference(g, x, params: dict) -> dict[str, np.ndarray]:
    """What a ``mixed`` build computes, in numpy on the CPU: the optimised graph run in
    float32, each tensor-core layer's input and prepared weight rounded to float16 and its
    products accumulated in float32 (numpy's float32 matmul), its epilogue in float32.

        outputs = run_mixed_reference(optimized_graph, x, params)  # {output name: array}
    """
    from cnncompiler.graph import by_input_name, layer_node, param_names, topo_layers
    from cnncompiler.layers.fused import Fused

    values = {k: np.asarray(v, np.float32) for k, v in by_input_name(g, x).items()}
    for name in topo_layers(g):
        if name in values:
            continue
        node = layer_node(g, name)
        layer = node.layer
        xs = [values[s] for s in node.inputs]
        local = {k: np.asarray(params[glob], np.float32)
                 for k, glob in param_names(g, name).items()}
        if not runs_on_tensor_cores(layer):
            values[name] = np.asarray(layer.reference(xs, local), np.float32)
            continue
        args = dict(layer.prepare(local))
        args["weight"] = round_fp16(args["weight"])
        xs = [round_fp16(xs[0]), *xs[1:]]
        y = layer.kernel_reference(xs, args) if isinstance(layer, Fused) else \
            layer.reference(xs, args)
        values[name] = np.asarray(y, np.float32)
    return {out: values[out] for out in g.graph["outputs"]}

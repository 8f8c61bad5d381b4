"""Lower a checked (and optimised) layer graph to a TVM Relax module.

``main(*inputs, *kernel_args)`` takes the input batches (one per model input, in spec order),
whose size is symbolic unless a function is
specialised for one batch size, and the prepared weights as arguments (not constants), so
``load_params`` swaps weights without recompiling. Each layer becomes one ``call_tir`` of one
PrimFunc, named after the layer, so a fused layer is one kernel.
"""

from __future__ import annotations

import networkx as nx
import tvm
from tvm import relax, tirx

from cnncompiler.errors import CompileError
from cnncompiler.graph import layer_node, topo_layers
from cnncompiler.graph.layouts import layout_shape
from cnncompiler.graph.signature import kernel_name, kernel_signature, prepared_shapes
from cnncompiler.layers import BATCH

from .rules import rules_for

FLOAT = "float32"
# the function attribute that carries a kernel's CUDA schedule family (rules.py)
CUDA_FAMILY_ATTR = "cnnc.cuda_family"
OPAQUE = 8  # relax's OpPatternKind.kOpaque: never fused with another kernel


def input_vars(g: nx.DiGraph, n, dtype: str = FLOAT) -> dict[str, relax.Var]:
    """The model's inputs as Relax parameters, in spec order: each a batch of ``n`` samples
    (``n`` a symbolic size, or a number for a specialised function), or, for an input without
    the batch axis, a symbolic number of rows of its own."""
    def rows(name):
        return n if layer_node(g, name).lead == BATCH else tirx.Var(f"{kernel_name(name)}_rows",
                                                                    "int64")

    return {name: relax.Var(kernel_name(name), relax.TensorType(
        [rows(name), *layer_node(g, name).shape], dtype)) for name in g.graph["inputs"]}


def emit_function(bb: relax.BlockBuilder, g: nx.DiGraph, name: str, batch: int | None,
                  layouts: dict | None = None) -> None:
    """Add ``name(*inputs, *kernel_args)`` computing the graph's outputs to the module being
    built.

    ``layouts`` (argument name -> layout string) gives arguments a backend-chosen layout; the
    runtime transforms the weights to it at load time."""
    layouts = layouts or {}
    n = tirx.Var("n", "int64") if batch is None else batch
    xs = input_vars(g, n)
    signature = kernel_signature(g)
    arg_vars = {a.name: relax.Var(kernel_name(a.name), relax.TensorType(
        list(layout_shape(layouts.get(a.name), a.shape)), FLOAT)) for a in signature}
    with bb.function(name, [*xs.values(), *arg_vars.values()]):
        with bb.dataflow():
            values = dict(xs)
            for node in topo_layers(g):
                if node not in values:
                    values[node] = emit_layer(bb, g, node, values, arg_vars)
            outs = [values[o] for o in g.graph["outputs"]]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)


def emit_layer(bb, g, node, values, arg_vars):
    data = layer_node(g, node)
    layer = data.layer
    lower = rules_for(layer, node).compute
    xs = [values[src] for src in data.inputs]
    args = {key: arg_vars[f"{node}:{key}"] for key in prepared_shapes(g, node)}
    out_shape = data.shape

    def compute(xs_te, args_te):
        y = lower(layer, xs_te, args_te, out_shape)
        return xs_te[0] if y is None else y

    if layer.passthrough:
        return xs[0]
    try:
        var = bb.emit_te(compute, xs, args, primfunc_name_hint=kernel_name(node))
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise CompileError(f"layer '{node}' ({layer.type_name}): lowering to TVM failed: "
                           f"{exc}") from exc
    mark_family(bb, var, rules_for(layer, node).cuda)
    return var


def mark_family(bb: relax.BlockBuilder, var, family: str) -> None:
    """Record the layer's CUDA schedule family on its kernel, for the CUDA pipeline to give it
    its family's schedule (cuda.schedule_checked). A kernel of a family with a schedule of its
    own is kept from operator fusion (opaque): fused into a neighbour, it would lose both."""
    gv = bb.lookup_binding(var).args[0]
    func = bb.get()[gv].with_attr(CUDA_FAMILY_ATTR, family)
    if family != "dlight":
        func = func.with_attr("op_pattern", OPAQUE)
    bb.update_func(gv, func)


def build_module(g: nx.DiGraph, batch_sizes=(), layouts: dict | None = None) -> tvm.IRModule:
    """The Relax module: ``main`` for any batch size, plus ``main_b<N>`` for each batch size
    the model is specialised for."""
    bb = relax.BlockBuilder()
    emit_function(bb, g, "main", None, layouts)
    for b in batch_sizes:
        emit_function(bb, g, f"main_b{b}", b, layouts)
    return bb.finalize()

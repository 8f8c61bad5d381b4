"""Lower a layer graph's whole training step to one Relax function:

    train_step(x, y, hyper, *params, *buffers, *state, *masks)
        -> (loss, correct, grad_sq, *new_params, *new_buffers, *new_state)

forward in training mode (batch statistics, dropout masks), the loss, the backward pass of
every layer (te_grad), and the optimizer update, so parameters and optimizer state stay on the
device between steps. ``hyper`` holds the learning rate and every other hyperparameter as
runtime values. ``grad_sq`` is (2, parameters): row 0 each parameter's squared gradient norm,
row 1 the squared norm of its updated value, each non-finite when any of its entries is; the
trainer checks them to stop on divergence before it keeps a broken update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from tvm import relax, te, tirx

from cnncompiler.errors import CompileError
from cnncompiler.graph import param_names, topo_layers
from cnncompiler.runtime.signature import kernel_name

from . import te_grad
from .te_ops import LOWERINGS


@dataclass
class TrainSignature:
    """The order of the train step's arguments and results."""

    params: list[str] = field(default_factory=list)      # trainable, global names
    buffers: list[str] = field(default_factory=list)     # batch-norm running statistics
    state: list[str] = field(default_factory=list)       # optimizer state, '<param>#<slot>'
    masks: list[tuple[str, tuple]] = field(default_factory=list)  # dropout layer, sample shape
    shapes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"params": self.params, "buffers": self.buffers, "state": self.state,
                "masks": [[n, list(s)] for n, s in self.masks],
                "shapes": {k: list(v) for k, v in self.shapes.items()}}


STATE_SLOTS = {"sgd": ("momentum",), "adam": ("exp_avg", "exp_avg_sq")}


def train_signature(g: nx.DiGraph, optimizer: str) -> TrainSignature:
    sig = TrainSignature()
    for node in topo_layers(g):
        data = g.nodes[node]
        names = param_names(g, node)
        for local, spec in data.get("param_specs", {}).items():
            (sig.params if spec.trainable else sig.buffers).append(names[local])
            sig.shapes[names[local]] = tuple(spec.shape)
        layer = data["layer"]
        if layer.type_name == "dropout" and layer.rate > 0:
            sig.masks.append((node, tuple(data["shape"])))
    sig.state = [f"{p}#{slot}" for slot in STATE_SLOTS[optimizer] for p in sig.params]
    for s in sig.state:
        sig.shapes[s] = sig.shapes[s.split("#")[0]]
    return sig


def _item(bb, tup, i):
    return bb.emit(relax.TupleGetItem(tup, i))


def emit_train_step(bb: relax.BlockBuilder, g: nx.DiGraph, loss: str, optimizer: str,
                    dtype: str = "float32", label_smoothing: float = 0.0,
                    name: str = "train_step") -> TrainSignature:
    """Add the training step of graph ``g`` (one output) to the module being built."""
    if len(g.graph["outputs"]) != 1:
        raise CompileError(f"training needs a spec with one output; this one has "
                           f"{len(g.graph['outputs'])} ({', '.join(g.graph['outputs'])})")
    sig = train_signature(g, optimizer)
    out_node = g.graph["outputs"][0]
    out_shape = g.nodes[out_node]["shape"]
    n = tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType([n, *g.graph["input_shape"]], dtype))
    if loss == "softmax_cross_entropy":
        if len(out_shape) != 1:
            raise CompileError(f"softmax_cross_entropy needs (N, classes) logits; the output "
                               f"'{out_node}' is (N, {', '.join(map(str, out_shape))}); add "
                               "flatten and a dense layer")
        y = relax.Var("y", relax.TensorType([n], "int32"))
    else:
        y = relax.Var("y", relax.TensorType([n, *out_shape], dtype))
    hyper = relax.Var("hyper", relax.TensorType([te_grad.HYPER_SIZE], dtype))

    def var(key, shape):
        return relax.Var(kernel_name(key), relax.TensorType(list(shape), dtype))

    pvars = {p: var(p, sig.shapes[p]) for p in sig.params + sig.buffers}
    svars = {s: var(s, sig.shapes[s]) for s in sig.state}
    mvars = {m: relax.Var(kernel_name("mask_" + m), relax.TensorType([n, *shape], dtype))
             for m, shape in sig.masks}
    inputs = [x, y, hyper, *pvars.values(), *svars.values(), *mvars.values()]
    with bb.function(name, inputs):
        with bb.dataflow():
            values, saved, new_buffers = _forward(bb, g, x, pvars, mvars)
            loss_fn = te_grad.LOSSES[loss]
            extra = {"smoothing": label_smoothing} if loss == "softmax_cross_entropy" else {}
            res = bb.emit_te(lambda z, t: list(loss_fn(z, t, **extra)), values[out_node], y,
                             primfunc_name_hint=f"loss_{loss}")
            loss_v, correct, dlogits = (_item(bb, res, i) for i in range(3))
            grads = _backward(bb, g, values, saved, pvars, mvars, {out_node: dlogits})
            new_p, new_s = _update(bb, sig, optimizer, pvars, svars, grads, hyper)
            count = len(sig.params)
            sq = [bb.emit_te(te_grad.square_sum, t, primfunc_name_hint="square_sum")
                  for t in [grads[p] for p in sig.params] + new_p]
            grad_sq = bb.emit_te(lambda ts: te.compute(
                (2, count), lambda r, i: _pick(ts, r * count + i), name="square_norms"), sq,
                primfunc_name_hint="square_norms")
            result = bb.emit_output(relax.Tuple(
                [loss_v, correct, grad_sq, *new_p, *[new_buffers[b] for b in sig.buffers],
                 *new_s]))
        bb.emit_func_output(result)
    return sig


def _pick(tensors, i):
    expr = tensors[-1][0]
    for j in range(len(tensors) - 2, -1, -1):
        expr = tirx.Select(i == j, tensors[j][0], expr)
    return expr


def _node_args(g, node, pvars):
    return {local: pvars[glob] for local, glob in param_names(g, node).items()}


def _forward(bb, g, x, pvars, mvars):
    values, saved, new_buffers = {"input": x}, {}, {}
    for node in topo_layers(g):
        if node == "input":
            continue
        data = g.nodes[node]
        layer = data["layer"]
        xs = [values[s] for s in data["inputs"]]
        args = _node_args(g, node, pvars)
        hint = kernel_name(node)
        if layer.type_name == "batchnorm":
            res = bb.emit_te(lambda t, a: list(te_grad.batchnorm_train(
                layer, t, a["weight"], a["bias"], a["running_mean"], a["running_var"])),
                xs[0], args, primfunc_name_hint=hint)
            out, mean, var, rm, rv = (_item(bb, res, i) for i in range(5))
            saved[node] = (mean, var)
            names = param_names(g, node)
            new_buffers[names["running_mean"]], new_buffers[names["running_var"]] = rm, rv
        elif layer.type_name == "dropout":
            out = xs[0] if node not in mvars else bb.emit_te(
                lambda t, m: te.compute(t.shape, lambda *i: t(*i) * m(*i), name="dropout"),
                xs[0], mvars[node], primfunc_name_hint=hint)
        elif layer.type_name == "identity":
            out = xs[0]
        else:
            lower = LOWERINGS.get(layer.type_name)
            if lower is None or layer.type_name not in te_grad.GRADS:
                raise CompileError(f"layer '{node}' ({layer.type_name}) cannot be trained: no "
                                   "gradient for this layer type")
            shape = data["shape"]
            out = bb.emit_te(lambda ts, a, layer=layer, shape=shape: lower(layer, ts, a, shape),
                             xs, args, primfunc_name_hint=hint)
        values[node] = out
    return values, saved, new_buffers


def _accumulate(bb, grads, node, g_new):
    if node in grads:
        grads[node] = bb.emit_te(lambda a, b: te.compute(a.shape, lambda *i: a(*i) + b(*i),
                                                         name="grad_acc"),
                                 grads[node], g_new, primfunc_name_hint="grad_acc")
    else:
        grads[node] = g_new


def _backward(bb, g, values, saved, pvars, mvars, grads):
    """Gradients of every parameter, walking the graph backwards from the output."""
    param_grads = {}
    for node in reversed(topo_layers(g)):
        if node == "input" or node not in grads:
            continue
        data = g.nodes[node]
        layer = data["layer"]
        dy = grads[node]
        xs = [values[s] for s in data["inputs"]]
        args = _node_args(g, node, pvars)
        names = param_names(g, node)
        needs_dx = [src != "input" for src in data["inputs"]]
        hint = kernel_name(node) + "_grad"
        if layer.type_name == "batchnorm":
            mean, var = saved[node]
            res = bb.emit_te(lambda t, d, w, m, v: list(te_grad.grad_batchnorm(layer, t, d, w, m, v)),
                             xs[0], dy, args["weight"], mean, var, primfunc_name_hint=hint)
            dx = _item(bb, res, 0)
            param_grads[names["weight"]], param_grads[names["bias"]] = _item(bb, res, 1), _item(bb, res, 2)
            dxs = [dx]
        elif layer.type_name == "dropout":
            dxs = [dy if node not in mvars else bb.emit_te(
                lambda d, m: te.compute(d.shape, lambda *i: d(*i) * m(*i), name="dropout_dx"),
                dy, mvars[node], primfunc_name_hint=hint)]
        elif layer.type_name in ("add", "identity"):
            dxs = [dy] * len(xs)
        else:
            grad = te_grad.GRADS[layer.type_name]
            shape = data["shape"]
            y = values[node]
            dxs = []
            for i, need in enumerate(needs_dx):
                dxs.append(bb.emit_te(
                    lambda ts, yy, d, a, i=i, layer=layer, shape=shape: grad(layer, ts, yy, d, a, shape)[0][i],
                    xs, y, dy, args, primfunc_name_hint=f"{hint}_dx{i}") if need else None)
            if args:
                local = [k for k in args if g.nodes[node]["param_specs"][k].trainable]
                res = bb.emit_te(
                    lambda ts, yy, d, a, layer=layer, shape=shape, local=local:
                    [grad(layer, ts, yy, d, a, shape)[1][k] for k in local],
                    xs, y, dy, args, primfunc_name_hint=f"{hint}_dw")
                # emit_te gives a tuple for several outputs, the tensor itself for one
                for j, k in enumerate(local):
                    param_grads[names[k]] = _item(bb, res, j) if len(local) > 1 else res
        for src, dx in zip(data["inputs"], dxs):
            if src != "input" and dx is not None:
                _accumulate(bb, grads, src, dx)
    return param_grads


def _update(bb, sig, optimizer, pvars, svars, grads, hyper):
    new_params, new_state = [], {}
    for p in sig.params:
        if p not in grads:
            raise CompileError(f"parameter '{p}' gets no gradient (its layer does not reach "
                               "the output)")
        if optimizer == "sgd":
            res = bb.emit_te(te_grad.sgd_update, pvars[p], grads[p], svars[f"{p}#momentum"],
                             hyper, primfunc_name_hint="sgd_update")
            new_params.append(_item(bb, res, 0))
            new_state[f"{p}#momentum"] = _item(bb, res, 1)
        else:
            res = bb.emit_te(te_grad.adam_update, pvars[p], grads[p], svars[f"{p}#exp_avg"],
                             svars[f"{p}#exp_avg_sq"], hyper, primfunc_name_hint="adam_update")
            new_params.append(_item(bb, res, 0))
            new_state[f"{p}#exp_avg"] = _item(bb, res, 1)
            new_state[f"{p}#exp_avg_sq"] = _item(bb, res, 2)
    return new_params, [new_state[s] for s in sig.state]


def build_train_module(g: nx.DiGraph, loss: str, optimizer: str, dtype: str = "float32",
                       label_smoothing: float = 0.0):
    bb = relax.BlockBuilder()
    sig = emit_train_step(bb, g, loss, optimizer, dtype, label_smoothing)
    return bb.finalize(), sig

"""Lower a layer graph's whole training step to one Relax function:

    train_step(*inputs, *labels, hyper, [replica], *params, *buffers, *state, *masks)
        -> (loss, correct, grad_sq, *new_params, *new_buffers, *new_state, term_losses)

forward in training mode (batch statistics, dropout masks), the loss, the backward pass of
every layer (te_grad), and the optimizer update, so parameters and optimizer state stay on the
device between steps. ``hyper`` holds the learning rate and every other hyperparameter as
runtime values. ``grad_sq`` is (2, parameters): row 0 each parameter's squared gradient norm,
row 1 the squared norm of its updated value, each non-finite when any of its entries is; the
trainer checks them to stop on divergence before it keeps a broken update.

A data-parallel step (``parallel``) takes ``replica`` = [share, present]: this process's
share of the global batch (n_rank / N) scales the gradient of its loss, and the parameter
gradients are summed over the processes (``ALL_REDUCE``, in flat buckets) before the update,
which makes them the global batch's; ``present`` is 0 on a process without a sample in this
batch (it steps on a stand-in sample that must add nothing to any sum).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from tvm import relax, te, tirx

from cnncompiler.errors import CompileError, InputError
from cnncompiler.graph import layer_node, param_names, topo_layers
from cnncompiler.graph.signature import kernel_name
from cnncompiler.layers import BATCH
from cnncompiler.spec.losses import LossTerm, loss_terms
from cnncompiler.spec.train_config import HYPER_SIZE

from cnncompiler.layers.activation import Dropout
from cnncompiler.layers.merge import Add
from cnncompiler.layers.norm import BatchNorm

from . import te_grad
from .lower import input_vars, mark_family
from .rules import gradient_of, rules_for


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
        data = layer_node(g, node)
        names = param_names(g, node)
        for local, spec in data.param_specs.items():
            (sig.params if spec.trainable else sig.buffers).append(names[local])
            sig.shapes[names[local]] = tuple(spec.shape)
        layer = data.layer
        if isinstance(layer, Dropout) and layer.rate > 0:
            sig.masks.append((node, tuple(data.shape)))
    sig.state = [f"{p}#{slot}" for slot in STATE_SLOTS[optimizer] for p in sig.params]
    for s in sig.state:
        sig.shapes[s] = sig.shapes[s.split("#")[0]]
    return sig


def rows_vars(g: nx.DiGraph, xs: dict, n) -> dict:
    """The size of each kind of leading axis: ``n`` samples for BATCH, and each unbatched
    input's own number of rows (its Relax parameter's first dimension)."""
    rows = {BATCH: n}
    for name, x in xs.items():
        if layer_node(g, name).lead != BATCH:
            rows[name] = x.ty.shape.values[0]
    return rows


def _item(bb, tup, i):
    return bb.emit(relax.TupleGetItem(tup, i))


# The packed function a data-parallel step calls with each flat bucket and whose result (the
# bucket summed over the processes) it uses: registered with TVM by whoever runs the step
# (cnncompiler.train.distributed, on torch.distributed).
ALL_REDUCE = "cnnc.all_reduce_sum"


@dataclass(frozen=True)
class Parallel:
    """How a data-parallel step reduces across processes: always the gradients; with
    ``sync_batchnorm`` also batch norm's statistics (``sync_batchnorm: true`` in the spec's
    ``train:`` section)."""

    sync_batchnorm: bool = False

    def to_json(self) -> dict:
        return {"sync_batchnorm": self.sync_batchnorm}


def emit_train_step(bb: relax.BlockBuilder, g: nx.DiGraph, loss, optimizer: str,
                    dtype: str = "float32", label_smoothing: float = 0.0,
                    name: str = "train_step", lowering=None,
                    parallel: Parallel | None = None) -> TrainSignature:
    """Add the training step of graph ``g`` to the module being built. ``loss``: a loss name
    (the model's one output), or the objective's terms (``spec.losses.loss_terms``: a loss
    per output, weighted), one labels argument each, trained on their weighted sum.

    ``lowering`` makes the kernels: a ``TrainLowering`` class (default: this module's plain,
    unscheduled computes, for any dtype and target) or a callable with its constructor's
    arguments (``backends.cpu.train_emit`` gives scheduled CPU kernels in blocked layouts)."""
    try:
        terms = loss_terms(loss, g.graph["outputs"])
    except InputError as exc:
        raise CompileError(f"training: {exc}") from None
    sig = train_signature(g, optimizer)
    n = tirx.Var("n", "int64")
    xs = input_vars(g, n, dtype)
    rows = rows_vars(g, xs, n)
    ys = [labels_var(g, term, rows, dtype, i) for i, term in enumerate(terms)]
    hyper = relax.Var("hyper", relax.TensorType([HYPER_SIZE], dtype))
    replica = [relax.Var("replica", relax.TensorType([2], dtype))] if parallel else []

    def var(key, shape):
        return relax.Var(kernel_name(key), relax.TensorType(list(shape), dtype))

    pvars = {p: var(p, sig.shapes[p]) for p in sig.params + sig.buffers}
    svars = {s: var(s, sig.shapes[s]) for s in sig.state}
    mvars = {m: relax.Var(kernel_name("mask_" + m), relax.TensorType(
        [rows[layer_node(g, m).lead], *shape], dtype)) for m, shape in sig.masks}
    inputs = [*xs.values(), *ys, hyper, *replica, *pvars.values(), *svars.values(),
              *mvars.values()]
    with bb.function(name, inputs):
        with bb.dataflow():
            low = (lowering or TrainLowering)(bb, g, pvars, mvars)
            if parallel:
                low.replicate(replica[0], parallel)
            for name, x in xs.items():
                low.values[name] = low.model_input(x)
            for node in topo_layers(g):
                if node not in xs:
                    low.values[node] = low.forward(node)
            total, correct, per_term, output_grads = _objective(low, terms, ys,
                                                                label_smoothing)
            if parallel:
                output_grads = {k: low.shared(v) for k, v in output_grads.items()}
            grads = _backward(low, g, output_grads)
            if parallel:
                grads = low.all_reduce_gradients(grads, sig.params)
            new_p, new_s = low.update(sig, optimizer, svars, grads, hyper)
            grad_sq = low.square_norms([grads[p] for p in sig.params] + new_p)
            result = bb.emit_output(relax.Tuple(
                [total, correct, grad_sq, *new_p, *[low.new_buffers[b] for b in sig.buffers],
                 *new_s, per_term]))
        bb.emit_func_output(result)
    return sig


def labels_var(g: nx.DiGraph, term: LossTerm, rows: dict, dtype: str, index: int):
    """The labels argument of one term: one label per row of its output (per sample, or per
    box after a RoI layer), class indices or targets shaped like the output."""
    node = layer_node(g, term.output)
    problem = term.kind.output_problem(term.output, node.shape)
    if problem:
        raise CompileError(problem)
    count = rows[node.lead]
    name = "y" if index == 0 else f"y{index}"
    if term.kind.integer_labels:
        return relax.Var(name, relax.TensorType([count], "int32"))
    return relax.Var(name, relax.TensorType([count, *node.shape], dtype))


def _objective(low, terms: list, ys: list, smoothing: float):
    """(the weighted total loss (1,), the first classification term's correct count (1,),
    every term's own loss (K,), {output: d total / d output})."""
    losses, corrects, output_grads = [], [], {}
    for term, y in zip(terms, ys):
        loss_v, correct, d = low.loss(term.kind, low.values[term.output], y, smoothing)
        if term.weight != 1.0:
            d = low.from_plain(low.emit(_scaled(term.weight), low.plain(d), name="loss_weight"))
        output_grads[term.output] = low.accumulate(term.output, output_grads.get(term.output), d)
        losses.append(loss_v)
        corrects.append(correct)
    weights = [term.weight for term in terms]
    first = next((i for i, t in enumerate(terms) if t.kind.metric), 0)
    total = low.emit(lambda ls: _weighted_sum(ls, weights), losses, name="loss_total")
    per_term = low.emit(lambda ls: _stacked(ls), losses, name="loss_terms")
    return total, corrects[first], per_term, output_grads


def _scaled(weight: float):
    return lambda t: te.compute(t.shape, lambda *i: t(*i) * tirx.const(weight, t.dtype),
                                name="weighted")


def _weighted_sum(losses, weights):
    def value(i):
        expr = losses[0][i] * tirx.const(weights[0], losses[0].dtype)
        for loss, w in zip(losses[1:], weights[1:]):
            expr = expr + loss[i] * tirx.const(w, loss.dtype)
        return expr

    return te.compute((1,), value, name="total")


def _stacked(losses):
    return te.compute((len(losses),), lambda i: _pick(losses, i), name="terms")


def _pick(tensors, i):
    expr = tensors[-1][0]
    for j in range(len(tensors) - 2, -1, -1):
        expr = tirx.Select(i == j, tensors[j][0], expr)
    return expr


def _backward(low, g, grads):
    """Gradients of every parameter, walking the graph backwards from the output; ``grads``
    starts with the output's."""
    param_grads = {}
    inputs = set(g.graph["inputs"])  # the data: no gradient is taken for it
    for node in reversed(topo_layers(g)):
        if node in inputs or node not in grads:
            continue
        data = layer_node(g, node)
        needs_dx = [src not in inputs for src in data.inputs]
        dxs, pgrads = low.backward(node, grads[node], needs_dx)
        param_grads.update(pgrads)
        for src, dx in zip(data.inputs, dxs):
            if src not in inputs and dx is not None:
                grads[src] = low.accumulate(src, grads.get(src), dx)
    return param_grads



def masked(name: str):
    """The compute ``t * mask``, element by element: dropout forward and backward."""
    return lambda t, m: te.compute(t.shape, lambda *i: t(*i) * m(*i), name=name)


def gradient_sum(a, b):
    """Two gradients of one value added: the value feeds several layers."""
    return te.compute(a.shape, lambda *i: a(*i) + b(*i), name="grad_acc")

class TrainLowering:
    """The kernels of one training step: te_ops' forwards and te_grad's backwards in the plain
    (N, C, *spatial) layout, each emitted with ``emit`` (here emit_te, unscheduled: right for
    any dtype and target; a backend overrides ``emit`` to schedule them).

    ``values`` maps each layer to its forward value. A value is whatever the lowering carries
    (here a Relax var; a backend may carry a layout with it): ``plain`` turns one into a plain
    var, ``from_plain`` a plain var into one. Backends override the layers they compute
    their own way and inherit the rest, which then run on plain views of their inputs.
    """

    def __init__(self, bb: relax.BlockBuilder, g: nx.DiGraph, pvars: dict, mvars: dict):
        self.bb, self.g, self.pvars, self.mvars = bb, g, pvars, mvars
        self.values: dict = {}
        self.saved: dict = {}          # what a layer's backward needs beyond its values
        self.new_buffers: dict = {}    # batch-norm running statistics, moved
        self.cuda_family = None        # marked on the kernels being emitted (layer_kernels)
        self.replica = None            # a data-parallel step's [share, present]
        self.parallel: Parallel | None = None
        self.synced_counts: dict = {}  # batch norm -> its global element count (sync_batchnorm)

    # -- data-parallel steps -------------------------------------------------------------------
    def replicate(self, replica, parallel: Parallel) -> None:
        """Make this a data-parallel step (``replica``: the [share, present] argument)."""
        self.replica, self.parallel = replica, parallel

    def synced_batchnorm(self, node: str, x, args):
        """``te_grad.batchnorm_train`` over the global batch: each pass's per-channel sums
        (and the element count) summed over the processes before the next pass reads them."""
        layer = layer_node(self.g, node).layer
        hint = kernel_name(node)
        local = self.emit(te_grad.batchnorm_sums, x, name=f"{hint}_sums")
        total, count = self.all_reduce([self.item(local, 0), self.item(local, 1)], "bn_sums")
        squares = self.emit(lambda t, s, c: te_grad.batchnorm_square_sums(t, s, c[0]),
                            x, total, count, name=f"{hint}_squares")
        (squares,) = self.all_reduce([squares], "bn_squares")
        self.synced_counts[node] = count
        return self.emit(lambda t, s, q, c, a: list(te_grad.batchnorm_normalize(
            layer, t, s, q, c[0], a["weight"], a["bias"], a["running_mean"],
            a["running_var"])), x, total, squares, count, args, name=hint)

    def synced_batchnorm_grad(self, node: str, x, dy, weight, mean, var):
        """(dx, d weight, d bias) of a batch norm with global statistics: the sums dx reads
        summed over the processes; the parameter gradients this process's part (the step sums
        them with the other gradients)."""
        layer = layer_node(self.g, node).layer
        hint = kernel_name(node) + "_grad"
        local = self.emit(lambda t, d, m, v: te_grad.batchnorm_grad_sums(layer, t, d, m, v),
                          x, dy, mean, var, name=f"{hint}_sums")
        dgamma, dbeta = self.item(local, 0), self.item(local, 1)
        total_dgamma, total_dbeta = self.all_reduce([dgamma, dbeta], "bn_grad_sums")
        dx = self.emit(lambda t, d, w, m, v, g, b, c: te_grad.batchnorm_grad_input(
            layer, t, d, w, m, v, b, g, c[0]), x, dy, weight, mean, var, total_dgamma,
            total_dbeta, self.synced_counts[node], name=f"{hint}_dx")
        return dx, dgamma, dbeta

    def shared(self, value):
        """A gradient of the loss scaled by this process's share of the global batch."""
        var = self.emit(lambda t, r: te.compute(t.shape, lambda *i: t(*i) * r[0], name="share"),
                        self.plain(value), self.replica, name="replica_share")
        return self.from_plain(var)

    def all_reduce(self, tensors: list, name: str) -> list:
        """Each tensor summed over the processes, one collective per bucket of them; a
        process without a sample (``present`` 0) adds zeros."""
        out = []
        for bucket in buckets(tensors):
            shapes = [[int(d) for d in t.ty.shape.values] for t in bucket]
            flat = self.emit(lambda ts, r: flatten_into_bucket(ts, r), bucket, self.replica,
                             name=f"{name}_bucket")
            total = self.bb.emit(relax.call_pure_packed(ALL_REDUCE, flat, ty_args=flat.ty))
            parts = self.emit(lambda f: split_bucket(f, shapes), total, name=f"{name}_split")
            out += [self.item(parts, i) for i in range(len(bucket))] if len(bucket) > 1 \
                else [parts]
        return out

    def all_reduce_gradients(self, grads: dict, params: list) -> dict:
        """The parameters' gradients summed over the processes: the global batch's."""
        missing = [p for p in params if p not in grads]
        if missing:
            raise CompileError(f"parameter '{missing[0]}' gets no gradient (its layer does "
                               "not reach the output)")
        return dict(zip(params, self.all_reduce([grads[p] for p in params], "grads")))

    # -- values and kernels --------------------------------------------------------------------
    def emit(self, fn, *args, name: str):
        """One kernel computing ``fn`` (TE) of ``args`` (Relax values, lists or dicts),
        marked with the CUDA schedule family of the layer being lowered, if any."""
        var = self.bb.emit_te(fn, *args, primfunc_name_hint=name)
        if self.cuda_family is not None:
            mark_family(self.bb, var, self.cuda_family)
        return var

    def layer_kernels(self, node: str, step):
        """Run ``step``, which emits the kernels of layer ``node``'s rule (its compute or its
        gradient), with the layer's CUDA schedule family marked on them."""
        self.cuda_family = rules_for(layer_node(self.g, node).layer, node).cuda
        try:
            return step()
        finally:
            self.cuda_family = None

    def item(self, tup, i):
        return _item(self.bb, tup, i)

    def model_input(self, x):
        return x

    def plain(self, value):
        return value

    def from_plain(self, var):
        return var

    def args(self, node: str) -> dict:
        return {local: self.pvars[glob] for local, glob in param_names(self.g, node).items()}

    def inputs(self, node: str) -> list:
        return [self.plain(self.values[s]) for s in layer_node(self.g, node).inputs]

    # -- forward -------------------------------------------------------------------------------
    def forward(self, node: str):
        data = layer_node(self.g, node)
        layer = data.layer
        xs = self.inputs(node)
        args = self.args(node)
        hint = kernel_name(node)
        if isinstance(layer, BatchNorm):
            if self.parallel and self.parallel.sync_batchnorm:
                res = self.synced_batchnorm(node, xs[0], args)
            else:
                res = self.emit(lambda t, a: list(te_grad.batchnorm_train(
                    layer, t, a["weight"], a["bias"], a["running_mean"], a["running_var"])),
                    xs[0], args, name=hint)
            out, mean, var, rm, rv = (self.item(res, i) for i in range(5))
            self.saved[node] = (mean, var)
            names = param_names(self.g, node)
            self.new_buffers[names["running_mean"]] = rm
            self.new_buffers[names["running_var"]] = rv
        elif isinstance(layer, Dropout):
            out = xs[0] if node not in self.mvars else self.emit(
                masked("dropout"), xs[0], self.mvars[node], name=hint)
        elif layer.passthrough:
            out = xs[0]
        else:
            gradient_of(layer, node)  # refuses a layer that cannot be trained, before its kernel
            lower = rules_for(layer, node).compute
            shape = data.shape
            out = self.layer_kernels(node, lambda: self.emit(
                lambda ts, a: lower(layer, ts, a, shape), xs, args, name=hint))
        return self.from_plain(out)

    def loss(self, loss, out_value, y, smoothing: float):
        """(loss, correct, gradient of the output as a value) of the Loss ``loss``."""
        form = te_grad.LOSS_FORMS[type(loss)]
        res = self.emit(lambda z, t: list(form(loss, z, t, smoothing)), self.plain(out_value), y,
                        name=f"loss_{loss.name}")
        return self.item(res, 0), self.item(res, 1), self.from_plain(self.item(res, 2))

    # -- backward ------------------------------------------------------------------------------
    def backward(self, node: str, dy_value, needs_dx: list) -> tuple[list, dict]:
        """(gradient of each input as a value, None where not needed; {parameter name:
        its gradient}) of layer ``node`` given the gradient of its output."""
        data = layer_node(self.g, node)
        layer = data.layer
        dy = self.plain(dy_value)
        xs = self.inputs(node)
        args = self.args(node)
        names = param_names(self.g, node)
        hint = kernel_name(node) + "_grad"
        grads = {}
        if isinstance(layer, BatchNorm):
            mean, var = self.saved[node]
            if node in self.synced_counts:
                dx, grads[names["weight"]], grads[names["bias"]] = self.synced_batchnorm_grad(
                    node, xs[0], dy, args["weight"], mean, var)
                dxs = [dx]
            else:
                res = self.emit(lambda t, d, w, m, v: list(te_grad.grad_batchnorm(
                    layer, t, d, w, m, v)), xs[0], dy, args["weight"], mean, var, name=hint)
                grads[names["weight"]], grads[names["bias"]] = self.item(res, 1), \
                    self.item(res, 2)
                dxs = [self.item(res, 0)]
        elif isinstance(layer, Dropout):
            dxs = [dy if node not in self.mvars else self.emit(
                masked("dropout_dx"), dy, self.mvars[node], name=hint)]
        elif isinstance(layer, Add) or layer.passthrough:
            dxs = [dy] * len(xs)  # no kernel: each input's gradient is the output's
        else:
            return self.layer_kernels(node, lambda: self.rule_backward(node, dy, needs_dx))
        return [None if dx is None else self.from_plain(dx) for dx in dxs], grads

    def rule_backward(self, node: str, dy, needs_dx: list):
        """The backward of a layer by its rule's gradient (te_grad): input and parameter
        gradients, one kernel each."""
        data = layer_node(self.g, node)
        layer = data.layer
        xs, args = self.inputs(node), self.args(node)
        names = param_names(self.g, node)
        hint = kernel_name(node) + "_grad"
        grad = gradient_of(layer, node)
        shape = data.shape
        y = self.plain(self.values[node])
        dxs = [self.emit(lambda ts, yy, d, a, i=i: grad(layer, ts, yy, d, a, shape)[0][i],
                         xs, y, dy, args, name=f"{hint}_dx{i}") if need else None
               for i, need in enumerate(needs_dx)]
        grads = {}
        local = [k for k in args if data.param_specs[k].trainable]
        if local:
            res = self.emit(lambda ts, yy, d, a: [grad(layer, ts, yy, d, a, shape)[1][k]
                                                  for k in local],
                            xs, y, dy, args, name=f"{hint}_dw")
            # emit_te gives a tuple for several outputs, the tensor itself for one
            for j, k in enumerate(local):
                grads[names[k]] = self.item(res, j) if len(local) > 1 else res
        return [None if dx is None else self.from_plain(dx) for dx in dxs], grads

    def accumulate(self, src: str, total, new):
        """The gradient of ``src`` so far (None: none yet) plus ``new``."""
        if total is None:
            return new
        return self.from_plain(self.emit(gradient_sum, self.plain(total), self.plain(new),
                                         name="grad_acc"))

    # -- the update ----------------------------------------------------------------------------
    def flat(self, var):
        """The view of a parameter-shaped tensor the update kernels read (here: itself)."""
        return var

    def unflat(self, var, like):
        """A result of the update kernels back in the shape of the parameter ``like``."""
        return var

    def update(self, sig, optimizer: str, svars: dict, grads: dict, hyper):
        new_params, new_state = [], {}
        for p in sig.params:
            if p not in grads:
                raise CompileError(f"parameter '{p}' gets no gradient (its layer does not "
                                   "reach the output)")
            param = self.pvars[p]
            if optimizer == "sgd":
                slots, fn = [f"{p}#momentum"], te_grad.sgd_update
            else:
                slots, fn = [f"{p}#exp_avg", f"{p}#exp_avg_sq"], te_grad.adam_update
            res = self.emit(fn, self.flat(param), self.flat(grads[p]),
                            *[self.flat(svars[s]) for s in slots], hyper,
                            name=f"{optimizer}_update")
            new_params.append(self.unflat(self.item(res, 0), param))
            for i, s in enumerate(slots):
                new_state[s] = self.unflat(self.item(res, 1 + i), param)
        return new_params, [new_state[s] for s in sig.state]

    def square_norms(self, tensors: list):
        """(2, parameters): the squared norms of the gradients, then of the new values."""
        count = len(tensors) // 2
        sq = [self.square_sum(t) for t in tensors]
        return self.emit(lambda ts: te.compute((2, count), lambda r, i: _pick(ts, r * count + i),
                                               name="square_norms"), sq, name="square_norms")

    def square_sum(self, tensor):
        """sum(tensor^2), (1,): non-finite when any entry is."""
        return self.emit(te_grad.square_sum, tensor, name="square_sum")


# A bucket holds at most this many tensors (its kernel reads each through a chain of
# selects) and this many elements (16 MiB of float32, as a DDP bucket of 25 MB order).
BUCKET_TENSORS = 8
BUCKET_ELEMENTS = 1 << 22


def buckets(tensors: list) -> list[list]:
    """Consecutive groups of ``tensors`` within the bucket limits."""
    groups, size = [[]], 0
    for t in tensors:
        n = _elements(t)
        if groups[-1] and (len(groups[-1]) == BUCKET_TENSORS or size + n > BUCKET_ELEMENTS):
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += n
    return [g for g in groups if g]


def _elements(var) -> int:
    return _prod(var.ty.shape.values)


def flatten_into_bucket(tensors, replica):
    """The tensors' elements one after another, times ``present`` (replica[1])."""
    sizes = [_prod(t.shape) for t in tensors]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]

    def value(i):
        expr = _element(tensors[-1], i - starts[-1])
        for t, start, end in reversed(list(zip(tensors, starts, starts[1:]))):
            expr = tirx.Select(i < end, _element(t, i - start), expr)
        return expr * replica[1]

    return te.compute((sum(sizes),), value, name="bucket")


def split_bucket(flat, shapes: list):
    """The tensors of ``shapes`` read back out of a bucket."""
    out, start = [], 0
    for shape in shapes:
        out.append(_read_back(flat, start, shape))
        start += _prod(shape)
    return out


def _read_back(flat, start: int, shape):
    return te.compute(shape, lambda *i: flat[start + _linear(i, shape)], name="unbucket")


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _linear(index, shape):
    """The row-major offset of ``index`` in ``shape``."""
    offset = index[0]
    for i, d in zip(index[1:], shape[1:]):
        offset = offset * int(d) + i
    return offset


def _element(t, flat_index):
    """Element ``flat_index`` of ``t`` in row-major order (clamped: a Select evaluates the
    branch it does not take too)."""
    shape = [int(d) for d in t.shape]
    k = tirx.max(tirx.min(flat_index, _prod(shape) - 1), 0)
    index = []
    for d in reversed(shape):
        index.append(k % d)
        k = k // d
    return t(*reversed(index))


def build_train_module(g: nx.DiGraph, loss: str, optimizer: str, dtype: str = "float32",
                       label_smoothing: float = 0.0, lowering=None,
                       parallel: Parallel | None = None):
    bb = relax.BlockBuilder()
    sig = emit_train_step(bb, g, loss, optimizer, dtype, label_smoothing, lowering=lowering,
                          parallel=parallel)
    return bb.finalize(), sig

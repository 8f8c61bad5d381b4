"""The training step as scheduled CPU kernels, in the blocked layout NC[b]c where a kernel
family has a blocked form (as inference: ``plan``), float32.

Convolutions run the inference kernel forward and the same kernel for their input gradient
(a transposed conv, ``train_conv``), with a blocked weight-gradient kernel; batch norms,
activations, adds, dropout and pools read and write the blocked layout, so the values of a conv
net stay blocked from the first conv to the flatten; every other layer runs te_ops' and
te_grad's plain computes (inherited from ``TrainLowering``) on plain views, with the fallback
schedule. The optimizer updates and squared norms run on flat views of the parameters.

Each kernel is scheduled when it is made, marked ``tirx.is_scheduled`` and opaque to fusion, as
the inference kernels (``emit.emit_kernel``); the module must be built with
``relax_pipeline()`` (its ``noalias`` mark is worth 2.4x on the conv kernels).

    mod, sig = build_train_module(g, "softmax_cross_entropy", "sgd",
                                  lowering=cpu_lowering(lanes=16))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from tvm import relax, te
from tvm.relax.utils import gen_call_tir_inputs

from cnncompiler.graph import layer_node, param_names
from cnncompiler.graph.signature import kernel_name

from cnncompiler.layers.activation import Dropout
from cnncompiler.layers.merge import Add

from .. import te_grad
from ..rules import gradient_of, rules_for
from ..train_lower import TrainLowering, gradient_sum, masked
from .blocking import PLAIN, block_for, conversion
from .conv import conv_blocked, schedule_conv, vector_registers
from .dense import dense_blocked, schedule_dense
from .emit import OPAQUE
from .plan import KernelChoice, choose_kernel
from .pool import (depthwise_blocked, global_pool_blocked, pool_blocked, schedule_depthwise,
                   schedule_pool, schedule_window)
from .schedules import schedule_loops
from .train_conv import (column_weight, columns_geometry, columns_pay_off, columns_to_input,
                         depthwise_weight_grad, flipped_weight, forward_weight, input_grad,
                         pack_bias, pack_depthwise, pack_weight, schedule_weight_grad,
                         spread_output_grad, weight_grad)
from .train_dense import (column_sums, dense_weight_grad, pack_rows, schedule_column_sums,
                          schedule_dense_weight_grad)
from .train_kernels import (ACCUMULATORS, batchnorm_apply, batchnorm_count,
                            batchnorm_deviation_sums, batchnorm_from_sums, batchnorm_grad_apply,
                            batchnorm_grad_coefficients, batchnorm_grad_moments,
                            batchnorm_grad_sums, batchnorm_param_grads, batchnorm_stats,
                            batchnorm_sums, bias_grad, global_pool_grad,
                            schedule_lane_reductions, schedule_square_sum,
                            schedule_sums_then_loops, square_sum_rows)
from .vector_math import CPU_MATH
from .winograd import (choose_conv_algorithm, schedule_winograd, schedule_winograd_weight,
                       winograd_conv, winograd_weight)

FLOAT = "float32"


def winograd_tile(grad) -> int:
    """Winograd's tile for the transposed conv ``grad`` of an input gradient (0: the direct
    kernel): the inference rule, where the forward conv's stride spreads no zeros into dy."""
    return 0 if grad.zero_insert else choose_conv_algorithm(grad.geo)


def emit_scheduled(bb: relax.BlockBuilder, name: str, fn: Callable, args, schedule: Callable,
                   unscheduled: list | None = None):
    """One call_tir of the PrimFunc ``fn`` (TE, any number of outputs) makes from ``args``
    (Relax values, lists or dicts of them), scheduled by ``schedule``, opaque to fusion.
    Should TVM reject the schedule, the kernel is kept as computed (correct, slow) and named in
    ``unscheduled``."""
    func, call_args, out_types = gen_call_tir_inputs(fn, *args)
    try:
        func = schedule(func)
    except Exception as exc:  # noqa: BLE001 (tvm raises several kinds; the kernel stays right)
        if unscheduled is None:
            raise
        unscheduled.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    gv = bb.add_func(func.with_attr("op_pattern", OPAQUE), name)
    return bb.emit(relax.call_tir(gv, call_args, out_types))


@dataclass
class Value:
    """A value of the training step: its var, its logical channel count, its layout (block
    ``b`` of NC[b]c, or PLAIN), and its conversions to other layouts, made once."""

    var: relax.Expr
    channels: int
    block: int = PLAIN
    views: dict = field(default_factory=dict)


def cpu_lowering(lanes: int, unscheduled: list | None = None):
    """The ``lowering`` argument of ``build_train_module`` for the CPU: a CpuTrainLowering
    for a target with ``lanes`` float32 vector lanes."""
    return partial(CpuTrainLowering, lanes=lanes, unscheduled=unscheduled)


class CpuTrainLowering(TrainLowering):
    def __init__(self, bb, g, pvars, mvars, lanes: int = 16, unscheduled: list | None = None):
        super().__init__(bb, g, pvars, mvars)
        self.lanes = lanes
        self.registers = vector_registers(lanes)
        self.unscheduled = unscheduled if unscheduled is not None else []
        self.kinds: dict[str, KernelChoice] = {}
        self.consumed: dict[str, list] = {}   # each layer's inputs in the layouts it read
        self.input_grads: dict[str, str] = {}  # conv -> how its input gradient is computed
        self.family_schedule = None  # the schedule of a family te_grad's kernels run under

    # -- values, layouts and kernels -----------------------------------------------------------
    def emit(self, fn, *args, name: str, schedule=None):
        """The kernel scheduled by ``schedule`` (default: the fallback schedule)."""
        schedule = schedule or self.family_schedule or (lambda f: schedule_loops(f, self.lanes))
        return emit_scheduled(self.bb, name, fn, args, schedule, self.unscheduled)

    def layer_kernels(self, node: str, step):
        """The base class's kernels of a layer's rule, under the CPU family's own schedule:
        RoI pool and align bring theirs (te_roi), everything else takes the fallback."""
        from ..te_roi import schedule_cpu

        self.family_schedule = schedule_cpu if self.kinds[node].kind == "roi" else None
        try:
            return super().layer_kernels(node, step)
        finally:
            self.family_schedule = None

    def model_input(self, x):
        return Value(x, int(x.ty.shape.values[1]))

    def from_plain(self, var):
        shape = var.ty.shape.values
        return Value(var, int(shape[1]) if len(shape) > 1 else 0)

    def plain(self, value):
        return self.layout(value, PLAIN).var

    def layout(self, value: Value, block: int) -> Value:
        """``value`` in the layout ``block``, converted once."""
        if block == value.block:
            return value
        if block not in value.views:
            var = self.emit(conversion(value.channels, value.block, block), value.var,
                            name=f"layout{block}")
            value.views[block] = Value(var, value.channels, block)
        return value.views[block]

    def value_in(self, src: str, block: int) -> Value:
        return self.layout(self.values[src], block)

    # -- which kernel: the CPU planner's choice, as at inference ---------------------------------
    def choose(self, node: str) -> KernelChoice:
        blocks = {src: self.values[src].block for src in layer_node(self.g, node).inputs}
        return choose_kernel(self.g, node, blocks, self.lanes, (), training=True)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, node: str):
        kind = self.choose(node)
        self.kinds[node] = kind
        if kind.kind in ("generic", "roi"):
            self.consumed[node] = [self.values[s] for s in layer_node(self.g, node).inputs]
            return super().forward(node)
        return getattr(self, f"forward_{kind.kind}")(node, kind)

    def forward_conv(self, node, kind):
        geo = kind.geometry
        registers = self.registers
        return self.conv_forward(
            node, kind, lambda w: pack_weight(forward_weight(w, geo), geo), None,
            lambda t, w, b: conv_blocked(t, w, b, geo),
            lambda f: schedule_conv(f, geo, registers=registers))

    def forward_winograd(self, node, kind):
        """Winograd F(m x m, 3 x 3) as at inference, the weights transformed every step."""
        geo, m = kind.geometry, kind.tile
        registers = self.registers
        return self.conv_forward(
            node, kind, lambda w: winograd_weight(pack_weight(forward_weight(w, geo), geo), m),
            schedule_winograd_weight, lambda t, w, b: winograd_conv(t, w, b, geo, m=m),
            lambda f: schedule_winograd(f, geo, m, registers=registers))

    def conv_forward(self, node, kind, pack, pack_schedule, compute, schedule):
        """A conv's forward: its weights packed by ``pack`` (scheduled by ``pack_schedule``;
        None: the fallback), then ``compute(x, packed, bias)`` scheduled by ``schedule``."""
        geo = kind.geometry
        x = self.value_in(layer_node(self.g, node).inputs[0], geo.ib if not geo.in_plain else PLAIN)
        self.consumed[node] = [x]
        args = self.args(node)
        packed = self.emit(pack, args["weight"], name=f"{kernel_name(node)}_pack",
                           schedule=pack_schedule)
        inputs = [x.var, packed]
        if "bias" in args:
            inputs.append(self.emit(lambda b: pack_bias(b, geo.cout, geo.ob), args["bias"],
                                    name=f"{kernel_name(node)}_pack_bias"))
        out = self.emit(lambda t, w, *b: compute(t, w, b[0] if b else None), *inputs,
                        name=kernel_name(node), schedule=schedule)
        return Value(out, geo.cout, geo.ob)

    def forward_depthwise(self, node, kind):
        geo = kind.geometry
        x = self.value_in(layer_node(self.g, node).inputs[0], geo.ob)
        self.consumed[node] = [x]
        args = self.args(node)
        packed = self.emit(lambda w: pack_depthwise(lambda c, k: w[(c, 0, *k)], geo.cout,
                                                    geo.ob, geo.kernel), args["weight"],
                           name=f"{kernel_name(node)}_pack")
        inputs = [x.var, packed]
        if "bias" in args:
            inputs.append(self.emit(lambda b: pack_bias(b, geo.cout, geo.ob), args["bias"],
                                    name=f"{kernel_name(node)}_pack_bias"))
        out = self.emit(lambda t, w, *b: depthwise_blocked(t, w, b[0] if b else None, geo),
                        *inputs, name=kernel_name(node),
                        schedule=lambda f: schedule_depthwise(f, geo))
        return Value(out, geo.cout, geo.ob)

    def forward_dense(self, node, kind):
        data = layer_node(self.g, node)
        x = self.values[data.inputs[0]]
        self.consumed[node] = [x]
        args = self.args(node)
        outputs, features, lanes = data.shape[0], int(args["weight"].ty.shape.values[1]), \
            self.lanes
        packed = self.emit(lambda w: pack_rows(lambda o, k: w[o, k], outputs, features, lanes),
                           args["weight"], name=f"{kernel_name(node)}_pack")
        inputs = [self.plain(x), packed] + ([args["bias"]] if "bias" in args else [])
        registers = self.registers
        out = self.emit(lambda t, w, *b: dense_blocked(t, w, b[0] if b else None, outputs),
                        *inputs, name=kernel_name(node),
                        schedule=lambda f: schedule_dense(f, registers=registers))
        return Value(out, outputs)

    def backward_dense(self, node, kind, dy, needs_dx):
        data = layer_node(self.g, node)
        (x,) = self.consumed[node]
        args = self.args(node)
        names = param_names(self.g, node)
        hint = kernel_name(node) + "_grad"
        outputs, features = data.shape[0], int(args["weight"].ty.shape.values[1])
        lanes, registers = self.lanes, self.registers
        dy_var = self.plain(dy)
        dxs = [None]
        if needs_dx[0]:
            packed = self.emit(lambda w: pack_rows(lambda k, o: w[o, k], features, outputs,
                                                   lanes),
                               args["weight"], name=f"{hint}_pack")
            var = self.emit(lambda d, w: dense_blocked(d, w, None, features), dy_var, packed,
                            name=f"{hint}_dx",
                            schedule=lambda f: schedule_dense(f, registers=registers))
            dxs = [Value(var, features)]
        grads = {names["weight"]: self.emit(
            lambda t, d: dense_weight_grad(t, d, lanes), self.plain(x), dy_var,
            name=f"{hint}_dw", schedule=lambda f: schedule_dense_weight_grad(f, registers))}
        if "bias" in args:
            grads[names["bias"]] = self.emit(column_sums, dy_var, name=f"{hint}_db",
                                             schedule=lambda f: schedule_column_sums(f, lanes))
        return dxs, grads

    def forward_elementwise(self, node, kind):
        """A point-wise layer, an add, dropout or identity, in the layout of its first input."""
        data = layer_node(self.g, node)
        layer = data.layer
        first = self.values[data.inputs[0]]
        xs = [self.layout(self.values[s], first.block) for s in data.inputs]
        self.consumed[node] = xs
        dropout = isinstance(layer, Dropout) and node in self.mvars
        if layer.passthrough and not dropout:
            return xs[0]
        if dropout:
            mask = self.layout(Value(self.mvars[node], first.channels), first.block)
            self.consumed[node] = [xs[0], mask]
            var = self.emit(masked("dropout"), xs[0].var, mask.var, name=kernel_name(node))
        elif isinstance(layer, Add):
            compute = rules_for(layer, node).compute
            var = self.emit(lambda *ts: compute(layer, list(ts), {}, None),
                            *[x.var for x in xs], name=kernel_name(node))
        else:
            var = self.emit(lambda a: te.compute(a.shape, lambda *i: layer.forward(
                a(*i), CPU_MATH, None), name=layer.type_name), xs[0].var, name=kernel_name(node))
        return Value(var, first.channels, first.block)

    def forward_batchnorm(self, node, kind):
        data = layer_node(self.g, node)
        layer = data.layer
        x = self.values[data.inputs[0]]
        self.consumed[node] = [x]
        a = self.args(node)
        channels = x.channels
        lanes = self.lanes
        if self.parallel and self.parallel.sync_batchnorm:
            stats = self.synced_batchnorm_stats(node, x)
        else:
            stats = self.emit(lambda t, w, b, rm, rv: batchnorm_stats(layer, t, channels, w, b,
                                                                      rm, rv),
                              x.var, a["weight"], a["bias"], a["running_mean"],
                              a["running_var"], name=f"{kernel_name(node)}_stats",
                              schedule=lambda f: schedule_sums_then_loops(
                                  f, ["bn_sum", "bn_sq"], lanes))
        moments, coef = self.item(stats, 0), self.item(stats, 1)
        names = param_names(self.g, node)
        self.new_buffers[names["running_mean"]] = self.item(stats, 2)
        self.new_buffers[names["running_var"]] = self.item(stats, 3)
        self.saved[node] = moments
        out = self.emit(batchnorm_apply, x.var, coef, name=kernel_name(node))
        return Value(out, channels, x.block)

    def synced_batchnorm_stats(self, node, x: Value):
        """``batchnorm_stats`` over the global batch: each pass's per-channel sums (and the
        element count) summed over the processes before the next pass reads them, so the
        statistics are the ones a single process would compute from the whole batch."""
        layer = layer_node(self.g, node).layer
        a, channels, lanes, hint = self.args(node), x.channels, self.lanes, kernel_name(node)
        local = self.emit(lambda t: [batchnorm_sums(t), batchnorm_count(t)], x.var,
                          name=f"{hint}_sums",
                          schedule=lambda f: schedule_sums_then_loops(f, ["bn_sum"], lanes))
        sums, count = self.all_reduce([self.item(local, 0), self.item(local, 1)], "bn_sums")
        squares = self.emit(lambda t, s, c: batchnorm_deviation_sums(t, s, c[0]),
                            x.var, sums, count, name=f"{hint}_squares",
                            schedule=lambda f: schedule_sums_then_loops(f, ["bn_sq"], lanes))
        (squares,) = self.all_reduce([squares], "bn_squares")
        self.synced_counts[node] = count
        return self.emit(lambda s, q, c, w, b, rm, rv: batchnorm_from_sums(
            layer, s, q, c[0], channels, w, b, rm, rv), sums, squares, count, a["weight"],
            a["bias"], a["running_mean"], a["running_var"], name=f"{hint}_stats")

    def forward_pool(self, node, kind):
        data = layer_node(self.g, node)
        layer, out_spatial = data.layer, tuple(data.shape[1:])
        x = self.values[data.inputs[0]]
        self.consumed[node] = [x]
        out = self.emit(lambda t: pool_blocked(layer, t, out_spatial), x.var,
                        name=kernel_name(node),
                        schedule=schedule_pool(layer, out_spatial[-1]))
        return Value(out, x.channels, x.block)

    def forward_global_pool(self, node, kind):
        layer = layer_node(self.g, node).layer
        x = self.values[layer_node(self.g, node).inputs[0]]
        self.consumed[node] = [x]
        out = self.emit(lambda t: global_pool_blocked(layer, t), x.var, name=kernel_name(node),
                        schedule=lambda f: schedule_window(f, 1))
        return Value(out, x.channels, x.block)

    # -- backward -------------------------------------------------------------------------------
    def backward(self, node: str, dy_value, needs_dx: list):
        kind = self.kinds[node]
        if kind.kind in ("generic", "roi"):
            return super().backward(node, dy_value, needs_dx)
        return getattr(self, f"backward_{kind.kind}")(node, kind, dy_value, needs_dx)

    def conv_grad_inputs(self, node, kind, dy):
        """What a conv's backward kernels read: (geometry, dy in its output block, the input
        as the forward read it, the parameter arguments, their names, the kernel name stem)."""
        geo = kind.geometry
        (x,) = self.consumed[node]
        return (geo, self.layout(dy, geo.ob), x, self.args(node), param_names(self.g, node),
                kernel_name(node) + "_grad")

    def backward_conv(self, node, kind, dy, needs_dx):
        geo, dy, x, args, names, hint = self.conv_grad_inputs(node, kind, dy)
        registers = self.registers
        dxs = [None]
        if needs_dx[0]:
            out_block, grad = self.input_grad_geometry(geo)
            if columns_pay_off(geo):
                self.input_grads[node] = "columns"
                dxs = [self.columns_input_grad(node, geo, dy, out_block)]
            elif grad.geo.supported() is None:
                m = winograd_tile(grad)
                self.input_grads[node] = "winograd" if m else "transposed"
                dxs = [self.transposed_input_grad(geo, grad, dy, args["weight"], hint, m)]
            else:
                self.input_grads[node] = "generic"
                dxs = [self.generic_input_grad(node, x, dy)]
        grads = {names["weight"]: self.emit(
            lambda t, d: weight_grad(t, d, geo), x.var, dy.var, name=f"{hint}_dw",
            schedule=lambda f: schedule_weight_grad(f, geo, registers=registers))}
        if "bias" in args:
            grads[names["bias"]] = self.channel_grad(dy, geo.cout, f"{hint}_db")
        return dxs, grads

    backward_winograd = backward_conv

    def transposed_input_grad(self, geo, grad, dy: Value, weight, hint: str, m: int) -> Value:
        """dx as the transposed conv ``grad`` of dy with the flipped weights, by the direct
        kernel (``m`` 0) or by Winograd F(m x m, 3 x 3)."""
        registers = self.registers

        def flipped(w):
            return pack_weight(flipped_weight(w, geo), grad.geo)

        if m:  # the flipped weights transformed as well
            pack, pack_schedule, compute, schedule = (
                lambda w: winograd_weight(flipped(w), m), schedule_winograd_weight,
                lambda d, w: winograd_conv(d, w, None, grad.geo, m=m),
                lambda f: schedule_winograd(f, grad.geo, m, registers=registers))
        else:  # dy spread with zeros where the forward conv strides
            pack, pack_schedule, compute, schedule = (
                flipped, None,
                lambda d, w: conv_blocked(spread_output_grad(d, geo, grad) if grad.zero_insert
                                          else d, w, None, grad.geo),
                lambda f: schedule_conv(f, grad.geo, registers=registers))
        packed = self.emit(pack, weight, name=f"{hint}_pack", schedule=pack_schedule)
        var = self.emit(compute, dy.var, packed, name=f"{hint}_dx", schedule=schedule)
        return Value(var, geo.cin, grad.geo.ob)

    def input_grad_geometry(self, geo):
        """(block, InputGrad) of the transposed conv computing dx: in the input's block where
        the grouped kernel supports it, else the next smaller block that it does."""
        first = geo.ib if not geo.in_plain else block_for(geo.cin, self.lanes)
        for block in dict.fromkeys((first, self.lanes // 2, self.lanes // 4)):
            grad = input_grad(geo, block)
            if grad.geo.supported() is None:
                return block, grad
        return first, input_grad(geo, first)

    def columns_input_grad(self, node, geo, dy: Value, out_block: int) -> Value:
        """dx as columns (a 1x1 conv of dy) gathered back to the input's positions."""
        cols = columns_geometry(geo, out_block)
        hint = kernel_name(node) + "_grad"
        registers = self.registers
        packed = self.emit(lambda w: pack_weight(column_weight(w, geo, cols), cols),
                           self.args(node)["weight"], name=f"{hint}_pack")
        columns = self.emit(lambda d, w: conv_blocked(d, w, None, cols), dy.var, packed,
                            name=f"{hint}_columns",
                            schedule=lambda f: schedule_conv(f, cols, registers=registers))
        width = geo.in_spatial[-1]
        var = self.emit(lambda c: columns_to_input(c, geo, out_block), columns,
                        name=f"{hint}_dx", schedule=lambda f: schedule_window(f, width))
        return Value(var, geo.cin, out_block)

    def generic_input_grad(self, node, x, dy):
        """te_grad's input gradient of a conv, on plain views (for the convs whose transposed
        conv has no blocked kernel)."""
        layer = layer_node(self.g, node).layer
        shape = layer_node(self.g, node).shape
        args = self.args(node)
        var = self.emit(lambda t, d, a: te_grad.grad_conv(layer, [t], None, d, a, shape)[0][0],
                        self.plain(x), self.plain(dy), {"weight": args["weight"]},
                        name=f"{kernel_name(node)}_grad_dx0")
        return Value(var, x.channels)

    def backward_depthwise(self, node, kind, dy, needs_dx):
        geo, dy, x, args, names, hint = self.conv_grad_inputs(node, kind, dy)
        dxs = [None]
        if needs_dx[0]:
            self.input_grads[node] = "transposed"
            grad = input_grad(geo, geo.ob)
            kernel = geo.kernel
            packed = self.emit(lambda w: pack_depthwise(
                lambda c, k: w[(c, 0, *[kk - 1 - i for kk, i in zip(kernel, k)])], geo.cout,
                geo.ob, kernel), args["weight"], name=f"{hint}_pack")

            def dx_compute(d, w):
                src = spread_output_grad(d, geo, grad) if grad.zero_insert else d
                return depthwise_blocked(src, w, None, grad.geo)

            width = geo.in_spatial[-1]
            var = self.emit(dx_compute, dy.var, packed, name=f"{hint}_dx",
                            schedule=lambda f: schedule_window(f, width))
            dxs = [Value(var, geo.cin, geo.ob)]
        registers = self.registers
        grads = {names["weight"]: self.emit(
            lambda t, d: depthwise_weight_grad(t, d, geo), x.var, dy.var, name=f"{hint}_dw",
            schedule=lambda f: schedule_weight_grad(f, geo, registers=registers,
                                                    depthwise=True))}
        if "bias" in args:
            grads[names["bias"]] = self.channel_grad(dy, geo.cout, f"{hint}_db")
        return dxs, grads

    def channel_grad(self, dy: Value, channels: int, name: str):
        lanes = self.lanes
        return self.emit(lambda d: bias_grad(d, channels), dy.var, name=name,
                         schedule=lambda f: schedule_sums_then_loops(f, ["bias_sum"], lanes))

    def backward_elementwise(self, node, kind, dy, needs_dx):
        data = layer_node(self.g, node)
        layer = data.layer
        xs = self.consumed[node]
        dy = self.layout(dy, xs[0].block)
        hint = kernel_name(node) + "_grad"
        dropout = isinstance(layer, Dropout) and node in self.mvars
        if isinstance(layer, Add) or (layer.passthrough and not dropout):
            return [dy] * len(xs), {}
        if dropout:
            var = self.emit(masked("dropout_dx"), dy.var, xs[1].var, name=hint)
            return [Value(var, dy.channels, dy.block)], {}
        grad = gradient_of(layer, node)
        y = self.values[node]
        var = self.emit(lambda a, b, d: grad(layer, [a], b, d, {}, None)[0][0],
                        xs[0].var, y.var, dy.var, name=hint)
        return [Value(var, dy.channels, dy.block)], {}

    def backward_batchnorm(self, node, kind, dy, needs_dx):
        layer = layer_node(self.g, node).layer
        (x,) = self.consumed[node]
        dy = self.layout(dy, x.block)
        a = self.args(node)
        names = param_names(self.g, node)
        hint = kernel_name(node) + "_grad"
        channels, lanes = x.channels, self.lanes
        if node in self.synced_counts:
            coef, dw, db = self.synced_batchnorm_grad(node, x, dy)
        else:
            res = self.emit(lambda t, d, m, w: batchnorm_grad_sums(layer, t, d, m, w, channels),
                            x.var, dy.var, self.saved[node], a["weight"], name=f"{hint}_sums",
                            schedule=lambda f: schedule_sums_then_loops(f, ["bn_grad"], lanes))
            coef, dw, db = (self.item(res, i) for i in range(3))
        grads = {names["weight"]: dw, names["bias"]: db}
        dx = self.emit(batchnorm_grad_apply, x.var, dy.var, coef, name=f"{hint}_dx")
        return [Value(dx, channels, x.block)], grads

    def synced_batchnorm_grad(self, node, x: Value, dy: Value):
        """(coef, d weight, d bias) of a batch norm with global statistics: the input
        gradient's sums are summed over the processes (every sample's output moved the
        statistics); the parameter gradients are this process's part (the step sums them with
        the other gradients)."""
        layer = layer_node(self.g, node).layer
        a, channels, lanes = self.args(node), x.channels, self.lanes
        hint = kernel_name(node) + "_grad"
        moments = self.saved[node]
        sums = self.emit(lambda t, d, m: batchnorm_grad_moments(t, d, m), x.var, dy.var,
                         moments, name=f"{hint}_sums",
                         schedule=lambda f: schedule_sums_then_loops(f, ["bn_grad"], lanes))
        params = self.emit(lambda s, m: batchnorm_param_grads(layer, s, m, channels), sums,
                           moments, name=f"{hint}_params")
        (total,) = self.all_reduce([sums], "bn_grad_sums")
        coef = self.emit(lambda s, m, w, c: batchnorm_grad_coefficients(
            layer, s, m, w, channels, c[0]), total, moments, a["weight"],
            self.synced_counts[node], name=f"{hint}_coef")
        return coef, self.item(params, 0), self.item(params, 1)

    def backward_pool(self, node, kind, dy, needs_dx):
        data = layer_node(self.g, node)
        layer, shape = data.layer, data.shape
        (x,) = self.consumed[node]
        dy = self.layout(dy, x.block)
        y = self.values[node]
        grad = gradient_of(layer, node)
        lanes = self.lanes
        var = self.emit(lambda a, b, d: grad(layer, [a], b, d, {}, shape)[0][0],
                        x.var, y.var, dy.var, name=kernel_name(node) + "_grad",
                        schedule=lambda f: schedule_lane_reductions(f, lanes))
        return [Value(var, x.channels, x.block)], {}

    def backward_global_pool(self, node, kind, dy, needs_dx):
        layer = layer_node(self.g, node).layer
        (x,) = self.consumed[node]
        dy = self.layout(dy, x.block)
        y = self.values[node]
        lanes = self.lanes
        var = self.emit(lambda a, b, d: global_pool_grad(layer, a, b, d), x.var, y.var, dy.var,
                        name=kernel_name(node) + "_grad",
                        schedule=lambda f: schedule_lane_reductions(f, lanes))
        return [Value(var, x.channels, x.block)], {}

    def accumulate(self, src: str, total, new):
        new = self.layout(new, self.values[src].block)
        if total is None:
            return new
        var = self.emit(gradient_sum, total.var, new.var, name="grad_acc")
        return Value(var, new.channels, new.block)

    # -- the update, on the parameters as flat vectors -----------------------------------------
    def flat(self, var):
        """A view of a parameter-shaped tensor as (size/lanes, lanes), or (size,) when the
        lanes do not divide it: no copy, and contiguous vectors whatever its shape."""
        size = 1
        for d in var.ty.shape.values:
            size *= int(d)
        shape = (size // self.lanes, self.lanes) if size % self.lanes == 0 else (size,)
        return self.bb.emit(relax.op.reshape(var, shape))

    def unflat(self, var, like):
        return self.bb.emit(relax.op.reshape(var, like.ty.shape))

    def square_sum(self, tensor):
        flat = self.flat(tensor)
        shape = flat.ty.shape.values
        if len(shape) == 2 and int(shape[0]) >= ACCUMULATORS:
            return self.emit(square_sum_rows, flat, name="square_sum",
                             schedule=schedule_square_sum)
        return self.emit(te_grad.square_sum, flat, name="square_sum")

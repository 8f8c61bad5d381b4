"""The layer graph as a Relax module of scheduled CPU kernels, in the layouts of the plan.

Like ``backends.lower``: ``main(x, *kernel_args)`` for any batch size (symbolic), plus
``main_b<N>`` for each batch size the model is specialised for, with the same kernel
arguments, here in the packed layouts the plan asks for (applied once, at load time). Each
kernel is a PrimFunc scheduled when it is made, marked ``tirx.is_scheduled`` and opaque to
fusion, so no later pass merges it with a neighbour and loses its schedule.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import networkx as nx
import tvm
import tvm_ffi
from tvm import relax, te, tirx

from cnncompiler.errors import CompileError
from cnncompiler.graph import layer_node, topo_layers
from cnncompiler.graph.layouts import layout_shape
from cnncompiler.graph.signature import kernel_name, kernel_signature, prepared_shapes

from cnncompiler.layers.fused import Fused
from cnncompiler.layers.merge import Add

from ..lower import input_vars
from ..rules import rules_for
from ..te_ops import softmax
from .arg_checks import INPUTS_ATTR
from .blocking import PLAIN, conversion, plain_view, repeat_channels
from .conv import conv_blocked, images_outer, schedule_conv, vector_registers
from .conv_pool import (band_rows, conv_then_pool, schedule_conv_pool,
                        schedule_winograd_pool)
from .dense import dense_blocked, schedule_dense
from .local import local_blocked, schedule_local
from .plain_conv import conv_plain, schedule_conv_plain
from .plan import KernelChoice, plan_kernels
from .pool import (blur_pool_blocked, depthwise_blocked, global_pool_blocked, pool_blocked,
                   repeat_blocks, repeat_per_task, schedule_depthwise, schedule_pool,
                   schedule_separable_pool, schedule_window)
from .schedules import schedule_channel_window, schedule_loops
from .winograd import schedule_winograd, winograd_conv
from .vector_math import CPU_MATH

FLOAT = "float32"
OPAQUE = 8  # TVM's kOpaque op pattern: FuseOps leaves the kernel alone


@dataclass
class Value:
    var: relax.Expr
    channels: int
    block: int


@dataclass(frozen=True)
class Slice:
    """Where a kernel writes its (N, B, *S, b) output: blocks ``first`` on of a tensor of
    ``blocks`` channel blocks, ``buffer`` (None: a new one, the rest of it unwritten)."""

    buffer: relax.Var | None
    first: int
    blocks: int


def emit_kernel(bb: relax.BlockBuilder, name: str, inputs: list, compute: Callable,
                schedule: Callable, unscheduled: list | None = None,
                inplace: int | None = None, schedule_hook: Callable | None = None,
                into: Slice | None = None) -> relax.Var:
    """One call_tir of the PrimFunc ``compute`` makes from the inputs' shapes, scheduled by
    ``schedule``. Identical kernels are added once (BlockBuilder.add_func deduplicates).

    ``schedule_hook(name, func, schedule)``, when given, schedules the unscheduled ``func``
    instead: tuning (backends/tuning) uses it to collect kernels and to substitute a schedule
    measured faster than ``schedule``.

    With ``inplace``, the kernel writes its output over ``inputs[inplace]`` (a same-shaped
    value nothing reads afterwards: a residual), saving that much activation memory. With
    ``into``, it writes its output into a slice of a bigger tensor (``write_into``).

    Should TVM reject the schedule, the kernel is kept as computed, correct and slow, and its
    name and the reason go to ``unscheduled``."""
    # The PrimFunc gets its own copy of each symbolic size (the batch), as emit_te does.
    fresh: dict = {}

    def own(value):
        if isinstance(value, tirx.Var):
            return fresh.setdefault(value, tvm.ir.Var(value.name, value.ty))
        return value

    holders = [te.placeholder([own(s) for s in v.ty.shape.values], FLOAT, name=f"in{i}")
               for i, v in enumerate(inputs)]
    out = compute(*holders)
    func = te.create_prim_func([*holders, out])
    try:
        func = schedule(func) if schedule_hook is None else schedule_hook(name, func, schedule)
    except Exception as exc:  # noqa: BLE001 (tvm raises several kinds; the kernel stays right)
        if unscheduled is None:
            raise
        unscheduled.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if inplace is not None:
        func = write_over(func, inplace)
    if into is not None:
        func = write_into(func, into.first, into.blocks)
    gv = bb.add_func(func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE), name)
    back = {mine: theirs for theirs, mine in fresh.items()}
    out_shape = [tvm_ffi.structural_map(s, (tvm.ir.Var, lambda v: back.get(v, v)), order="post")
                 for s in out.shape]
    if into is not None:
        out_shape[1] = into.blocks
        if into.buffer is not None:  # the slices written before stay: written over in place
            inplace, inputs = len(inputs), [*inputs, into.buffer]
    out_type = relax.TensorType(out_shape, FLOAT)
    if inplace is not None:
        return bb.emit(relax.call_tir_inplace(gv, inputs, inplace, out_type))
    return bb.emit(relax.call_tir(gv, inputs, out_type))


def write_over(func: tirx.PrimFunc, index: int) -> tirx.PrimFunc:
    """``func`` with its output buffer (the last parameter) replaced by parameter ``index``:
    the form call_tir_inplace calls. Right for kernels that read each element of that input
    only to compute the same element of the output (an epilogue's residual add)."""
    out, target = func.params[-1], func.params[index]
    body = tvm_ffi.structural_map(func.body, (tvm.ir.Var, lambda v: target if v.same_as(out)
                                              else v), order="post")
    return tirx.PrimFunc(list(func.params[:-1]), body, attrs=func.attrs)


def write_into(func: tirx.PrimFunc, first: int, blocks: int) -> tirx.PrimFunc:
    """``func`` with its (N, B, *S, b) output (the last parameter) replaced by a tensor of
    ``blocks`` channel blocks, written at blocks ``first`` to ``first + B``; the rest of it is
    left as it is. Every store, load and region of the output moves by ``first`` blocks."""
    out = func.params[-1]
    shape = list(out.ty.shape)
    shape[1] = blocks
    whole = tirx.decl_buffer(shape, out.ty.dtype, name="into")

    def moved(indices):
        return [indices[0], indices[1] + first, *indices[2:]]

    def store(stmt):
        return tirx.BufferStore(whole, stmt.value, moved(list(stmt.indices))) \
            if stmt.buffer.same_as(out) else stmt

    def load(expr):
        return tirx.BufferLoad(whole, moved(list(expr.indices))) \
            if expr.source.same_as(out) else expr

    def region(r):
        if not r.source.same_as(out):
            return r
        ranges = list(r.region)
        ranges[1] = tvm.ir.Range.from_min_extent(ranges[1].min + first, ranges[1].extent)
        return tirx.BufferRegion(whole, ranges)

    body = tvm_ffi.structural_map(func.body, [(_STORE, store), (_LOAD, load), (_REGION, region)],
                                  order="post")
    return tirx.PrimFunc([*func.params[:-1], whole], body, attrs=func.attrs)


def _node_types():
    """The IR classes of a buffer store, load and region (tirx exports their constructors)."""
    b = tirx.decl_buffer((1,), FLOAT)
    zero = tirx.const(0, "int32")
    return (type(tirx.BufferStore(b, tirx.const(0.0, FLOAT), [zero])),
            type(tirx.BufferLoad(b, [zero])),
            type(tirx.BufferRegion(b, [tvm.ir.Range(0, 1)])))


_STORE, _LOAD, _REGION = _node_types()


class CpuEmitter:
    """Emits one Relax function of the graph; ``values`` maps layer names to their values."""

    def __init__(self, bb, g: nx.DiGraph, plan: dict[str, KernelChoice], arg_vars: dict,
                 lanes: int, unscheduled: list | None = None, schedule_hook=None,
                 batch: int | None = None):
        self.bb, self.g, self.plan, self.arg_vars, self.lanes = bb, g, plan, arg_vars, lanes
        self.batch = batch  # the function's batch size (None: any)
        self.schedule_hook = schedule_hook
        self.values: dict[str, Value] = {}
        self.emitted: set[str] = set()
        self.unscheduled = unscheduled if unscheduled is not None else []
        self._converted: dict[tuple[str, int], Value] = {}
        self.assembled: dict[str, relax.Var] = {}  # concat -> its output, slices written so far
        self._into: Slice | None = None

    def kernel(self, name: str, inputs: list, compute: Callable, schedule: Callable,
               inplace: int | None = None):
        into, self._into = self._into, None  # the layer's own kernel, its last
        return emit_kernel(self.bb, name, inputs, compute, schedule, self.unscheduled, inplace,
                           self.schedule_hook, into)

    def overwritable(self, node: str, residual: Value, others: list) -> bool:
        """May ``node`` write its output over ``residual``? Only a kernel's own output that no
        layer reads after ``node``, is no model output, and is no other input of ``node`` (a
        conv reading it around each position while tasks overwrite it would read new values)."""
        owners = [n for n, v in self.values.items() if v.var.same_as(residual.var)]
        if len(owners) != 1 or owners[0] in self.g.graph["inputs"] or \
                any(v.var.same_as(residual.var) for v in others):
            return False
        (src,) = owners
        if src in self.g.graph["outputs"]:
            return False
        return all(r == node or r in self.emitted for r in self.g.successors(src))

    # -- values and layout conversions ---------------------------------------------------
    def value(self, src: str, block: int | None) -> Value:
        """``src``'s value in the layout ``block`` (None: as it is), converted once."""
        v = self.values[src]
        if block is None or block == v.block:
            return v
        key = (src, block)
        if key not in self._converted:
            var = self.kernel(f"{kernel_name(src)}_layout{block}", [v.var],
                              conversion(v.channels, v.block, block),
                              lambda f: schedule_loops(f, self.lanes))
            self._converted[key] = Value(var, v.channels, block)
        return self._converted[key]

    def args(self, node: str) -> tuple[list[str], list]:
        keys = sorted(prepared_shapes(self.g, node))
        return keys, [self.arg_vars[f"{node}:{k}"] for k in keys]

    # -- layers -------------------------------------------------------------------------------
    def emit_layer(self, node: str) -> None:
        data = layer_node(self.g, node)
        choice = self.plan[node]
        channels = data.shape[0] if data.shape else 0
        if choice.kind == "passthrough":
            self.values[node] = self.values[data.inputs[0]]
            self.emitted.add(node)
            return
        wants = list(choice.in_blocks) + [None] * (len(data.inputs) - len(choice.in_blocks))
        xs = [self.value(src, b) for src, b in zip(data.inputs, wants)]
        emit = getattr(self, f"emit_{choice.kind}")
        if choice.into is not None:
            concat, first, blocks = choice.into
            self._into = Slice(self.assembled.get(concat), first, blocks)
        try:
            var = emit(node, data, choice, xs)
        except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
            raise CompileError(f"layer '{node}' ({data.layer.type_name}): lowering to TVM "
                               f"for the CPU failed: {exc}") from exc
        if choice.into is not None:
            if self._into is not None:
                raise CompileError(f"layer '{node}': its {choice.kind} kernel was to write into "
                                   f"'{choice.into[0]}' and made no kernel")
            self.assembled[choice.into[0]] = var
        self.values[node] = Value(var, channels, choice.out_block)
        self.emitted.add(node)

    @staticmethod
    def _epilogue(data) -> tuple[Fused | None, bool]:
        """The fused layer whose epilogue the kernel applies (None: none), and whether it adds
        a residual."""
        layer = data.layer
        if not isinstance(layer, Fused):
            return None, False
        return layer, layer.has_residual

    def emit_conv(self, node, data, choice, xs):
        registers = vector_registers(self.lanes)
        # a partial, not a lambda: tuning reads the rule and its arguments to try other tiles
        return self._emit_conv_like(node, data, choice, xs, conv_blocked,
                                    functools.partial(schedule_conv, geo=choice.geometry,
                                                      registers=registers))

    def emit_conv_pool(self, node, data, choice, xs):
        """A conv and the pool that alone reads it, one kernel (``conv_pool``): the value it
        makes is the pool's."""
        pool = layer_node(self.g, choice.pool)
        out_spatial = tuple(pool.shape[1:])
        band = band_rows(choice.geometry, pool.layer, out_spatial[0])
        return self._emit_conv_like(node, data, choice, xs,
                                    conv_then_pool(conv_blocked, pool.layer, out_spatial,
                                                   band),
                                    functools.partial(schedule_conv_pool, geo=choice.geometry,
                                                      band=band,
                                                      registers=vector_registers(self.lanes)))

    def emit_winograd_pool(self, node, data, choice, xs):
        """A Winograd conv and the 2 x 2 pool that alone reads it, one kernel
        (``conv_pool``)."""
        pool = layer_node(self.g, choice.pool)
        conv = functools.partial(winograd_conv, m=choice.tile)
        return self._emit_conv_like(node, data, choice, xs,
                                    conv_then_pool(conv, pool.layer, tuple(pool.shape[1:])),
                                    functools.partial(schedule_winograd_pool,
                                                      geo=choice.geometry, m=choice.tile,
                                                      registers=vector_registers(self.lanes)))

    def emit_absorbed(self, node, data, choice, xs):
        """A pool its conv's kernel computed (``emit_conv_pool``): no kernel of its own."""
        return xs[0].var

    def emit_locally_connected(self, node, data, choice, xs):
        """A conv whose weights differ at every output position (``local``)."""
        return self._emit_conv_like(node, data, choice, xs, local_blocked,
                                    functools.partial(schedule_local, geo=choice.geometry))

    def emit_plain_conv(self, node, data, choice, xs):
        """A conv with few filters on a plain input, vectorized along its output rows."""
        return self._emit_conv_like(node, data, choice, xs,
                                    functools.partial(conv_plain, lanes=self.lanes),
                                    functools.partial(schedule_conv_plain, geo=choice.geometry,
                                                      lanes=self.lanes))

    def emit_winograd(self, node, data, choice, xs):
        """A 3x3 stride-1 conv by Winograd F(m x m, 3 x 3), its weights transformed at load
        time (the layout ``winograd:m:ib:ob``)."""
        registers = vector_registers(self.lanes)
        return self._emit_conv_like(node, data, choice, xs,
                                    functools.partial(winograd_conv, m=choice.tile),
                                    functools.partial(schedule_winograd, geo=choice.geometry,
                                                      m=choice.tile, registers=registers))

    def emit_depthwise(self, node, data, choice, xs):
        outer = self.split_by_channels(data.inputs[0])
        return self._emit_conv_like(node, data, choice, xs, depthwise_blocked,
                                    lambda f: schedule_depthwise(f, choice.geometry, outer))

    def emit_depthwise_multiplier(self, node, data, choice, xs):
        """A depthwise conv with a channel multiplier: its input's channels repeated, then the
        depthwise kernel over them. Where the input is in whole blocks of the output's size
        and the multiplier divides the block, each task repeats the rows it reads
        (``pool.repeat_blocks``); else a kernel of their own repeats the whole input first.
        A net of a 32 -> 64 at 56 x 56 and a 64 -> 256 stride-2 one, per task against first:
        0.85 / 0.65 of the time at batch 1 / 8 (the second: 103 us alone against 113 + 23)."""
        x, geo = xs[0], choice.geometry
        times = geo.cout // x.channels
        if x.block == geo.ib and geo.ib % times == 0 and x.channels % geo.ib == 0:
            outer = self.split_by_channels(data.inputs[0])

            def kernel(t, *rest):
                return depthwise_blocked(repeat_blocks(t, times), *rest)

            return self._emit_conv_like(
                node, data, choice, xs, kernel,
                lambda f: repeat_per_task(schedule_depthwise(f, geo, outer)))
        var = self.kernel(f"{kernel_name(node)}_repeat", [x.var],
                          lambda t: repeat_channels(t, x.channels, x.block, times, geo.ib),
                          lambda f: schedule_loops(f, self.lanes))
        return self.emit_depthwise(node, data, choice, [Value(var, geo.cout, geo.ib), *xs[1:]])

    def split_by_channels(self, src: str) -> bool:
        """Did ``src``'s kernel split its tasks by output channels first
        (``conv.images_outer``)? A window kernel reading it then does too, so that each thread
        reads the channels it wrote: MobileNet-v1 at batch 1, whose 1x1 convs at 14 x 14 and
        7 x 7 split by channels, 0.970 of the time (interleaved), every other network level."""
        choice = self.plan.get(src)
        return choice is not None and choice.kind == "conv" and \
            not images_outer(choice.geometry, self.batch)

    def _emit_conv_like(self, node, data, choice, xs, kernel, schedule):
        keys, args = self.args(node)
        fused, residual = self._epilogue(data)
        geo = choice.geometry
        inputs = [xs[0].var, *args] + ([xs[1].var] if residual else [])

        def compute(x, *rest):
            named = dict(zip(keys, rest[:len(keys)]))
            res = rest[len(keys)] if residual else None
            return kernel(x, named["weight"], named.get("bias"), geo, fused, named, res)

        return self.kernel(kernel_name(node), inputs, compute, schedule,
                           self._inplace(node, xs, residual, inputs))

    def _inplace(self, node, xs, residual: bool, inputs) -> int | None:
        """The residual's position in ``inputs`` when the output can be written over it."""
        if residual and self.overwritable(node, xs[1], xs[:1]):
            return len(inputs) - 1
        return None

    def emit_dense(self, node, data, choice, xs):
        keys, args = self.args(node)
        fused, residual = self._epilogue(data)
        features = data.shape[0]
        inputs = [xs[0].var, *args] + ([xs[1].var] if residual else [])

        def compute(x, *rest):
            named = dict(zip(keys, rest[:len(keys)]))
            res = rest[len(keys)] if residual else None
            return dense_blocked(x, named["weight"], named.get("bias"), features, fused, named,
                                 res)

        registers = vector_registers(self.lanes)
        return self.kernel(kernel_name(node), inputs, compute,
                           functools.partial(schedule_dense, registers=registers),
                           self._inplace(node, xs, residual, inputs))

    def emit_pool(self, node, data, choice, xs):
        layer, out_spatial = data.layer, tuple(data.shape[1:])
        outer = self.split_by_channels(data.inputs[0])
        return self.kernel(kernel_name(node), [xs[0].var],
                           lambda x: pool_blocked(layer, x, out_spatial),
                           schedule_pool(layer, out_spatial[-1], outer))

    def emit_blur_pool(self, node, data, choice, xs):
        layer, out_spatial = data.layer, tuple(data.shape[1:])
        outer = self.split_by_channels(data.inputs[0])
        return self.kernel(kernel_name(node), [xs[0].var],
                           lambda x: blur_pool_blocked(layer, x, out_spatial),
                           lambda f: schedule_separable_pool(f, layer.kernel ** 2, outer))

    def emit_softmax(self, node, data, choice, xs):
        axis = data.layer.axis % (len(data.shape) + 1)
        return self.kernel(kernel_name(node), [xs[0].var],
                           lambda x: softmax(x, axis, CPU_MATH.exp),
                           lambda f: schedule_loops(f, self.lanes, plain_rows=True))

    def emit_channel_window(self, node, data, choice, xs):
        """te_ops' lowering of a window across the channels (LRN) on a plain input."""
        layer, out_shape = data.layer, data.shape
        lower = rules_for(layer, node).compute
        return self.kernel(kernel_name(node), [xs[0].var],
                           lambda x: lower(layer, [x], {}, out_shape),
                           lambda f: schedule_channel_window(f, self.lanes))

    def emit_global_pool(self, node, data, choice, xs):
        layer = data.layer
        return self.kernel(kernel_name(node), [xs[0].var],
                           lambda x: global_pool_blocked(layer, x),
                           lambda f: schedule_window(f, 1))

    def emit_elementwise(self, node, data, choice, xs):
        """A point-wise layer, a batch norm's scale and shift, or an add, in the layout its
        input arrives in."""
        layer = data.layer
        keys, args = self.args(node)
        count = len(xs)
        blocked = choice.out_block != PLAIN

        def compute(*ins):
            tensors, named = ins[:count], dict(zip(keys, ins[count:]))
            if isinstance(layer, Add):
                return rules_for(layer, node).compute(layer, list(tensors), {}, None)
            x = tensors[0]

            def value(n, c, *rest):
                def arg(key):
                    return named[key][c, rest[-1]] if blocked else named[key][c]
                return layer.epilogue(x[(n, c, *rest)], CPU_MATH, arg, None)

            return te.compute(x.shape, value, name=layer.type_name)

        return self.kernel(kernel_name(node), [x.var for x in xs] + args, compute,
                           lambda f: schedule_loops(f, self.lanes))

    def emit_concat(self, node, data, choice, xs):
        """Blocks side by side: each input a whole number of channel blocks."""
        counts = [x.channels // x.block for x in xs]

        def compute(*ins):
            shape = list(ins[0].shape)
            shape[1] = sum(counts)

            def pick(n, cb, *rest):
                start = sum(counts[:-1])
                # Select evaluates both sides: every index is kept in bounds
                expr = ins[-1][(n, tirx.max(cb - start, 0), *rest)]
                for i in range(len(ins) - 2, -1, -1):
                    start -= counts[i]
                    local = tirx.max(tirx.min(cb - start, counts[i] - 1), 0)
                    expr = tirx.Select(cb < start + counts[i], ins[i][(n, local, *rest)], expr)
                return expr

            return te.compute(shape, pick, name="concat")

        return self.kernel(kernel_name(node), [x.var for x in xs], compute,
                           lambda f: schedule_loops(f, self.lanes))

    def emit_assembled(self, node, data, choice, xs):
        """A concat its inputs' kernels wrote (plan.assemble_concats): no kernel of its own."""
        return self.assembled[node]

    def emit_roi(self, node, data, choice, xs):
        """RoI pool and align on plain inputs, with their own schedule (te_roi)."""
        from ..te_roi import schedule_cpu

        layer, out_shape = data.layer, data.shape
        lower = rules_for(layer, node).compute
        return self.kernel(kernel_name(node), [x.var for x in xs],
                           lambda *ins: lower(layer, list(ins), {}, out_shape), schedule_cpu)

    def emit_generic(self, node, data, choice, xs):
        """te_ops' NCHW lowering, blocked inputs read through plain views, plain output."""
        layer, out_shape = data.layer, data.shape
        keys, args = self.args(node)
        lower = rules_for(layer, node).compute
        count = len(xs)

        def compute(*ins):
            views = [plain_view(t, x.channels, x.block, name=f"view{i}")
                     for i, (t, x) in enumerate(zip(ins[:count], xs))]
            y = lower(layer, views, dict(zip(keys, ins[count:])), out_shape)
            return views[0] if y is None else y

        plain = all(x.block == PLAIN for x in xs)  # its inputs' rows are contiguous
        return self.kernel(kernel_name(node), [x.var for x in xs] + args, compute,
                           lambda f: schedule_loops(f, self.lanes, plain))


def emit_function(bb: relax.BlockBuilder, g: nx.DiGraph, name: str, batch: int | None,
                  plan: dict[str, KernelChoice], layouts: dict[str, str], lanes: int,
                  unscheduled: list, schedule_hook=None) -> None:
    n = tirx.Var("n", "int64") if batch is None else batch
    xs = input_vars(g, n)
    arg_vars = {a.name: relax.Var(kernel_name(a.name), relax.TensorType(
        list(layout_shape(layouts.get(a.name), a.shape)), FLOAT)) for a in kernel_signature(g)}
    with bb.function(name, [*xs.values(), *arg_vars.values()],
                     attrs={INPUTS_ATTR: len(xs)}):
        with bb.dataflow():
            emitter = CpuEmitter(bb, g, plan, arg_vars, lanes, unscheduled, schedule_hook, batch)
            for input_name, x in xs.items():
                emitter.values[input_name] = Value(x, layer_node(g, input_name).shape[0], PLAIN)
            for node in topo_layers(g):
                if node not in xs:
                    emitter.emit_layer(node)
            outs = [emitter.value(o, PLAIN).var for o in g.graph["outputs"]]
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)


def kernel_layouts(plan: dict[str, KernelChoice]) -> dict[str, str]:
    """Kernel argument name (``node:key``) -> packed layout, for the manifest."""
    return {f"{node}:{key}": layout for node, choice in plan.items()
            for key, layout in choice.layouts.items()}


def build_cpu_module(g: nx.DiGraph, lanes: int, batch_sizes=(),
                     unscheduled: list | None = None,
                     schedule_hook=None) -> tuple[tvm.IRModule, dict]:
    """The scheduled Relax module and the plan it follows (``kernel_layouts(plan)`` gives the
    packed layouts). Kernels TVM would not schedule are kept unscheduled (correct, slow) and
    named in ``unscheduled``, when a list is given. ``schedule_hook``: see ``emit_kernel``."""
    plan = plan_kernels(g, lanes)
    layouts = kernel_layouts(plan)
    failed: list[str] = []
    bb = relax.BlockBuilder()
    emit_function(bb, g, "main", None, plan, layouts, lanes, failed, schedule_hook)
    for b in batch_sizes:
        emit_function(bb, g, f"main_b{b}", b, plan, layouts, lanes, failed, schedule_hook)
    if unscheduled is not None:
        unscheduled.extend(sorted(set(failed)))
    return bb.finalize(), plan

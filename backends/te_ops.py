"""Tensor-expression (TE) computes for every layer type, in NCHW (NCT for 1-D) layout.

Each ``lower_<family>(layer, xs, args, out_shape)`` (which layer types use which: ``rules``) returns the layer's output as a ``te.Tensor``
from its inputs ``xs`` (batched TE tensors, the batch size possibly symbolic) and its kernel
arguments ``args`` (the prepared weights, see ``Layer.prepare``). ``out_shape`` is the checked
per-sample output shape. The lowering emits each layer as one TIR PrimFunc, so a fused layer,
whose compute chains the conv and its epilogue, is one kernel.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
import tvm_ffi
from tvm import te, tirx

from cnncompiler.layers.fused import apply_epilogue
from cnncompiler.layers.pool import blur_filter
from cnncompiler.layers.window import resolve_padding

FLOAT = "float32"


def const(value, dtype=FLOAT):
    return tirx.const(value, dtype)


def batch(x: te.Tensor):
    return x.shape[0]


# -- NaN-propagating forms ------------------------------------------------------------------------
# NOTE: tirx.max becomes a compare-and-select (x86's maxps), which returns its second operand
# when either is NaN: a relu, a clamp or a max reduction written with it turns a NaN into an
# ordinary number, and a compiled model hides bad data. PyTorch propagates NaN; so do these
# (and the point-wise layers, written as selects on a comparison NaN fails). The relu compiles
# to the same one instruction (maxps with its operands swapped); a step of the max reduction
# to four instead of one, which a pooling kernel's loads mostly hide.

def _larger_or_nan(a, b):
    return tirx.Select(tirx.Or(a > b, tirx.isnan(a)), a, b)


# The max reduction as PyTorch's: NaN if any element is NaN, and -inf over nothing but -inf
# (te.max starts from the lowest finite float instead).
max_keeping_nan = te.comm_reducer(_larger_or_nan, lambda dtype: const(-math.inf, dtype),
                                  name="max_keeping_nan")


def _register_reducer() -> None:
    """Schedules that split a reduction over threads (dlight's GPU rules, rfactor) take only
    the reducers TVM's registry knows: a max pool or softmax would not build for CUDA.

    NOTE: that registry is a static object, destroyed at exit after Python is: a Python
    function only it holds would be released into a finalized interpreter (an abort at
    exit). TVM's table of global functions is never destroyed, so the functions go there
    first and the registry shares them."""
    register = tvm_ffi.get_global_func("s_tir.schedule.RegisterReducer", allow_missing=True)
    if register is None:
        return
    tvm_ffi.register_global_func("cnnc.max_keeping_nan.combiner",
                                 lambda a, b: [_larger_or_nan(a[0], b[0])], override=True)
    tvm_ffi.register_global_func("cnnc.max_keeping_nan.identity",
                                 lambda values: [const(-math.inf, values[0].ty)], override=True)
    register(1, tvm_ffi.get_global_func("cnnc.max_keeping_nan.combiner"),
             tvm_ffi.get_global_func("cnnc.max_keeping_nan.identity"))


_register_reducer()


def _vectorizable_isnan() -> None:
    """Let TVM's vectorizer widen ``isnan`` as it does ``exp`` or ``fabs``.

    NOTE: TVM 0.27 registers no ``TVectorizable`` for ``tirx.isnan``, so a vectorized loop
    whose body tests for NaN (every NaN-keeping max above, the fast ``exp``) was scalarized:
    sixteen scalar lanes that LLVM had to re-pack, or, where it vectorized another loop
    instead, gathered. LLVM's code for a vector isnan is one unordered compare, and the
    results match numpy's NaN and infinity rules (tests/test_cpu_schedules.py). GoogLeNet's
    3 x 3 stride-1 max pool of 512 channels at 14 x 14, batch 1, alone, in the one-pass window
    schedule: 0.039 -> 0.023 ms."""
    op = tvm.ir.Op.get("tirx.isnan")
    if op.get_attr("TVectorizable") is None:
        tvm.ir.register_op_attr("tirx.isnan", "TVectorizable", True)


_vectorizable_isnan()


# -- padding -----------------------------------------------------------------------------------

def pad(x: te.Tensor, pads, value: float = 0.0, name: str = "pad") -> te.Tensor:
    """Pad the spatial axes of (N, C, *spatial) with ``value``; a no-op without padding."""
    if all(tuple(p) == (0, 0) for p in pads):
        return x
    sizes = [int(s) for s in x.shape[2:]]
    shape = (x.shape[0], x.shape[1], *[s + b + a for s, (b, a) in zip(sizes, pads)])

    def compute(n, c, *idx):
        conds, src = [], []
        for i, s, (b, a) in zip(idx, sizes, pads):
            if b:
                conds.append(i >= b)
            if a:
                conds.append(i < s + b)
            src.append(i - b)
        value_expr = x[(n, c, *src)]
        if not conds:
            return value_expr
        return tirx.if_then_else(tirx.all(*conds), value_expr, const(value, x.dtype))

    return te.compute(shape, compute, name=name)


def reflect_pad(x: te.Tensor, pads, name: str = "reflect_pad") -> te.Tensor:
    """Reflect-pad the spatial axes (the edge row is not repeated), as numpy's 'reflect'."""
    sizes = [int(s) for s in x.shape[2:]]
    shape = (x.shape[0], x.shape[1], *[s + b + a for s, (b, a) in zip(sizes, pads)])
    return te.compute(shape, lambda n, c, *idx: x[(n, c, *[
        reflected(i, s, b) for i, s, (b, _) in zip(idx, sizes, pads)])], name=name)


def reflected(i, size: int, before: int):
    """The input index a reflect-padded axis reads at ``i`` (``before`` padded in front); a
    pad smaller than the axis needs one reflection."""
    j = i - before
    return tirx.Select(j < 0, -j, tirx.Select(j >= size, 2 * (size - 1) - j, j))


# -- convolution and dense -----------------------------------------------------------------------

def conv_nd(x, w, bias, stride, pads, dilation, groups, out_spatial, name="conv"):
    """Grouped, dilated, strided convolution of (N, C, *sp) by (F, C/g, *k), plus bias."""
    f, cg = int(w.shape[0]), int(w.shape[1])
    kernel = [int(k) for k in w.shape[2:]]
    xp = pad(x, pads)
    rc = te.reduce_axis((0, cg), name="rc")
    rk = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(kernel)]
    per_group = f // groups

    def compute(n, o, *sp):
        c = rc if groups == 1 else (o // per_group) * cg + rc
        src = [s * st + r * d for s, st, r, d in zip(sp, stride, rk, dilation)]
        return te.sum(xp[(n, c, *src)] * w[(o, rc, *rk)], axis=[rc, *rk])

    y = te.compute((batch(x), f, *out_spatial), compute, name=name)
    if bias is None:
        return y
    return te.compute(y.shape, lambda n, o, *sp: y[(n, o, *sp)] + bias[o], name=f"{name}_bias")


def lower_conv(layer, xs, args, out_shape):
    pads = resolve_padding(layer.padding, [int(s) for s in xs[0].shape[2:]], layer.kernel,
                           layer.stride, layer.dilation)
    return conv_nd(xs[0], args["weight"], args.get("bias"), layer.stride, pads, layer.dilation,
                   layer.groups, out_shape[1:])


def lower_dense(layer, xs, args, out_shape):
    x, w = xs[0], args["weight"]
    k = te.reduce_axis((0, int(w.shape[1])), name="k")
    y = te.compute((batch(x), int(w.shape[0])), lambda n, o: te.sum(x[n, k] * w[o, k], axis=k),
                   name="dense")
    if "bias" not in args:
        return y
    b = args["bias"]
    return te.compute(y.shape, lambda n, o: y[n, o] + b[o], name="dense_bias")


def lower_locally_connected2d(layer, xs, args, out_shape):
    x, w = xs[0], args["weight"]  # w: (oh, ow, f, c, kh, kw)
    pads = resolve_padding(layer.padding, [int(s) for s in x.shape[2:]], layer.kernel,
                           layer.stride, (1, 1))
    xp = pad(x, pads)
    c, kh, kw = (int(s) for s in w.shape[3:])
    rc, ri, rj = (te.reduce_axis((0, n), name=nm) for n, nm in ((c, "rc"), (kh, "ri"), (kw, "rj")))
    sh, sw = layer.stride
    y = te.compute((batch(x), *out_shape), lambda n, f, i, j: te.sum(
        xp[n, rc, i * sh + ri, j * sw + rj] * w[i, j, f, rc, ri, rj], axis=[rc, ri, rj]),
        name="locally_connected")
    if "bias" not in args:
        return y
    b = args["bias"]
    return te.compute(y.shape, lambda n, f, i, j: y[n, f, i, j] + b[f, i, j], name="lc_bias")


# -- pooling -----------------------------------------------------------------------------------------

def _pool_windows(layer, x):
    """Padding (with the ceil_mode overhang) and reduce axes of a windowed pool."""
    sizes = [int(s) for s in x.shape[2:]]
    full = layer.full_padding(sizes)
    explicit = resolve_padding(layer.padding, sizes, layer.kernel, layer.stride,
                               (1,) * len(sizes))
    axes = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(layer.kernel)]
    return sizes, full, explicit, axes


def _window_count(sizes, explicit, layer, out_idx, include_pad):
    """How many elements the average at ``out_idx`` divides by (PyTorch's rule)."""
    count = None
    for o, s, (b, a), k, st in zip(out_idx, sizes, explicit, layer.kernel, layer.stride):
        start = o * st - b
        end = tirx.min(start + k, s + a)
        if not include_pad:
            start, end = tirx.max(start, 0), tirx.min(end, s)
        n = end - start
        count = n if count is None else count * n
    return count


def lower_maxpool(layer, xs, args, out_shape):
    x = xs[0]
    _, full, _, axes = _pool_windows(layer, x)
    xp = pad(x, full, float("-inf"))
    return te.compute((batch(x), *out_shape), lambda n, c, *o: max_keeping_nan(
        xp[(n, c, *[i * s + r for i, s, r in zip(o, layer.stride, axes)])], axis=axes),
        name="maxpool")


def _window_sum(layer, xp, x, out_shape, name):
    axes = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(layer.kernel)]
    return te.compute((batch(x), *out_shape), lambda n, c, *o: te.sum(
        xp[(n, c, *[i * s + r for i, s, r in zip(o, layer.stride, axes)])], axis=axes), name=name)


def lower_avgpool(layer, xs, args, out_shape):
    x = xs[0]
    sizes, full, explicit, _ = _pool_windows(layer, x)
    total = _window_sum(layer, pad(x, full), x, out_shape, "avgpool_sum")
    return te.compute(total.shape, lambda n, c, *o: total[(n, c, *o)] / _window_count(
        sizes, explicit, layer, o, layer.count_include_pad).astype(x.dtype), name="avgpool")


def lower_lppool(layer, xs, args, out_shape):
    x = xs[0]
    sizes, full, explicit, _ = _pool_windows(layer, x)
    p = layer.p
    powered = te.compute(x.shape, lambda *i: power(tirx.abs(x(*i)), p), name="lp_pow")
    total = _window_sum(layer, pad(powered, full), x, out_shape, "lppool_sum")
    kernel = math.prod(layer.kernel)

    def compute(n, c, *o):
        # PyTorch: average over the window part inside the input, scaled by the full window
        mean = total[(n, c, *o)] / _window_count(sizes, explicit, layer, o, True).astype(x.dtype)
        return power(mean * const(kernel, x.dtype), 1.0 / p)

    return te.compute(total.shape, compute, name="lppool")


def _global(x, reduce, name):
    spatial = [int(s) for s in x.shape[2:]]
    axes = [te.reduce_axis((0, s), name=f"r{i}") for i, s in enumerate(spatial)]
    return te.compute((batch(x), x.shape[1], *[1] * len(spatial)),
                      lambda n, c, *_: reduce(x[(n, c, *axes)], axis=axes), name=name), spatial


def lower_global_avgpool(layer, xs, args, out_shape):
    total, spatial = _global(xs[0], te.sum, "global_sum")
    scale = const(1.0 / math.prod(spatial), xs[0].dtype)
    return te.compute(total.shape, lambda *i: total(*i) * scale, name="global_avgpool")


def lower_global_maxpool(layer, xs, args, out_shape):
    return _global(xs[0], max_keeping_nan, "global_maxpool")[0]


def lower_blurpool2d(layer, xs, args, out_shape):
    x = xs[0]
    pads = layer.pads()
    xp = reflect_pad(x, pads) if layer.pad_mode == "reflect" else pad(x, pads)
    taps = blur_filter(layer.kernel)
    ri, rj = te.reduce_axis((0, layer.kernel), name="ri"), te.reduce_axis((0, layer.kernel), name="rj")
    s = layer.stride
    # The filter is separable and fixed: weight(i, j) = row[i] * row[j], folded in as constants.
    row = taps.sum(axis=1)

    def tap(r):
        expr = const(float(row[-1]), x.dtype)
        for i in range(layer.kernel - 2, -1, -1):
            expr = tirx.Select(r == i, const(float(row[i]), x.dtype), expr)
        return expr

    return te.compute((batch(x), *out_shape), lambda n, c, i, j: te.sum(
        xp[n, c, i * s + ri, j * s + rj] * tap(ri) * tap(rj), axis=[ri, rj]), name="blurpool")


# -- element-wise, normalisation, shape ---------------------------------------------------------

class TEMath:
    """The operations point-wise layers are written in (``layers.pointwise``), on TVM scalar
    expressions. A target may give faster forms of exp, tanh and sigmoid (the CPU's are
    vectorizable polynomials, ``cpu.vector_math``)."""

    def __init__(self, exp=tirx.exp, tanh=tirx.tanh, sigmoid=tirx.sigmoid):
        self.exp, self.tanh, self.sigmoid = exp, tanh, sigmoid

    @staticmethod
    def where(cond, a, b):
        """Select; a Python number takes the other branch's type (float32 when both are
        numbers: ``m.where(x > 0, 1.0, 0.0)``)."""
        a, b = (v.asobject() if isinstance(v, te.TensorSlice) else v for v in (a, b))
        dtype = next((v.ty for v in (a, b) if not isinstance(v, (int, float))), FLOAT)
        a, b = (const(v, dtype) if isinstance(v, (int, float)) else v for v in (a, b))
        return tirx.Select(cond, a, b)

    @staticmethod
    def erf(x):
        return tirx.erf(x)


TE_MATH = TEMath()


def channel_arg(args: dict, c):
    """``arg`` of a point-wise layer (see ``layers.pointwise``): a prepared per-channel
    parameter at channel ``c``; a parameter of one element applies to every channel."""
    return lambda key: args[key][c if int(args[key].shape[0]) > 1 else 0]


def lower_pointwise(layer, xs, args, out_shape, math=TE_MATH):
    """Any point-wise layer, from its ``forward``."""
    x = xs[0]
    return te.compute(x.shape, lambda *i: layer.forward(x(*i), math, channel_arg(args, i[1])),
                      name=layer.type_name)


def lower_softmax(layer, xs, args, out_shape):
    return softmax(xs[0], layer.axis % len(xs[0].shape))


def softmax(x: te.Tensor, axis: int, exp=tirx.exp) -> te.Tensor:
    """The maximum and the sum of exponentials once per position along ``axis`` (stages of
    extent 1 there), then each output. Computed per output element instead (each reducing the
    whole axis), a softmax over 21 channels at 64 x 64 took 2.1 ms at batch 1 on the CPU,
    0.19 ms so. ``exp``: a target's faster form (``TEMath.exp``)."""
    k = te.reduce_axis((0, int(x.shape[axis])), name="k")
    reduced = tuple(1 if a == axis else s for a, s in enumerate(x.shape))

    def at(idx, v):
        return tuple(v if a == axis else i for a, i in enumerate(idx))

    peak = te.compute(reduced, lambda *i: max_keeping_nan(x(*at(i, k)), axis=k),
                      name="softmax_max")
    k2 = te.reduce_axis((0, int(x.shape[axis])), name="k2")
    total = te.compute(reduced, lambda *i: te.sum(
        exp(x(*at(i, k2)) - peak(*i)), axis=k2), name="softmax_sum")
    return te.compute(x.shape, lambda *i: exp(x(*i) - peak(*at(i, 0))) / total(*at(i, 0)),
                      name="softmax")


def lower_batchnorm(layer, xs, args, out_shape):
    x, scale, shift = xs[0], args["scale"], args["shift"]
    return te.compute(x.shape, lambda n, c, *sp: x[(n, c, *sp)] * scale[c] + shift[c],
                      name="batchnorm")


def lower_lrn(layer, xs, args, out_shape):
    x = xs[0]
    channels = int(x.shape[1])
    before = layer.size // 2
    r = te.reduce_axis((0, layer.size), name="r")

    def square_at(n, c, sp):
        src = c + r - before
        inside = tirx.all(src >= 0, src < channels)
        v = x[(n, tirx.if_then_else(inside, src, 0), *sp)]
        return tirx.if_then_else(inside, v * v, const(0.0, x.dtype))

    sums = te.compute(x.shape, lambda n, c, *sp: te.sum(square_at(n, c, sp), axis=r),
                      name="lrn_sum")
    k, a = (const(v, x.dtype) for v in (layer.k, layer.alpha / layer.size))
    return te.compute(x.shape, lambda *i: x(*i) / power(k + a * sums(*i), layer.beta),
                      name="lrn")


def power(base, exponent: float):
    """``base ** exponent``; the exponents LRN is used with (0.75: AlexNet, GoogLeNet; 0.5; 1)
    and an L2 pool's (2, 0.5) in square roots and products, which LLVM vectorizes, where
    ``tirx.power`` is one scalar libm call per element: AlexNet's norm1 at batch 8 took 73 ms
    with it, x of its conv1."""
    if exponent == 1.0:
        return base
    if exponent == 2.0:
        return base * base
    if exponent == 0.5:
        return tirx.sqrt(base)
    if exponent == 0.75:
        root = tirx.sqrt(base)
        return root * tirx.sqrt(root)
    dtype = base.dtype if isinstance(base, te.TensorSlice) else base.ty.dtype
    return tirx.power(base, const(exponent, dtype))


def lower_flatten(layer, xs, args, out_shape):
    x = xs[0]
    dims = [int(s) for s in x.shape[1:]]
    strides = [math.prod(dims[i + 1:]) for i in range(len(dims))]

    def compute(n, f):
        return x[(n, *[(f // s) % d for s, d in zip(strides, dims)])]

    return te.compute((batch(x), math.prod(dims)), compute, name="flatten")


def lower_add(layer, xs, args, out_shape):
    def compute(*i):
        total = xs[0](*i)
        for x in xs[1:]:
            total = total + x(*i)
        return total
    return te.compute(xs[0].shape, compute, name="add")


def lower_concat(layer, xs, args, out_shape):
    axis = layer.sample_axis(len(out_shape)) + 1
    sizes = [int(x.shape[axis]) for x in xs]
    shape = list(xs[0].shape)
    shape[axis] = sum(sizes)

    def compute(*i):
        pos = i[axis]
        offsets = np.cumsum([0] + sizes)
        expr = xs[-1](*[pos - int(offsets[-2]) if a == axis else v for a, v in enumerate(i)])
        for j in range(len(xs) - 2, -1, -1):
            src = [pos - int(offsets[j]) if a == axis else v for a, v in enumerate(i)]
            # clamp keeps the not-taken branch's index in bounds
            src[axis] = tirx.max(tirx.min(src[axis], sizes[j] - 1), 0)
            expr = tirx.Select(pos < int(offsets[j + 1]), xs[j](*src), expr)
        return expr

    return te.compute(shape, compute, name="concat")


def lower_passthrough(layer, xs, args, out_shape):
    return None  # no kernel: the layer's value is its input's


# -- the fused kernel --------------------------------------------------------------------------------

def lower_fused(layer, xs, args, out_shape):
    from .rules import rules_for

    base_args = {k: args[k] for k in ("weight", "bias") if k in args}
    y = rules_for(layer.base).compute(layer.base, xs[:1], base_args, out_shape)
    if not layer.epilogue_steps():
        return y

    def epilogue(n, o, *sp):
        residual = xs[1][(n, o, *sp)] if layer.has_residual else None
        return apply_epilogue(layer, y[(n, o, *sp)], TE_MATH, lambda name: args[name][o],
                              residual)

    return te.compute(y.shape, epilogue, name="epilogue")


# -- resizing ----------------------------------------------------------------------------------------

def lower_upsample(layer, xs, args, out_shape):
    x = xs[0]
    sh, sw = layer.scale
    return te.compute((batch(x), *out_shape), lambda n, c, i, j: x[n, c, i // sh, j // sw],
                      name="upsample")


# -- slicing -----------------------------------------------------------------------------------------

def lower_slice(layer, xs, args, out_shape):
    """Output position k of the sliced axis reads input position first + k * step."""
    x = xs[0]
    axis = layer.sample_axis(len(out_shape)) + 1
    first = layer.positions(int(x.shape[axis])).start

    def value(*i):
        return x(*[first + v * layer.step if a == axis else v for a, v in enumerate(i)])

    return te.compute((batch(x), *out_shape), value, name="slice")

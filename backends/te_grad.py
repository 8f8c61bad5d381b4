"""Backward computes (TE) for every layer type, the training-mode forwards that differ from
inference (batch norm on batch statistics, dropout with a mask), the losses and the optimizer
updates. Together with te_ops they make the compiled training step.

``grad_<family>(layer, xs, y, dy, args, out_shape)`` (which layer types use which: ``rules``)
returns ``(dxs, dparams)``: the gradient of
the loss with respect to each input (None where an input needs none) and to each parameter,
as TE tensors. ``xs`` are the layer's inputs, ``y`` its output (both saved by the forward pass),
``dy`` the gradient arriving at its output, ``args`` its parameters (raw, PyTorch layout).
Every compute is written for any float dtype, so the same code runs in float64 for the
finite-difference checks.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from cnncompiler.layers.pool import blur_filter
from cnncompiler.layers.window import resolve_padding
from cnncompiler.spec.losses import Euclidean, SigmoidCrossEntropy, SmoothL1, SoftmaxCrossEntropy
from cnncompiler.spec.train_config import Hyper

from .te_ops import TE_MATH, channel_arg, const, max_keeping_nan, pad


def _zero(t):
    return const(0.0, t.dtype)


def _sum_over_batch_and_space(t, name, value=None):
    """Per-channel sum of ``value(n, c, *sp)`` (default: t itself) over batch and space."""
    spatial = [int(s) for s in t.shape[2:]]
    rn = te.reduce_axis((0, t.shape[0]), name="rn")
    rs = [te.reduce_axis((0, s), name=f"rs{i}") for i, s in enumerate(spatial)]
    value = value or (lambda n, c, *sp: t[(n, c, *sp)])
    return te.compute((t.shape[1],), lambda c: te.sum(value(rn, c, *rs), axis=[rn, *rs]), name=name)


def _candidates(i, before, kernel, stride, out, dilation=1):
    """For input position ``i`` on one axis: (window index, valid) for the r-th window of a
    pool that may contain it. Window j covers padded positions j*s .. j*s + (k-1)*d."""
    q = i + before

    def at(r):
        j = tirx.floordiv(q, stride) - r
        valid = tirx.all(j >= 0, j < out, q - j * stride < (kernel - 1) * dilation + 1)
        return j, valid

    return at, -(-((kernel - 1) * dilation + 1) // stride)


# -- convolution, dense, locally connected ---------------------------------------------------------

def grad_conv(layer, xs, y, dy, args, out_shape):
    x, w = xs[0], args["weight"]
    sizes = [int(s) for s in x.shape[2:]]
    pads = resolve_padding(layer.padding, sizes, layer.kernel, layer.stride, layer.dilation)
    f, cg = int(w.shape[0]), int(w.shape[1])
    kernel = [int(k) for k in w.shape[2:]]
    out_sp = [int(s) for s in dy.shape[2:]]
    groups, per_group = layer.groups, f // layer.groups

    ro = te.reduce_axis((0, per_group), name="ro")
    rk = [te.reduce_axis((0, k), name=f"rk{a}") for a, k in enumerate(kernel)]

    def dx_value(n, c, *i):
        o = (c // cg) * per_group + ro if groups > 1 else ro
        conds, src = [], []
        for a, (ia, (b, _), s, d) in enumerate(zip(i, pads, layer.stride, layer.dilation)):
            pos = ia + b - rk[a] * d
            conds += [pos >= 0, tirx.floormod(pos, s) == 0, tirx.floordiv(pos, s) < out_sp[a]]
            src.append(tirx.max(tirx.floordiv(pos, s), 0))
        load = dy[(n, o, *src)] * w[(o, c % cg if groups > 1 else c, *rk)]
        return te.sum(tirx.if_then_else(tirx.all(*conds), load, _zero(x)), axis=[ro, *rk])

    dx = te.compute(x.shape, dx_value, name="conv_dx")

    xp = pad(x, pads)
    rn = te.reduce_axis((0, x.shape[0]), name="rn")
    rj = [te.reduce_axis((0, s), name=f"rj{a}") for a, s in enumerate(out_sp)]

    def dw_value(o, c, *k):
        channel = (o // per_group) * cg + c if groups > 1 else c
        src = [j * s + kk * d for j, kk, s, d in zip(rj, k, layer.stride, layer.dilation)]
        return te.sum(dy[(rn, o, *rj)] * xp[(rn, channel, *src)], axis=[rn, *rj])

    grads = {"weight": te.compute(w.shape, dw_value, name="conv_dw")}
    if "bias" in args:
        grads["bias"] = _sum_over_batch_and_space(dy, "conv_db")
    return [dx], grads


def grad_dense(layer, xs, y, dy, args, out_shape):
    x, w = xs[0], args["weight"]
    ro = te.reduce_axis((0, int(w.shape[0])), name="ro")
    dx = te.compute(x.shape, lambda n, k: te.sum(dy[n, ro] * w[ro, k], axis=ro), name="dense_dx")
    rn = te.reduce_axis((0, x.shape[0]), name="rn")
    grads = {"weight": te.compute(w.shape, lambda o, k: te.sum(dy[rn, o] * x[rn, k], axis=rn),
                                  name="dense_dw")}
    if "bias" in args:
        rn2 = te.reduce_axis((0, x.shape[0]), name="rn2")
        grads["bias"] = te.compute((int(w.shape[0]),), lambda o: te.sum(dy[rn2, o], axis=rn2),
                                   name="dense_db")
    return [dx], grads


def grad_locally_connected2d(layer, xs, y, dy, args, out_shape):
    x, w = xs[0], args["weight"]  # w: (oh, ow, f, c, kh, kw)
    sizes = [int(s) for s in x.shape[2:]]
    pads = resolve_padding(layer.padding, sizes, layer.kernel, layer.stride, (1, 1))
    oh, ow, f = (int(s) for s in w.shape[:3])
    kh, kw = layer.kernel
    sh, sw = layer.stride
    ro = te.reduce_axis((0, f), name="ro")
    rk = [te.reduce_axis((0, kh), name="rk0"), te.reduce_axis((0, kw), name="rk1")]

    def dx_value(n, c, i, j):
        pi, pj = i + pads[0][0] - rk[0], j + pads[1][0] - rk[1]
        ok = tirx.all(pi >= 0, pj >= 0, tirx.floormod(pi, sh) == 0, tirx.floormod(pj, sw) == 0,
                      tirx.floordiv(pi, sh) < oh, tirx.floordiv(pj, sw) < ow)
        a, b = tirx.max(tirx.floordiv(pi, sh), 0), tirx.max(tirx.floordiv(pj, sw), 0)
        return te.sum(tirx.if_then_else(ok, dy[n, ro, a, b] * w[a, b, ro, c, rk[0], rk[1]],
                                        _zero(x)), axis=[ro, *rk])

    dx = te.compute(x.shape, dx_value, name="lc_dx")
    xp = pad(x, pads)
    rn = te.reduce_axis((0, x.shape[0]), name="rn")
    dw = te.compute(w.shape, lambda a, b, o, c, p, q: te.sum(
        dy[rn, o, a, b] * xp[rn, c, a * sh + p, b * sw + q], axis=rn), name="lc_dw")
    grads = {"weight": dw}
    if "bias" in args:
        rn2 = te.reduce_axis((0, x.shape[0]), name="rn2")
        grads["bias"] = te.compute(args["bias"].shape, lambda o, a, b: te.sum(
            dy[rn2, o, a, b], axis=rn2), name="lc_db")
    return [dx], grads


# -- pooling ---------------------------------------------------------------------------------------

def _pool_geometry(layer, x):
    sizes = [int(s) for s in x.shape[2:2 + len(layer.kernel)]]
    explicit = resolve_padding(layer.padding, sizes, layer.kernel, layer.stride,
                               (1,) * len(sizes))
    return sizes, explicit


def _scatter_windows(layer, x, dy, weight, name):
    """dx[i] = sum over windows j containing i of weight(n, c, j, i, tail) * dy[j].

    Axes after the spatial ones (``tail``: the channel lane of a blocked layout) are carried
    through as they are."""
    nd = len(layer.kernel)
    sizes, explicit = _pool_geometry(layer, x)
    out_sp = [int(s) for s in dy.shape[2:2 + nd]]
    axes = []
    finders = []
    for a, (k, s, (b, _), o) in enumerate(zip(layer.kernel, layer.stride, explicit, out_sp)):
        axes.append(te.reduce_axis((0, -(-k // s)), name=f"rw{a}"))
        finders.append((b, k, s, o))

    def value(n, c, *rest):
        i, tail = rest[:nd], rest[nd:]
        js, conds = [], []
        for a, (ia, (b, k, s, o)) in enumerate(zip(i, finders)):
            at, _ = _candidates(ia, b, k, s, o)
            j, ok = at(axes[a])
            js.append(tirx.max(tirx.min(j, o - 1), 0))
            conds.append(ok)
        contrib = weight(n, c, js, i, tail) * dy[(n, c, *js, *tail)]
        return te.sum(tirx.if_then_else(tirx.all(*conds), contrib, _zero(x)), axis=axes)

    return te.compute(x.shape, value, name=name)


def _pad_window(x, pads, value: float, name: str = "pad"):
    """Pad the spatial axes of (N, C, *spatial, *tail) with ``value``, one (before, after) pair
    per spatial axis; the tail (a blocked layout's lane) is kept."""
    nd = len(pads)
    if all(tuple(p) == (0, 0) for p in pads):
        return x
    sizes = [int(s) for s in x.shape[2:2 + nd]]
    shape = (x.shape[0], x.shape[1], *[s + b + a for s, (b, a) in zip(sizes, pads)],
             *x.shape[2 + nd:])

    def compute(n, c, *rest):
        idx, tail = rest[:nd], rest[nd:]
        conds = [cond for i, s, (b, a) in zip(idx, sizes, pads)
                 for cond in ((i >= b) if b else None, (i < s + b) if a else None)
                 if cond is not None]
        src = [i - b for i, (b, _) in zip(idx, pads)]
        if not conds:
            return x[(n, c, *src, *tail)]
        return tirx.if_then_else(tirx.all(*conds), x[(n, c, *src, *tail)], const(value, x.dtype))

    return te.compute(shape, compute, name=name)


def _flat(coords, sizes):
    idx = None
    for c, s in zip(coords, sizes):
        idx = c if idx is None else idx * s + c
    return idx


def is_max(v, peak):
    """Is ``v`` where a max reduction's result ``peak`` came from? A NaN is the max of any
    window holding one (the forward keeps NaN), so the gradient goes to it, as PyTorch's."""
    return tirx.Or(v == peak, tirx.isnan(v))


def _first_argmax(layer, x, y):
    """For each window, the flat input index of its first maximum (row-major window scan),
    as PyTorch's max pooling routes its gradient."""
    nd = len(layer.kernel)
    sizes, _ = _pool_geometry(layer, x)
    full = layer.full_padding(sizes)
    xp = _pad_window(x, full, float("-inf"))
    axes = [te.reduce_axis((0, k), name=f"ra{a}") for a, k in enumerate(layer.kernel)]
    big = math.prod(sizes) + 1

    def value(n, c, *rest):
        j, tail = rest[:nd], rest[nd:]
        src = [jj * s + r for jj, s, r in zip(j, layer.stride, axes)]
        real = [p - b for p, (b, _) in zip(src, full)]
        flat = _flat(real, sizes).astype("int32")
        hit = is_max(xp[(n, c, *src, *tail)], y[(n, c, *j, *tail)])
        return te.min(tirx.if_then_else(hit, flat, tirx.const(big, "int32")), axis=axes)

    return te.compute(y.shape, value, name="pool_argmax")


def grad_maxpool(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    sizes, _ = _pool_geometry(layer, x)
    first = _first_argmax(layer, x, y)

    def weight(n, c, js, i, tail):
        hit = first[(n, c, *js, *tail)] == _flat(list(i), sizes).astype("int32")
        return tirx.if_then_else(hit, const(1.0, x.dtype), _zero(x))

    return [_scatter_windows(layer, x, dy, weight, "maxpool_dx")], {}


def _avg_count(layer, sizes, explicit, js, include_pad, dtype):
    count = None
    for j, s, (b, a), k, st in zip(js, sizes, explicit, layer.kernel, layer.stride):
        start = j * st - b
        end = tirx.min(start + k, s + a)
        if not include_pad:
            start, end = tirx.max(start, 0), tirx.min(end, s)
        n = end - start
        count = n if count is None else count * n
    return count.astype(dtype)


def grad_avgpool(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    sizes, explicit = _pool_geometry(layer, x)

    def weight(n, c, js, i, tail):
        return const(1.0, x.dtype) / _avg_count(layer, sizes, explicit, js,
                                                layer.count_include_pad, x.dtype)

    return [_scatter_windows(layer, x, dy, weight, "avgpool_dx")], {}


def _sign(v):
    """-1, 0 or 1, as torch.sign (and the gradient of |v|, 0 at 0, as PyTorch's abs)."""
    one, zero = const(1.0, v.dtype), const(0.0, v.dtype)
    return tirx.Select(v > zero, one, tirx.Select(v < zero, -one, zero))


def grad_lppool(layer, xs, y, dy, args, out_shape):
    # y = (K * S / cnt)^(1/p), S = sum |x|^p  =>
    # dy/dx_i = y^(1-p) * K / cnt * |x_i|^(p-1) * sign(x_i)
    x = xs[0]
    sizes, explicit = _pool_geometry(layer, x)
    p = layer.p
    kernel = math.prod(layer.kernel)

    def weight(n, c, js, i, tail):
        yv, xv = y[(n, c, *js, *tail)], x[(n, c, *i, *tail)]
        scale = const(kernel, x.dtype) / _avg_count(layer, sizes, explicit, js, True, x.dtype)
        return tirx.power(yv, const(1.0 - p, x.dtype)) * scale * \
            tirx.power(tirx.abs(xv), const(p - 1.0, x.dtype)) * _sign(xv)

    return [_scatter_windows(layer, x, dy, weight, "lppool_dx")], {}


def grad_global_avgpool(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    scale = const(1.0 / math.prod(int(s) for s in x.shape[2:]), x.dtype)
    ones = (0,) * (len(x.shape) - 2)
    return [te.compute(x.shape, lambda n, c, *_: dy[(n, c, *ones)] * scale,
                       name="global_avgpool_dx")], {}


def grad_global_maxpool(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    sizes = [int(s) for s in x.shape[2:]]
    axes = [te.reduce_axis((0, s), name=f"ra{a}") for a, s in enumerate(sizes)]
    ones = (0,) * len(sizes)
    big = math.prod(sizes) + 1
    first = te.compute(y.shape, lambda n, c, *_: te.min(tirx.if_then_else(
        is_max(x[(n, c, *axes)], y[(n, c, *ones)]), _flat(axes, sizes).astype("int32"),
        tirx.const(big, "int32")), axis=axes), name="global_argmax")
    return [te.compute(x.shape, lambda n, c, *i: tirx.if_then_else(
        first[(n, c, *ones)] == _flat(list(i), sizes).astype("int32"), dy[(n, c, *ones)],
        _zero(x)), name="global_maxpool_dx")], {}


def grad_blurpool2d(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    h, w = (int(s) for s in x.shape[2:])
    k, s = layer.kernel, layer.stride
    (pb, _), (qb, _) = layer.pads()
    row = blur_filter(k).sum(axis=1)
    oh, ow = (int(v) for v in dy.shape[2:])

    def tap(r):
        expr = const(float(row[-1]), x.dtype)
        for i in range(k - 2, -1, -1):
            expr = tirx.Select(r == i, const(float(row[i]), x.dtype), expr)
        return expr

    # gradient with respect to the padded input: a transposed depthwise blur
    ph, pw = h + pb + (k // 2), w + qb + (k // 2)
    ra, rb = te.reduce_axis((0, k), name="ra"), te.reduce_axis((0, k), name="rb")

    def dpad_value(n, c, u, v):
        pu, pv = u - ra, v - rb
        ok = tirx.all(pu >= 0, pv >= 0, tirx.floormod(pu, s) == 0, tirx.floormod(pv, s) == 0,
                      tirx.floordiv(pu, s) < oh, tirx.floordiv(pv, s) < ow)
        load = dy[n, c, tirx.max(tirx.floordiv(pu, s), 0), tirx.max(tirx.floordiv(pv, s), 0)]
        return te.sum(tirx.if_then_else(ok, load * tap(ra) * tap(rb), _zero(x)), axis=[ra, rb])

    dpad = te.compute((x.shape[0], x.shape[1], ph, pw), dpad_value, name="blur_dpad")
    reflect = layer.pad_mode == "reflect"

    def fold(i, size, before, padded):
        """Padded positions whose value came from input position i (reflection included)."""
        out = [(i + before, None)]
        if reflect:
            out.append((before - i, tirx.all(i > 0, before - i >= 0)))
            right = before + 2 * (size - 1) - i
            out.append((right, tirx.all(i < size - 1, right < padded, right - before >= size)))
        return out

    def dx_value(n, c, i, j):
        total = None
        for (u, cu) in fold(i, h, pb, ph):
            for (v, cv) in fold(j, w, qb, pw):
                conds = [cnd for cnd in (cu, cv) if cnd is not None]
                uu = tirx.max(tirx.min(u, ph - 1), 0)
                vv = tirx.max(tirx.min(v, pw - 1), 0)
                term = dpad[n, c, uu, vv]
                if conds:
                    term = tirx.if_then_else(tirx.all(*conds), term, _zero(x))
                total = term if total is None else total + term
        return total

    return [te.compute(x.shape, dx_value, name="blurpool_dx")], {}


# -- element-wise, normalisation, shape --------------------------------------------------------------

def grad_pointwise(layer, xs, y, dy, args, out_shape):
    """Any point-wise layer's input gradient, from its ``backward``."""
    x = xs[0]
    return [te.compute(x.shape, lambda *i: layer.backward(
        x(*i), y(*i), dy(*i), TE_MATH, channel_arg(args, i[1])),
        name=f"{layer.type_name}_dx")], {}


def grad_prelu(layer, xs, y, dy, args, out_shape):
    """PReLU: the input's gradient from ``backward``, the slope's summed over the batch and
    the positions (and the channels, for one slope)."""
    dxs, _ = grad_pointwise(layer, xs, y, dy, args, out_shape)
    x = xs[0]
    per_channel = _sum_over_batch_and_space(x, "prelu_dw", lambda n, c, *sp: (
        layer.weight_gradient_term(x[(n, c, *sp)], dy[(n, c, *sp)], TE_MATH)))
    if layer.num_parameters > 1:
        return dxs, {"weight": per_channel}
    rc = te.reduce_axis((0, x.shape[1]), name="rc")
    return dxs, {"weight": te.compute((1,), lambda _: te.sum(per_channel[rc], axis=rc),
                                      name="prelu_dw_shared")}


def grad_softmax(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    axis = layer.axis % len(x.shape)
    k = te.reduce_axis((0, int(x.shape[axis])), name="k")

    def at(idx, v):
        return tuple(v if a == axis else i for a, i in enumerate(idx))

    dot = te.compute(x.shape, lambda *i: te.sum(dy(*at(i, k)) * y(*at(i, k)), axis=k),
                     name="softmax_dot")
    return [te.compute(x.shape, lambda *i: y(*i) * (dy(*i) - dot(*i)), name="softmax_dx")], {}


def batchnorm_train(layer, x, weight, bias, running_mean, running_var):
    """Training-mode batch norm: normalise with the batch's mean and (biased) variance; return
    the output, the batch statistics, and the running statistics moved by ``momentum`` (with
    the unbiased variance, as PyTorch)."""
    count = _count(x)
    total = _sum_over_batch_and_space(x, "bn_sum")
    sq = batchnorm_square_sums(x, total, count)
    return batchnorm_normalize(layer, x, total, sq, count, weight, bias, running_mean,
                               running_var)


def _count(x):
    """Elements per channel of (N, C, *spatial), as a float expression."""
    spatial = [int(s) for s in x.shape[2:]]
    count = x.shape[0] * math.prod(spatial) if spatial else x.shape[0]
    return count.astype(x.dtype) if not isinstance(count, int) else const(count, x.dtype)


def batchnorm_sums(x):
    """[per-channel sums (C,), the element count (1,)]: the first pass, as tensors (a
    data-parallel step sums both over its processes)."""
    return [_sum_over_batch_and_space(x, "bn_sum"),
            te.compute((1,), lambda i: _count(x), name="bn_count")]


def batchnorm_square_sums(x, total, count):
    """Per-channel sums of squared deviations from the mean ``total / count``: the second
    pass (two passes, as PyTorch: no cancellation in E[x^2] - E[x]^2)."""
    mean = te.compute(total.shape, lambda c: total[c] / count, name="bn_mean")
    return _sum_over_batch_and_space(x, "bn_sqsum", lambda n, c, *sp: (
        x[(n, c, *sp)] - mean[c]) * (x[(n, c, *sp)] - mean[c]))


def batchnorm_normalize(layer, x, total, sq, count, weight, bias, running_mean, running_var):
    """``batchnorm_train``'s results from the two passes' sums over ``count`` elements."""
    mean = te.compute(total.shape, lambda c: total[c] / count, name="bn_mean")
    var = te.compute(total.shape, lambda c: sq[c] / count, name="bn_var")
    eps = const(layer.eps, x.dtype)
    out = te.compute(x.shape, lambda n, c, *sp: (x[(n, c, *sp)] - mean[c]) /
                     tirx.sqrt(var[c] + eps) * weight[c] + bias[c], name="bn_train")
    m = const(layer.momentum, x.dtype)
    one = const(1.0, x.dtype)
    unbias = count / tirx.max(count - one, one)
    new_mean = te.compute(total.shape, lambda c: (one - m) * running_mean[c] + m * mean[c],
                          name="bn_running_mean")
    new_var = te.compute(total.shape, lambda c: (one - m) * running_var[c] + m * var[c] * unbias,
                         name="bn_running_var")
    return out, mean, var, new_mean, new_var


def grad_batchnorm(layer, x, dy, weight, mean, var):
    """dx, dgamma, dbeta of training-mode batch norm from the saved batch statistics."""
    dgamma, dbeta = batchnorm_grad_sums(layer, x, dy, mean, var)
    dx = batchnorm_grad_input(layer, x, dy, weight, mean, var, dbeta, dgamma, _count(x))
    return dx, dgamma, dbeta


def batchnorm_grad_sums(layer, x, dy, mean, var):
    """[sum dy * xhat, sum dy] per channel: the weight's and the bias's gradients, and what
    the input's gradient reads."""
    xhat = _xhat(layer, x, mean, var)
    return [_sum_over_batch_and_space(dy, "bn_dgamma",
                                      lambda n, c, *sp: dy[(n, c, *sp)] * xhat(n, c, *sp)),
            _sum_over_batch_and_space(dy, "bn_dbeta")]


def batchnorm_grad_input(layer, x, dy, weight, mean, var, dbeta, dgamma, count):
    """dx from the per-channel sums over ``count`` elements."""
    eps = const(layer.eps, x.dtype)
    xhat = _xhat(layer, x, mean, var)
    return te.compute(x.shape, lambda n, c, *sp: weight[c] / tirx.sqrt(var[c] + eps) * (
        dy[(n, c, *sp)] - dbeta[c] / count - xhat(n, c, *sp) * dgamma[c] / count),
        name="bn_dx")


def _xhat(layer, x, mean, var):
    eps = const(layer.eps, x.dtype)
    return lambda n, c, *sp: (x[(n, c, *sp)] - mean[c]) / tirx.sqrt(var[c] + eps)


def grad_lrn(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    channels = int(x.shape[1])
    size, before = layer.size, layer.size // 2
    a = const(layer.alpha / size, x.dtype)
    k, beta = const(layer.k, x.dtype), const(layer.beta, x.dtype)
    r = te.reduce_axis((0, size), name="r")

    def square_at(n, c, sp):
        src = c + r - before
        inside = tirx.all(src >= 0, src < channels)
        v = x[(n, tirx.max(tirx.min(src, channels - 1), 0), *sp)]
        return tirx.if_then_else(inside, v * v, _zero(x))

    sums = te.compute(x.shape, lambda n, c, *sp: te.sum(square_at(n, c, sp), axis=r),
                      name="lrn_sum")
    denom = te.compute(x.shape, lambda *i: k + a * sums(*i), name="lrn_denom")
    # t_c = dy_c * x_c * D_c^(-beta-1): the part every neighbour j of c receives
    t = te.compute(x.shape, lambda *i: dy(*i) * x(*i) * tirx.power(denom(*i), -beta - const(1.0, x.dtype)),
                   name="lrn_t")
    r2 = te.reduce_axis((0, size), name="r2")

    def neighbours(n, j, sp):
        c = j - (size - 1) // 2 + r2  # channels c whose window contains j
        inside = tirx.all(c >= 0, c < channels)
        v = t[(n, tirx.max(tirx.min(c, channels - 1), 0), *sp)]
        return tirx.if_then_else(inside, v, _zero(x))

    spread = te.compute(x.shape, lambda n, j, *sp: te.sum(neighbours(n, j, sp), axis=r2),
                        name="lrn_spread")
    dx = te.compute(x.shape, lambda *i: dy(*i) * tirx.power(denom(*i), -beta)
                    - const(2.0, x.dtype) * beta * a * x(*i) * spread(*i), name="lrn_dx")
    return [dx], {}


def grad_flatten(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    dims = [int(s) for s in x.shape[1:]]

    def value(n, *i):
        return dy[n, _flat(list(i), dims)]

    return [te.compute(x.shape, value, name="flatten_dx")], {}


def grad_add(layer, xs, y, dy, args, out_shape):
    return [dy for _ in xs], {}


def grad_concat(layer, xs, y, dy, args, out_shape):
    axis = layer.sample_axis(len(out_shape)) + 1

    def part(start):
        return lambda *i: dy(*[v + start if a == axis else v for a, v in enumerate(i)])

    dxs, offset = [], 0
    for j, x in enumerate(xs):
        dxs.append(te.compute(x.shape, part(offset), name=f"concat_dx{j}"))
        offset += int(x.shape[axis])
    return dxs, {}


def grad_passthrough(layer, xs, y, dy, args, out_shape):
    return [dy], {}


def grad_upsample(layer, xs, y, dy, args, out_shape):
    """Each input position's gradient is the sum over its block of the output."""
    x = xs[0]
    sh, sw = layer.scale
    # a reduce axis of extent 1 is left out: dlight's GPU rules do not schedule one
    ra = te.reduce_axis((0, sh), name="ra") if sh > 1 else 0
    rb = te.reduce_axis((0, sw), name="rb") if sw > 1 else 0
    axes = [r for r in (ra, rb) if not isinstance(r, int)]

    def value(n, c, i, j):
        v = dy[n, c, i * sh + ra, j * sw + rb]
        return te.sum(v, axis=axes) if axes else v

    return [te.compute(x.shape, value, name="upsample_dx")], {}



def grad_slice(layer, xs, y, dy, args, out_shape):
    """The input's gradient is the output's at the positions taken, and zero between them."""
    x = xs[0]
    axis = layer.sample_axis(len(out_shape)) + 1
    taken = layer.positions(int(x.shape[axis]))
    first, step, count = taken.start, taken.step, len(taken)

    def value(*i):
        offset = i[axis] - first
        k = tirx.max(tirx.min(tirx.indexdiv(offset, step), count - 1), 0)  # in bounds always
        hit = tirx.all(offset >= 0, offset < count * step, tirx.indexmod(offset, step) == 0)
        picked = dy(*[k if a == axis else v for a, v in enumerate(i)])
        return tirx.Select(hit, picked, tirx.const(0, dy.dtype))

    return [te.compute(x.shape, value, name="slice_dx")], {}

# -- losses -------------------------------------------------------------------------------------------

def softmax_cross_entropy(logits, labels, smoothing: float = 0.0):
    """Mean cross-entropy of integer labels, with optional label smoothing (as PyTorch).
    Returns (loss (1,), correct (1,), dlogits)."""
    n, k = logits.shape[0], int(logits.shape[1])
    dt = logits.dtype
    rk = te.reduce_axis((0, k), name="rk")
    peak = te.compute((n,), lambda i: max_keeping_nan(logits[i, rk], axis=rk), name="ce_max")
    rk2 = te.reduce_axis((0, k), name="rk2")
    total = te.compute((n,), lambda i: te.sum(tirx.exp(logits[i, rk2] - peak[i]), axis=rk2),
                       name="ce_sum")
    on, off = const(1.0 - smoothing + smoothing / k, dt), const(smoothing / k, dt)

    def target(i, c):
        return tirx.Select(labels[i] == c, on, off)

    def log_p(i, c):
        return logits[i, c] - peak[i] - tirx.log(total[i])

    nf = n.astype(dt) if not isinstance(n, int) else const(n, dt)
    rn, rk3 = te.reduce_axis((0, n), name="rn"), te.reduce_axis((0, k), name="rk3")
    total_loss = te.compute((1,), lambda _: te.sum(-target(rn, rk3) * log_p(rn, rk3),
                                                   axis=[rn, rk3]), name="ce_total")
    loss = te.compute((1,), lambda i: total_loss[i] / nf, name="ce_loss")
    rk4 = te.reduce_axis((0, k), name="rk4")
    argmax = te.compute((n,), lambda i: te.min(tirx.if_then_else(
        logits[i, rk4] == peak[i], rk4, tirx.const(k, "int32")), axis=rk4), name="ce_argmax")
    rn2 = te.reduce_axis((0, n), name="rn2")
    correct = te.compute((1,), lambda _: te.sum(tirx.Select(
        argmax[rn2] == labels[rn2], const(1.0, dt), const(0.0, dt)), axis=rn2), name="ce_correct")
    dlogits = te.compute(logits.shape, lambda i, c: (tirx.exp(log_p(i, c)) - target(i, c)) / nf,
                         name="ce_dlogits")
    return loss, correct, dlogits


def _per_sample(shape) -> int:
    return math.prod(int(s) for s in shape[1:])


def sigmoid_cross_entropy(logits, targets):
    """Mean binary cross-entropy with logits over every element (BCEWithLogitsLoss)."""
    dt = logits.dtype
    shape = logits.shape
    count = shape[0]
    for s in shape[1:]:
        count = count * int(s)
    cf = count.astype(dt) if not isinstance(count, int) else const(count, dt)
    axes = [te.reduce_axis((0, s), name=f"r{i}") for i, s in enumerate(shape)]
    zero, one = const(0.0, dt), const(1.0, dt)

    def elem(*i):
        z, y = logits(*i), targets(*i)
        return tirx.max(z, zero) - z * y + tirx.log(one + tirx.exp(-tirx.abs(z)))

    total = te.compute((1,), lambda _: te.sum(elem(*axes), axis=axes), name="bce_total")
    loss = te.compute((1,), lambda i: total[i] / cf, name="bce_loss")
    axes2 = [te.reduce_axis((0, s), name=f"q{i}") for i, s in enumerate(shape)]
    # as integers: LLVM has no equality of two booleans computed from floats
    def agrees(*i):
        return (logits(*i) > zero).astype("int32") == \
            (targets(*i) > const(0.5, dt)).astype("int32")

    hits = te.compute((1,), lambda _: te.sum(tirx.Select(agrees(*axes2), one, zero),
                                             axis=axes2), name="bce_hits")
    # accuracy counts per sample: the fraction of a sample's labels that are right
    per_sample = const(1.0 / _per_sample(shape), dt)
    correct = te.compute((1,), lambda i: hits[i] * per_sample, name="bce_correct")
    d = te.compute(shape, lambda *i: (tirx.sigmoid(logits(*i)) - targets(*i)) / cf, name="bce_d")
    return loss, correct, d


def euclidean(outputs, targets):
    """Mean squared error over every element (MSELoss)."""
    dt = outputs.dtype
    shape = outputs.shape
    count = shape[0]
    for s in shape[1:]:
        count = count * int(s)
    cf = count.astype(dt) if not isinstance(count, int) else const(count, dt)
    axes = [te.reduce_axis((0, s), name=f"r{i}") for i, s in enumerate(shape)]

    def sq(*i):
        d = outputs(*i) - targets(*i)
        return d * d

    total = te.compute((1,), lambda _: te.sum(sq(*axes), axis=axes), name="mse_total")
    loss = te.compute((1,), lambda i: total[i] / cf, name="mse_loss")
    correct = te.compute((1,), lambda _: const(0.0, dt), name="mse_correct")
    d = te.compute(shape, lambda *i: const(2.0, dt) * (outputs(*i) - targets(*i)) / cf,
                   name="mse_d")
    return loss, correct, d


def smooth_l1(outputs, targets, beta: float):
    """Mean smooth L1 (SmoothL1Loss) over the targets that are not NaN: a NaN target is an
    entry to ignore, in the loss, its count and the gradient."""
    dt = outputs.dtype
    shape = outputs.shape
    zero, one, b = const(0.0, dt), const(1.0, dt), const(beta, dt)
    half_beta, half_over_beta = const(0.5 * beta, dt), const(0.5 / beta, dt)

    def kept(*i):
        return tirx.isnan(targets(*i)).astype("int32") == 0

    def per(*i):
        d = tirx.abs(outputs(*i) - targets(*i))
        return tirx.Select(kept(*i), tirx.Select(d < b, half_over_beta * d * d, d - half_beta),
                           zero)

    axes = [te.reduce_axis((0, s), name=f"r{i}") for i, s in enumerate(shape)]
    total = te.compute((1,), lambda _: te.sum(per(*axes), axis=axes), name="sl1_total")
    axes2 = [te.reduce_axis((0, s), name=f"q{i}") for i, s in enumerate(shape)]
    count = te.compute((1,), lambda _: te.sum(tirx.Select(kept(*axes2), one, zero), axis=axes2),
                       name="sl1_count")
    loss = te.compute((1,), lambda i: total[i] / tirx.max(count[i], one), name="sl1_loss")
    correct = te.compute((1,), lambda _: zero, name="sl1_correct")

    def grad(*i):
        d = outputs(*i) - targets(*i)
        slope = tirx.Select(tirx.abs(d) < b, d / b,
                            tirx.Select(d > zero, one, tirx.Select(d < zero, -one, zero)))
        return tirx.Select(kept(*i), slope / tirx.max(count[0], one), zero)

    return loss, correct, te.compute(shape, grad, name="sl1_d")


# the TE form of each loss (spec/losses.py): (the Loss, z, labels, label smoothing) ->
# (loss (1,), correct (1,), dz)
LOSS_FORMS = {
    SoftmaxCrossEntropy: lambda loss, z, y, smoothing: softmax_cross_entropy(z, y, smoothing),
    SigmoidCrossEntropy: lambda loss, z, y, smoothing: sigmoid_cross_entropy(z, y),
    Euclidean: lambda loss, z, y, smoothing: euclidean(z, y),
    SmoothL1: lambda loss, z, y, smoothing: smooth_l1(z, y, loss.beta),
}


# -- optimizers -----------------------------------------------------------------------------------------
# Every hyperparameter is read from the runtime vector ``hyper`` (see cnncompiler.train.optim),
# so changing the learning rate, its schedule, momentum or weight decay needs no recompilation.


def sgd_update(p, g, buf, hyper):
    """SGD as torch.optim.SGD: weight decay, momentum (the first step takes the gradient),
    dampening and Nesterov. Returns (new p, new momentum buffer), both from one loop."""
    dt = p.dtype
    one = const(1.0, dt)

    def both(*i):
        first = hyper[Hyper.FIRST_STEP]
        grad = g(*i) + hyper[Hyper.WEIGHT_DECAY] * p(*i)
        nb = hyper[Hyper.MOMENTUM] * buf(*i) * (one - first) + \
            (one - hyper[Hyper.DAMPENING] * (one - first)) * grad
        step = nb + hyper[Hyper.NESTEROV] * (grad + hyper[Hyper.MOMENTUM] * nb - nb)
        return [p(*i) - hyper[Hyper.LR] * step, nb]

    new_p, new_buf = te.compute(p.shape, both, name="sgd")
    return new_p, new_buf


def adam_update(p, g, m, v, hyper):
    """Adam / AdamW as torch.optim: L2 decay or AdamW's decoupled decay, with the bias
    corrections 1 - beta1^t and 1 - beta2^t from the hyperparameter vector. Returns
    (p, m, v), all from one loop."""
    dt = p.dtype
    one = const(1.0, dt)

    def all_three(*i):
        grad = g(*i) + hyper[Hyper.WEIGHT_DECAY] * p(*i)
        nm = hyper[Hyper.BETA1] * m(*i) + (one - hyper[Hyper.BETA1]) * grad
        nv = hyper[Hyper.BETA2] * v(*i) + (one - hyper[Hyper.BETA2]) * grad * grad
        decayed = p(*i) * (one - hyper[Hyper.LR] * hyper[Hyper.DECOUPLED_DECAY])
        denom = tirx.sqrt(nv) / tirx.sqrt(hyper[Hyper.BIAS_CORRECTION2]) + hyper[Hyper.EPS]
        return [decayed - hyper[Hyper.LR] / hyper[Hyper.BIAS_CORRECTION1] * nm / denom, nm, nv]

    new_p, new_m, new_v = te.compute(p.shape, all_three, name="adam")
    return new_p, new_m, new_v


def square_sum(g):
    """sum(g^2): non-finite when any gradient entry is, and the squared gradient norm."""
    axes = [te.reduce_axis((0, int(s)), name=f"r{i}") for i, s in enumerate(g.shape)]
    return te.compute((1,), lambda _: te.sum(g(*axes) * g(*axes), axis=axes), name="grad_sq")

"""TE computes and gradients of the pools in ``layers.adaptive``: adaptive average and max
pooling over (N, C, H, W), and statistics pooling of (N, C, T). Registered in ``rules``; the
gradients are written for any float dtype, as te_grad's."""

from __future__ import annotations

import math

from tvm import te, tirx

from cnncompiler.layers.adaptive import (bin_bounds, bins_containing, most_bins_per_input,
                                         widest_bin)

from .te_grad import _flat, is_max
from .te_ops import batch, const, max_keeping_nan


def _axes(layer, x) -> list[tuple[int, int]]:
    """(input size, output size) per spatial axis."""
    return list(zip((int(s) for s in x.shape[2:]), layer.output_size))


def _steps(extents, name: str):
    """A reduce axis for each extent above 1, and per axis the step it reads: that axis, or 0
    where the extent is 1 (dlight's GPU rules do not schedule a reduction over one position)."""
    axes = {a: te.reduce_axis((0, e), name=f"{name}{a}") for a, e in enumerate(extents) if e > 1}
    return [axes.get(a, 0) for a in range(len(extents))], list(axes.values())


def _reduce(reduce, value, axes):
    return reduce(value, axis=axes) if axes else value


def _in_bin(out_idx, axes, steps):
    """Whether each step falls inside its output's bin, and the input position it reads
    (clamped, so a step past a narrower bin still loads inside the input)."""
    conds, src = [], []
    for i, r, (n, m) in zip(out_idx, steps, axes):
        start, end = bin_bounds(i, n, m)
        conds.append(start + r < end)
        src.append(tirx.min(start + r, n - 1))
    return tirx.all(*conds), src


def _bin_reduce(layer, x, reduce, fill: float, name: str):
    """``reduce`` over every output's bin; a step past its bin contributes ``fill``."""
    axes = _axes(layer, x)
    steps, rb = _steps([widest_bin(n, m) for n, m in axes], "rb")

    def value(b, c, *o):
        inside, src = _in_bin(o, axes, steps)
        return _reduce(reduce, tirx.Select(inside, x[(b, c, *src)], const(fill, x.dtype)), rb)

    return te.compute((batch(x), x.shape[1], *layer.output_size), value, name=name)


def _bin_size(out_idx, axes, dtype):
    count = math.prod(end - start for start, end in
                      (bin_bounds(i, n, m) for i, (n, m) in zip(out_idx, axes)))
    return count.astype(dtype)


def lower_adaptive_avgpool(layer, xs, args, out_shape):
    x = xs[0]
    axes = _axes(layer, x)
    total = _bin_reduce(layer, x, te.sum, 0.0, "adaptive_sum")
    return te.compute(total.shape, lambda b, c, *o: total[(b, c, *o)] / _bin_size(
        o, axes, x.dtype), name="adaptive_avgpool")


def lower_adaptive_maxpool(layer, xs, args, out_shape):
    return _bin_reduce(layer, xs[0], max_keeping_nan, -math.inf, "adaptive_maxpool")


def _scatter_bins(layer, x, dy, weight, name: str):
    """dx[j] = sum over the outputs i whose bins hold j of weight(b, c, i, j) * dy[i]."""
    axes = _axes(layer, x)
    steps, rb = _steps([most_bins_per_input(n, m) for n, m in axes], "rb")

    def value(b, c, *j):
        conds, outs = [], []
        for jj, r, (n, m) in zip(j, steps, axes):
            first, last = bins_containing(jj, n, m)
            conds.append(first + r <= last)
            outs.append(tirx.min(first + r, m - 1))
        contrib = weight(b, c, outs, j) * dy[(b, c, *outs)]
        return _reduce(te.sum, tirx.Select(tirx.all(*conds), contrib, const(0.0, x.dtype)), rb)

    return te.compute(x.shape, value, name=name)


def grad_adaptive_avgpool(layer, xs, y, dy, args, out_shape):
    x = xs[0]
    axes = _axes(layer, x)
    one = const(1.0, x.dtype)
    return [_scatter_bins(layer, x, dy, lambda b, c, outs, j: one / _bin_size(outs, axes, x.dtype),
                          "adaptive_avgpool_dx")], {}


def grad_adaptive_maxpool(layer, xs, y, dy, args, out_shape):
    """The gradient goes to the first maximum of each bin in row-major order (PyTorch's
    choice); a position that is the maximum of two overlapping bins gets both."""
    x = xs[0]
    axes = _axes(layer, x)
    sizes = [n for n, _ in axes]
    steps, rb = _steps([widest_bin(n, m) for n, m in axes], "ra")
    none = tirx.const(math.prod(sizes) + 1, "int32")

    def first_max(b, c, *o):
        inside, src = _in_bin(o, axes, steps)
        hit = tirx.all(inside, is_max(x[(b, c, *src)], y[(b, c, *o)]))
        return _reduce(te.min, tirx.Select(hit, _flat(src, sizes).astype("int32"), none), rb)

    first = te.compute(y.shape, first_max, name="adaptive_argmax")
    one, zero = const(1.0, x.dtype), const(0.0, x.dtype)

    def weight(b, c, outs, j):
        return tirx.Select(first[(b, c, *outs)] == _flat(j, sizes).astype("int32"), one, zero)

    return [_scatter_bins(layer, x, dy, weight, "adaptive_maxpool_dx")], {}


def _mean_and_squares(x):
    """Per (sample, channel): the mean over time and the sum of squared deviations from it."""
    steps = int(x.shape[2])
    rt, rs = te.reduce_axis((0, steps), name="rt"), te.reduce_axis((0, steps), name="rs")
    total = te.compute(x.shape[:2], lambda b, c: te.sum(x[b, c, rt], axis=rt), name="stats_sum")
    mean = te.compute(total.shape, lambda b, c: total[b, c] / const(steps, x.dtype),
                      name="stats_mean")
    squares = te.compute(total.shape, lambda b, c: te.sum(
        (x[b, c, rs] - mean[b, c]) * (x[b, c, rs] - mean[b, c]), axis=rs), name="stats_squares")
    return mean, squares


def lower_stats_pool(layer, xs, args, out_shape):
    x = xs[0]
    channels, steps = int(x.shape[1]), int(x.shape[2])
    mean, squares = _mean_and_squares(x)
    eps = const(layer.eps, x.dtype)

    def value(b, f):
        std = tirx.sqrt(squares[b, tirx.max(f - channels, 0)] / const(steps, x.dtype) + eps)
        return tirx.Select(f < channels, mean[b, tirx.min(f, channels - 1)], std)

    return te.compute((batch(x), 2 * channels), value, name="stats_pool")


def grad_stats_pool(layer, xs, y, dy, args, out_shape):
    # mean = sum x / T; std = sqrt(sum (x - mean)^2 / T + eps)  =>
    # dx_t = dmean / T + dstd * (x_t - mean) / (T * std)   (the mean's own terms cancel)
    x = xs[0]
    channels, steps = int(x.shape[1]), int(x.shape[2])
    t = const(steps, x.dtype)
    return [te.compute(x.shape, lambda b, c, i: dy[b, c] / t + dy[b, channels + c] * (
        x[b, c, i] - y[b, c]) / (t * y[b, channels + c]), name="stats_pool_dx")], {}

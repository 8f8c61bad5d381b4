"""The CPU training kernels besides the conv's: batch norm on batch statistics and its
gradient, per-channel sums, global pools' gradients, in the blocked layout NC[b]c; the
optimizer's updates and the squared norms on flat views of the parameters.

A per-channel sum over the batch and the spatial positions (batch statistics, their
gradients, a bias gradient) is computed in two stages: partial sums over ``parts`` slices of
the rows, parallel over (channel block, slice) with one vector of channels accumulated in a
register, then the slices added up. The batch may be symbolic; the rows are static.

    moments, coef, mean, var = batchnorm_stats(layer, x, 64, gamma, beta, rm, rv)
    y = batchnorm_apply(x, coef)
"""

from __future__ import annotations

import math

from tvm import s_tir, te, tirx

from cnncompiler.layers.pool import GlobalAvgPool

from ..te_grad import is_max
from .schedules import MIN_PARALLEL_WORK, scheduled, static_extent, tile_in_registers

FLOAT = "float32"
MIN_TASKS = 8         # partial sums per kernel, so both threads get several
MAX_PARTS = 64        # slices of a flat parameter for its squared norm


def _c(v: float):
    return tirx.const(v, FLOAT)


def per_channel(v, channels: int, block: int):
    """A plain per-channel vector (C,) read at (channel block, lane); 0 where a block pads."""
    def read(cb, j):
        c = cb * block + j
        if channels % block == 0:
            return v[c]
        return tirx.if_then_else(c < channels, v[tirx.min(c, channels - 1)], _c(0.0))
    return read


def unblock(t, channels: int, row=None, name: str = "unblock"):
    """(C/b, [rows,] b) as a plain (C,) vector (of one row)."""
    block = int(t.shape[-1])
    if row is None:
        return te.compute((channels,), lambda c: t[c // block, c % block], name=name)
    return te.compute((channels,), lambda c: t[c // block, row, c % block], name=name)


def count_of(x) -> tirx.PrimExpr:
    """Elements per channel of a blocked (N, C/b, *S, b) value, as a float."""
    total = x.shape[0] * math.prod(int(s) for s in x.shape[2:-1])
    return total.astype(FLOAT) if not isinstance(total, int) else _c(float(total))


def choose_parts(blocks: int, rows: int) -> int:
    """Slices of the rows: the fewest that give MIN_TASKS partial sums."""
    return min((d for d in _divisors(rows) if blocks * d >= MIN_TASKS), default=rows)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def channel_sums(terms, x, name: str):
    """Per-channel sums of ``len(terms)`` expressions over the batch and space of a blocked
    (N, C/b, *S, b) value: ``terms[m](n, cb, sp, j)``. Returns (C/b, M, b); stages
    ``{name}_acc`` (partial sums, the reduction the schedule vectorizes) and ``{name}``."""
    blocks, block = int(x.shape[1]), int(x.shape[-1])
    spatial = [int(s) for s in x.shape[2:-1]] or [1]
    rows = spatial[0]
    parts = choose_parts(blocks, rows)
    per_part = rows // parts
    rn = te.reduce_axis((0, x.shape[0]), name="rn")
    rs = [te.reduce_axis((0, s), name=f"rs{i}") for i, s in enumerate([per_part, *spatial[1:]])]
    count = len(terms)

    def value(cb, p, m, j):
        sp = [p * per_part + rs[0], *rs[1:]][:len(x.shape) - 3]
        expr = terms[-1](rn, cb, sp, j)
        for i in range(count - 2, -1, -1):
            expr = tirx.Select(m == i, terms[i](rn, cb, sp, j), expr)
        return te.sum(expr, axis=[rn, *rs])

    acc = te.compute((blocks, parts, count, block), value, name=f"{name}_acc")
    part = te.compute(acc.shape, lambda *i: acc(*i), name=f"{name}_part")
    rp = te.reduce_axis((0, parts), name="rp")
    return te.compute((blocks, count, block), lambda cb, m, j: te.sum(part[cb, rp, m, j],
                                                                      axis=rp), name=name)


def schedule_channel_sums(sch: s_tir.Schedule, name: str) -> None:
    """Parallel over (channel block, slice), the batch and rows reduced around a register
    vector per term (the terms unrolled, so each element is read once for all of them)."""
    acc, part = sch.get_sblock(f"{name}_acc"), sch.get_sblock(f"{name}_part")
    cb, p, m, j, *reduction = sch.get_loops(acc)
    sch.reorder(cb, p, *reduction, m, j)
    par = sch.fuse(cb, p)
    # a symbolic batch is a training batch: worth sharing, as schedule_conv assumes
    symbolic = any(static_extent(sch, lp) is None for lp in reduction)
    work = math.prod(static_extent(sch, lp) or 64 for lp in (par, *reduction, m, j))
    if symbolic or work >= MIN_PARALLEL_WORK:
        sch.parallel(par)
    sch.reverse_compute_at(part, par)
    tile_in_registers(sch, acc, [m], j, reduction[0])
    sch.vectorize(sch.get_loops(part)[-1])


def schedule_sums_then_loops(func, names, lanes: int):
    """The channel sums ``names`` scheduled as above; every other stage parallel and
    vectorized over its lanes where it is big enough (``schedule_loops``' rule)."""
    from .schedules import SPATIAL, parallel_vectorize

    sch = s_tir.Schedule(func)
    owned = {f"{n}_acc" for n in names} | {f"{n}_part" for n in names}
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for block in sch.get_child_blocks(root):
        stmt = sch.get(block)
        if stmt.name_hint in owned | outputs or \
                any(int(iv.iter_type) != SPATIAL for iv in stmt.iter_vars):
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 (TVM refuses some inlines; the stage then stays)
            pass
    for name in names:
        schedule_channel_sums(sch, name)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint in owned:
            continue
        try:
            parallel_vectorize(sch, block, lanes)
        except Exception:  # noqa: BLE001 (a stage TVM will not transform stays as it is)
            pass
    return scheduled(sch)


def schedule_lane_reductions(func, lanes: int):
    """For window gradients in the blocked layout (pools' scatter, argmax): each reduction
    stage's reduction loops moved outside its lane loop, which is vectorized, and its leading
    spatial loops run in parallel; other stages as ``schedule_loops``."""
    from .schedules import MIN_PARALLEL_WORK as MIN_WORK, SPATIAL, inline_injective, \
        parallel_vectorize, work

    sch = s_tir.Schedule(func)
    inline_injective(sch)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        loops = sch.get_loops(block)
        if all(k == SPATIAL for k in kinds) or len(kinds) != len(loops):
            try:
                parallel_vectorize(sch, block, lanes)
            except Exception:  # noqa: BLE001 (the stage stays as it is)
                pass
            continue
        spatial = [lp for lp, k in zip(loops, kinds) if k == SPATIAL]
        reduction = [lp for lp, k in zip(loops, kinds) if k != SPATIAL]
        total = work(sch, loops)
        sch.reorder(*spatial[:-1], *reduction, spatial[-1])
        sch.vectorize(spatial[-1])
        outer = sch.fuse(*spatial[:3]) if len(spatial) > 3 else spatial[0]
        if total >= MIN_WORK:
            sch.parallel(outer)
    return scheduled(sch)


# -- batch norm on batch statistics ----------------------------------------------------------------

def batchnorm_stats(layer, x, channels: int, weight, bias, running_mean, running_var):
    """Training-mode batch norm statistics of a blocked value, in two passes (the mean, then
    the squared deviations from it, as PyTorch). Returns ``moments`` (C/b, 2, b): the batch
    mean and biased variance; ``coef`` (C/b, 2, b): the scale and shift that normalise; the
    moved running mean and variance (C,) (with the unbiased variance, as PyTorch)."""
    count = count_of(x)
    sums = batchnorm_sums(x)
    squares = batchnorm_deviation_sums(x, sums, count)
    return batchnorm_from_sums(layer, sums, squares, count, channels, weight, bias,
                               running_mean, running_var)


def batchnorm_sums(x):
    """Per-channel sums of a blocked value, (C/b, 1, b): the first pass of its statistics."""
    return channel_sums([lambda n, cb, sp, j: x[(n, cb, *sp, j)]], x, "bn_sum")


def batchnorm_count(x):
    """(1,): the elements per channel of a blocked value, as a tensor (summed over the
    processes of a data-parallel step with the sums)."""
    return te.compute((1,), lambda i: count_of(x), name="bn_count")


def batchnorm_deviation_sums(x, sums, count):
    """Per-channel sums of the squared deviations from the mean ``sums / count``, (C/b, 1, b):
    the second pass."""
    block = int(x.shape[-1])
    mean = te.compute((sums.shape[0], block), lambda cb, j: sums[cb, 0, j] / count,
                      name="bn_mean")

    def deviation(n, cb, sp, j):
        d = x[(n, cb, *sp, j)] - mean[cb, j]
        return d * d

    return channel_sums([deviation], x, "bn_sq")


def batchnorm_from_sums(layer, sums, squares, count, channels: int, weight, bias, running_mean,
                        running_var):
    """``batchnorm_stats``' results from the two passes' sums over ``count`` elements."""
    block = int(sums.shape[-1])
    moments = te.compute((sums.shape[0], 2, block), lambda cb, m, j: tirx.Select(
        m == 0, sums[cb, 0, j] / count, squares[cb, 0, j] / count), name="bn_moments")
    gamma, beta = per_channel(weight, channels, block), per_channel(bias, channels, block)
    eps = _c(layer.eps)

    def coefficients(cb, m, j):
        scale = gamma(cb, j) / tirx.sqrt(moments[cb, 1, j] + eps)
        return tirx.Select(m == 0, scale, beta(cb, j) - moments[cb, 0, j] * scale)

    coef = te.compute(moments.shape, coefficients, name="bn_coef")
    mom, one = _c(layer.momentum), _c(1.0)
    unbias = count / tirx.max(count - one, one)
    new_mean = te.compute((channels,), lambda c: (one - mom) * running_mean[c] + mom * moments[
        c // block, 0, c % block], name="bn_running_mean")
    new_var = te.compute((channels,), lambda c: (one - mom) * running_var[c] + mom * moments[
        c // block, 1, c % block] * unbias, name="bn_running_var")
    return [moments, coef, new_mean, new_var]


def batchnorm_apply(x, coef):
    """y = x * scale + shift per channel, on a blocked value."""
    return te.compute(x.shape, lambda n, cb, *rest: x[(n, cb, *rest)] * coef[cb, 0, rest[-1]]
                      + coef[cb, 1, rest[-1]], name="batchnorm")


def batchnorm_grad_sums(layer, x, dy, moments, weight, channels: int):
    """The per-channel sums of batch norm's gradient in one pass over x and dy: S0 = sum dy,
    S1 = sum dy (x - mean). Returns ``coef`` (C/b, 3, b) with dx = k dy + q x + r, and the
    gradients of the weight (S1 / std) and the bias (S0), plain (C,)."""
    sums = batchnorm_grad_moments(x, dy, moments)
    coef = batchnorm_grad_coefficients(layer, sums, moments, weight, channels, count_of(x))
    return [coef, *batchnorm_param_grads(layer, sums, moments, channels)]


def batchnorm_grad_moments(x, dy, moments):
    """(C/b, 2, b): S0 = sum dy and S1 = sum dy (x - mean) per channel."""
    return channel_sums([lambda n, cb, sp, j: dy[(n, cb, *sp, j)],
                         lambda n, cb, sp, j: dy[(n, cb, *sp, j)] * (
                             x[(n, cb, *sp, j)] - moments[cb, 0, j])], x, "bn_grad")


def batchnorm_grad_coefficients(layer, sums, moments, weight, channels: int, count):
    """(C/b, 3, b): k, q, r of dx = k dy + q x + r from the sums S0, S1 over ``count``."""
    block = int(sums.shape[-1])
    gamma = per_channel(weight, channels, block)
    eps = _c(layer.eps)

    def coefficients(cb, m, j):
        inv = _c(1.0) / tirx.sqrt(moments[cb, 1, j] + eps)
        k = gamma(cb, j) * inv
        q = -k * inv * inv * sums[cb, 1, j] / count
        r = -k * sums[cb, 0, j] / count - q * moments[cb, 0, j]
        return tirx.Select(m == 0, k, tirx.Select(m == 1, q, r))

    return te.compute((sums.shape[0], 3, block), coefficients, name="bn_grad_coef")


def batchnorm_param_grads(layer, sums, moments, channels: int):
    """[d weight = S1 / std, d bias = S0], plain (C,)."""
    block = int(sums.shape[-1])
    eps = _c(layer.eps)
    dgamma = te.compute((channels,), lambda c: sums[c // block, 1, c % block] / tirx.sqrt(
        moments[c // block, 1, c % block] + eps), name="bn_dgamma")
    return [dgamma, unblock(sums, channels, 0, name="bn_dbeta")]


def batchnorm_grad_apply(x, dy, coef):
    def compute(n, cb, *rest):
        j = rest[-1]
        return coef[cb, 0, j] * dy[(n, cb, *rest)] + coef[cb, 1, j] * x[(n, cb, *rest)] + \
            coef[cb, 2, j]
    return te.compute(x.shape, compute, name="bn_dx")


def bias_grad(dy, channels: int):
    """sum over batch and space of a blocked dy, plain (C,)."""
    sums = channel_sums([lambda n, cb, sp, j: dy[(n, cb, *sp, j)]], dy, "bias_sum")
    return unblock(sums, channels, 0, name="bias_grad")


# -- global pools in the blocked layout ---------------------------------------------------------

def global_pool_grad(layer, x, y, dy):
    """dx of a global average or max pool, blocked (N, C/b, *S, b)."""
    nd = len(x.shape) - 3
    sizes = [int(s) for s in x.shape[2:2 + nd]]
    ones = (0,) * nd
    if isinstance(layer, GlobalAvgPool):
        scale = _c(1.0 / math.prod(sizes))
        return te.compute(x.shape, lambda n, c, *rest: dy[(n, c, *ones, rest[-1])] * scale,
                          name="global_avgpool_dx")
    axes = [te.reduce_axis((0, s), name=f"ra{a}") for a, s in enumerate(sizes)]
    big = math.prod(sizes) + 1

    def flat(idx):
        total = None
        for i, s in zip(idx, sizes):
            total = i if total is None else total * s + i
        return total.astype("int32")

    first = te.compute(y.shape, lambda n, c, *rest: te.min(tirx.if_then_else(
        is_max(x[(n, c, *axes, rest[-1])], y[(n, c, *ones, rest[-1])]), flat(axes),
        tirx.const(big, "int32")), axis=axes), name="global_argmax")
    return te.compute(x.shape, lambda n, c, *rest: tirx.if_then_else(
        first[(n, c, *ones, rest[-1])] == flat(rest[:-1]), dy[(n, c, *ones, rest[-1])],
        _c(0.0)), name="global_maxpool_dx")


# -- the squared norm of a (rows, lanes) view -----------------------------------------------------

ACCUMULATORS = 4  # vectors of sums per slice: independent chains for the FMA units


def square_sum_rows(t):
    """sum(t^2) of a (rows, lanes) view of a tensor: slices of rows summed in parallel into
    ACCUMULATORS vectors each (stage ``sq_acc``), then the rows no slice holds, then all."""
    rows, lanes = (int(d) for d in t.shape)
    parts = max(1, min(rows // ACCUMULATORS, MAX_PARTS))
    per = rows // (parts * ACCUMULATORS)
    r = te.reduce_axis((0, per), name="r")

    def square(row, j):
        return t[row, j] * t[row, j]

    acc = te.compute((parts, ACCUMULATORS, lanes), lambda p, u, j: te.sum(
        square((p * per + r) * ACCUMULATORS + u, j), axis=r), name="sq_acc")
    part = te.compute(acc.shape, lambda *i: acc(*i), name="sq_part")
    rp, ru, rj = (te.reduce_axis((0, int(n)), name=f"r{k}") for k, n in zip("puj", acc.shape))
    main = te.compute((1,), lambda _: te.sum(part[rp, ru, rj], axis=[rp, ru, rj]),
                      name="sq_main")
    done = parts * ACCUMULATORS * per
    if done == rows:
        return main
    rr, rl = te.reduce_axis((0, rows - done), name="rr"), te.reduce_axis((0, lanes), name="rl")
    tail = te.compute((1,), lambda _: te.sum(square(done + rr, rl), axis=[rr, rl]),
                      name="sq_tail")
    return te.compute((1,), lambda i: main[i] + tail[i], name="sq")


def schedule_square_sum(func):
    sch = s_tir.Schedule(func)
    acc, part = sch.get_sblock("sq_acc"), sch.get_sblock("sq_part")
    p, u, j, r = sch.get_loops(acc)
    sch.reorder(p, r, u, j)
    if math.prod(static_extent(sch, lp) or 1 for lp in (p, u, j, r)) >= MIN_PARALLEL_WORK:
        sch.parallel(p)
    sch.reverse_compute_at(part, p)
    tile_in_registers(sch, acc, [u], j, r)
    return scheduled(sch)

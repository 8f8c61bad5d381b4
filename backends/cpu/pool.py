"""Window kernels in the blocked layout: max, average and Lp pooling, blur pooling, global
pooling, and the depthwise convolution (a window reduction with one weight vector per channel
block).

Each is a reduction stage that accumulates ``rw`` output columns of one channel block in
vector registers, and an epilogue stage (the average's division, the conv's bias and
activation) run on those registers.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from cnncompiler.layers.pool import GlobalMaxPool, LpPoolBase, MaxPoolBase, blur_filter
from cnncompiler.layers.window import resolve_padding

from ..te_ops import _larger_or_nan, _window_count, max_keeping_nan, power, reflected
from .conv import ConvGeometry, blocked_epilogue, largest_divisor
from .schedules import (MIN_PARALLEL_WORK, pad_stage, scheduled, static_extent, tile_with_epilogue,
                        work)

FLOAT = "float32"
MAX_COLUMNS = 8


def pad_blocked(x, pads, value: float, name: str = "pad"):
    """Pad the spatial axes of (N, B, *S, b) with ``value``; the input itself without padding."""
    if all(tuple(p) == (0, 0) for p in pads):
        return x
    nd = len(pads)
    sizes = [int(s) for s in x.shape[2:2 + nd]]
    shape = (x.shape[0], x.shape[1], *[s + b + a for s, (b, a) in zip(sizes, pads)], x.shape[-1])

    def compute(n, c, *rest):
        sp, j = rest[:nd], rest[nd]
        conds = []
        for i, s, (b, a) in zip(sp, sizes, pads):
            if b:
                conds.append(i >= b)
            if a:
                conds.append(i < s + b)
        src = [i - b for i, (b, _) in zip(sp, pads)]
        return tirx.if_then_else(tirx.all(*conds), x[(n, c, *src, j)],
                                 tirx.const(value, FLOAT))

    return te.compute(shape, compute, name=name)


def pool_blocked(layer, x, out_spatial, prefix: str = ""):
    """Max, average or Lp pooling of (N, B, *S, b), PyTorch's rules (ceil_mode,
    count_include_pad; an Lp norm's power sum averaged over the window part inside the input
    and scaled by the full window, as ``te_ops.lower_lppool``)::

        {type: lppool2d, p: 2, kernel: 3, stride: 2}   # sqrt(sum x^2): products and a root

    Its stages are named ``pad``, ``rows``, ``window`` and ``epilogue`` after ``prefix`` (a
    kernel that computes the pool's input too names them apart from its own).
    """
    nd = layer.ndim
    sizes = [int(s) for s in x.shape[2:2 + nd]]
    full = layer.full_padding(sizes)
    explicit = resolve_padding(layer.padding, sizes, layer.kernel, layer.stride, (1,) * nd)
    is_max, is_lp = isinstance(layer, MaxPoolBase), isinstance(layer, LpPoolBase)
    xp = pad_blocked(x, full, float("-inf") if is_max else 0.0, f"{prefix}pad")
    transform = (lambda v: power(tirx.abs(v), layer.p)) if is_lp else (lambda v: v)
    shape = (x.shape[0], x.shape[1], *out_spatial, x.shape[-1])
    if separable(layer):
        acc = separable_pool(xp, layer, out_spatial, transform, prefix)
    else:
        rk = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(layer.kernel)]
        reduce = max_keeping_nan if is_max else te.sum

        def window(n, c, *rest):
            osp, j = rest[:nd], rest[nd]
            src = [o * s + r for o, s, r in zip(osp, layer.stride, rk)]
            return reduce(transform(xp[(n, c, *src, j)]), axis=rk)

        acc = te.compute(shape, window, name=f"{prefix}window")
    if is_max:
        return te.compute(shape, lambda *i: acc(*i), name=f"{prefix}epilogue")
    include_pad = True if is_lp else layer.count_include_pad
    window_size = tirx.const(math.prod(layer.kernel), FLOAT)

    def average(n, c, *rest):
        count = _window_count(sizes, explicit, layer, rest[:nd], include_pad)
        mean = acc[(n, c, *rest)] / count.astype(FLOAT)
        return power(mean * window_size, 1.0 / layer.p) if is_lp else mean

    return te.compute(shape, average, name=f"{prefix}epilogue")


def separable(layer) -> bool:
    """Does ``pool_blocked`` compute the pool in two passes (rows, then columns)? Every 2-D
    window of at least 2 x 2: a max, a sum and a power sum each reduce a rectangle as a
    reduction of its rows' reductions."""
    return layer.ndim == 2 and min(layer.kernel) >= 2


def _fold(combine, terms):
    value = terms[0]
    for term in terms[1:]:
        value = combine(value, term)
    return value


def separable_pool(xp, layer, out_spatial, transform, prefix: str = ""):
    """The window reduction of the padded (N, B, H, W, b) ``xp`` in two passes: each input
    row reduced over the window's width (stage ``rows``, every column of the output), then
    ``kh`` of those rows (stage ``window``). A k x k window takes 2 (k - 1) steps per output
    instead of k * k - 1 once the rows are shared by the output rows of a task (``R`` of them
    share (R - 1) * stride + k rows)."""
    combine = _larger_or_nan if isinstance(layer, MaxPoolBase) else _add
    return two_passes(xp, layer.kernel, layer.stride, out_spatial, combine,
                      lambda v, k: transform(v), lambda v, k: v, prefix)


def _add(a, b):
    return a + b


def two_passes(xp, kernel, stride, out_spatial, combine, row_term, column_term,
               prefix: str = ""):
    """``combine`` over a (kh, kw) window of the padded (N, B, H, W, b) ``xp``, as the rows
    pass (stage ``rows``: ``row_term(value, k)`` of the row's k-th tap) and the columns pass
    (stage ``window``: ``column_term(row, k)`` of the k-th row), their names after
    ``prefix``."""
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = out_spatial
    shape = (xp.shape[0], xp.shape[1], xp.shape[2], ow, xp.shape[-1])
    rows = te.compute(shape, lambda n, c, r, w, j: _fold(
        combine, [row_term(xp[n, c, r, w * sw + k, j], k) for k in range(kw)]),
        name=f"{prefix}rows")
    out_shape = (xp.shape[0], xp.shape[1], oh, ow, xp.shape[-1])
    return te.compute(out_shape, lambda n, c, h, w, j: _fold(
        combine, [column_term(rows[n, c, h * sh + k, w, j], k) for k in range(kh)]),
        name=f"{prefix}window")


def reflect_blocked(x, pads, name: str = "pad"):
    """Reflect-pad the spatial axes of (N, B, *S, b), as ``te_ops.reflect_pad`` the plain
    layout."""
    nd = len(pads)
    sizes = [int(s) for s in x.shape[2:2 + nd]]
    shape = (x.shape[0], x.shape[1], *[s + b + a for s, (b, a) in zip(sizes, pads)], x.shape[-1])

    def compute(n, c, *rest):
        src = [reflected(i, s, b) for i, s, (b, _) in zip(rest[:nd], sizes, pads)]
        return x[(n, c, *src, rest[nd])]

    return te.compute(shape, compute, name=name)


def blur_pool_blocked(layer, x, out_spatial):
    """Blur pooling of (N, B, H, W, b): the fixed binomial filter is separable, so the two
    passes (``two_passes``) compute it, each a weighted sum of ``kernel`` taps (2 k
    multiply-adds an output where the k x k filter takes k * k)::

        - {name: down, type: blurpool2d, kernel: 3, stride: 2}   # [1 2 1] / 4 each way

    Each kernel alone, batch 1, 2 threads, against te_ops' form on the generic schedule (in
    the plain layout, through a view of the blocked input): 64 channels at 112, k = 3, 282 ->
    31 us; 128 at 56, k = 5, 386 -> 15 us. A net of two convs, each followed by one: 0.27 /
    0.35 of the time at batch 1 / 8.
    """
    pads = layer.pads()
    xp = reflect_blocked(x, pads) if layer.pad_mode == "reflect" else pad_blocked(x, pads, 0.0)
    taps = [tirx.const(float(t), FLOAT) for t in blur_filter(layer.kernel).sum(axis=1)]
    k, s = layer.kernel, layer.stride
    acc = two_passes(xp, (k, k), (s, s), out_spatial, _add, lambda v, i: v * taps[i],
                     lambda v, i: v * taps[i])
    return te.compute(acc.shape, lambda *i: acc(*i), name="epilogue")


def global_pool_blocked(layer, x):
    """(N, B, *S, b) -> (N, B, 1, .., 1, b): mean or max over every spatial position."""
    nd = len(x.shape) - 3
    sizes = [int(s) for s in x.shape[2:2 + nd]]
    rk = [te.reduce_axis((0, s), name=f"rk{i}") for i, s in enumerate(sizes)]
    is_max = isinstance(layer, GlobalMaxPool)
    reduce = max_keeping_nan if is_max else te.sum
    shape = (x.shape[0], x.shape[1], *[1] * nd, x.shape[-1])
    acc = te.compute(shape, lambda n, c, *rest: reduce(x[(n, c, *rk, rest[-1])], axis=rk),
                     name="window")
    scale = tirx.const(1.0 / math.prod(sizes), FLOAT)
    return te.compute(shape, lambda *i: acc(*i) if is_max else acc(*i) * scale, name="epilogue")


def depthwise_blocked(x, weight, bias, geo: ConvGeometry, fused=None, epilogue_args=None,
                      residual=None):
    """Depthwise conv of (N, B, *S, b) by weights packed (B, 1, *K, 1, b)."""
    nd = len(geo.kernel)
    xp = pad_blocked(x, geo.pads, 0.0)
    rk = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(geo.kernel)]

    def compute(n, c, *rest):
        osp, j = rest[:nd], rest[nd]
        src = [o * s + r * d for o, s, r, d in zip(osp, geo.stride, rk, geo.dilation)]
        return te.sum(xp[(n, c, *src, j)] * weight[(c, 0, *rk, 0, j)], axis=rk)

    shape = (x.shape[0], x.shape[1], *geo.out_spatial, x.shape[-1])
    acc = te.compute(shape, compute, name="window")
    return blocked_epilogue(acc, bias, fused, epilogue_args, residual)


def repeat_blocks(x, times: int):
    """(N, B, *S, b) with each channel repeated ``times`` times in a row, as (N, B * times, *S,
    b) (``times`` dividing ``b``): output block ``ob`` is input block ``ob // times``, its
    lanes ``j // times`` of the part ``ob % times``."""
    part = int(x.shape[-1]) // times
    shape = (x.shape[0], x.shape[1] * times, *x.shape[2:])
    return te.compute(shape, lambda n, ob, *rest: x[(n, ob // times, *rest[:-1],
                                                     (ob % times) * part + rest[-1] // times)],
                      name="repeat")


def repeat_per_task(func):
    """``func`` (a scheduled depthwise kernel over ``repeat_blocks``), its repeat computed by
    each task for the rows it reads, not written out whole first."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    repeat = sch.get_sblock("repeat")
    sch.compute_at(repeat, sch.get_loops(sch.get_sblock("epilogue"))[0])  # the tasks
    sch.vectorize(sch.get_loops(repeat)[-1])
    return scheduled(sch)


MAX_TASK_ROWS = 8


def task_rows(out_rows: int) -> int:
    """Output rows per task of a separable pool: they share the rows pass. At most
    ``MAX_TASK_ROWS`` (a task's rows buffer stays a few tens of KiB) and at most half of them,
    so that even one image is split by rows between two threads, as its producer was
    (conv.images_outer)."""
    return largest_divisor(out_rows, min(MAX_TASK_ROWS, out_rows // 2))


def schedule_separable_pool(func, window: int, channels_outer: bool = False):
    """Parallel over (batch, groups of output rows, channel block); per task the rows pass
    for those output rows, then the columns pass and the epilogue, each vectorized over the
    block's lanes. ``window``: the window's size, for the work there is to share (as the
    one-pass schedule counts it); ``channels_outer``: over (channel block, batch, row groups)
    instead.

    The rows pass reads the input through the padding's bounds tests rather than from a
    padded copy made per task. Each kernel alone, batch 1, 2 threads (ms): a 3 x 3 stride-1
    max pool of 512 channels at 14 x 14 0.0226 in one pass, 0.0115 in two from a padded copy,
    0.0096 so; GoogLeNet's first (64 channels at 112, stride 2) 0.066, 0.078, 0.044."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    epi = sch.get_sblock("epilogue")
    sch.compute_inline(sch.get_sblock("window"))
    n, c, h, w, j = sch.get_loops(epi)
    h_o, h_i = sch.split(h, [None, task_rows(static_extent(sch, h))])
    outer = [c, n, h_o] if channels_outer else [n, h_o, c]
    sch.reorder(*outer, h_i, w, j)
    par = sch.fuse(*outer)
    if work(sch, sch.get_loops(epi)) * window >= 2 * MIN_PARALLEL_WORK:
        sch.parallel(par)
    sch.vectorize(j)
    rows = sch.get_sblock("rows")
    sch.compute_at(rows, par)
    sch.vectorize(sch.get_loops(rows)[-1])
    pad = pad_stage(sch)
    if pad is not None:
        sch.compute_inline(pad)
    return scheduled(sch)


def schedule_pool(layer, out_width: int, channels_outer: bool = False):
    """The schedule of ``pool_blocked(layer, ...)``'s PrimFunc."""
    if separable(layer):
        return lambda func: schedule_separable_pool(func, math.prod(layer.kernel), channels_outer)
    return lambda func: schedule_window(func, out_width, channels_outer)


def schedule_window(func, out_width: int, channels_outer: bool = False, task_rows: int = 1,
                    pad_inline: bool = False):
    """Parallel over (batch, rows, channel block), ``rw`` columns of vector accumulators,
    the padding computed per task, the epilogue on the registers. ``channels_outer``: over
    (channel block, batch, rows) instead; ``task_rows`` output rows per task; ``pad_inline``:
    the window reads the input through the padding's bounds tests, no padded copy."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    acc, epi = sch.get_sblock("window"), sch.get_sblock("epilogue")
    loops = sch.get_loops(acc)
    kinds = [int(iv.iter_type) for iv in sch.get(acc).iter_vars]
    spatial = [lp for lp, k in zip(loops, kinds) if k == 0]
    reduction = [lp for lp, k in zip(loops, kinds) if k != 0]
    n, c, osp, j = spatial[0], spatial[1], spatial[2:-1], spatial[-1]
    rw = largest_divisor(out_width, MAX_COLUMNS)
    w_o, w_i = sch.split(osp[-1], [None, rw])
    # as the conv before it split its tasks (conv.images_outer; emit.split_by_channels): each
    # thread reads what it wrote
    inner_rows = []
    if task_rows > 1:
        rows_o, rows_i = sch.split(osp[0], [None, task_rows])
        osp, inner_rows = [rows_o, *osp[1:]], [rows_i]
    outer = [c, n, *osp[:-1]] if channels_outer else [n, *osp[:-1], c]
    sch.reorder(*outer, *inner_rows, w_o, *reduction, w_i, j)
    par = sch.fuse(*outer)
    if work(sch, sch.get_loops(acc)) >= 2 * MIN_PARALLEL_WORK:
        sch.parallel(par)
    tile_with_epilogue(sch, acc, epi, w_o, [w_i], j, reduction[0] if reduction else None)
    pad = pad_stage(sch)
    if pad is not None and pad_inline:
        sch.compute_inline(pad)
    elif pad is not None:
        sch.compute_at(pad, par)
        sch.vectorize(sch.get_loops(pad)[-1])
    return scheduled(sch)


def schedule_depthwise(func, geo: ConvGeometry, channels_outer: bool = False):
    """``schedule_window`` for :func:`depthwise_blocked`: up to ``MAX_TASK_ROWS`` output
    rows per task, the padding read through bounds tests. Each kernel alone, 2 threads,
    batch 8 (ms), against one row per task from a padded copy: MobileNet's 3 x 3 of 32
    channels at 112 0.71 -> 0.46, 128 at 56 0.74 -> 0.46, 64 at 112 stride 2 0.73 -> 0.56,
    512 at 14 0.19 -> 0.11, 1024 at 7 0.11 -> 0.037 (batch 1: 0.066 -> 0.038, 0.019 ->
    0.009, 0.015 -> 0.005). Whole networks, interleaved: MobileNet-v1 batch 1 / 8 0.955 /
    0.977 of the time, MobileNet-v1 CIFAR batch 1 / 64 0.964 / 0.876."""
    per_task = largest_divisor(geo.out_rows, MAX_TASK_ROWS)
    return schedule_window(func, geo.out_spatial[-1], channels_outer, per_task, pad_inline=True)

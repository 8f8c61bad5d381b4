"""The convolution's training kernels in the blocked layout NC[b]c.

The forward is the inference kernel (``conv_blocked`` with ``schedule_conv``) on weights that
change every step, so they are packed every step by a small kernel (``pack_weight``).

The input gradient is a transposed convolution, computed by the same forward kernel: a
stride-1 conv of the output gradient, zero-inserted between its rows and columns (stride - 1
zeros) and padded so that the result has the input's size, with the spatially flipped,
in/out-transposed weights, at the same dilation and groups (``input_grad``).

The weight gradient ``dW[o, c, k] = sum over n, j of dy[n, o, j] * x_padded[n, c, j*s + k*d]``
is a reduction over the batch and the output positions, vectorized over a block of output
channels (dy's lane): each step of the reduction loads ``ro`` vectors of dy and broadcasts
``rc * rkw`` input values (channels by kernel columns) onto a register tile of accumulators
(``weight_grad``). The depthwise conv's weight gradient is vectorized over its channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import te, tirx

from .conv import MAX_ACCUMULATORS, ConvGeometry, divisors, padded_input
from .schedules import (MIN_PARALLEL_MACS, best_register_tile, pad_stage, scheduled,
                        static_extent, tile_in_registers)

FLOAT = "float32"
ZERO = tirx.const(0.0, FLOAT)
MIN_TASKS = 8          # below this many parallel tasks, the kernel rows are split too
MIN_INNER_STEPS = 32   # reduction steps a register tile takes between loads of its sums


def _guard(conds, value):
    return tirx.if_then_else(tirx.all(*conds), value, ZERO) if conds else value


# -- weights packed every step --------------------------------------------------------------------

def pack_weight(read, geo: ConvGeometry, name: str = "pack"):
    """The weights of a conv of geometry ``geo`` packed (O/ob, Cg/ib, *K, ib, ob), zero where
    a block pads; ``read(o, c_local, k)`` gives the logical weight (O, Cg, *K)."""
    nd = len(geo.kernel)
    cg = geo.cin // geo.groups

    def compute(ob, icb, *rest):
        k, ii, oj = rest[:nd], rest[nd], rest[nd + 1]
        o = ob * geo.ob + oj
        c = icb * geo.ib + ii
        conds = ([o < geo.cout] if geo.cout % geo.ob else []) + \
            ([c < cg] if (geo.group_in_blocks * geo.ib) != cg else [])
        safe_o = tirx.min(o, geo.cout - 1) if conds else o
        safe_c = tirx.min(c, cg - 1) if conds else c
        return _guard(conds, read(safe_o, safe_c, k))

    return te.compute(geo.weight_shape, compute, name=name)


def pack_depthwise(read, channels: int, block: int, kernel, name: str = "pack"):
    """Depthwise weights packed (C/b, 1, *K, 1, b); ``read(c, k)`` gives the logical ones."""
    blocks = -(-channels // block)

    def compute(cb, _z, *rest):
        k, j = rest[:len(kernel)], rest[-1]
        c = cb * block + j
        if channels % block == 0:
            return read(c, k)
        return _guard([c < channels], read(tirx.min(c, channels - 1), k))

    return te.compute((blocks, 1, *kernel, 1, block), compute, name=name)


def pack_bias(bias, channels: int, block: int, name: str = "pack_bias"):
    """A per-channel vector (C,) as (C/b, b), zero where the last block pads."""
    blocks = -(-channels // block)

    def compute(cb, j):
        c = cb * block + j
        if channels % block == 0:
            return bias[c]
        return _guard([c < channels], bias[tirx.min(c, channels - 1)])

    return te.compute((blocks, block), compute, name=name)


def forward_weight(w, geo: ConvGeometry):
    """Reads the plain weight (O, Cg, *K) as itself."""
    return lambda o, c, k: w[(o, c, *k)]


def flipped_weight(w, geo: ConvGeometry):
    """Reads the plain weight (O, Cg, *K) as the input gradient's conv weight (C, O/g, *K):
    output and input channels swapped within each group, the kernel flipped."""
    cg, og = geo.cin // geo.groups, geo.cout // geo.groups

    def read(c, o_local, k):
        o = (c // cg) * og + o_local if geo.groups > 1 else o_local
        c_local = c % cg if geo.groups > 1 else c
        return w[(o, c_local, *[kk - 1 - i for kk, i in zip(geo.kernel, k)])]

    return read


# -- the input gradient ----------------------------------------------------------------------------

@dataclass(frozen=True)
class InputGrad:
    """How the input gradient of a conv is computed: ``geo`` is the stride-1 conv that computes
    it (its input is dy, its output dx); with ``zero_insert`` its input is dy spread out
    (``spread_output_grad``) and ``geo.pads`` are zero."""

    geo: ConvGeometry
    zero_insert: bool
    left: tuple


def input_grad(geo: ConvGeometry, out_block: int) -> InputGrad:
    """The transposed conv of the forward conv ``geo``, writing blocks of ``out_block``."""
    left = tuple((k - 1) * d - b for k, d, (b, _) in zip(geo.kernel, geo.dilation, geo.pads))
    total = tuple(s + (k - 1) * d for s, k, d in zip(geo.in_spatial, geo.kernel, geo.dilation))
    right = tuple(t - lf - o for t, lf, o in zip(total, left, geo.out_spatial))
    zero_insert = any(s > 1 for s in geo.stride) or min(left + right) < 0
    dx_geo = ConvGeometry(
        cin=geo.cout, cout=geo.cin, groups=geo.groups, kernel=geo.kernel,
        stride=(1,) * len(geo.kernel), dilation=geo.dilation,
        pads=tuple((0, 0) for _ in left) if zero_insert else tuple(zip(left, right)),
        in_spatial=total if zero_insert else geo.out_spatial, out_spatial=geo.in_spatial,
        ib=geo.ob, ob=out_block)
    return InputGrad(dx_geo, zero_insert, left)


def spread_output_grad(dy, geo: ConvGeometry, grad: InputGrad):
    """dy zero-inserted by the stride and padded to the input gradient conv's input, as the
    stage "pad" the conv schedule computes per task."""
    nd = len(geo.kernel)

    def compute(n, c, *rest):
        sp, j = rest[:nd], rest[nd]
        conds, src = [], []
        for i, left, s, o in zip(sp, grad.left, geo.stride, geo.out_spatial):
            p = i - left
            conds += [p >= 0, p < (o - 1) * s + 1]
            if s > 1:
                conds.append(tirx.floormod(p, s) == 0)
            src.append(tirx.min(tirx.max(tirx.floordiv(p, s), 0), o - 1))
        return tirx.if_then_else(tirx.all(*conds), dy[(n, c, *src, j)], ZERO)

    shape = (dy.shape[0], dy.shape[1], *grad.geo.in_spatial, dy.shape[-1])
    return te.compute(shape, compute, name="pad")


def columns_pay_off(geo: ConvGeometry) -> bool:
    """Is the input gradient cheaper through columns (``columns_geometry``) than as a
    transposed conv? The transposed conv multiplies every input position by every tap, most of
    them zeros of the spread dy when the output is much smaller than the input (a stride, a
    kernel as large as the input); the columns cost the real products and one more pass."""
    return geo.groups == 1 and math.prod(geo.in_spatial) >= 2 * math.prod(geo.out_spatial)


def columns_geometry(geo: ConvGeometry, out_block: int) -> ConvGeometry:
    """The 1x1 conv of dy whose output channel (k, c), blocked by ``out_block`` over c, is
    sum over o of W[o, c, k] dy[o] at each output position: the input gradient's columns."""
    padded = -(-geo.cin // out_block) * out_block
    ones = (1,) * len(geo.kernel)
    return ConvGeometry(cin=geo.cout, cout=math.prod(geo.kernel) * padded, groups=1,
                        kernel=ones, stride=ones, dilation=ones,
                        pads=tuple((0, 0) for _ in ones), in_spatial=geo.out_spatial,
                        out_spatial=geo.out_spatial, ib=geo.ob, ob=out_block)


def column_weight(w, geo: ConvGeometry, cols: ConvGeometry):
    """Reads the plain weight (O, C, *K) as the columns conv's weight (K*C', O, 1..): row
    (k, c) of the flattened taps, zero for the channels that pad C to C'."""
    padded = cols.cout // math.prod(geo.kernel)

    def read(q, o, _k):
        c, tap = q % padded, q // padded
        taps = []
        for size in reversed(geo.kernel):
            taps.insert(0, tap % size)
            tap = tap // size
        value = w[(o, tirx.min(c, geo.cin - 1), *taps)]
        return value if padded == geo.cin else _guard([c < geo.cin], value)

    return read


def columns_to_input(cols, geo: ConvGeometry, out_block: int):
    """dx (N, C'/b, *S, b) from the columns (N, K*C'/b, *OS, b): each input position sums the
    columns of the (output position, tap) pairs that read it. Stages ``window`` and
    ``epilogue``, as the window kernels (``pool.schedule_window``)."""
    nd = len(geo.kernel)
    blocks = -(-geo.cin // out_block)
    rk = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(geo.kernel)]

    def compute(n, cb, *rest):
        sp, j = rest[:nd], rest[nd]
        conds, src = [], []
        for i, k, (b, _), s, d, o in zip(sp, rk, geo.pads, geo.stride, geo.dilation,
                                         geo.out_spatial):
            p = i + b - k * d
            conds += [p >= 0, tirx.floordiv(p, s) < o]
            if s > 1:
                conds.append(tirx.floormod(p, s) == 0)
            src.append(tirx.min(tirx.max(tirx.floordiv(p, s), 0), o - 1))
        tap = None
        for k, size in zip(rk, geo.kernel):
            tap = k if tap is None else tap * size + k
        value = cols[(n, tap * blocks + cb, *src, j)]
        return te.sum(tirx.if_then_else(tirx.all(*conds), value, ZERO), axis=rk)

    shape = (cols.shape[0], blocks, *geo.in_spatial, out_block)
    acc = te.compute(shape, compute, name="window")
    return te.compute(shape, lambda *i: acc(*i), name="epilogue")


# -- the weight gradient ---------------------------------------------------------------------------

def weight_grad(x, dy, geo: ConvGeometry, name: str = "dw"):
    """dW (O, Cg, *K), plain, of the conv ``geo`` from its input ``x`` as it read it (blocked
    by geo.ib, or plain) and dy blocked by geo.ob: a reduction stage ``dw`` over (n, *out)
    writing (O/ob, Cg, *K, ob), and ``dw_out`` unblocking it."""
    nd = len(geo.kernel)
    read = padded_input(x, geo)
    rn = te.reduce_axis((0, x.shape[0]), name="rn")
    rs = [te.reduce_axis((0, s), name=f"rs{i}") for i, s in enumerate(geo.out_spatial)]
    cg = geo.cin // geo.groups
    per_group = geo.group_out_blocks

    def compute(ob, c, *rest):
        k, j = rest[:nd], rest[nd]
        ch = c if geo.groups == 1 else (ob // per_group) * cg + c
        src = [o * s + kk * d for o, s, kk, d in zip(rs, geo.stride, k, geo.dilation)]
        block, lane = (ch, 0) if geo.in_plain else (ch // geo.ib, ch % geo.ib)
        return te.sum(dy[(rn, ob, *rs, j)] * read(rn, block, src, lane), axis=[rn, *rs])

    acc = te.compute((geo.out_blocks, cg, *geo.kernel, geo.ob), compute, name=name)
    ob = geo.ob
    return te.compute((geo.cout, cg, *geo.kernel),
                      lambda o, c, *k: acc[(o // ob, c, *k, o % ob)], name=f"{name}_out")


def depthwise_weight_grad(x, dy, geo: ConvGeometry, name: str = "dw"):
    """dW (C, 1, *K) of a depthwise conv, x and dy both blocked by geo.ob: vectors of channels
    multiplied lane by lane."""
    nd = len(geo.kernel)
    read = padded_input(x, geo)
    rn = te.reduce_axis((0, x.shape[0]), name="rn")
    rs = [te.reduce_axis((0, s), name=f"rs{i}") for i, s in enumerate(geo.out_spatial)]

    def compute(cb, _z, *rest):
        k, j = rest[:nd], rest[nd]
        src = [o * s + kk * d for o, s, kk, d in zip(rs, geo.stride, k, geo.dilation)]
        return te.sum(dy[(rn, cb, *rs, j)] * read(rn, cb, src, j), axis=[rn, *rs])

    b = geo.ob
    acc = te.compute((geo.out_blocks, 1, *geo.kernel, b), compute, name=name)
    return te.compute((geo.cout, 1, *geo.kernel),
                      lambda c, z, *k: acc[(c // b, z, *k, c % b)], name=f"{name}_out")


@dataclass(frozen=True)
class WeightGradTile:
    """``ro`` output channel blocks x ``rc`` input channels x ``rkw`` kernel columns of
    accumulators in vector registers; each task owns ``ro`` output blocks by ``ct`` input
    channels (by one kernel row with ``split_rows``) and reduces ``rh`` output rows at a time
    over each register tile."""

    ro: int
    rc: int
    rkw: int
    ct: int
    rh: int = 1
    split_rows: bool = False


def choose_weight_grad_tile(geo: ConvGeometry, registers: int = 32,
                            depthwise: bool = False) -> WeightGradTile:
    """The most accumulators (at most 16) that divide their axes, then the fewest loads per
    FMA; enough output rows per sweep that loading and storing the sums is a small part of it;
    and the kernel rows split over the tasks when there are too few of them."""
    cg = geo.cin // geo.groups
    kw = geo.kernel[-1]
    if depthwise:
        ro_choices, ct = [1], 1
    else:
        ro_choices = divisors(geo.group_out_blocks if geo.groups > 1 else geo.out_blocks)
        block = geo.ib if not geo.in_plain else geo.ob  # one vector of input channels
        ct = max(d for d in divisors(cg) if d <= block)
    ro, rc, rkw = best_register_tile((((ro, rc, rkw), ro * rc * rkw, ro + rc * rkw)
                                      for ro in ro_choices
                                      for rc in (divisors(ct) if not depthwise else [1])
                                      for rkw in divisors(kw)
                                      if ro * rc * rkw <= MAX_ACCUMULATORS
                                      and ro * rc * rkw + ro + 1 <= registers),
                                     default=(1, 1, 1))
    width = geo.out_spatial[-1]
    rows = geo.out_rows
    rh = min((d for d in divisors(rows) if d * width >= MIN_INNER_STEPS), default=rows)
    tasks = geo.out_blocks // ro * (cg // ct)
    split_rows = tasks < MIN_TASKS and len(geo.kernel) > 1 and geo.kernel[0] > 1
    return WeightGradTile(ro, rc, rkw, ct, rh, split_rows)


def schedule_weight_grad(func, geo: ConvGeometry, tile: WeightGradTile | None = None,
                         registers: int = 32, depthwise: bool = False):
    """Parallel over (output blocks, input channel chunks[, kernel rows]); per task, for each
    image and chunk of output rows: each register tile of sums swept over those rows."""
    from tvm import s_tir

    tile = tile or choose_weight_grad_tile(geo, registers, depthwise)
    nd = len(geo.kernel)
    sch = s_tir.Schedule(func)
    acc, out = sch.get_sblock("dw"), sch.get_sblock("dw_out")
    loops = sch.get_loops(acc)
    ob, c, ks, j = loops[0], loops[1], loops[2:2 + nd], loops[2 + nd]
    n, rs = loops[3 + nd], loops[4 + nd:]
    ob_o, ob_i = sch.split(ob, [None, tile.ro])
    c_o, c_m, c_i = sch.split(c, [None, tile.ct // tile.rc, tile.rc])
    kw_o, kw_i = sch.split(ks[-1], [None, tile.rkw])
    rows = []
    if nd > 1:
        oh_o, oh_i = sch.split(rs[0], [None, tile.rh])
        rows = [oh_o], [oh_i, *rs[1:-1]]
    outer_rows, inner_rows = rows if rows else ([], [])
    k_rows = list(ks[:-1])
    inner = [*inner_rows, rs[-1], ob_i, c_i, kw_i, j]
    if tile.split_rows:
        sch.reorder(ob_o, c_o, *k_rows, n, *outer_rows, c_m, kw_o, *inner)
        par = sch.fuse(ob_o, c_o, *k_rows)
    else:
        sch.reorder(ob_o, c_o, n, *outer_rows, c_m, *k_rows, kw_o, *inner)
        par = sch.fuse(ob_o, c_o)
    batch = static_extent(sch, n)
    macs = geo.flops() // 2
    if batch is None or batch * macs >= MIN_PARALLEL_MACS:
        sch.parallel(par)
    sch.reverse_compute_at(out, par)
    tile_in_registers(sch, acc, [ob_i, c_i, kw_i], j, n)
    pad = pad_stage(sch)
    if pad is not None:
        sch.compute_at(pad, outer_rows[0] if outer_rows else n)
        if geo.ib > 1:
            sch.vectorize(sch.get_loops(pad)[-1])
    return scheduled(sch)

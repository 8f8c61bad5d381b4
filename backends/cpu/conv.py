"""Convolution in the blocked layout NC[x]c, with its epilogue, as one scheduled kernel.

Data is (N, C/b, *spatial, b): the innermost axis holds ``b`` channels, one SIMD vector. The
weights are packed once at load time to (O/ob, Cg/ib, *K, ib, ob) (``blocked_oihw``), so the
innermost loop multiplies one broadcast input value by one vector of ``ob`` output channels and
accumulates into a register tile of ``ro`` channel blocks x ``rw`` output columns. The epilogue
(bias, batch-norm scale and shift, residual add, activation) runs on that tile while it is still
in registers.

A plain (N, C, *spatial) input is read as if its block were 1, so the first conv of a network
takes the model's input as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tvm import te, tirx

from cnncompiler.layers.fused import apply_epilogue

from .blocking import ceil_div
from .schedules import (MIN_PARALLEL_MACS, pad_stage, scheduled, static_extent,
                        tile_with_epilogue)
from .vector_math import CPU_MATH

FLOAT = "float32"
MAX_ACCUMULATORS = 16  # vector registers a tile may use for accumulators (of 32 with AVX-512)
# A weight vector costs two broadcast inputs in the register tile rule: a task's weights (ro
# blocks by every input channel and tap) live in L2 where its input rows stay in L1. Counted
# as one, the rule took 8 x 2 tiles (16 accumulators) over 2 x 7 (14) on 14-wide outputs, which
# measured 1.2x to 1.45x slower (GFLOP/s, 2 threads, batch 1: 512->512 1x1 at 14, 196 / 248;
# 3x3 256->256 at 14, 215 / 275; 3x3 stride 2 128->256 to 14, 204 / 254; batch 8 3x3 512->512
# at 14, 188 / 271); 4 x 4 and 2 x 8 stay level with it where they exist.
WEIGHT_LOAD_COST = 2
# A chunk of weights, or a task's output rows, kept in L1; a task whose weights outgrow one
# chunk reads them in chunks. Chunking from 256 KiB of task weights instead left every layer
# between the two 3% to 14% slower (GFLOP/s, 2 threads, batch 1 / 8, each kernel alone:
# 1x1 512->512 at 14 300 / 303 -> 318 / 321, 1x1 1024->1024 at 7 331 / 291 -> 348 / 303,
# 1x1 256->256 at 28 328 / 313 -> 354 / 325, 3x3 64->64 at 56 312 / 292 -> 348 / 325,
# 3x3 stride 2 128->256 to 14 290 / 267 -> 322 / 286; the TDNN's 1-D 512->512 dilated frame
# convs 1.11 / 8.52 ms -> 0.99 / 7.45); none with a blocked input measured slower.
CHUNK_BYTES = 32 << 10
# An input in plain layout (a network's first conv: 3 colour channels, 30 filterbank features)
# is chunked a channel or a few at a time, so every chunk rewrites the task's outputs: ResNet's
# 7x7 stem ran 8% to 11% slower chunked from 32 KiB of weights (batch 1 / 8: 0.70 / 5.70 ms
# -> 0.75 / 6.36), the TDNN's first frame conv 12%. It keeps the L2 budget it had.
PLAIN_INPUT_WEIGHT_BUDGET = 256 << 10
# One image's output map of at most SMALL_MAP positions (ResNet's layer4 at 7 x 7) gives each
# weight chunk few outputs to pass over, and each pass reloads the task's accumulators and
# pads its input chunk again: at batch 1 its chunks may grow to SMALL_MAP_CHUNK_BYTES, two input
# blocks of a 3x3 conv's weights (2 x 18 KiB) instead of one. Interleaved, whole networks:
# ResNet-18 ImageNet batch 1 0.95 of the time, GoogLeNet batch 1 0.98; batch 8 and ResNet
# CIFAR (4 x 4 maps) level within noise. Alone with caches flushed, 3x3 512->512 at 7: 0.612 ms
# against 0.651.
SMALL_MAP = 64
SMALL_MAP_CHUNK_BYTES = 40 << 10


@dataclass(frozen=True)
class ConvGeometry:
    """What the blocked conv kernel needs to know about one conv layer.

    ``ib`` is the input's channel block (1 when ``in_plain``: the input is (N, C, *spatial));
    ``ob`` the output's. Channel counts are the logical ones; blocked values are padded with
    zero channels to a whole number of blocks.
    """

    cin: int
    cout: int
    groups: int
    kernel: tuple
    stride: tuple
    dilation: tuple
    pads: tuple
    in_spatial: tuple
    out_spatial: tuple
    ib: int
    ob: int
    in_plain: bool = False

    @property
    def in_blocks(self) -> int:
        return self.cin if self.in_plain else ceil_div(self.cin, self.ib)

    @property
    def out_rows(self) -> int:
        """Output rows of a 2-D conv (its first spatial axis); 1 for a 1-D conv."""
        return self.out_spatial[0] if len(self.out_spatial) > 1 else 1

    @property
    def out_blocks(self) -> int:
        return ceil_div(self.cout, self.ob)

    @property
    def group_in_blocks(self) -> int:
        """Input channel blocks each output block reads."""
        if self.groups == 1:
            return self.in_blocks
        return self.cin // self.groups // self.ib

    @property
    def group_out_blocks(self) -> int:
        return self.cout // self.groups // self.ob

    @property
    def weight_shape(self) -> tuple:
        return (self.out_blocks, self.group_in_blocks, *self.kernel, self.ib, self.ob)

    def supported(self) -> str | None:
        """Why the blocked kernel cannot compute this conv, or None when it can."""
        if self.groups == 1:
            return None
        cg, og = self.cin // self.groups, self.cout // self.groups
        if self.in_plain:
            return None if og % self.ob == 0 else \
                f"{og} output channels per group is not a multiple of the block {self.ob}"
        if cg % self.ib or og % self.ob:
            return (f"{cg} input and {og} output channels per group are not multiples of the "
                    f"blocks {self.ib} and {self.ob}")
        return None

    def flops(self) -> int:
        return 2 * self.cout * math.prod(self.out_spatial) * (self.cin // self.groups) * \
            math.prod(self.kernel)


def padded_input(x, geo: ConvGeometry):
    """The input, zero-padded, as (N, C/ib, *padded spatial, ib) (a stage of the kernel)."""
    nd = len(geo.kernel)
    if geo.in_plain:
        read = lambda n, c, sp, i: x[(n, c, *sp)]  # noqa: E731 (block 1)
    else:
        read = lambda n, c, sp, i: x[(n, c, *sp, i)]  # noqa: E731
    if all(tuple(p) == (0, 0) for p in geo.pads):
        return read
    sizes = geo.in_spatial
    shape = (x.shape[0], geo.in_blocks, *[s + b + a for s, (b, a) in zip(sizes, geo.pads)], geo.ib)

    def compute(n, c, *rest):
        sp, i = rest[:nd], rest[nd]
        conds = []
        for j, s, (b, a) in zip(sp, sizes, geo.pads):
            if b:
                conds.append(j >= b)
            if a:
                conds.append(j < s + b)
        src = [j - b for j, (b, _) in zip(sp, geo.pads)]
        return tirx.if_then_else(tirx.all(*conds), read(n, c, src, i), tirx.const(0.0, FLOAT))

    xp = te.compute(shape, compute, name="pad")
    return lambda n, c, sp, i: xp[(n, c, *sp, i)]


def conv_blocked(x, weight, bias, geo: ConvGeometry, fused=None, epilogue_args=None,
                 residual=None):
    """(N, C/ib, *S, ib) or plain (N, C, *S) -> (N, O/ob, *OS, ob), then the epilogue of
    ``fused`` (the Fused layer, or None).

    Epilogue steps read their per-channel arguments (``epilogue_args['2.scale']``) as
    (O/ob, ob); an add reads ``residual``, blocked like the output.
    """
    nd = len(geo.kernel)
    read = padded_input(x, geo)
    ico = te.reduce_axis((0, geo.group_in_blocks), name="ico")
    rk = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(geo.kernel)]
    ici = te.reduce_axis((0, geo.ib), name="ici")
    per_group = geo.group_out_blocks

    def block_of(oc):
        return ico if geo.groups == 1 else (oc // per_group) * geo.group_in_blocks + ico

    def compute(n, oc, *rest):
        osp, j = rest[:nd], rest[nd]
        src = [o * s + r * d for o, s, r, d in zip(osp, geo.stride, rk, geo.dilation)]
        return te.sum(read(n, block_of(oc), src, ici) * weight[(oc, ico, *rk, ici, j)],
                      axis=[ico, *rk, ici])

    out_shape = (x.shape[0], geo.out_blocks, *geo.out_spatial, geo.ob)
    conv = te.compute(out_shape, compute, name="conv")
    return blocked_epilogue(conv, bias, fused, epilogue_args, residual, channels=geo.cout)


def blocked_epilogue(y, bias, fused, epilogue_args, residual, name="epilogue",
                     channels: int | None = None):
    """Bias, then ``fused``'s epilogue (scale-shift, residual add, activations) on a blocked
    (N, B, *S, b) value; always a stage of its own, so a schedule can run it on a register
    tile.

    With ``channels``, the padding channels of a last, partial block are written as zeros.
    NOTE: a conv computes them as 0 * input, which is NaN where an input is infinite, and the
    next conv's zero weights would carry that NaN into every real channel (where PyTorch has
    the infinity)."""
    epilogue_args = epilogue_args or {}
    block = int(y.shape[-1])
    partial = channels is not None and channels % block != 0

    def compute(n, c, *rest):
        j = rest[-1]
        v = y[(n, c, *rest)]
        if bias is not None:
            v = v + bias[c, j]
        if fused is not None:
            v = apply_epilogue(fused, v, CPU_MATH, lambda arg: epilogue_args[arg][c, j],
                               residual[(n, c, *rest)] if fused.has_residual else None)
        if partial:
            v = tirx.Select(c * block + j < channels, v, tirx.const(0.0, FLOAT))
        return v

    return te.compute(y.shape, compute, name=name)


# -- the schedule -------------------------------------------------------------------------------

def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is at most ``at_most`` (1 at least)."""
    return max(d for d in divisors(n) if d <= at_most or d == 1)


@dataclass(frozen=True)
class ConvTile:
    """How the conv kernel is tiled.

    ``ro`` output channel blocks x ``rw`` output columns of accumulators in vector registers;
    each parallel task computes ``rh`` output rows of ``ro`` channel blocks. ``ci`` input
    channel blocks are reduced at a time: when it is less than all of them, the task sweeps all
    its rows for one chunk of input channels before the next, so each weight is loaded from
    memory once per task instead of once per row (what a layer with many channels and few
    output columns needs), at the price of keeping the task's outputs in a buffer.
    """

    ro: int
    rw: int
    rh: int = 1
    ci: int | None = None   # None: every input block at once

    def chunked(self, geo: ConvGeometry) -> bool:
        return self.ci is not None and self.ci < geo.group_in_blocks or self.rh > 1


def vector_registers(lanes: int) -> int:
    """Vector registers of the target: 32 with AVX-512 (16 float32 lanes), else 16."""
    return 32 if lanes >= 16 else 16


def register_tile(widths, blocks: int, registers: int) -> tuple[int, int]:
    """(ro, rw): ``ro`` output channel blocks (a divisor of ``blocks``) x ``rw`` columns (one
    of ``widths``) of accumulators (at most 16), with registers left for ``ro`` weight vectors
    and one broadcast input: the fewest loads per FMA, a weight vector counted as
    ``WEIGHT_LOAD_COST`` broadcasts, then the most accumulators."""
    max_acc = min(MAX_ACCUMULATORS, registers - 4)
    tiles = [((ro, rw), ro * rw, WEIGHT_LOAD_COST * ro + rw)
             for rw in widths
             for ro in divisors(blocks)
             if ro * rw + ro + 1 <= registers and (ro * rw <= max_acc or ro == 1)]
    if not tiles:
        return 1, 1
    return min(tiles, key=lambda t: (t[2] / t[1], -t[1]))[0]


def choose_tile(geo: ConvGeometry, registers: int = 32,
                chunk_bytes: int = CHUNK_BYTES) -> ConvTile:
    """A tile that needs no tuning.

    The register tile (ro, rw) divides the output channel blocks and the output width (no tail
    loops), leaves registers for ``ro`` weight vectors and one broadcast input, has at most 16
    accumulators (which measured best with AVX-512's 32 registers), and the fewest loads per
    FMA, (2 ro + rw) / (ro * rw) (``register_tile``). Widths are tiled by at most 8 columns, a
    narrow width that 4..8 does not divide by up to 16. Where one task's weights (``ro`` blocks
    by every input channel) outgrow one L1 chunk (``CHUNK_BYTES``; a plain-layout input: the L2
    budget), the reduction is chunked so that each chunk is read from L1 for several output rows;
    a chunk's input blocks take at most ``chunk_bytes`` of weights.
    """
    width = geo.out_spatial[-1]
    blocks = geo.out_blocks if geo.groups == 1 else geo.group_out_blocks
    widest = 16 if largest_divisor(width, 8) < 4 else 8
    ro, rw = register_tile([d for d in divisors(width) if d <= widest], blocks, registers)
    kernel = math.prod(geo.kernel)
    vector_bytes = geo.ob * 4
    task_weights = ro * vector_bytes * geo.group_in_blocks * geo.ib * kernel
    if task_weights <= (PLAIN_INPUT_WEIGHT_BUDGET if geo.in_plain else CHUNK_BYTES):
        return ConvTile(ro, rw)
    row_bytes = ro * vector_bytes * width
    rows = geo.out_rows
    rh = max(d for d in divisors(rows) if d * row_bytes <= CHUNK_BYTES or d == 1)
    chunk = ro * vector_bytes * geo.ib * kernel
    ci = max(d for d in divisors(geo.group_in_blocks) if d * chunk <= chunk_bytes or d == 1)
    return ConvTile(ro, rw, rh, ci)


def images_outer(geo: ConvGeometry, batch: int | None) -> bool:
    """Are the conv's parallel tasks split by image and row first (each thread takes its share
    of the images, every output channel), rather than by output channel blocks first? By
    image where the layer's weights are no bigger than its input: the threads split the
    activations as the window and Winograd kernels do, so each finds in its own L2 what it
    wrote in the layer before; where the weights are the bigger read (ResNet's last stages,
    AlexNet's 3x3 convs) each thread keeps its share of them instead. Whole networks against
    output channels first everywhere (interleaved, 2 threads): MobileNet-v1 at batch 8 0.925,
    MobileNet-v1 CIFAR at 64 0.91, the TDNN at 64 0.92, GoogLeNet at 8 0.96, the rest (and
    every batch 1) within 1%; by image everywhere, ResNet-18 CIFAR at 64 and AlexNet at 8
    took 1.07. ``batch`` None (the any-batch function): one image counts."""
    weights = geo.cout * (geo.cin // geo.groups) * math.prod(geo.kernel)
    return weights <= (batch or 1) * geo.cin * math.prod(geo.in_spatial)


def rows_split_by_image(tile: ConvTile, geo: ConvGeometry, batch: int | None) -> ConvTile:
    """``tile``, its row groups halved where tasks go by image and row first
    (``images_outer``) but one image's rows would be one group: the task split would fall back
    to output channels, and each thread read all of an input half written by the other.
    GoogLeNet at batch 1 (its 1x1 convs at 14 x 14 sweep all 14 rows per chunk of weights):
    0.977 of the time, interleaved."""
    rows = geo.out_rows
    if tile.rh < rows or batch != 1 or not images_outer(geo, batch):
        return tile
    return replace(tile, rh=largest_divisor(rows, rows // 2))


def parallel_tasks(tile: ConvTile, geo: ConvGeometry, batch: int) -> int:
    """The parallel tasks of ``schedule_conv`` with ``tile`` at ``batch``: images x row groups
    (every row where the reduction is not chunked) x groups of ``ro`` output channel blocks."""
    rows = geo.out_rows // tile.rh if tile.chunked(geo) else geo.out_rows
    return batch * rows * (geo.out_blocks // tile.ro)


def even_tasks(tile: ConvTile, geo: ConvGeometry, batch: int | None) -> ConvTile:
    """``tile``, with fewer rows a task where that makes the tasks an even number: the threads
    split a parallel loop statically, so 7 tasks on two threads take the time of 8. GoogLeNet's
    1x1 convs at 28 x 28 (28 rows in chunks of 4: 7 tasks, 14 in chunks of 2) at batch 1:
    0.997 of the whole run's time (interleaved), 0.985 with the Winograd kernels' even splits
    (``winograd.channel_task_rows``, ``winograd._even_input_tasks``)."""
    if (batch is None or not tile.chunked(geo) or not runs_parallel(geo, batch)
            or parallel_tasks(tile, geo, batch) % 2 == 0):
        return tile
    evens = [d for d in divisors(geo.out_rows) if d < tile.rh
             and parallel_tasks(replace(tile, rh=d), geo, batch) % 2 == 0]
    return replace(tile, rh=max(evens)) if evens else tile


def default_tile(geo: ConvGeometry, registers: int, batch: int | None) -> ConvTile:
    """The tile ``schedule_conv`` uses unless given another: ``choose_tile``'s (its weight
    chunks up to SMALL_MAP_CHUNK_BYTES for a small map at batch 1), its rows split for
    ``batch`` (``rows_split_by_image``) and for an even number of tasks (``even_tasks``)."""
    small = batch == 1 and math.prod(geo.out_spatial) <= SMALL_MAP
    tile = choose_tile(geo, registers, SMALL_MAP_CHUNK_BYTES if small else CHUNK_BYTES)
    return even_tasks(rows_split_by_image(tile, geo, batch), geo, batch)


def runs_parallel(geo: ConvGeometry, batch: int | None) -> bool:
    """Are the conv's tasks split between the threads? From MIN_PARALLEL_MACS multiply-adds
    a call on (any batch: always)."""
    return batch is None or batch * geo.flops() // 2 >= MIN_PARALLEL_MACS


def schedule_conv(func, geo: ConvGeometry, tile: ConvTile | None = None, registers: int = 32):
    """Register-tiled, vectorized, parallel schedule of :func:`conv_blocked`'s PrimFunc."""
    from tvm import s_tir

    nd = len(geo.kernel)
    sch = s_tir.Schedule(func)
    conv, epi = sch.get_sblock("conv"), sch.get_sblock("epilogue")
    loops = sch.get_loops(conv)
    n, oc, osp, j = loops[0], loops[1], loops[2:2 + nd], loops[2 + nd]
    ico, rk, ici = loops[3 + nd], loops[4 + nd:4 + 2 * nd], loops[4 + 2 * nd]
    batch = static_extent(sch, n)
    tile = tile or default_tile(geo, registers, batch)
    oc_o, oc_i = sch.split(oc, [None, tile.ro])
    w_o, w_i = sch.split(osp[-1], [None, tile.rw])
    rows = list(osp[:-1])
    if tile.chunked(geo):
        h_i = []
        if rows:
            rows[0], h = sch.split(rows[0], [None, tile.rh])
            h_i = [h]
        ico_o, ico_i = sch.split(ico, [None, tile.ci or geo.group_in_blocks])
        outer = [n, *rows, oc_o] if images_outer(geo, batch) else [oc_o, n, *rows]
        sch.reorder(*outer, ico_o, *h_i, w_o, ico_i, *rk, ici, oc_i, w_i, j)
        par = sch.fuse(*outer)
        reduce_at, epilogue_at, pad_at = ico_o, par, ico_o
    else:
        outer = [n, *rows, oc_o] if images_outer(geo, batch) else [oc_o, n, *rows]
        sch.reorder(*outer, w_o, ico, *rk, ici, oc_i, w_i, j)
        par = sch.fuse(*outer)
        reduce_at, epilogue_at, pad_at = ico, w_o, par
    if runs_parallel(geo, batch):
        sch.parallel(par)
    tile_with_epilogue(sch, conv, epi, epilogue_at, [oc_i, w_i], j, reduce_at)
    pad_input_at(sch, pad_at, geo)
    return scheduled(sch)


def pad_input_at(sch, loop, geo: ConvGeometry) -> None:
    """The conv's padded input (its ``pad`` stage, where it has one) made at ``loop``, for
    the part the loop's iteration reads; vectorized over a blocked input's lanes."""
    pad = pad_stage(sch)
    if pad is not None:
        sch.compute_at(pad, loop)
        if geo.ib > 1:
            sch.vectorize(sch.get_loops(pad)[-1])

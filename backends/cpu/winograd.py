"""Winograd convolution F(m x m, 3 x 3) in the blocked layout NC[b]c, with its epilogue, as one
scheduled kernel, for 3x3 convs of stride 1, dilation 1, one group.

The output is cut in tiles of m x m pixels (the last row and column of tiles may overhang the
output: the overhang is computed from zero padding and never written). With ``alpha = m + 2``
and ``E = alpha^2``, each parallel task (a band of tile rows) runs:

- input transform: ``V[e, tile, c] = (B^T d B)[e]`` of each tile's (alpha x alpha) input
  patch, one vector of ``ib`` channels at a time (zero padding read as zeros);
- then for each ``ro`` output channel blocks, the E matrix products
  ``M[e, tile, o] = sum_c V[e, tile, c] U[e, o, c]``, with ``U`` the weights transformed once
  at load time (layout ``winograd:m:ib:ob``, graph/winograd.py), register-tiled as the direct
  conv: ``ro`` output channel blocks x ``rt`` tiles; and right after them the output transform
  ``A^T M A`` fused into the epilogue (bias, batch norm, residual, activation): each output
  pixel computed from its tile's E products and written once.

``V`` (the band's) and ``M`` (the band's, for ``ro`` channel blocks) exist only per task, so
they stay in cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tvm import te, tirx

from cnncompiler.graph.winograd import TILES, matrices

from .blocking import ceil_div
from .conv import ConvGeometry, blocked_epilogue, divisors, images_outer, register_tile
from .schedules import MIN_PARALLEL_MACS, scheduled, static_extent

FLOAT = "float32"
# V and M of one task (a band of tile rows), kept within L2 and counted in the model's peak
# memory once per thread. 256 KiB against 384: as fast (F(4), batch 1, ms: 64->64 at 32x32
# 0.215 / 0.23, 128->128 at 16 0.40 / 0.45, 64->64 at 56 0.80 / 0.95) with less scratch.
TASK_BYTES = 256 << 10
# Transformed weights that bands of tile rows would read again, from which the tasks split
# the output channels instead (``WinogradTile.by_channels``): below it the split measured no
# faster and its scratch (the whole input's V) only raised the peak. ResNet-18 CIFAR's
# 128->128 at 16 x 16 (two bands, 2.25 MiB read again) split by channels: 0.99 of the time at
# batch 1 (interleaved), 586 KiB of scratch against 441, a planned peak of 1.07 MiB against
# 0.93; GoogLeNet's 3x3 convs (7 bands, 7 to 20 MiB read again) and VGG's (96 MiB and
# more) gain 12 and 21% of the whole run at batch 1.
BY_CHANNELS_SAVING = 3 << 20


def eligible(geo: ConvGeometry) -> str | None:
    """Why Winograd cannot compute this conv, or None when it can."""
    if geo.kernel != (3, 3):
        return f"kernel {geo.kernel} is not 3x3"
    if geo.stride != (1, 1) or geo.dilation != (1, 1):
        return "strided or dilated"
    if geo.groups != 1:
        return "grouped"
    if geo.in_plain:
        return "reads the plain input"
    return None


# The rule below, from benchmarks/winograd_layers.py on this project's machine (2 threads,
# AVX-512, batch 1, bias epilogue, median of 5 interleaved rounds; time relative to the
# direct kernel, F(2) / F(4); t2, t4: tiles per image):
#   64->64 at 32x32: 0.46 / 0.32    128->128 at 16: 0.61 / 0.59 (t4 16)
#   256->256 at 8: 0.96 (t2 16) / 1.39 (t4 4)     512->512 at 4: 1.92 / 4.20
#   512->512 at 7: 1.08 (t2 16) / 1.68 (t4 4)
#   64->64 at 56: 0.54 / 0.41       128->128 at 28: 0.69 / 0.54
#   256->256 at 14: 0.76 / 0.55 (t4 16)           512->512 at 14: 0.54 / 0.61 (t4 16)
#   64->128 at 112: 0.51 / 0.33     128->256 at 56: 0.58 / 0.56
#   256->512 at 28: 0.91 / 0.59 (t4 49)           512->512 at 28: 0.95 / 0.58 (t4 49)
#   32->32 at 16: 0.72 / 0.50       (16->16 at 32: 0.96 / 0.60, in an earlier run)
# Winograd loses where a few tiles share big transformed weights (each task reads all of
# them: E C O floats): F(4) wants 16 tiles, and 32 from C O = 256 x 256 on; F(2) wants 32.
# Below 32 channels the gain is under 0.04 ms a layer; such convs stay direct.
# Re-measured after the direct kernel's 2 x 7 register tile (same script, 9 rounds): 256->256
# at 14 (16 F(4) tiles) F(2) 0.95 / F(4) 1.00 at batch 1, 0.77 / 0.92 at batch 8, so F(4)
# wants 32 tiles at 256 x 256 too (it did only beyond); GoogLeNet's 160->320 at 14 keeps F(4),
# 0.75 / 0.65 (batch 8 0.76 / 0.65), and 144->288 0.66 / 0.60; 128->128 at 16 F(4), 0.52;
# 512->512 at 14 0.90 / 0.91, 256->512 at 28 0.67 / 0.57, 128->128 at 28 0.58 / 0.53, 64->64
# at 56 0.61 / 0.38, 256->256 at 8 0.87 / 1.34, 512->512 at 7 1.56 / 1.62 (batch 8 1.68 / 1.68).
MIN_CHANNELS = 32
# tiles per image (batch 1) for the products to pay off. F(2) wanted 32 while every band of
# tile rows read all the transformed weights; with the weights read once per image
# (``WinogradTile.by_channels``) it pays from 16 on (ResNet's 256->256 at 8 x 8, 512->512 at
# 7 x 7): whole ResNet-18 CIFAR 0.96 / 0.90 of the time at batch 1 / 64 (interleaved),
# ResNet-18 ImageNet 0.98 / 0.97 at batch 1 / 8, GoogLeNet 1.00 / 0.99, a ResNet-18 CIFAR
# training step at batch 32 0.93; 4 tiles (512->512 at 4 x 4) took 1.13 / 1.03.
MIN_TILES = {4: 16, 2: 16}
BIG_WEIGHTS = 256 * 256            # C x O from which F(4) wants twice the tiles
# F(4) only where it computes at most this share of F(2)'s products (9/16 where its tiles fit
# the output): where they overhang it (14 x 14: 16 tiles cover 16 x 16, 0.73 of F(2)'s 49)
# most of the gain is gone, and its 4 tile columns allow a smaller register tile than F(2)'s 7.
# GoogLeNet's 3x3 convs at 14 (F(4) by the tile counts above) with F(2): whole GoogLeNet 0.95
# / 0.97 of the time at batch 1 / 8 (interleaved); ResNet-18 CIFAR's 128->128 at 16 with F(2)
# instead of F(4) took 1.00 / 1.04 at batch 1 / 64, so F(4) keeps the maps it fits.
# Where the weights outweigh the input the kernel reads the transformed weights once per
# image (``WinogradTile.by_channels``): VGG's 512->512 convs at 14 x 14 (49 F(2) tiles, 16.8
# MB of transformed weights), direct while every band of tile rows read all of those, take
# F(2) since: whole VGG-16-BN 0.92 of the time at batch 1 and 8.
F4_PRODUCT_SHARE = 2 / 3


def choose_conv_algorithm(geo: ConvGeometry) -> int:
    """Winograd's output tile m for this conv (4 or 2), or 0 for the direct kernel: the
    measured rule above, for convs Winograd can compute (``eligible``)."""
    if eligible(geo) is not None or min(geo.cin, geo.cout) < MIN_CHANNELS:
        return 0
    big = geo.cin * geo.cout >= BIG_WEIGHTS
    if (math.prod(tiles(geo, 4)) >= MIN_TILES[4] * (2 if big else 1)
            and products(geo, 4) <= F4_PRODUCT_SHARE * products(geo, 2)):
        return 4
    if math.prod(tiles(geo, 2)) >= MIN_TILES[2]:
        return 2
    return 0


def products(geo: ConvGeometry, m: int) -> int:
    """Element products per channel pair and image of the Winograd algorithm F(m x m, 3x3)."""
    return (m + 2) ** 2 * math.prod(tiles(geo, m))


def tiles(geo: ConvGeometry, m: int) -> tuple[int, int]:
    """Tile rows and columns of the output."""
    return ceil_div(geo.out_spatial[0], m), ceil_div(geo.out_spatial[1], m)


def _pick(index, values):
    """``values[index]`` for a loop variable ``index`` the schedule unrolls: a Select chain
    that folds to one branch once ``index`` is a constant."""
    expr = values[-1]
    for k in range(len(values) - 2, -1, -1):
        expr = tirx.Select(index == k, values[k], expr)
    return expr


def _linear(coefs, terms):
    """sum coefs[i] * terms[i] over the nonzero coefficients, without multiplying by +-1."""
    out = None
    for c, t in zip(coefs, terms):
        if c == 0:
            continue
        term = t if abs(c) == 1 else t * tirx.const(abs(float(c)), FLOAT)
        if out is None:
            out = term if c > 0 else -term
        else:
            out = out + term if c > 0 else out - term
    return out if out is not None else tirx.const(0.0, FLOAT)


def _rows(mat, index, read):
    """(mat X)[index] of the column ``read(r)`` for a loop variable ``index`` the schedule
    unrolls: one row of a transform, its zero coefficients skipped."""
    terms = [read(r) for r in range(mat.shape[1])]
    return _pick(index, [_linear(row, terms) for row in mat])


def winograd_conv(x, weight, bias, geo: ConvGeometry, fused=None, epilogue_args=None,
                  residual=None, *, m: int):
    """(N, C/ib, H, W, ib) -> (N, O/ob, OH, OW, ob) then the epilogue of ``fused``, as
    ``conv.conv_blocked``; ``weight`` is ``(alpha^2, O/ob, C/ib, ib, ob)`` (layout
    ``winograd:m:ib:ob``)."""
    bt, _, at = matrices(m)
    alpha = m + 2
    th, tw = tiles(geo, m)
    (pt, _), (pl, _) = geo.pads
    height, width = geo.in_spatial
    batch = x.shape[0]

    def read(n, cb, h, w, i):
        conds = []
        if pt:
            conds.append(h >= pt)
        if th * m + 2 > height + pt:
            conds.append(h < height + pt)
        if pl:
            conds.append(w >= pl)
        if tw * m + 2 > width + pl:
            conds.append(w < width + pl)
        if not conds:
            return x[n, cb, h, w, i]
        hh = tirx.max(tirx.min(h - pt, height - 1), 0)
        ww = tirx.max(tirx.min(w - pl, width - 1), 0)
        return tirx.if_then_else(tirx.all(*conds), x[n, cb, hh, ww, i], tirx.const(0.0, FLOAT))

    # every extent in the batch's integer type: a mix of int64 and int32 loops, once fused,
    # makes the bindings non-affine and the schedule fails
    def dims(*sizes):
        return [tirx.IntImm(index, s) if isinstance(s, int) else s for s in sizes]

    index = str(batch.ty) if hasattr(batch, "ty") else "int32"
    # B^T d B as two one-dimensional transforms: the columns of the patch, then its rows
    # (one expression per matrix row, where the 2-D form would need one per pair of rows)
    columns = te.compute(dims(alpha, batch, th, tw, alpha, geo.in_blocks, geo.ib),
                         lambda a, n, ty, tx, s, cb, i: _rows(
                             bt, a, lambda r: read(n, cb, ty * m + r, tx * m + s, i)),
                         name="winograd_input_columns")
    v = te.compute(dims(alpha * alpha, batch, th, tw, geo.in_blocks, geo.ib),
                   lambda e, n, ty, tx, cb, i: _rows(
                       bt, e % alpha, lambda s: columns[e // alpha, n, ty, tx, s, cb, i]),
                   name="winograd_input")
    cb = te.reduce_axis(dims(0, geo.in_blocks), name="cb")
    ci = te.reduce_axis(dims(0, geo.ib), name="ci")
    prod = te.compute(dims(alpha * alpha, batch, th, tw, geo.out_blocks, geo.ob),
                      lambda e, n, ty, tx, ob, j: te.sum(v[e, n, ty, tx, cb, ci] *
                                                         weight[e, ob, cb, ci, j], axis=[cb, ci]),
                      name="winograd_product")
    # A^T M A the same way: the m output rows of each tile, then each pixel of a row
    out_rows = te.compute(dims(batch, geo.out_blocks, th, tw, m, alpha, geo.ob),
                          lambda n, ob, ty, tx, a, e2, j: _rows(
                              at, a, lambda e1: prod[e1 * alpha + e2, n, ty, tx, ob, j]),
                          name="winograd_output_rows")
    y = te.compute(dims(batch, geo.out_blocks, *geo.out_spatial, geo.ob),
                   lambda n, ob, h, w, j: _rows(
                       at, w % m, lambda e2: out_rows[n, ob, h // m, w // m, h % m, e2, j]),
                   name="winograd_output")
    return blocked_epilogue(y, bias, fused, epilogue_args, residual, channels=geo.cout)


def winograd_weight(packed, m: int, name: str = "winograd_weight"):
    """Blocked 3x3 weights ``(O/ob, C/ib, 3, 3, ib, ob)`` (``train_conv.pack_weight``) as the
    Winograd kernel reads them, ``((m+2)^2, O/ob, C/ib, ib, ob)``: ``G g G^T`` of each filter,
    one vector of ``ob`` output channels at a time. For a training step, whose weights change
    every step; inference transforms its weights once, with numpy, when they are loaded."""
    _, g, _ = matrices(m)
    alpha = m + 2
    # the transform of position e = (a, b) is sum over (r, s) of G[a, r] G[b, s] g[r, s]
    coefficients = [np.outer(g[a], g[b]).ravel() for a in range(alpha) for b in range(alpha)]

    def compute(e, ob, cb, i, j):
        taps = [packed[ob, cb, r, s, i, j] for r in range(3) for s in range(3)]
        return _pick(e, [_linear(c, taps) for c in coefficients])

    blocks = (packed.shape[0], packed.shape[1], packed.shape[4], packed.shape[5])
    return te.compute((alpha * alpha, *blocks), compute, name=name)


def schedule_winograd_weight(func):
    """The packing inlined; parallel over channel blocks, the (m+2)^2 positions unrolled (each
    one's coefficients become constants), one vector of output channels."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint != "winograd_weight":
            sch.compute_inline(block)
    e, ob, cb, i, j = sch.get_loops(sch.get_sblock("winograd_weight"))
    sch.reorder(ob, cb, i, e, j)
    sch.parallel(sch.fuse(ob, cb))
    sch.unroll(e)
    sch.vectorize(j)
    return scheduled(sch)


# -- the schedule -------------------------------------------------------------------------------

@dataclass(frozen=True)
class WinogradTile:
    """``m``: the output tile; each parallel task computes ``rh`` rows of tiles, with ``ro``
    output channel blocks x ``rt`` tiles of accumulators in vector registers.

    ``by_channels``: the whole input is transformed first (its own parallel loop), and each
    task then computes ``ro`` output channel blocks of every tile (``rh`` is then every tile
    row): each task reads only its share of the transformed weights instead of all of them.
    """

    m: int
    ro: int
    rt: int
    rh: int
    by_channels: bool = False


def choose_winograd_tile(geo: ConvGeometry, m: int, registers: int = 32,
                         batch: int | None = None) -> WinogradTile:
    """A register tile as the direct conv's rule picks one (tiles for output columns), and
    the most tile rows per task whose V (and M of ``ro`` channel blocks) fit ``TASK_BYTES``,
    keeping at least two tasks for the two threads when there are two tile rows (``batch`` of
    None: any batch). Where the layer's weights outweigh its input (``conv.images_outer``, the
    direct kernel's rule), the batch is known and those bands of tile rows would read
    ``BY_CHANNELS_SAVING`` or more of transformed weights again, the tasks split the output
    channels instead (``by_channels``)."""
    th, tw = tiles(geo, m)
    ro, rt = register_tile([d for d in divisors(tw) if d <= 8], geo.out_blocks, registers)
    e = (m + 2) ** 2
    row_bytes = e * tw * (geo.in_blocks * geo.ib + ro * geo.ob) * 4
    fits = [d for d in divisors(th) if d * row_bytes <= TASK_BYTES or d == 1]
    if (batch or 1) == 1 and th > 1:
        fits = [d for d in fits if d < th] or [1]
    rh = max(fits)
    if batch is not None and not images_outer(geo, batch):
        weight_bytes = e * geo.in_blocks * geo.ib * geo.out_blocks * geo.ob * 4
        if batch * (ceil_div(th, rh) - 1) * weight_bytes >= BY_CHANNELS_SAVING:
            return WinogradTile(m, ro, rt, channel_task_rows(th, batch * geo.out_blocks // ro),
                                by_channels=True)
    return WinogradTile(m, ro, rt, rh)


def channel_task_rows(tile_rows: int, groups: int) -> int:
    """The tile rows of a task that computes a group of ``ro`` output channel blocks
    (``by_channels``): all of them, or one where the images x groups are an odd number. The
    threads split a parallel loop statically: 13 groups on two threads take the time of 14,
    13 x 7 tile rows that of 92 / 91. A thread's tasks still go through its groups in turn,
    each group's transformed weights read from L2 for each of its rows. GoogLeNet at batch 1
    (its 3x3 convs at 14 x 14 with 13, 7, 9 and 5 groups), with the even splits of the input
    transform and the direct conv: 0.985 of the time (interleaved; ResNet-18 and VGG-11 at
    batch 1 within 1%)."""
    return 1 if groups % 2 and tile_rows > 1 else tile_rows


def schedule_winograd(func, geo: ConvGeometry, m: int, registers: int = 32,
                      tile: WinogradTile | None = None):
    """Parallel bands of tile rows; in each, the input transform, the register-tiled
    products and the output transform with the epilogue, one after the other. With
    ``tile.by_channels``, the input transform of every tile first, then parallel groups of
    ``ro`` output channel blocks: GoogLeNet at batch 1, whose 3x3 convs at 14 x 14 read up to
    7.4 MB of transformed weights from memory in a run (two bands each read all of them),
    took 0.87-0.89 of the time (interleaved; 0.93 with each task transforming the input
    itself)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    # the epilogue drives: each task a band of whole tile rows of the output, every channel
    sch.compute_inline(sch.get_sblock("winograd_output"))
    epi = sch.get_sblock("epilogue")
    n, ob, h, w, j = sch.get_loops(epi)
    batch = static_extent(sch, n)
    tile = tile or choose_winograd_tile(geo, m, registers, batch)
    band, h_in = sch.split(h, [None, tile.rh * m])
    ob_o, w_o, hm, wm = split_tiles(sch, [n, band], ob, h_in, w, j, tile)
    transform_at(sch, "winograd_output_rows", w_o)
    if tile.by_channels:  # a thread's tasks: its groups of channel blocks, each row by row
        sch.reorder(ob_o, band)
    par = sch.fuse(*([n, ob_o, band] if tile.by_channels else [n, band]))
    parallel = products_run_parallel(geo, m, batch)
    if parallel:
        sch.parallel(par)
    schedule_band(sch, par if tile.by_channels else ob_o, hm, wm, j, tile)
    schedule_input_transform(sch, None if tile.by_channels else par, parallel)
    return scheduled(sch)


def products_run_parallel(geo: ConvGeometry, m: int, batch: int | None) -> bool:
    """Are the kernel's tasks split between the threads? From MIN_PARALLEL_MACS multiply-adds
    of its products a call on (any batch: always)."""
    flops = 2 * (m + 2) ** 2 * math.prod(tiles(geo, m)) * geo.cin * geo.cout
    return batch is None or batch * flops // 2 >= MIN_PARALLEL_MACS


def split_tiles(sch, outer, ob, rows, w, j, tile: WinogradTile):
    """The epilogue's loops over a band's ``rows`` (whole tile rows), the output's columns
    ``w`` and channel blocks ``ob`` in tiles: (``outer``, ob_o, ob_i, tile row, tile column,
    row in the tile, column in the tile, lanes) from the outermost; returns (ob_o, tile
    column, row and column in the tile)."""
    h_o, hm = sch.split(rows, [tile.rh, tile.m])
    w_o, wm = sch.split(w, [None, tile.m])
    ob_o, ob_i = sch.split(ob, [None, tile.ro])
    sch.reorder(*outer, ob_o, ob_i, h_o, w_o, hm, wm, j)
    return ob_o, w_o, hm, wm


def schedule_band(sch, gemm_at, hm, wm, j, tile: WinogradTile) -> None:
    """The output transform's pixels unrolled, and the products of the band for ``ro``
    output channel blocks computed at ``gemm_at``, just before their output transform:
    accumulated in registers, written back once per register tile."""
    sch.unroll(hm)
    sch.unroll(wm)
    sch.vectorize(j)
    gemm = sch.get_sblock("winograd_product")
    sch.compute_at(gemm, gemm_at, preserve_unit_loops=True)
    e, _, ty, tx, ob_i, j, cb, ci = sch.get_loops(gemm)[-8:]
    tx_o, tx_i = sch.split(tx, [None, tile.rt])
    sch.reorder(e, ty, tx_o, cb, ci, ob_i, tx_i, j)
    acc = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc, tx_o)
    sch.unroll(ob_i)
    sch.unroll(tx_i)
    sch.vectorize(j)
    sch.decompose_reduction(gemm, cb)
    sch.vectorize(sch.get_loops(acc)[-1])


def schedule_input_transform(sch, band, parallel: bool) -> None:
    """V, the input transform: computed at the parallel ``band`` it serves, first; with
    ``band`` None, for every tile before the products, in a parallel loop of its own over
    images and tile rows."""
    v = sch.get_sblock("winograd_input")
    if band is None:
        ve, vn, vty, vtx, vcb, vi = sch.get_loops(v)
        sch.reorder(vn, vty, vtx, vcb, ve, vi)
        tasks, vcb = _even_input_tasks(sch, vn, vty, vtx, vcb)
        if parallel:
            sch.parallel(tasks)
    else:
        sch.compute_at(v, band, preserve_unit_loops=True)
        ve, _, vty, vtx, vcb, vi = sch.get_loops(v)[-6:]
        sch.reorder(vty, vtx, vcb, ve, vi)
    sch.unroll(ve)
    sch.vectorize(vi)
    transform_at(sch, "winograd_input_columns", vcb)


def _even_input_tasks(sch, images, tile_rows, tile_columns, channel_blocks):
    """(The input transform's parallel loop, its loop over channel blocks.) Images x tile
    rows, or where that is an odd number, x two halves of the channel blocks (where they are
    an even number), else x tile columns. The threads split a parallel loop statically:
    GoogLeNet's 3x3 convs at 14 x 14 and 28 x 28 transform 7 tile rows at batch 1, on two
    threads the time of 8 (measured with ``channel_task_rows``)."""
    extents = [static_extent(sch, loop) for loop in (images, tile_rows, channel_blocks)]
    if None in extents or extents[0] * extents[1] % 2 == 0:
        # an image count unknown until the call, or an even number
        return sch.fuse(images, tile_rows), channel_blocks
    if extents[2] % 2 == 0:
        half, rest = sch.split(channel_blocks, [2, None])
        sch.reorder(half, tile_columns, rest)
        return sch.fuse(images, tile_rows, half), rest
    return sch.fuse(images, tile_rows, tile_columns), channel_blocks


def transform_at(sch, name: str, loop) -> None:
    """The one-dimensional transform stage ``name`` computed for one tile at ``loop``: its
    two tile axes unrolled (the coefficients become constants), its channels one vector."""
    block = sch.get_sblock(name)
    sch.compute_at(block, loop, preserve_unit_loops=True)
    first, second, lanes = sch.get_loops(block)[-3:]
    sch.unroll(first)
    sch.unroll(second)
    sch.vectorize(lanes)


__all__ = ["TILES", "WinogradTile", "choose_conv_algorithm", "choose_winograd_tile",
           "eligible", "schedule_winograd", "schedule_winograd_weight", "tiles",
           "winograd_conv", "winograd_weight"]

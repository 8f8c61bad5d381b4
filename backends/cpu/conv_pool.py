"""A conv and the pool that alone reads it, as one kernel: the conv's output never written out.

A network's stem (ResNet's and GoogLeNet's 7x7 stride-2 conv, then a 3x3 stride-2 max pool;
VGG-11's first conv, then a 2x2 one) writes its biggest activation there, and the pool reads
it back at once: 3.2 MB an image at 64 x 112 x 112. Here each parallel task takes a band of
the pool's output rows, computes the conv rows that band reads (with its epilogue, on the
register tile as ``conv.schedule_conv`` does) into a buffer of its own, and pools them: the
band's rows stay in cache and only the pooled output reaches memory.

    - {name: conv1, type: conv2d, filters: 64, kernel: 7, stride: 2, padding: 3}
    - {name: bn1, type: batchnorm}
    - {name: relu, type: relu}
    - {name: maxpool, type: maxpool2d, kernel: 3, stride: 2, padding: 1}   # one kernel

Where the pool's windows overlap (3x3 stride 2), a band recomputes the one conv row it shares
with the next: ResNet-18's stem alone at batch 1, 2 threads, 0.50 ms against 0.46 + 0.03 for
the two kernels, and inside a run level with them (the pool's input no longer comes from
memory). Whole networks, interleaved, against the two kernels: ResNet-18 ImageNet 1.00 / 1.00
of the time at batch 1 / 8 (bands of up to 1 and 2 MiB: 0.98 / 1.02 and 0.99 / 1.00),
GoogLeNet 1.00 / 0.98, VGG-11-BN 0.99 / 0.975; ResNet-18 ImageNet's planned activations 5.1 ->
3.7 MiB at batch 1, 38.8 -> 24.7 at batch 8 (a fresh process's first-run growth 6.6 -> 5.4
and 43.4 -> 35.3 MiB).

A Winograd conv computes a 2 x 2 stride-2 pool the same way, its bands whole rows of output
tiles (``schedule_winograd_pool``): VGG's convs before each pool but the last two (which
split their tasks by output channels). VGG-16-BN 1.00 / 0.985 of the time at batch 1 / 8,
VGG-11-BN 0.99 / 0.95; VGG-16-BN's planned activations 28.4 -> 19.2 MiB at batch 1, 208.5 ->
135.0 at batch 8 (first-run growth 32-35 -> 23-25 and 216 -> 144 MiB).
"""

from __future__ import annotations

from dataclasses import replace

from tvm import s_tir, tirx

from .conv import (ConvGeometry, ConvTile, choose_tile, default_tile, divisors,
                   images_outer, pad_input_at, runs_parallel)
from .pool import pool_blocked, separable
from .schedules import pad_stage, scheduled, static_extent, tile_with_epilogue
from .winograd import (choose_winograd_tile, products_run_parallel, schedule_band,
                       schedule_input_transform, split_tiles, transform_at)

POOL = "pool_"  # the pool's stage names, apart from the conv's
# The conv rows a task keeps for its band of output rows (all channels, one image): within a
# core's L2 (512 KiB of its 1 MiB), beside the task's input rows and weights.
BAND_BYTES = 512 << 10


def absorbs_pool(choice, layer, registers: int) -> bool:
    """Can ``choice``'s conv kernel compute the pool ``layer`` that reads it? A 2-D window of
    at least 2 x 2 (``pool.separable``) after a 2-D direct conv whose reduction is not chunked
    (a chunked task keeps all its rows' outputs for every chunk); after a Winograd conv, a
    2 x 2 stride-2 window without padding on whole output tiles, where the tasks go by bands
    of tile rows for any batch (``conv.images_outer``: not by output channels)."""
    geo = choice.geometry
    if not separable(layer) or len(geo.kernel) != 2:
        return False
    if choice.kind == "conv":
        return not choose_tile(geo, registers).chunked(geo)
    if choice.kind != "winograd":
        return False
    whole_tiles = all(size % choice.tile == 0 for size in geo.out_spatial)
    no_padding = all(tuple(p) == (0, 0) for p in layer.full_padding(list(geo.out_spatial)))
    return (tuple(layer.kernel) == tuple(layer.stride) == (2, 2) and no_padding
            and whole_tiles and images_outer(geo, None))


def conv_then_pool(conv, layer, out_spatial, band: int | None = None):
    """The kernel's compute: ``conv`` (``conv.conv_blocked`` or a Winograd conv, with its
    epilogue), then ``layer`` over its output (``pool.pool_blocked``, stages named after
    POOL); a direct conv's padded input longer by what tasks of ``band`` pool rows read
    (``padded_past_bands``)."""
    def compute(x, weight, bias, geo, fused=None, epilogue_args=None, residual=None):
        if band is not None:
            geo = padded_past_bands(geo, layer, band)
        y = conv(x, weight, bias, geo, fused, epilogue_args, residual)
        # the pool's extents in the conv's integer type (the Winograd conv's is the batch's,
        # int64): a mix puts casts in the indices, which TVM's schedule refuses as not affine
        sizes = [tirx.IntImm(str(y.shape[2].ty), s) for s in out_spatial]
        return pool_blocked(layer, y, sizes, POOL)

    return compute


def padded_past_bands(geo: ConvGeometry, layer, band: int) -> ConvGeometry:
    """``geo`` with its padded input (where it has one) longer at the bottom by the rows a
    task's conv rows read, zeros that no output reads. TVM sizes each task's part of the
    padded input from the band's whole extent, and where that reaches past the padded input
    (GoogLeNet's ceil-mode pool reads a row past its conv's last) it allocates the whole of
    it for each task instead: 635 KB a thread at GoogLeNet's stem, against 96 KB."""
    (top, bottom), *rest = geo.pads
    if all(tuple(p) == (0, 0) for p in geo.pads):
        return geo  # no padded copy: the conv reads its input as it is
    (k, _), (s, _) = layer.kernel, layer.stride
    extra = ((band - 1) * s + k) * geo.stride[0]
    return replace(geo, pads=((top, bottom + extra), *rest))


def band_rows(geo: ConvGeometry, layer, pool_rows: int) -> int:
    """Pool output rows a task computes: the most whose conv rows fit BAND_BYTES, a divisor
    of the pool's rows, an even number of bands an image where one fits (two threads split
    one image evenly: ResNet-18's stem, 56 rows, takes 8 bands of 7 rather than 7 of 8)."""
    (k, _), (s, _) = layer.kernel, layer.stride
    row_bytes = geo.out_spatial[1] * geo.out_blocks * geo.ob * 4
    fits = [d for d in divisors(pool_rows) if ((d - 1) * s + k) * row_bytes <= BAND_BYTES]
    even = [d for d in fits if (pool_rows // d) % 2 == 0]
    return max(even or fits or [1])


def schedule_conv_pool(func, geo: ConvGeometry, band: int, registers: int = 32,
                       tile: ConvTile | None = None):
    """Parallel over (image, band of ``band`` pool rows); per task the conv's padded input
    rows, the conv rows on the register tile of ``tile`` (``default_tile``'s unless given:
    tuning tries others) with its epilogue, then the pool's two passes
    (``pool.schedule_separable_pool``'s), vectorized over the block's lanes."""
    sch = s_tir.Schedule(func)
    batch = static_extent(sch, sch.get_loops(sch.get_sblock(f"{POOL}epilogue"))[0])
    tile = tile or default_tile(geo, registers, batch)
    if tile.chunked(geo):
        raise ValueError(f"{tile} chunks the conv's reduction, which a band cannot")
    task = _pool_bands(sch, band, runs_parallel(geo, batch))
    _schedule_band_conv(sch, task, geo, tile)
    return scheduled(sch)


def schedule_winograd_pool(func, geo: ConvGeometry, m: int, registers: int = 32):
    """``schedule_conv_pool`` for a Winograd conv: each task a band of ``rh`` tile rows
    (``winograd.choose_winograd_tile``'s), whose input transform, products and output
    transform (``winograd.schedule_winograd``'s) then 2 x 2 pool it computes in turn."""
    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("winograd_output"))
    batch = static_extent(sch, sch.get_loops(sch.get_sblock(f"{POOL}epilogue"))[0])
    tile = choose_winograd_tile(geo, m, registers, batch)
    if tile.by_channels:
        raise ValueError("a Winograd conv split by output channels computes no pool")
    parallel = products_run_parallel(geo, m, batch)
    task = _pool_bands(sch, tile.rh * m // 2, parallel)
    epi = sch.get_sblock("epilogue")
    sch.compute_at(epi, task, preserve_unit_loops=True)
    _, ob, h, w, j = sch.get_loops(epi)[-5:]
    ob_o, w_o, hm, wm = split_tiles(sch, [], ob, h, w, j, tile)
    transform_at(sch, "winograd_output_rows", w_o)
    schedule_band(sch, ob_o, hm, wm, j, tile)
    schedule_input_transform(sch, task, parallel)
    return scheduled(sch)


def _pool_bands(sch, band: int, parallel: bool):
    """The pool's output in bands of ``band`` rows, its rows pass per band, vectorized; the
    loop of bands returned, for the conv's stages to be computed at.

    One image's bands run in parallel, or the images, each task its image's bands in turn: a
    loop of the two fused would put casts in the stages' indices (the batch is int64, the
    rows int32), which TVM's compute_at and vectorize then refuse as not affine. Parallel
    before the conv's reduction is split from its zeroing, which TVM's check refuses after."""
    out = sch.get_sblock(f"{POOL}epilogue")
    sch.compute_inline(sch.get_sblock(f"{POOL}window"))
    n, c, h, w, j = sch.get_loops(out)
    h_o, h_i = sch.split(h, [None, band])
    sch.reorder(n, h_o, c, h_i, w, j)
    if parallel:
        sch.parallel(h_o if static_extent(sch, n) == 1 else n)
    sch.vectorize(j)
    rows = sch.get_sblock(f"{POOL}rows")
    sch.compute_at(rows, h_o)
    sch.vectorize(sch.get_loops(rows)[-1])
    pad = pad_stage(sch, f"{POOL}pad")
    if pad is not None:
        sch.compute_inline(pad)
    return h_o


def _schedule_band_conv(sch, task, geo: ConvGeometry, tile) -> None:
    """The conv and its epilogue computed at ``task`` for the rows its pool reads, on the
    register tile (ro x rw) of ``tile``; its padded input made per task."""
    conv, epi = sch.get_sblock("conv"), sch.get_sblock("epilogue")
    sch.compute_at(epi, task, preserve_unit_loops=True)
    sch.compute_at(conv, task, preserve_unit_loops=True)
    _, oc, oh, ow, j, ico, *rk, ici = sch.get_loops(conv)[2:]
    oc_o, oc_i = sch.split(oc, [None, tile.ro])
    w_o, w_i = sch.split(ow, [None, tile.rw])
    sch.reorder(oh, oc_o, w_o, ico, *rk, ici, oc_i, w_i, j)
    tile_with_epilogue(sch, conv, epi, w_o, [oc_i, w_i], j, ico)
    pad_input_at(sch, task, geo)

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
"""

from __future__ import annotations

from tvm import s_tir

from .conv import (ConvGeometry, conv_blocked, default_tile, divisors, pad_input_at,
                   runs_parallel)
from .pool import pool_blocked, separable
from .schedules import scheduled, static_extent, tile_with_epilogue

POOL = "pool_"  # the pool's stage names, apart from the conv's
# The conv rows a task keeps for its band of output rows (all channels, one image): within a
# core's L2 (512 KiB of its 1 MiB), beside the task's input rows and weights.
BAND_BYTES = 512 << 10


def pool_absorbable(layer, geo: ConvGeometry) -> bool:
    """Can a conv of geometry ``geo`` compute the pool ``layer`` that reads it? A 2-D window
    of at least 2 x 2 (``pool.separable``) after a 2-D conv."""
    return separable(layer) and len(geo.kernel) == 2


def conv_then_pool(layer, out_spatial):
    """The kernel's compute: ``conv.conv_blocked`` (with its epilogue), then ``layer`` over
    its output (``pool.pool_blocked``, stages named after POOL)."""
    def compute(x, weight, bias, geo, fused=None, epilogue_args=None, residual=None):
        y = conv_blocked(x, weight, bias, geo, fused, epilogue_args, residual)
        return pool_blocked(layer, y, out_spatial, POOL)

    return compute


def band_rows(geo: ConvGeometry, layer, pool_rows: int) -> int:
    """Pool output rows a task computes: the most whose conv rows fit BAND_BYTES, a divisor
    of the pool's rows, an even number of bands an image where one fits (two threads split
    one image evenly: ResNet-18's stem, 56 rows, takes 8 bands of 7 rather than 7 of 8)."""
    (k, _), (s, _) = layer.kernel, layer.stride
    row_bytes = geo.out_spatial[1] * geo.out_blocks * geo.ob * 4
    fits = [d for d in divisors(pool_rows) if ((d - 1) * s + k) * row_bytes <= BAND_BYTES]
    even = [d for d in fits if (pool_rows // d) % 2 == 0]
    return max(even or fits or [1])


def schedule_conv_pool(func, geo: ConvGeometry, band: int, registers: int = 32):
    """Parallel over (image, band of ``band`` pool rows); per task the conv's padded input
    rows, the conv rows on ``default_tile``'s register tile with its epilogue, then the pool's
    two passes (``pool.schedule_separable_pool``'s), vectorized over the block's lanes."""
    sch = s_tir.Schedule(func)
    out = sch.get_sblock(f"{POOL}epilogue")
    sch.compute_inline(sch.get_sblock(f"{POOL}window"))
    n, c, h, w, j = sch.get_loops(out)
    batch = static_extent(sch, n)
    h_o, h_i = sch.split(h, [None, band])
    sch.reorder(n, h_o, c, h_i, w, j)
    # one image's bands in parallel, or the images, each task its image's bands in turn: a
    # loop of the two fused would put casts in the stages' indices (the batch is int64, the
    # rows int32), which TVM's compute_at and vectorize then refuse as not affine. Parallel
    # before the conv's reduction is split from its zeroing, which TVM's check refuses after.
    if runs_parallel(geo, batch):
        sch.parallel(h_o if batch == 1 else n)
    sch.vectorize(j)
    rows = sch.get_sblock(f"{POOL}rows")
    sch.compute_at(rows, h_o)
    sch.vectorize(sch.get_loops(rows)[-1])
    try:
        sch.compute_inline(sch.get_sblock(f"{POOL}pad"))
    except Exception:  # noqa: BLE001 (a pool without padding has no pad stage)
        pass
    _schedule_band_conv(sch, h_o, geo, default_tile(geo, registers, batch))
    return scheduled(sch)


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

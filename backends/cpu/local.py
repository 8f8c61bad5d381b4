"""Locally connected layers in the blocked layout: a conv whose weights differ at every output
position, as one scheduled kernel with its epilogue.

    - {name: lc, type: locally_connected2d, filters: 32, kernel: 3}

The weights are packed once at load time to (OH, OW, F/ob, C/ib, KH, KW, ib, ob)
(``blocked_local``), so the innermost loop multiplies one broadcast input value by one vector of
``ob`` filters, as the conv kernel does. No two output positions share a weight, so what a
weight is reused for is the batch: the register tile is ``ro`` filter blocks x ``rn`` images,
each weight vector loaded once for the ``rn`` images. At batch 1 every weight is read once per
call (a layer of 32 -> 32 channels at 30 x 30 with 3 x 3 windows holds 33 MB of them).

That layer alone, 2 threads, against te_ops' form on the generic schedule: 3.36 -> 0.41 ms at
batch 1, 30.1 -> 1.08 ms at batch 8 (inside a run at batch 1, 0.95 ms: its weights come from
memory).
"""

from __future__ import annotations

from tvm import te

from cnncompiler.layers.fused import apply_epilogue

from .conv import MAX_ACCUMULATORS, ConvGeometry, largest_divisor, padded_input, runs_parallel
from .schedules import pad_stage, scheduled, static_extent, tile_with_epilogue
from .vector_math import CPU_MATH


def local_blocked(x, weight, bias, geo: ConvGeometry, fused=None, epilogue_args=None,
                  residual=None):
    """(N, C/ib, H, W, ib) or plain (N, C, H, W) -> (N, F/ob, OH, OW, ob), then the epilogue
    of ``fused``; ``bias`` blocked as (F/ob, ob, OH, OW), the epilogue's per-channel arguments
    as (F/ob, ob)."""
    epilogue_args = epilogue_args or {}
    read = padded_input(x, geo)
    ico = te.reduce_axis((0, geo.in_blocks), name="ico")
    rk = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(geo.kernel)]
    ici = te.reduce_axis((0, geo.ib), name="ici")

    def compute(n, oc, oy, ox, j):
        src = [oy * geo.stride[0] + rk[0], ox * geo.stride[1] + rk[1]]
        return te.sum(read(n, ico, src, ici) * weight[oy, ox, oc, ico, rk[0], rk[1], ici, j],
                      axis=[ico, *rk, ici])

    shape = (x.shape[0], geo.out_blocks, *geo.out_spatial, geo.ob)
    acc = te.compute(shape, compute, name="conv")

    def epilogue(n, c, oy, ox, j):
        v = acc[n, c, oy, ox, j]
        if bias is not None:
            v = v + bias[c, j, oy, ox]
        if fused is not None:
            v = apply_epilogue(fused, v, CPU_MATH, lambda arg: epilogue_args[arg][c, j],
                               residual[n, c, oy, ox, j] if fused.has_residual else None)
        return v

    return te.compute(shape, epilogue, name="epilogue")


def schedule_local(func, geo: ConvGeometry):
    """Parallel over output positions; in each, groups of ``rn`` images x ``ro`` filter
    blocks accumulated in registers over every input channel and tap, then the epilogue on
    them. ``rn`` is the largest divisor of a static batch that leaves ``ro`` (a divisor of the
    filter blocks) at least 2 blocks within MAX_ACCUMULATORS; 1 for the any-batch function."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    conv, epi = sch.get_sblock("conv"), sch.get_sblock("epilogue")
    n, oc, oy, ox, j, ico, ky, kx, ici = sch.get_loops(conv)
    batch = static_extent(sch, n)
    rn = largest_divisor(batch, MAX_ACCUMULATORS // 2) if batch else 1
    ro = largest_divisor(geo.out_blocks, MAX_ACCUMULATORS // rn)
    n_o, n_i = sch.split(n, [None, rn])
    oc_o, oc_i = sch.split(oc, [None, ro])
    sch.reorder(oy, ox, n_o, oc_o, ico, ky, kx, ici, n_i, oc_i, j)
    par = sch.fuse(oy, ox)
    if runs_parallel(geo, batch):
        sch.parallel(par)
    tile_with_epilogue(sch, conv, epi, oc_o, [n_i, oc_i], j, ico)
    padding = pad_stage(sch)
    if padding is not None:  # read through the padding's bounds tests, no copy per task
        sch.compute_inline(padding)
    return scheduled(sch)

"""A conv with few output channels, in the plain layout (N, C, *spatial), vectorized along its
output rows.

The blocked kernel (``conv.py``) puts output channels in the vector lanes; with fewer channels
than lanes most of each vector is padding. LeNet-5's first conv has 6 filters on a 32 x 32
digit: its blocked output is 8 channels to a vector, half an AVX-512 register, 6 of them real.
Here the lanes hold output columns instead (the 28 columns are two vectors, 32 lanes), each
FMA multiplies a row of input columns by one broadcast weight, and the output stays plain, so
the pool after it and the next conv read it as they read a model's input.

    - {name: c1, type: conv2d, filters: 6, kernel: 5}      # 1x32x32 -> 6x28x28

LeNet-5 at batch 1, each kernel alone (2 threads): c1 with its tanh 4.7 us blocked, 2.3 here;
c3 then reduces over 6 input channels instead of 8 (4.3 -> 3.4 us); the pool between them, on
the generic schedule in the plain layout, 0.3 -> 0.9 us. Whole network, interleaved: 0.83 of
the time at batch 1, 0.74 at batch 64.
"""

from __future__ import annotations

from tvm import te

from cnncompiler.layers.fused import apply_epilogue

from ..te_ops import pad
from .blocking import ceil_div
from .conv import MAX_ACCUMULATORS, ConvGeometry, largest_divisor, runs_parallel
from .schedules import pad_stage, scheduled, static_extent, tile_with_epilogue
from .vector_math import CPU_MATH

MAX_ROW_VECTORS = 4  # an output row the kernel computes whole: at most this many vectors


def plain_output_pays(geo: ConvGeometry, lanes: int) -> bool:
    """Does ``geo`` (a conv reading a plain input) fill more lanes with output columns than
    with output channels? Only where a whole output row is one register tile
    (``MAX_ROW_VECTORS``) and the row is contiguous in the input (stride 1 along it); a
    grouped conv keeps the blocked kernel."""
    width = geo.out_spatial[-1]
    vectors = ceil_div(width, lanes)
    return (geo.in_plain and geo.groups == 1 and geo.stride[-1] == 1 and
            geo.cout < lanes and vectors <= MAX_ROW_VECTORS and
            width / (vectors * lanes) > geo.cout / lanes)


def padded_width(geo: ConvGeometry, lanes: int) -> int:
    """The output row as the kernel computes it: whole vectors (the rest is dropped)."""
    return ceil_div(geo.out_spatial[-1], lanes) * lanes


def conv_plain(x, weight, bias, geo: ConvGeometry, fused=None, epilogue_args=None,
               residual=None, lanes: int = 16):
    """(N, C, *S) -> (N, O, *OS), with the epilogue of ``fused``; weights as the layer keeps
    them (O, C, *K), per-channel arguments (O,), a residual (N, O, *OS)."""
    epilogue_args = epilogue_args or {}
    width = padded_width(geo, lanes)
    # the row's last vector reads past the input: that many more zero columns on the right
    extra = width - geo.out_spatial[-1]
    xp = pad(x, [*geo.pads[:-1], (geo.pads[-1][0], geo.pads[-1][1] + extra)])
    rc = te.reduce_axis((0, geo.cin), name="rc")
    rk = [te.reduce_axis((0, k), name=f"rk{i}") for i, k in enumerate(geo.kernel)]

    def compute(n, o, *osp):
        src = [p * s + r * d for p, s, r, d in zip(osp, geo.stride, rk, geo.dilation)]
        return te.sum(xp[(n, rc, *src)] * weight[(o, rc, *rk)], axis=[rc, *rk])

    conv = te.compute((x.shape[0], geo.cout, *geo.out_spatial[:-1], width), compute,
                      name="conv")

    def epilogue(n, o, *sp):
        v = conv[(n, o, *sp)]
        if bias is not None:
            v = v + bias[o]
        if fused is not None:
            v = apply_epilogue(fused, v, CPU_MATH, lambda arg: epilogue_args[arg][o],
                               residual[(n, o, *sp)] if fused.has_residual else None)
        return v

    return te.compute((x.shape[0], geo.cout, *geo.out_spatial), epilogue, name="epilogue")


def schedule_conv_plain(func, geo: ConvGeometry, lanes: int = 16):
    """Each task computes output rows of some channels: a register tile of ``ro`` channels x
    the row's vectors (at most MAX_ACCUMULATORS), over every input channel and tap, one
    broadcast weight per FMA; then the epilogue on the tile, the padding dropped."""
    from tvm import s_tir

    nd = len(geo.kernel)
    sch = s_tir.Schedule(func)
    conv, epi = sch.get_sblock("conv"), sch.get_sblock("epilogue")
    loops = sch.get_loops(conv)
    n, o, rows, w = loops[0], loops[1], loops[2:1 + nd], loops[1 + nd]
    rc, rk = loops[2 + nd], loops[3 + nd:]
    batch = static_extent(sch, n)
    vectors = padded_width(geo, lanes) // lanes
    oo, oi = sch.split(o, [None, largest_divisor(geo.cout, MAX_ACCUMULATORS // vectors)])
    wo, wv, wl = sch.split(w, [None, vectors, lanes])
    sch.reorder(n, oo, *rows, wo, rc, *rk, oi, wv, wl)
    par = sch.fuse(n, oo, *rows)
    if runs_parallel(geo, batch):
        sch.parallel(par)
    tile_with_epilogue(sch, conv, epi, wo, [oi, wv], wl, rc)
    padding = pad_stage(sch)
    if padding is not None:  # each task pads the input rows it reads
        sch.compute_at(padding, par)
        sch.vectorize(sch.get_loops(padding)[-1])
    return scheduled(sch)


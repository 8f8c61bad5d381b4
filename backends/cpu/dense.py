"""The dense (fully connected) layer and its epilogue as one scheduled kernel.

The weights are packed once at load time to (O/ob, K, ob) (``blocked_rows``): for each input
feature, one vector of ``ob`` output features. The kernel keeps ``rn`` rows of the batch by
``ro`` vectors of outputs in registers, broadcasting one input value per row and loading one
weight vector per block for every input feature; a batch of one is a matrix-vector product
limited by how fast the weights stream in, so ``ro`` independent accumulators keep the FMA
units busy while they do. The padded outputs are dropped when the epilogue (bias, batch
norms, residual, activation) writes the plain (N, O) result.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, te

from cnncompiler.layers.fused import apply_epilogue

from .conv import divisors
from .schedules import MIN_PARALLEL_MACS, scheduled, static_extent, tile_in_registers
from .vector_math import CPU_MATH

FLOAT = "float32"


@dataclass(frozen=True)
class DenseTile:
    rn: int   # batch rows per register tile (1 for a symbolic batch)
    ro: int   # output vectors per register tile


def dense_blocked(x, weight, bias, out_features: int, fused=None, epilogue_args=None,
                  residual=None):
    """x (N, K) by weights packed (O/ob, K, ob) -> (N, O), then ``fused``'s epilogue."""
    blocks, features, ob = (int(d) for d in weight.shape)
    k = te.reduce_axis((0, features), name="k")
    acc = te.compute((x.shape[0], blocks, ob), lambda n, c, j: te.sum(
        x[n, k] * weight[c, k, j], axis=k), name="dense")
    tile = te.compute(acc.shape, lambda *i: acc(*i), name="tile")
    epilogue_args = epilogue_args or {}

    def compute(n, o):
        v = tile[n, o // ob, o % ob]
        if bias is not None:
            v = v + bias[o]
        if fused is not None:
            v = apply_epilogue(fused, v, CPU_MATH, lambda arg: epilogue_args[arg][o],
                               residual[n, o] if fused.has_residual else None)
        return v

    return te.compute((x.shape[0], out_features), compute, name="epilogue")


def choose_dense_tile(batch: int | None, blocks: int, registers: int = 32) -> DenseTile:
    """Up to 4 rows of a static batch (one of a symbolic one) by the most output vectors
    that divide the blocks, within half the vector registers."""
    rn = 1 if batch is None else max(d for d in divisors(batch) if d <= 4)
    ro = max(d for d in divisors(blocks) if d * rn <= registers // 2 and d <= 8)
    return DenseTile(rn, ro)


def schedule_dense(func, tile: DenseTile | None = None, registers: int = 32):
    """Parallel over (output vectors, batch rows) tiles, the register tile reduced over every
    input feature, then the plain epilogue in one vectorized pass."""
    sch = s_tir.Schedule(func)
    dense, copy, epi = (sch.get_sblock(n) for n in ("dense", "tile", "epilogue"))
    n, c, j, k = sch.get_loops(dense)
    batch, blocks, lanes, features = (static_extent(sch, lp) for lp in (n, c, j, k))
    tile = tile or choose_dense_tile(batch, blocks, registers)
    n_o, n_i = sch.split(n, [None, tile.rn])
    c_o, c_i = sch.split(c, [None, tile.ro])
    sch.reorder(c_o, n_o, k, n_i, c_i, j)
    par = sch.fuse(c_o, n_o)
    if batch is None or batch * blocks * lanes * features >= MIN_PARALLEL_MACS:
        sch.parallel(par)
    sch.reverse_compute_at(copy, par)
    tile_in_registers(sch, dense, [n_i, c_i], j, k)
    sch.vectorize(sch.get_loops(copy)[-1])
    _, out_o = sch.get_loops(epi)
    if static_extent(sch, out_o) % lanes == 0:
        _, vector = sch.split(out_o, [None, lanes])
        sch.vectorize(vector)
    return scheduled(sch)

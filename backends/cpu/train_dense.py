"""The dense layer's training kernels: the inference kernel (``dense_blocked``) forward and
for the input gradient (dy by the transposed weights, packed every step), and a weight
gradient vectorized over the input features.

    dW[o, k] = sum over n of dy[n, o] * x[n, k]

keeps ``ro`` rows of outputs by ``rk`` vectors of input features in registers, broadcasting
one dy value per row and loading one vector of x per feature block for every sample.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from .conv import MAX_ACCUMULATORS, divisors
from .schedules import (MIN_PARALLEL_MACS, MIN_PARALLEL_WORK, best_register_tile, scheduled,
                        static_extent, tile_in_registers)

FLOAT = "float32"
ZERO = tirx.const(0.0, FLOAT)


def pack_rows(read, rows: int, features: int, block: int, name: str = "pack"):
    """(rows/b, features, b) with packed[r, k, j] = read(r*b + j, k), zero where it pads: the
    ``blocked_rows`` layout the dense kernel reads its weights in."""
    blocks = -(-rows // block)

    def compute(rb, k, j):
        r = rb * block + j
        if rows % block == 0:
            return read(r, k)
        return tirx.if_then_else(r < rows, read(tirx.min(r, rows - 1), k), ZERO)

    return te.compute((blocks, features, block), compute, name=name)


def dense_weight_grad(x, dy, block: int, name: str = "dw"):
    """dW (O, K) from x (N, K) and dy (N, O): stage ``dw`` (O, K/b, b) and ``dw_out``."""
    features, outputs = int(x.shape[1]), int(dy.shape[1])
    blocks = -(-features // block)
    rn = te.reduce_axis((0, x.shape[0]), name="rn")

    def read_x(n, k):
        if features % block == 0:
            return x[n, k]
        return tirx.if_then_else(k < features, x[n, tirx.min(k, features - 1)], ZERO)

    acc = te.compute((outputs, blocks, block), lambda o, kb, j: te.sum(
        dy[rn, o] * read_x(rn, kb * block + j), axis=rn), name=name)
    return te.compute((outputs, features), lambda o, k: acc[o, k // block, k % block],
                      name=f"{name}_out")


def schedule_dense_weight_grad(func, registers: int = 32):
    """Parallel over tiles of (output rows, feature blocks); each tile's sums in registers
    over the whole batch."""
    sch = s_tir.Schedule(func)
    acc, out = sch.get_sblock("dw"), sch.get_sblock("dw_out")
    o, kb, j, n = sch.get_loops(acc)
    outputs, blocks = static_extent(sch, o), static_extent(sch, kb)
    ro, rk = best_register_tile((((ro, rk), ro * rk, ro + rk)
                                 for ro in divisors(outputs) if ro <= 8
                                 for rk in divisors(blocks)
                                 if ro * rk <= MAX_ACCUMULATORS and ro * rk + rk + 1 <= registers),
                                default=(1, 1))
    o_o, o_i = sch.split(o, [None, ro])
    kb_o, kb_i = sch.split(kb, [None, rk])
    sch.reorder(o_o, kb_o, n, o_i, kb_i, j)
    par = sch.fuse(o_o, kb_o)
    batch = static_extent(sch, n)
    if batch is None or batch * outputs * blocks * static_extent(sch, j) >= MIN_PARALLEL_MACS:
        sch.parallel(par)
    sch.reverse_compute_at(out, par)
    tile_in_registers(sch, acc, [o_i, kb_i], j, n)
    return scheduled(sch)


def column_sums(dy, name: str = "column_sums"):
    """sum over n of dy (N, O): (O,)."""
    rn = te.reduce_axis((0, dy.shape[0]), name="rn")
    return te.compute((int(dy.shape[1]),), lambda o: te.sum(dy[rn, o], axis=rn), name=name)


def schedule_column_sums(func, lanes: int):
    """The batch loop outside, vectors of columns inside."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("column_sums")
    o, n = sch.get_loops(block)
    size = static_extent(sch, o)
    if size % lanes == 0:
        o_o, o_i = sch.split(o, [None, lanes])
        sch.reorder(o_o, n, o_i)
        sch.vectorize(o_i)
        if size * 64 >= MIN_PARALLEL_WORK:
            sch.parallel(o_o)
    return scheduled(sch)

"""Schedules that need no tuning for the kernels without a rule of their own.

``schedule_loops`` gives any PrimFunc parallel outer loops and a vectorized innermost loop,
after inlining the injective stages (layout views, padding) into their readers. It is what an
element-wise kernel needs in full, and a fair start for the rest (softmax, LRN, concat,
flatten, ...). When TVM refuses a step, the step is skipped: the kernel stays correct.

The shared helpers (``static_extent``, ``work``, the parallel thresholds) serve every rule.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx

SPATIAL = 0
# Below these, starting the thread pool costs more than the second thread saves (a few
# microseconds a launch): loop iterations of a memory-bound kernel, multiply-adds of a conv.
MIN_PARALLEL_WORK = 1 << 16
MIN_PARALLEL_MACS = 1 << 19
MAX_WINDOW = 64   # reduction steps of a window (a 7x7 pool's 49), see ``parallel_vectorize``


def best_register_tile(candidates, default):
    """The register tile with the most accumulators, then the fewest vector loads per FMA;
    the first of equals. ``candidates`` yields (tile, accumulators, vectors loaded per step)
    for the tiles that fit the registers; ``default`` when none does.

    The rule of the conv, conv weight-gradient and dense weight-gradient kernels: an FMA
    needs its accumulator in a register, and each loaded vector feeds ``accumulators / loads``
    of them."""
    best, best_key = default, None
    for tile, accumulators, loads in candidates:
        key = (accumulators, -loads / accumulators)
        if best_key is None or key > best_key:
            best, best_key = tile, key
    return best


def pad_stage(sch: s_tir.Schedule):
    """The kernel's ``pad`` stage, or None: a layer without padding has none."""
    try:
        return sch.get_sblock("pad")
    except Exception:  # noqa: BLE001 (tvm raises its own error kinds for a missing block)
        return None


def scheduled(sch: s_tir.Schedule) -> tirx.PrimFunc:
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def tile_in_registers(sch: s_tir.Schedule, block, unrolled, lane_loop, reduce_at=None) -> None:
    """``block``'s accumulators as a register tile: a stack array (LLVM keeps it in
    registers), not a heap workspace; the tile's loops ``unrolled``, ``lane_loop`` vectorized,
    and the zeroing split off at ``reduce_at`` (None: a block without reduction loops).
    Vectorize before decompose_reduction: the zeroing loops inherit the annotations."""
    sch.set_scope(block, 0, "local")
    for loop in unrolled:
        sch.unroll(loop)
    sch.vectorize(lane_loop)
    if reduce_at is not None:
        sch.decompose_reduction(block, reduce_at)


def tile_with_epilogue(sch: s_tir.Schedule, block, epilogue, epilogue_at, unrolled, lane_loop,
                       reduce_at=None) -> None:
    """``block`` as a register tile (``tile_in_registers``) and ``epilogue`` computed at
    ``epilogue_at`` from it, vectorized: the epilogue reads the tile while it is in registers
    (the conv-like kernels and the window kernels)."""
    sch.reverse_compute_at(epilogue, epilogue_at)
    tile_in_registers(sch, block, unrolled, lane_loop, reduce_at)
    sch.vectorize(sch.get_loops(epilogue)[-1])


def static_extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def work(sch, loops) -> int:
    """Iterations of a loop nest, a symbolic (batch) extent counted as 64."""
    return math.prod(static_extent(sch, lp) or 64 for lp in loops)


def inline_injective(sch: s_tir.Schedule) -> None:
    """Inline every stage that is not an output and has no reduction."""
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for block in sch.get_child_blocks(root):
        stmt = sch.get(block)
        if stmt.name_hint in outputs:
            continue
        if any(int(iv.iter_type) != SPATIAL for iv in stmt.iter_vars):
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001 (TVM refuses some inlines; the stage then stays)
            pass


def parallel_vectorize(sch: s_tir.Schedule, block, lanes: int,
                       min_work: int = MIN_PARALLEL_WORK, plain_rows: bool = False) -> None:
    """Vectorize the innermost loop when it is a spatial loop, and run the leading spatial
    loops in parallel when there is enough work to share. With ``plain_rows`` (the kernel's
    inputs are plain, so a row is contiguous), a small window's row is vectorized too."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if not loops:
        return
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    if len(kinds) != len(loops):
        return
    spatial = 0
    while spatial < len(loops) and kinds[spatial] == SPATIAL:
        spatial += 1
    total = work(sch, loops)
    inner = loops[-1]
    vector_loop = reduce_at = None
    if spatial == len(loops):
        extent = static_extent(sch, inner)
        if _short_row(sch, inner, lanes):
            vector_loop = inner
        elif extent and extent % lanes == 0:
            _, vector_loop = sch.split(inner, [None, lanes])
        outer = loops[:-1]
    elif spatial > 1 and _window(sch, loops[spatial:]) and \
            (static_extent(sch, loops[spatial - 1]) or 0) >= lanes // 2:
        # a reduction over a small window (LRN's channels, a pool's taps): the last spatial
        # loop moved inside the reduction, so that the window's index arithmetic is done once
        # per row, the sums zeroed by a loop of their own. The row is vectorized only where the
        # inputs are plain: through a plain view of a blocked input its reads are a gather.
        # AlexNet's norm1 at batch 8: 24.0 ms with the reduction innermost, 6.4 so, 22.8 with
        # the row of the blocked input vectorized as well. Long reductions (over time, a whole
        # map) keep their order: the row would read with a long stride.
        sch.reorder(*loops[spatial:], loops[spatial - 1])
        reduce_at = loops[spatial]
        if plain_rows and _short_row(sch, loops[spatial - 1], lanes):
            vector_loop = loops[spatial - 1]
        outer = loops[:spatial - 1]
    else:
        outer = loops[:spatial]
    if outer and total >= min_work:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(fused)
    if vector_loop is not None:
        sch.vectorize(vector_loop)
    if reduce_at is not None:  # after parallel: the zeroing loop is inside it
        sch.decompose_reduction(block, reduce_at)


def _short_row(sch, loop, lanes: int) -> bool:
    """Is ``loop`` of a static extent of at most four vectors, vectorized whole?"""
    extent = static_extent(sch, loop)
    return bool(extent) and extent <= 4 * lanes


def _window(sch, loops) -> bool:
    """Are ``loops`` (a block's reduction) a small window: static, at most MAX_WINDOW steps?
    A reduction over the batch is not: a training step's gradient sums, reordered so, made
    ResNet-18 CIFAR's step at batch 32 take 860 ms instead of 430."""
    extents = [static_extent(sch, lp) for lp in loops]
    return None not in extents and math.prod(extents) <= MAX_WINDOW


def schedule_loops(func: tirx.PrimFunc, lanes: int, plain_rows: bool = False) -> tirx.PrimFunc:
    """The fallback schedule: inline views and padding, then parallel and vector loops for
    each remaining stage (a stage TVM will not transform is left as it is). ``plain_rows``:
    see ``parallel_vectorize``."""
    sch = s_tir.Schedule(func)
    inline_injective(sch)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        try:
            parallel_vectorize(sch, block, lanes, plain_rows=plain_rows)
        except Exception:  # noqa: BLE001 (schedule steps are atomic: the stage stays correct)
            pass
    return scheduled(sch)

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


def pad_stage(sch: s_tir.Schedule, name: str = "pad"):
    """The kernel's padding stage ``name``, or None: a layer without padding has none."""
    try:
        return sch.get_sblock(name)
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
    """Vectorize the innermost loop when it is a spatial loop (in whole vectors and a tail,
    ``row_parts``), and run the leading spatial loops in parallel when there is enough work to
    share. With ``plain_rows`` (the kernel's inputs are plain, so a row is contiguous), a
    small window's row is vectorized too: AlexNet's pool1 after its LRN (rows of 27) alone
    43 us in parts, 65 as one vector of 27 lanes."""
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
    vector_row = window_row = reduce_at = None
    if spatial == len(loops):
        if static_extent(sch, inner):
            vector_row = inner
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
        if plain_rows and _short_row(sch, loops[spatial - 1], lanes):
            window_row = loops[spatial - 1]   # reordered and vectorized in parts, below
        else:
            sch.reorder(*loops[spatial:], loops[spatial - 1])
            reduce_at = loops[spatial]
        outer = loops[:spatial - 1]
    else:
        outer = loops[:spatial]
    if outer and total >= min_work:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(fused)
    # after parallel: the zeroing loops are inside it
    if vector_row is not None:
        for part in row_parts(sch, vector_row, lanes):
            vectorize_row(sch, part, lanes)
    if window_row is not None:
        vectorize_window_row(sch, block, window_row, len(loops) - spatial, lanes)
    if reduce_at is not None:
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


def schedule_channel_window(func: tirx.PrimFunc, lanes: int) -> tirx.PrimFunc:
    """A window across the channels of a plain input (LRN): parallel output rows, each summing
    its window into a row of its own first (not the whole map written and read back), rows in
    whole vectors and a tail (``row_parts``). AlexNet's norm1 (96 x 55 x 55) alone: 42 us
    against 197 with ``schedule_loops``; the same bits.

        - {name: norm1, type: lrn, size: 5, alpha: 1.0e-4, beta: 0.75, k: 2.0}
    """
    sch = s_tir.Schedule(func)
    inline_injective(sch)
    root = sch.get_sblock("root")
    out = sch.get_output_blocks(root)[0]
    window = next(b for b in sch.get_child_blocks(root) if _taps(sch, b))
    *outer, row = sch.get_loops(out)
    total = work(sch, [*outer, row])
    rows = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(rows)
    sch.compute_at(window, rows)
    taps = _taps(sch, window)
    vectorize_window_row(sch, window, sch.get_loops(window)[-1 - taps], taps, lanes)
    for part in row_parts(sch, row, lanes):
        vectorize_row(sch, part, lanes)
    return scheduled(sch)


def _taps(sch, block) -> int:
    """The reduction loops of ``block``."""
    return sum(int(iv.iter_type) != SPATIAL for iv in sch.get(block).iter_vars)


def row_parts(sch, loop, lanes: int) -> list:
    """``loop`` (a row) as a loop of whole vectors and a loop of the rest, where the lanes do
    not divide it, it is longer than one vector and it holds one block; else itself. LLVM
    compiles a vector of an odd length (55, 48 = 3 x 16 as well) as element inserts and
    extracts in xmm registers: AlexNet's norm1 with its rows of 55 vectorized whole took 4.6
    times as long. (TVM's loop_partition crashes the process on a loop of several blocks: a
    training step's SGD update writes two buffers in one loop.)"""
    extent = static_extent(sch, loop)
    whole = extent // lanes * lanes if extent else 0
    if whole in (0, extent) or len(sch.get_child_blocks(loop)) != 1:
        return [loop]
    return list(sch.loop_partition(loop, [whole, None]))


def vectorize_window_row(sch, block, row, taps: int, lanes: int) -> None:
    """The window sum ``block`` inside ``row`` (its loops: the row, then ``taps`` reduction
    loops) with the row moved innermost (one vector per tap) and vectorized in parts
    (``row_parts``: a block of its own each), the sums zeroed by loops of their own."""
    parts = row_parts(sch, row, lanes)
    for part in parts:
        if len(parts) > 1:
            block = sch.get_child_blocks(part)[0]
        reduction = sch.get_loops(block)[-taps:]
        sch.reorder(*reduction, part)
        vectorize_row(sch, part, lanes)
        sch.decompose_reduction(block, reduction[0])


def vectorize_row(sch, loop, lanes: int) -> None:
    """``loop`` vectorized: in vectors of ``lanes`` where it is several of them, whole where
    it is short (``_short_row``); a longer row of another length stays scalar."""
    extent = static_extent(sch, loop)
    if not extent:
        return
    if extent > lanes and extent % lanes == 0:
        _, loop = sch.split(loop, [None, lanes])
    elif not _short_row(sch, loop, lanes):
        return
    sch.vectorize(loop)


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

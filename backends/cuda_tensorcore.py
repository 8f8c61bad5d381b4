"""Tensor-core schedules for precision ``mixed``: a conv (groups 1) or dense kernel as an
implicit GEMM on float16 operands with float32 accumulation, its epilogue in float32.

A kernel arrives as te_ops computes it, all float32: (pad), the ``conv`` or ``dense``
reduction block, then bias and epilogue blocks. ``schedule_tensor_core``:

1. reads each operand of the reduction through a stage whose buffer is float16
   (``unsafe_set_dtype``), so the block computes ``C += f32(f16(x)) * f32(f16(w))``: the
   pattern TVM's WMMA intrinsics (``tvm.s_tir.tensor_intrin.cuda``) describe;
2. re-indexes the reduction as a GEMM per sample (dlight's iterator analysis, the batch
   kept as its own grid axis): rows = output pixels (a dense layer's: the batch), columns =
   output channels, depth = input channels x kernel window; pads it to whole tiles;
3. inlines every operand producer (zero padding, the float16 casts, the re-indexing) into one
   guarded read of the kernel's arguments, staged through shared memory per depth tile;
4. computes each warp's fragments with WMMA ``load_matrix_sync`` / ``mma_sync`` and keeps the
   float32 accumulator there, then stores it through shared memory, where the bias, folded
   batch norm, scale and shift, residual add and activation are inlined: they run in float32
   before the one write to global memory.

The weights stay float32 kernel arguments (the runtime hands every argument over as float32)
and are rounded to float16 as they are staged into shared memory, as the activations are.
"""

from __future__ import annotations

from cnncompiler.cache import read_library, write_library
from cnncompiler.errors import CompileError

# the reduction blocks te_ops names its conv and dense computes by
GEMM_BLOCKS = ("conv", "dense")


def gemm_block(sch):
    """The kernel's conv or dense reduction block, when it computes C += A * B over a batch
    that groups do not split (a grouped conv's input channel depends on its output
    channel); else None."""
    from tvm import tirx
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr, get_root_block
    from tvm.s_tir.dlight.gpu.matmul import detect_iter_traits

    blocks = [b for b in sch.get_child_blocks(get_root_block(sch))
              if sch.get(b).name_hint in GEMM_BLOCKS]
    if len(blocks) != 1:
        return None
    block = sch.get(blocks[0])
    if len(block.reads) != 2 or not isinstance(block.body, tirx.BufferStore):
        return None
    channel = block.iter_vars[1].var  # C[n, o, ...]: the output channel
    a_vars = set()
    for r in block.reads[0].region:
        a_vars |= {v.name for v in collect_vars_used_in_prim_expr(r.min)}
    if channel.name in a_vars:
        return None
    # NOTE: a GEMM of one row (a dense layer in a function specialised for batch 1) has no
    # row axis to tile: a matrix-vector product, which dlight's float32 rules do better
    return blocks[0] if detect_iter_traits(block) is not None else None


def gemm_form(func):
    """The kernel as the padded float16 GEMM the tensor cores compute, before any tiling
    (steps 1-3 above), or None when it is not a conv or dense kernel: plain loops that a CPU
    runs too, so tests check the casts, the re-indexing and the padding against the float32
    kernel on float16-rounded operands."""
    found = _gemm_schedule(func)
    return None if found is None else found[0].mod["main"]


def _gemm_schedule(func):
    """(schedule, GEMM block) after steps 1-3, or None for a kernel that is no GEMM."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = gemm_block(sch)
    if block is None:
        return None
    for operand in (0, 1):
        stage = sch.cache_read(block, operand, "global")
        sch.unsafe_set_dtype(stage, 0, "float16")
    _as_padded_gemm(sch, block)
    for producer in sch.get_producers(block):
        _inline_producers(sch, producer)
    return sch, block


# A thread block computes a TILE_ROWS x TILE_COLS tile of C with WARPS_ROWS x WARPS_COLS
# warps, each FRAGS x FRAGS 16x16 fragments, over depth tiles of K_FRAGS fragments.
FRAG = 16
WARP = 32
WARPS_ROWS = WARPS_COLS = 4
FRAGS = 2
K_FRAGS = 4
VECTOR = 4
TILE_ROWS = FRAG * WARPS_ROWS * FRAGS
TILE_COLS = FRAG * WARPS_COLS * FRAGS


def schedule_tensor_core(gv, func):
    """The tensor-core schedule of a conv or dense kernel, or None when the kernel is not one
    (dlight's rules then schedule it in float32). A GEMM kernel that cannot be tensorized
    is a CompileError: ``mixed`` never quietly runs it another way."""
    from tvm import s_tir

    if gemm_block(s_tir.Schedule(func)) is None:
        return None
    try:
        return _schedule_gemm(func)
    except Exception as exc:  # noqa: BLE001 (tvm raises several kinds)
        raise CompileError(f"kernel '{gv.name_hint}': the tensor-core schedule failed: "
                           f"{_reason(exc)}; compile with --precision fp32") from exc


def _reason(exc: Exception) -> str:
    """A TVM schedule error's own message, without the IR it prints before it."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    said = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Error message:")]
    return said[0] if said else (lines[-1] if lines else type(exc).__name__)


def _schedule_gemm(func):
    sch, block = _gemm_schedule(func)
    outer, k0, k1, warp = _tile(sch, block)
    for operand in (0, 1):
        _stage_in_shared(sch, outer, operand, k0)
    fragments = [sch.cache_read(outer, operand, f"wmma.matrix_{name}")
                 for operand, name in ((0, "a"), (1, "b"))]
    for fragment in fragments:
        sch.compute_at(fragment, k1)
    to_global = sch.cache_write(outer, 0, "shared.dyn")
    sch.storage_align(to_global, 0, -2, FRAG, 4)
    accumulator = sch.cache_write(outer, 0, "wmma.accumulator")
    sch.reverse_compute_at(accumulator, warp)
    sch.reverse_compute_at(to_global, warp)
    init = sch.get_child_blocks(sch.decompose_reduction(outer, k0))[0]
    _tensorize(sch, block, init, accumulator, fragments)
    _store_with_epilogue(sch, to_global)
    return sch.mod["main"]


def _as_padded_gemm(sch, block) -> None:
    """The reduction as C[S, I, J] += A[S, I, K] * B[J, K], padded to whole tiles: the
    batch is S (a grid axis), so only the static row count (output pixels) is padded.

    NOTE: with the batch folded into the rows, as dlight does, the padded row count is
    symbolic, ((n * pixels + 127) // 128) * 128, and TVM cannot prove that it covers the
    n * pixels rows read back from it: every later compute_at fails ("not a stage
    pipeline"). A dense layer has no pixels: its rows are the batch."""
    from tvm.s_tir.dlight.gpu.matmul import (IterKind, detect_iter_traits,
                                            make_iter_fusion_index_map)

    stages = [sch.reindex(block, ("read", 0)), sch.reindex(block, ("read", 1)),
              sch.reindex(block, ("write", 0))]
    a, b, c, iters = detect_iter_traits(sch.get(block))
    if sum(t.kind == IterKind.kIter_I for t in iters) > 1 and iters[0].kind == IterKind.kIter_I:
        iters[0].kind = IterKind.kIter_S  # one trait object per iterator, shared by the lists
    S, I, J, K = IterKind.kIter_S, IterKind.kIter_I, IterKind.kIter_J, IterKind.kIter_K
    sch.transform_layout(stages[0], ("write", 0), make_iter_fusion_index_map(a, [S, I, K]))
    sch.transform_layout(stages[1], ("write", 0), make_iter_fusion_index_map(b, [S, J, K]))
    sch.transform_layout(stages[2], ("read", 0), make_iter_fusion_index_map(c, [S, I, J]))
    sch.transform_block_layout(block, make_iter_fusion_index_map(iters, [S, I, J, K]))
    sch.pad_einsum(block, [1, TILE_ROWS, TILE_COLS, FRAG * K_FRAGS])


def _inline_producers(sch, block) -> None:
    """Inline every producer chain of ``block`` into it.

    NOTE: this must happen before any stage is moved into the tile loops: the padded
    operand reads a region its unpadded producer does not write (the rows past n x pixels),
    which breaks the scope's region cover and so every compute_at."""
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_producers

    auto_inline_producers(sch, block)


def _tile(sch, block):
    """Tile the GEMM over blocks and warps; returns the tile's outer block, the depth loops
    (shared-memory stage, fragment) and the warp loop."""
    batch, i, j, k = sch.get_loops(block)
    i, i_frag = sch.split(i, factors=[None, FRAG])
    j, j_frag = sch.split(j, factors=[None, FRAG])
    k, k_frag = sch.split(k, factors=[None, FRAG])
    sch.reorder(i, j, k, i_frag, j_frag, k_frag)
    outer = sch.blockize(i_frag)
    i0, i1, i2, i3 = sch.split(i, factors=[None, 1, WARPS_ROWS, FRAGS])
    j0, j1, j2, j3 = sch.split(j, factors=[1, None, WARPS_COLS, FRAGS])
    k0, k1 = sch.split(k, factors=[None, K_FRAGS])
    sch.reorder(i0, j0, i1, j1, j2, i2, k0, k1, i3, j3)
    sch.bind(batch, "blockIdx.z")
    sch.bind(sch.fuse(i0, j0), "blockIdx.x")
    sch.bind(sch.fuse(i1, j1), "blockIdx.y")
    warp = sch.fuse(j2, i2)
    sch.bind(warp, "threadIdx.y")
    return outer, k0, k1, warp


def _stage_in_shared(sch, outer, operand, k0) -> None:
    """Copy the operand's depth tile to shared memory, all threads loading vectors; the
    guarded, casting read of the kernel's argument is inlined into the copy."""
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_producers

    stage = sch.cache_read(outer, operand, "shared.dyn")
    sch.compute_at(stage, k0)
    loop = sch.fuse(*sch.get_loops(stage)[-2:])
    _, ty, tx, vec = sch.split(loop, factors=[None, WARPS_ROWS * WARPS_COLS, WARP, VECTOR])
    sch.bind(tx, "threadIdx.x")
    sch.bind(ty, "threadIdx.y")
    sch.vectorize(vec)
    sch.storage_align(stage, 0, axis=-2, factor=FRAG, offset=8)  # no bank conflicts
    auto_inline_producers(sch, stage)


def _split_fragments(sch, block):
    """The block's last two loops as (16-row, 16-column) fragment loops; the innermost
    fragment's row loop, to tensorize."""
    i, j = sch.get_loops(block)[-2:]
    i0, i1 = sch.split(i, factors=[None, FRAG])
    j0, j1 = sch.split(j, factors=[None, FRAG])
    sch.reorder(i0, j0, i1, j1)
    return i0, j0, i1


def _tensorize(sch, block, init, accumulator, fragments) -> None:
    wmma = wmma_intrinsics()
    for fragment, intrin in zip(fragments, ("load_a", "load_b")):
        i0, j0, inner = _split_fragments(sch, fragment)
        sch.unroll(i0)
        sch.unroll(j0)
        sch.tensorize(inner, wmma[intrin])
    *_, inner = _split_fragments(sch, accumulator)
    sch.tensorize(inner, wmma["store"])
    sch.tensorize(sch.get_loops(init)[-2], wmma["init"])
    sch.tensorize(sch.get_loops(block)[-3], wmma["compute"])


# the WMMA intrinsics of float16 fragments in shared memory, float32 accumulator, B transposed,
# by role, named as tvm.s_tir.tensor_intrin.cuda's get_wmma_intrin_group names them
WMMA = {"init": "wmma_fill_16x16x16_f32",
        "load_a": "wmma_load_16x16x16_f16_a_shared_dyn",
        "load_b": "wmma_load_16x16x16_f16_b_trans_shared_dyn",
        "compute": "wmma_sync_16x16x16_f16f16f32_trans",
        "store": "wmma_store_16x16x16_f32_shared_dyn"}
INTRINSICS_CACHE = "tensor-intrin"


def wmma_intrinsics() -> dict[str, str]:
    """The WMMA intrinsics the schedule tensorizes with, registered with TVM: their names by
    role.

    NOTE: importing tvm.s_tir.tensor_intrin.cuda registers its 91 intrinsics by parsing
    TVMScript, which takes a minute on two cores; the five used here are kept in cnnc's
    cache (TVM's JSON of their description and implementation, one entry per TVM version,
    vouched for by its record) and registered from there by later compiles."""
    import tvm
    from tvm.s_tir import TensorIntrin

    if all(TensorIntrin.get(name, allow_missing=True) for name in WMMA.values()):
        return dict(WMMA)
    key = f"wmma-{tvm.__version__}"
    data = read_library(INTRINSICS_CACHE, key)
    if data is not None:
        funcs = tvm.ir.load_json(data.decode())
        for i, name in enumerate(WMMA.values()):
            if not TensorIntrin.get(name, allow_missing=True):
                TensorIntrin.register(name, funcs[2 * i], funcs[2 * i + 1])
        return dict(WMMA)
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

    group = get_wmma_intrin_group(load_scope="shared.dyn", store_scope="shared.dyn",
                                  in_dtype="float16", out_dtype="float32", trans_b=True)
    if group != WMMA:
        return group  # this TVM names them otherwise: use its names, cache nothing
    intrinsics = [TensorIntrin.get(name) for name in WMMA.values()]
    funcs = [f for intrin in intrinsics for f in (intrin.desc, intrin.impl)]
    write_library(INTRINSICS_CACHE, key, tvm.ir.save_json(funcs).encode(),
                  {"intrinsics": list(WMMA.values())})
    return dict(WMMA)


def _store_with_epilogue(sch, to_global) -> None:
    """Inline the epilogue into the store of the accumulator tile; vector stores."""
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain

    auto_inline_consumer_chain(sch, to_global)
    loop = sch.fuse(*sch.get_loops(to_global)[-2:])
    _, tx, vec = sch.split(loop, factors=[None, WARP, VECTOR])
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)


def uses_tensor_cores(func) -> bool:
    """Does a scheduled PrimFunc compute on tensor cores?"""
    return "tvm_mma_sync" in func.script()

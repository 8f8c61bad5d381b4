"""Peak activation memory of the compiled functions, from the build's own memory planning.

``StaticPlanBlockMemory`` assigns every intermediate tensor of a function to a storage it
reuses where lifetimes allow, and ``arena.pack_arena`` then packs a function with static sizes
into one arena; the function's outputs get their own allocations. The passes are the build's
(``planning_passes``), so this is what the compiled functions allocate. Peak activation memory
is the planned storages, plus the outputs, plus the largest scratch memory one kernel of the
function allocates while it runs (the padded rows of a conv, per thread). The input and the
weights are not counted. ``relax_storages`` is what Relax's plan alone would allocate, and
``plan`` says which of the two the function uses (with the reason where the arena was declined).

For ``main``, whose batch size is symbolic, the storages are sizes in ``n``; they are evaluated
at n=1 and n=2 and reported as ``fixed + per_sample * n`` (they are planned proportional to n).

    planned_memory(mod, target, (1, 64))
    {"main_b1": {"storages": ..., "outputs": ..., "scratch": ..., "total": ...,
                 "relax_storages": ..., "plan": "arena"},
     "main_b64": {...},
     "main": {"fixed": ..., "per_sample": ..., "relax_storages_per_sample": ..., "plan": ...}}
"""

from __future__ import annotations

import tvm

import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.sym.analyzer import Analyzer

from . import planning_passes
from .arena import PLAN_ATTR

# The TIR lowering up to flat buffers: enough to see each kernel's own allocations, compacted.
SCRATCH_PASSES = (s_tir.transform.CanonicalizeLoop, s_tir.transform.LowerInitBlock,
                  s_tir.transform.PlanAndUpdateBufferAllocationLocation,
                  s_tir.transform.ConvertBlocksToOpaque, s_tir.transform.CompactBufferAllocation,
                  s_tir.transform.LowerOpaqueBlock, tirx.transform.FlattenBuffer)


def _bytes(shape_values, dtype: str, n=None) -> int | None:
    size = tvm.DataType(dtype).bits // 8
    for v in shape_values:
        if n is not None:
            v = tvm_ffi.structural_map(v, (tvm.ir.Var, lambda var: tirx.const(n, var.ty.dtype)
                                           if var.name == "n" else var), order="post")
            v = Analyzer().simplify(v)
        if not isinstance(v, tirx.IntImm):
            return None
        size *= int(v)
    return size


def _allocations(func) -> tuple[list, list]:
    """(storage sizes, output (shape, dtype)s) of a planned Relax function."""
    storages, outputs = [], []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            if e.op.name == "relax.memory.alloc_storage":  # a size in bytes
                storages.append(list(e.args[0].values))
            elif e.op.name == "relax.builtin.alloc_tensor":
                outputs.append((list(e.args[0].values), str(e.args[1].value)))

    relax.analysis.post_order_visit(func.body, visit)
    return storages, outputs


def _function_bytes(func, n=None) -> dict | None:
    storages, outputs = _allocations(func)
    sizes = [_bytes(size, "uint8", n) for size in storages]
    outs = [_bytes(shape, dt, n) for shape, dt in outputs]
    if None in sizes or None in outs:
        return None
    return {"storages": sum(sizes), "outputs": sum(outs)}


def kernel_scratch(func: tirx.PrimFunc, target, threads: int, n=None) -> int:
    """Bytes a kernel allocates while it runs; what a parallel loop allocates, per thread.
    ``n``: the batch size, for a kernel of the symbolic-batch ``main``."""
    mod = tvm.IRModule({"k": func.with_attr("global_symbol", "k")})
    with target:
        mod = tvm.transform.Sequential([p() for p in SCRATCH_PASSES])(mod)
    total = 0

    def visit(stmt, parallel):
        nonlocal total
        if isinstance(stmt, tirx.For):
            parallel = parallel or stmt.kind == tirx.ForKind.PARALLEL
        if isinstance(stmt, tirx.AllocBuffer):
            size = _bytes(list(stmt.buffer.shape), str(stmt.buffer.dtype), n)
            total += (size or 0) * (threads if parallel else 1)
        for child in _children(stmt):
            visit(child, parallel)

    visit(mod["k"].body, False)
    return total


def _called(func, kernels: dict) -> set[str]:
    """The names of the kernels a Relax function calls."""
    called = set()

    def visit(e):
        if isinstance(e, tvm.ir.GlobalVar) and e.name_hint in kernels:
            called.add(e.name_hint)

    relax.analysis.post_order_visit(func.body, visit)
    return called


def _children(stmt):
    if isinstance(stmt, tirx.SeqStmt):
        return list(stmt.seq)
    out = []
    for attr in ("body", "then_case", "else_case"):
        child = getattr(stmt, attr, None)
        if isinstance(child, tirx.Stmt):
            out.append(child)
    return out


def planned_memory(mod: tvm.IRModule, target, batch_sizes=(), threads: int = 2) -> dict:
    """Peak activation bytes of ``main_b<N>`` for each batch size, and of ``main`` per sample."""
    *relax_plan, pack = planning_passes()
    with target:
        relax_planned = tvm.transform.Sequential(relax_plan)(mod)
        planned = pack(relax_planned)
    kernels = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}

    def function_scratch(name: str, n=None) -> int:
        # the kernels this function calls, not every kernel of the module: main_b1 of AlexNet
        # counted main_b8's LRN scratch (8.9 MiB) against its own 1.1 MiB
        scratch = 0
        for kernel in _called(mod[name], kernels):
            try:
                scratch = max(scratch, kernel_scratch(kernels[kernel], target, threads, n))
            except Exception:  # noqa: BLE001 (an estimate; a kernel TVM cannot lower here counts 0)
                pass
        return scratch

    out = {}
    for b in batch_sizes:
        name = f"main_b{b}"
        sizes = _function_bytes(planned[name])
        scratch = function_scratch(name)
        if sizes:
            out[name] = sizes | {"scratch": scratch,
                                 "total": sizes["storages"] + sizes["outputs"] + scratch,
                                 "relax_storages": _function_bytes(relax_planned[name])["storages"],
                                 "plan": str(planned[name].attrs[PLAN_ATTR])}
    one, two = (_function_bytes(planned["main"], n) for n in (1, 2))
    if one and two:
        one["scratch"], two["scratch"] = (function_scratch("main", n) for n in (1, 2))
        per_sample = sum(two.values()) - sum(one.values())
        relax_one, relax_two = (_function_bytes(relax_planned["main"], n)["storages"]
                                for n in (1, 2))
        out["main"] = {"per_sample": per_sample, "fixed": sum(one.values()) - per_sample,
                       "relax_storages_per_sample": relax_two - relax_one,
                       "plan": str(planned["main"].attrs[PLAN_ATTR])}
    return out

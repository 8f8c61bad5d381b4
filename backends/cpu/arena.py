"""One arena per function: every intermediate tensor at a byte offset packed by lifetime.

Relax's ``StaticPlanBlockMemory`` gives each intermediate tensor a storage and reuses a storage
for a later tensor of no greater size, but it never places two small tensors side by side in
one freed large storage, and where sizes are symbolic it reuses nothing. ResNet-18 CIFAR at
batch 64: Relax's storages take 40.1 MiB, the arena 32.0 MiB, which is what two of its 16 MiB
tensors live at once need (tests/test_memory_arena.py). ``pack_arena`` runs right after it and
replaces a function's storages by one arena: each tensor lives from the binding that allocates
it to the last binding that uses it or any value derived from it, and ``pack`` places the
tensors by greedy-by-size best fit (as ONNX Runtime and TFLite plan their arenas), each at a
multiple of ``ALIGN`` bytes, so that no two tensors live at once share a byte.

Sizes are either all constant (the batch-specialised ``main_b<N>``) or all proportional to one
size variable (``n`` in the symbolic-batch ``main``): then the packing is done in bytes per
sample and every offset is ``k * n``, so it holds for every batch size.

Lifetimes are closed intervals of binding indices: a kernel's output is allocated before the
call and its inputs are used by the call, so the two intervals meet at the call and the tensors
never overlap. That keeps every kernel's ``noalias`` mark true (``relax_pipeline``): no call's
output reuses the bytes of one of its own inputs.

A tensor at a nonzero offset of a storage carries a DLTensor ``byte_offset``, which cnnc's
kernels refuse ("Invalid b.byte_offset ... expected 0"); ``memory.ensure_zero_offset`` turns it
into a view whose data pointer is moved instead (on the CPU, at a multiple of ``ALIGN``, a view
and not a copy: see tests/test_memory_arena.py).

The pass leaves a function to Relax's plan, unchanged, when it finds anything it does not model
(``ArenaDeclined`` says what, in the function's ``PLAN_ATTR``): a size neither constant nor
proportional to the same one variable as the others, nested control flow or match-casts, a
storage used other than by ``alloc_tensor``, a nonzero offset already, a planned tensor
reaching the function's result, or a packing no smaller than Relax's storages.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.sym.analyzer import Analyzer

# bytes: the alignment TVM's CPU allocator gives a storage. NOTE: correctness hangs on it, not
# only speed: ensure_zero_offset makes a view only of an offset that is a multiple of 64 and
# otherwise a copy, so a kernel would write into the copy (checked: a tensor written at offset
# 32 read back unwritten, at 320 written).
ALIGN = 64


@dataclass(frozen=True)
class Lifetime:
    """A tensor of ``size`` bytes, live from binding ``first`` through binding ``last``."""

    size: int
    first: int
    last: int

    def overlaps(self, other: "Lifetime") -> bool:
        return self.first <= other.last and other.first <= self.last


def aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def pack(lifetimes: list[Lifetime]) -> tuple[list[int], int]:
    """Offsets (multiples of ``ALIGN``) for tensors with these lifetimes, and the arena's size.

    Greedy by size: the largest tensor first, each put in the smallest gap between the tensors
    already placed that are live at the same time, or above them all where no gap fits.
    """
    order = sorted(range(len(lifetimes)),
                   key=lambda i: (-lifetimes[i].size, lifetimes[i].first, i))
    offsets: list[int] = [0] * len(lifetimes)
    placed: list[int] = []
    for i in order:
        size = aligned(lifetimes[i].size)
        rivals = sorted((offsets[j], offsets[j] + aligned(lifetimes[j].size))
                        for j in placed if lifetimes[j].overlaps(lifetimes[i]))
        best, best_gap, top = None, None, 0
        for low, high in rivals:
            gap = low - top
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = top, gap
            top = max(top, high)
        offsets[i] = top if best is None else best
        placed.append(i)
    arena = max((o + aligned(t.size) for o, t in zip(offsets, lifetimes)), default=0)
    return offsets, arena


def live_peak(lifetimes: list[Lifetime]) -> int:
    """The most aligned bytes live at one binding: no packing can use a smaller arena."""
    points = {t.first for t in lifetimes}
    return max((sum(aligned(t.size) for t in lifetimes if t.first <= p <= t.last)
                for p in points), default=0)


class ArenaDeclined(Exception):
    """The function is left to Relax's plan; the message says why."""


def _op_name(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def _static_int(expr, what: str) -> int:
    if not isinstance(expr, tirx.IntImm):
        raise ArenaDeclined(f"{what} is not a constant: {expr}")
    return int(expr.value)


def _scaled_size(shape, what: str) -> tuple[int, tirx.Var | None]:
    """The product of a shape's dimensions (a storage's shape is its size in bytes): (c, None)
    where it is the constant ``c``, (c, v) where it is ``c * v`` with ``v`` the one size variable
    in it (the batch ``n`` of the symbolic-batch ``main``)."""
    if not isinstance(shape, relax.ShapeExpr):
        raise ArenaDeclined(f"{what} is not a shape expression")
    total = tirx.const(1, "int64")
    for dim in shape.values:
        total = total * dim
    total = Analyzer().simplify(total)
    free = list(tirx.analysis.undefined_vars(total))
    if not free:
        return _static_int(total, what), None
    if len(free) == 1:
        (v,) = free
        per_unit = Analyzer().simplify(tvm_ffi.structural_map(
            total, (tvm.ir.Var, lambda var: tirx.const(1, var.ty.dtype) if var.same_as(v)
                    else var), order="post"))
        if isinstance(per_unit, tirx.IntImm) and \
                _is_zero(Analyzer().simplify(total - int(per_unit) * v)):
            return int(per_unit), v
    raise ArenaDeclined(f"{what} ({total}) is neither a constant nor proportional to one size "
                        "variable")


def _is_zero(expr) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr) == 0


class _Scale:
    """The one size variable all of a function's planned sizes are proportional to, or none:
    offsets packed in bytes per unit of it are then valid for every value it takes (and
    multiples of ``ALIGN`` for all of them)."""

    def __init__(self):
        self.var = None
        self.seen = False

    def unit(self, sized: tuple[int, tirx.Var | None], what: str) -> int:
        c, v = sized
        if self.seen and not (v is None and self.var is None or
                              v is not None and self.var is not None and v.same_as(self.var)):
            raise ArenaDeclined(f"{what} scales with {v}, other sizes with {self.var}")
        self.var, self.seen = v, True
        return c

    def times(self, c: int):
        return c if self.var is None or c == 0 else tirx.const(c, self.var.ty.dtype) * self.var


@dataclass
class _Tensor:
    var: relax.Var
    size: int
    first: int
    last: int


def _bindings(func: relax.Function) -> list:
    if not isinstance(func.body, relax.SeqExpr):
        raise ArenaDeclined("the body is not a sequence of bindings")
    out = []
    for block in func.body.blocks:
        if isinstance(block, relax.DataflowBlock):
            raise ArenaDeclined("a dataflow block remains")
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise ArenaDeclined(f"a {type(b).__name__} binds {b.var.name}")
            if isinstance(b.value, (relax.If, relax.SeqExpr, relax.Function)):
                raise ArenaDeclined(f"{b.var.name} is bound to nested control flow")
            out.append(b)
    return out


def _tensors(func: relax.Function, scale: _Scale) -> tuple[dict, dict]:
    """The storages (var -> bytes per unit of ``scale``) and the tensors allocated in them,
    with lifetimes."""
    storages: dict = {}
    tensors: dict = {}
    roots: dict = {}  # var -> the planned tensors whose memory it may reach
    for index, b in enumerate(_bindings(func)):
        op = _op_name(b.value)
        used = relax.analysis.free_vars(b.value)
        if op == "relax.memory.alloc_storage":
            if str(b.value.args[2].value) != "global":
                raise ArenaDeclined(f"storage {b.var.name} has scope {b.value.args[2].value}")
            if _static_int(b.value.args[1], "a virtual device index") != 0:
                raise ArenaDeclined(f"storage {b.var.name} is not on the function's device")
            what = f"the size of storage {b.var.name}"
            storages[b.var] = scale.unit(_scaled_size(b.value.args[0], what), what)
            continue
        if op == "relax.memory.alloc_tensor" and b.value.args[0] in storages:
            _, offset, shape, dtype = b.value.args[:4]
            if _static_int(offset, f"the offset of {b.var.name}") != 0:
                raise ArenaDeclined(f"{b.var.name} already has an offset in its storage")
            what = f"the shape of {b.var.name}"
            size = scale.unit(_scaled_size(shape, what), what)
            size *= tvm.DataType(str(dtype.value)).bits // 8
            tensors[b.var] = _Tensor(b.var, size, index, index)
            roots[b.var] = {b.var}
            continue
        if any(v in storages for v in used):
            raise ArenaDeclined(f"{b.var.name} uses a storage other than by alloc_tensor")
        reached = set().union(*(roots.get(v, set()) for v in used))
        for t in reached:
            tensors[t].last = index
        roots[b.var] = reached
    for v in relax.analysis.free_vars(func.body.body):
        if roots.get(v):
            raise ArenaDeclined(f"the result reaches planned tensor {next(iter(roots[v])).name}")
    return storages, tensors


def arena_function(func: relax.Function) -> relax.Function:
    """``func`` with its storages replaced by one arena; raises ArenaDeclined where it can't."""
    scale = _Scale()
    storages, tensors = _tensors(func, scale)
    if not tensors:
        raise ArenaDeclined("no planned tensors")
    order = list(tensors.values())
    offsets, size = pack([Lifetime(t.size, t.first, t.last) for t in order])
    relax_bytes = sum(storages.values())
    if size >= relax_bytes:
        raise ArenaDeclined(f"the arena ({scale.times(size)} bytes) is no smaller than Relax's "
                            f"storages ({scale.times(relax_bytes)} bytes)")
    offset_of = {t.var: o for t, o in zip(order, offsets)}
    first_storage = next(iter(storages))
    arena = relax.Var("arena", first_storage.ty)
    bb = relax.BlockBuilder()
    blocks = []
    for block in func.body.blocks:
        bindings = []
        for b in block.bindings:
            if b.var.same_as(first_storage):
                bindings.append(relax.VarBinding(arena, bb.normalize(
                    relax.op.memory.alloc_storage(relax.ShapeExpr([scale.times(size)]), 0,
                                                  "global", "uint8"))))
            if b.var in storages:
                continue
            if b.var in offset_of:
                _, _, shape, dtype, device = b.value.args
                at = bb.normalize(relax.op.memory.alloc_tensor(
                    arena, scale.times(offset_of[b.var]), shape, dtype, device))
                if offset_of[b.var]:
                    placed = relax.Var(f"{b.var.name}_at", at.ty)
                    bindings.append(relax.VarBinding(placed, at))
                    at = bb.normalize(relax.op.memory.ensure_zero_offset(placed))
                bindings.append(relax.VarBinding(b.var, at))
                continue
            bindings.append(b)
        blocks.append(relax.BindingBlock(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs,
                          func.span)


PLAN_ATTR = "cnnc.memory_plan"  # "arena", or "relax: <why the arena was declined>"


def pack_arena() -> tvm.transform.Pass:
    """The pass: each Relax function that ``arena_function`` models gets one arena; each other
    keeps Relax's storages, with the reason in its ``PLAN_ATTR`` attribute (cnnc's build report
    shows it through ``memory.planned_memory``)."""

    @tvm.transform.module_pass(opt_level=0, name="cnnc.PackArena")
    def run(mod, _ctx):
        mod = mod.clone()  # Python's mod[gv] = ... would change the caller's module in place
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function):
                continue
            try:
                mod[gv] = arena_function(func).with_attr(PLAN_ATTR, "arena")
            except ArenaDeclined as why:
                mod[gv] = func.with_attr(PLAN_ATTR, f"relax: {why}")
        return mod

    return run

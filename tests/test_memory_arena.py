"""The CPU build's activation arena (backends/cpu/arena.py): the packer on hand-made lifetimes,
the Relax VM's handling of tensors at an offset of a storage, and compiled networks (LeNet-5,
a ResNet with residual adds, an Inception block with its concat) whose batch-specialised
functions use the arena, against the numpy reference and against Relax's own plan.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from compile_helpers import as_dict, assert_close, lively_params, spec_inputs, spec_path, \
    write_spec

tvm = pytest.importorskip("tvm")

from cnncompiler.backends.cpu.arena import (ALIGN, ArenaDeclined, Lifetime,  # noqa: E402
                                            aligned, arena_function, live_peak, pack)

pytestmark = pytest.mark.tvm

RTOL = 1e-5


def assert_packed(lifetimes: list[Lifetime]) -> tuple[list[int], int]:
    offsets, size = pack(lifetimes)
    for o, t in zip(offsets, lifetimes):
        assert o % ALIGN == 0, f"offset {o} of {t} is not a multiple of {ALIGN}"
        assert 0 <= o and o + aligned(t.size) <= size, f"{t} at {o} leaves the arena ({size})"
    for (oa, a), (ob, b) in itertools.combinations(zip(offsets, lifetimes), 2):
        if a.overlaps(b) and a.size and b.size:
            assert oa + aligned(a.size) <= ob or ob + aligned(b.size) <= oa, \
                f"{a} at {oa} and {b} at {ob} are live together and share bytes"
    assert size >= live_peak(lifetimes)
    return offsets, size


def test_a_chain_packs_at_the_live_peak():
    # each tensor read by the next kernel only: two live at a time, as in a plain conv stack
    sizes = [4096, 8192, 1000, 300, 8192, 64]
    chain = [Lifetime(s, 2 * i, 2 * i + 3) for i, s in enumerate(sizes)]
    _, size = assert_packed(chain)
    assert size == live_peak(chain) == 4096 + 8192


def test_small_tensors_share_the_place_of_a_dead_big_one():
    # two half-size tensors fit side by side where the dead big one was; a storage holding one
    # tensor at a time (Relax's plan) keeps one of them there and needs a new storage for the other
    big = Lifetime(1 << 20, 0, 2)
    late = [Lifetime(1 << 19, 3, 6), Lifetime(1 << 19, 4, 6), Lifetime(1 << 20, 1, 5)]
    _, size = assert_packed([big, *late])
    assert size == 2 << 20


def test_disjoint_and_simultaneous_extremes():
    apart = [Lifetime(100 * (i + 1), 2 * i, 2 * i + 1) for i in range(5)]
    assert assert_packed(apart)[1] == aligned(500)
    together = [Lifetime(100 * (i + 1), 0, 9) for i in range(5)]
    assert assert_packed(together)[1] == sum(aligned(100 * (i + 1)) for i in range(5))


def test_random_lifetimes_never_share_live_bytes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        count = int(rng.integers(1, 40))
        firsts = rng.integers(0, 60, count)
        lifetimes = [Lifetime(int(rng.choice([0, 1, 63, 64, 65, 4096, 10000, 1 << 16])),
                              int(f), int(f + rng.integers(0, 20))) for f in firsts]
        assert_packed(lifetimes)


# -- the Relax VM and a hand-written function ---------------------------------------------------

def _two_views_module():
    """``out = x + 2`` through two tensors at the same nonzero offset of one storage: correct
    only if ``ensure_zero_offset`` gives a view of the storage's bytes, not a copy."""
    from tvm.script import ir as I, relax as R, tirx as T

    @I.ir_module
    class Views:
        @T.prim_func
        def add1(a: T.Buffer((4, 16), "float32"), b: T.Buffer((4, 16), "float32")):
            for i, j in T.grid(4, 16):
                b[i, j] = a[i, j] + T.float32(1)

        @R.function(pure=False)
        def main(x: R.Tensor((4, 16), "float32")) -> R.Tensor((4, 16), "float32"):
            cls = Views
            s = R.memory.alloc_storage(R.shape([1024]), 0, "global", "uint8")
            first = R.memory.ensure_zero_offset(
                R.memory.alloc_tensor(s, 320, R.shape([4, 16]), "float32"))
            cls.add1(x, first)
            again = R.memory.ensure_zero_offset(
                R.memory.alloc_tensor(s, 320, R.shape([4, 16]), "float32"))
            out = R.builtin.alloc_tensor(R.shape([4, 16]), "float32", 0)
            cls.add1(again, out)
            return out

    return Views


def test_vm_views_a_storage_at_an_offset_without_copying():
    from tvm import relax

    from cnncompiler.backends.cpu import relax_pipeline

    target = tvm.target.Target("llvm")
    with target:
        executable = tvm.compile(_two_views_module(), target=target,
                                 relax_pipeline=relax_pipeline())
    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = np.arange(64, dtype=np.float32).reshape(4, 16)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x + 2)


# -- compiled networks ---------------------------------------------------------------------------

INCEPTION = """
name: inception_tiny
input: [3, 16, 16]
blocks:
  inception:
    params: {c1: null, c3: null, c5: null, proj: null}
    layers:
      - {name: branch1, type: conv2d, filters: $c1, kernel: 1, inputs: [input]}
      - {name: branch2.0, type: conv2d, filters: 4, kernel: 1, inputs: [input]}
      - {name: branch2.1, type: conv2d, filters: $c3, kernel: 3, padding: 1}
      - {name: branch3.0, type: conv2d, filters: 4, kernel: 1, inputs: [input]}
      - {name: branch3.1, type: conv2d, filters: $c5, kernel: 5, padding: 2}
      - {name: branch4.0, type: maxpool2d, kernel: 3, stride: 1, padding: 1, inputs: [input]}
      - {name: branch4.1, type: conv2d, filters: $proj, kernel: 1}
      - {name: concat, type: concat, inputs: [branch1, branch2.1, branch3.1, branch4.1]}
      - {type: relu}
layers:
  - {name: stem, type: conv2d, filters: 16, kernel: 3, padding: 1}
  - {type: relu}
  - {name: a, type: inception, c1: 8, c3: 16, c5: 8, proj: 8}
  - {type: maxpool2d, kernel: 2, stride: 2}
  - {name: b, type: inception, c1: 16, c3: 16, c5: 8, proj: 8}
  - {type: global_avgpool}
  - {type: flatten}
  - {name: fc, type: dense, units: 10}
"""

NETWORKS = ("lenet5", "resnet_tiny", "inception_tiny")


def network_spec(stem: str, tmp_path_factory):
    if stem == "inception_tiny":
        return write_spec(tmp_path_factory.mktemp("specs"), stem, INCEPTION)
    return spec_path(stem)


class ArenaBuild:
    """A network compiled with a function specialised for its test batch and the symbolic-batch
    ``main``, both planned in an arena: run on that batch (``main_b<N>``) and on one sample more
    (``main``), with the reference outputs and the Relax module as built."""

    def __init__(self, path):
        import cnncompiler as cc

        self.x = spec_inputs(front_end(path)[0])
        self.batch = len(self.x)
        self.model = cc.compile(path, target="cpu", batch_sizes=(self.batch,))
        self.params, self.want = lively_params(self.model.graph, self.x)
        self.model.load_params(self.params)
        self.got = as_dict(self.model.predict(self.x), self.model.output_names)
        # inference treats samples apart, so a repeated sample must give its output again
        more = np.concatenate([self.x, self.x[:1]])
        self.got_main = as_dict(self.model.predict(more), self.model.output_names)
        self.want_main = {k: np.concatenate([w, w[:1]]) for k, w in self.want.items()}
        self.memory = self.model.manifest["build"]["memory"]
        self.planned = planned_module(path, (self.batch,))


def front_end(path):
    """(graph, optimised graph) of a spec, as ``cnnc compile`` makes them at -O2."""
    from cnncompiler.compiler import _front_end

    return _front_end(path.read_text(), str(path), 2, None)[:2]


def relax_module(path, batch_sizes):
    """The CPU build's Relax module and its target, before the Relax pipeline."""
    from cnncompiler.backends.cpu.emit import build_cpu_module
    from cnncompiler.backends.targets import parse_target

    choice = parse_target("cpu")
    mod, _ = build_cpu_module(front_end(path)[1], choice.vector_lanes, batch_sizes, [])
    return mod, tvm.target.Target(choice.config)


def planned_module(path, batch_sizes):
    """The CPU build's Relax module after its memory planning (no code generation)."""
    from cnncompiler.backends.cpu import planning_passes

    mod, target = relax_module(path, batch_sizes)
    with target:
        return tvm.transform.Sequential(planning_passes())(mod)


@pytest.fixture(scope="module", params=NETWORKS)
def built(request, tmp_path_factory):
    return ArenaBuild(network_spec(request.param, tmp_path_factory))


def test_arena_build_matches_reference(built):
    for name, want in built.want.items():
        assert_close(built.got[name], want, rtol=RTOL, what=f"main_b{built.batch}: '{name}'")
    for name, want in built.want_main.items():
        assert_close(built.got_main[name], want, rtol=RTOL, what=f"main: '{name}'")


def test_arena_plans_no_more_than_relax(built):
    fixed = built.memory[f"main_b{built.batch}"]
    assert fixed["plan"] == "arena"
    assert fixed["storages"] <= fixed["relax_storages"]
    main = built.memory["main"]
    assert main["plan"] == "arena"
    assert main["per_sample"] <= main["relax_storages_per_sample"]


def at_one(expr) -> int:
    """A size or offset of the symbolic-batch ``main`` at n=1: every one is ``k * n``, so two
    ranges that are apart at n=1 are apart for every n."""
    import tvm_ffi
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer

    one = tvm_ffi.structural_map(expr, (tvm.ir.Var, lambda v: tirx.const(1, v.ty.dtype)),
                                 order="post")
    return int(Analyzer().simplify(one))


def kernel_argument_ranges(func):
    """(kernel, {tensor: (first byte, end byte)}) for every kernel call of an arena function:
    the arena bytes each of its arguments reaches, through views and renamings."""
    from tvm import relax

    where: dict = {}
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            op = v.op.name if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) else None
            if op == "relax.memory.alloc_tensor":
                offset = at_one(v.args[1])
                size = np.prod([at_one(d) for d in v.args[2].values]) * \
                    tvm.DataType(str(v.args[3].value)).bits // 8
                where[b.var] = (b.var, offset, offset + int(size))
            elif op in ("relax.memory.ensure_zero_offset", "relax.reshape"):
                if v.args[0] in where:
                    where[b.var] = where[v.args[0]]
            elif isinstance(v, relax.Var) and v in where:
                where[b.var] = where[v]
            elif isinstance(v, relax.Call) and isinstance(v.op, (tvm.ir.GlobalVar,
                                                                 relax.ExternFunc)):
                ranges = {where[a][0]: where[a][1:] for a in v.args if a in where}
                yield str(getattr(v.op, "name_hint", None) or v.op.global_symbol), ranges


@pytest.mark.parametrize("function", ["main_b", "main"])
def test_no_kernel_gets_overlapping_arguments(built, function):
    name = f"main_b{built.batch}" if function == "main_b" else "main"
    calls = list(kernel_argument_ranges(built.planned[name]))
    assert any(len(r) > 1 for _, r in calls), "no kernel reads one arena tensor into another"
    for kernel, ranges in calls:
        for (a, (lo_a, hi_a)), (b, (lo_b, hi_b)) in itertools.combinations(ranges.items(), 2):
            assert hi_a <= lo_b or hi_b <= lo_a, \
                f"{name}, {kernel}: {a.name} [{lo_a}, {hi_a}) and {b.name} [{lo_b}, {hi_b}) overlap"


def _chain_function(last_size=None):
    """x -> t0 -> t1 -> t2 -> out through a kernel, each ``t`` in a storage of its own as Relax
    plans symbolic sizes; the last storage holds ``last_size`` bytes (default: 64 * n, as the
    others)."""
    from tvm import relax, tirx

    n = tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((n, 16), "float32"))
    bb = relax.BlockBuilder()
    kernel = relax.ExternFunc("kernel")
    with bb.function("f", [x], pure=False):
        previous = x
        for size in (64 * n, 64 * n, 64 * n if last_size is None else last_size):
            storage = bb.emit(relax.op.memory.alloc_storage(relax.ShapeExpr([size]), 0,
                                                            "global", "float32"))
            t = bb.emit(relax.op.memory.alloc_tensor(storage, 0, relax.ShapeExpr([n, 16]),
                                                     "float32"))
            bb.emit(relax.Call(kernel, [previous, t]))
            previous = t
        out = bb.emit(relax.op.builtin.alloc_tensor(relax.ShapeExpr([n, 16]), "float32", 0))
        bb.emit(relax.Call(kernel, [previous, out]))
        bb.emit_func_output(out)
    return bb.finalize()["f"]


def test_per_sample_sizes_pack_at_offsets_in_n():
    packed = arena_function(_chain_function())
    pairs = [sorted(r.values()) for _, r in kernel_argument_ranges(packed) if len(r) == 2]
    # t0 and t2 share bytes: t0 is dead once t1 is written
    assert pairs == [[(0, 64), (64, 128)], [(0, 64), (64, 128)]]
    assert "R.shape([128 * n])" in packed.script()


def test_mixed_fixed_and_per_sample_sizes_are_left_to_relax():
    with pytest.raises(ArenaDeclined, match="scales with"):
        arena_function(_chain_function(last_size=4096))


def test_resnet18_cifar_batch_64_plans_its_live_peak():
    """Two 64x64x32x32 float tensors (16 MiB each) are live at once in every basic block of the
    first stage: no plan can do with less, and Relax's planned 40 MiB."""
    from cnncompiler.backends.cpu.memory import planned_memory

    memory = planned_memory(*relax_module(spec_path("resnet18_cifar"), (64,)), (64,))
    assert memory["main_b64"]["plan"] == "arena"
    assert memory["main_b64"]["storages"] == 32 * 2**20 < memory["main_b64"]["relax_storages"]


SOFTMAX_NET = """
name: softmax_tiny
input: [3, 32, 32]
layers:
  - {name: conv, type: conv2d, filters: 32, kernel: 3, padding: 1}
  - {name: prob, type: softmax}
  - {name: norm, type: lrn, size: 5, alpha: 1.0e-4, beta: 0.75, k: 2.0}
  - {type: global_avgpool}
  - {type: flatten}
  - {name: fc, type: dense, units: 10}
"""


def test_scratch_is_counted_per_function(tmp_path):
    """A function counts the scratch of the kernels it calls: the softmax's maxima and sums
    grow with the batch (the LRN's one row a thread does not), and batch 1 is not charged
    batch 8's."""
    from cnncompiler.backends.cpu.memory import planned_memory

    path = write_spec(tmp_path, "softmax_tiny", SOFTMAX_NET)
    memory = planned_memory(*relax_module(path, (1, 8)), (1, 8))
    one, eight = memory["main_b1"]["scratch"], memory["main_b8"]["scratch"]
    assert 0 < one < eight
    assert memory["main"]["fixed"] + memory["main"]["per_sample"] >= one

"""Precision ``mixed`` for CUDA, checked without a GPU: conv (groups 1) and dense kernels are
scheduled on tensor cores (WMMA calls in their TIR, HMMA instructions in the fatbin's SASS),
every other kernel keeps its float32 schedule; its numerics, emulated with numpy (float16
operands, float32 accumulation), stay within the bound the README states; the CPU refuses it;
a weight float16 cannot hold is refused naming its layer.

One worker process builds every artifact (TVM must load its CUDA runtime when it is imported,
and importing TVM's tensor-core intrinsics alone takes about a minute on two cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.backends.precision import check_fp16_weights, check_precision, run_mixed_reference
from cnncompiler.graph.precision import FP16_MAX, tensor_core_layers
from cnncompiler.errors import CnncError, CompileError
from cnncompiler.graph import load_checked
from cnncompiler.graph.signature import kernel_name
from cnncompiler.passes import optimize
from cnncompiler.reference import init_params, run_reference
from cnncompiler.runtime import artifact as art

from compile_helpers import lively_params, sample_input, spec_path
from conftest import HAVE_NVCC, ROOT
from test_compile_layers import family_spec

needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason="nvcc (the CUDA toolkit) is not installed")

# small specs that hold every kind of tensor-core kernel: strided, padded, dilated, 1x1,
# rectangular and 1-D convs, grouped and depthwise ones (which stay float32), fused conv +
# batch norm + residual add + relu, dense layers
MIXED_SPECS = {"resnet_tiny": None, "family_conv2d": "conv2d", "family_conv1d": "conv1d",
               "family_dense": "dense"}
# the documented bound of mixed against float64: max |error| / max |logit|
MIXED_RTOL = 1e-2

WORKER = textwrap.dedent("""
    import json, sys
    from cnncompiler.backends.cuda import prepare_process
    prepare_process()
    import tvm
    from cnncompiler.backends.cuda import schedule_checked
    from cnncompiler.backends.cuda_tensorcore import uses_tensor_cores
    from cnncompiler.backends.lower import build_module
    from cnncompiler.compiler import build_artifact
    from cnncompiler.graph import load_checked
    from cnncompiler.passes import optimize
    from cnncompiler.spec import load_spec

    jobs = json.loads(sys.argv[1])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    results = {}
    for stem, (path, out) in jobs.items():
        spec = load_spec(path)
        build_artifact(spec.text, spec.path, "cuda", out, precision="mixed")
        g, _ = load_checked(path)
        with target:
            mod = schedule_checked(build_module(optimize(g, level=2)[0]), target, "mixed")
        results[stem] = {gv.name_hint: uses_tensor_cores(f) for gv, f in mod.functions_items()
                         if isinstance(f, tvm.tirx.PrimFunc)}
    print(json.dumps({"tir": results,
                      "imported": "tvm.s_tir.tensor_intrin.cuda" in sys.modules}))
""")


def spec_file(root: Path, stem: str) -> Path:
    family = MIXED_SPECS[stem]
    if family is None:
        return spec_path(stem)
    path = root / f"{stem}.yaml"
    path.write_text(family_spec(family))
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """stem -> (spec path, artifact directory, {kernel: computes on tensor cores in TIR}),
    and "imported": whether each worker imported TVM's tensor-core intrinsics module. The
    first worker builds one spec with an empty intrinsics cache, the second the others."""
    root = tmp_path_factory.mktemp("mixed")
    jobs = {stem: (str(spec_file(root, stem)), str(root / stem)) for stem in MIXED_SPECS}
    cache = root / "cache"
    results, imported = {}, []
    for part in (list(jobs)[-1:], list(jobs)[:-1]):
        proc = subprocess.run([sys.executable, "-c", WORKER,
                               json.dumps({stem: jobs[stem] for stem in part})],
                              cwd=ROOT, capture_output=True, text=True, timeout=1200,
                              env={**os.environ, "CNNC_CACHE": str(cache)})
        assert proc.returncode == 0, proc.stderr[-4000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        results |= out["tir"]
        imported.append(out["imported"])
    built = {stem: (Path(path), Path(out), results[stem]) for stem, (path, out) in jobs.items()}
    return built | {"imported": imported}


def expected_tensor_core_kernels(path: Path) -> set[str]:
    g, _ = load_checked(path)
    return {kernel_name(n) for n in tensor_core_layers(optimize(g, level=2)[0])}


# -- the schedules -----------------------------------------------------------------------------

@needs_nvcc
@pytest.mark.tvm
@pytest.mark.parametrize("stem", list(MIXED_SPECS))
def test_every_conv_and_dense_kernel_calls_tensor_cores_in_its_tir(mixed, stem):
    path, directory, tir = mixed[stem]
    want = expected_tensor_core_kernels(path)
    assert want, "the spec has no conv or dense kernel"
    on_tensor_cores = {k for k, uses in tir.items() if uses}
    assert on_tensor_cores == want
    manifest = art.verify(directory, "cuda")
    assert manifest["precision"] == "mixed"
    report = json.loads((directory / art.REPORT).read_text())
    assert report["precision"] == {"policy": "mixed", "tensor_core_kernels": sorted(want)}


@needs_nvcc
@pytest.mark.tvm
def test_grouped_and_depthwise_convs_keep_their_float32_schedules(mixed):
    _, _, tir = mixed["family_conv2d"]
    for kernel in ("groups2", "depthwise", "depthwise_x2_stride2"):
        assert tir[kernel] is False


@needs_nvcc
@pytest.mark.tvm
def test_later_compiles_register_the_intrinsics_from_the_cache(mixed):
    """The first worker imported TVM's tensor-core intrinsics (a minute) and kept the five
    it uses in the cache; the second registered them from there, without that import, and
    its kernels passed the TIR and SASS tests above like the first's."""
    assert mixed["imported"] == [True, False]


def cuda_tool(name: str) -> str | None:
    """cuobjdump / nvdisasm: from the CUDA toolkit or the pip packages nvidia-cuda-*."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for candidate in Path(root).glob(f"*/bin/{name}"):
            return str(candidate)
    return None


def fatbin(library: Path) -> bytes:
    """The fatbin TVM embeds in its own device blob (not in .nv_fatbin): magic 0xBA55ED50,
    a 16-byte header whose u64 at offset 8 is the payload size."""
    data = library.read_bytes()
    start = data.find(struct.pack("<I", 0xBA55ED50))
    assert start >= 0, "no fatbin in the library"
    size = struct.unpack_from("<Q", data, start + 8)[0]
    return data[start:start + 16 + size]


def sass_by_function(directory: Path, tmp_path: Path) -> dict[str, str]:
    tool = cuda_tool("cuobjdump")
    if tool is None:
        pytest.skip("cuobjdump is not installed (pip install nvidia-cuda-cuobjdump)")
    blob = tmp_path / "model.fatbin"
    blob.write_bytes(fatbin(directory / art.LIBRARY))
    out = subprocess.run([tool, "-sass", str(blob)], capture_output=True, text=True,
                         check=True).stdout
    parts = re.split(r"^\s*Function : (\S+)\s*$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@needs_nvcc
@pytest.mark.tvm
@pytest.mark.parametrize("stem", ["resnet_tiny", "family_conv2d"])
def test_tensor_core_kernels_hold_hmma_instructions(mixed, stem, tmp_path):
    path, directory, _ = mixed[stem]
    want = expected_tensor_core_kernels(path)
    sass = sass_by_function(directory, tmp_path)
    with_hmma = {f for f, text in sass.items() if re.search(r"\bHMMA\.", text)}
    owners = {k for k in want if any(f.startswith(k + "_kernel") for f in with_hmma)}
    assert owners == want
    others = [f for f in with_hmma if not any(f.startswith(k + "_kernel") for k in want)]
    assert not others, f"HMMA in kernels that should stay float32: {others}"


# -- the GEMM form, run on the CPU --------------------------------------------------------------

def kernels_of(path: Path) -> dict:
    from cnncompiler.backends.lower import build_module

    g, _ = load_checked(path)
    mod = build_module(optimize(g, level=2)[0])
    return {gv.name_hint: f for gv, f in mod.functions_items() if gv.name_hint != "main"}


def run_on_cpu(func, arrays: list[np.ndarray], out_shape) -> np.ndarray:
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target="llvm")
    dev = tvm.cpu(0)
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in arrays], out)
    return out.numpy()


GEMM_KERNELS = {"family_conv2d": ["k3_stride2", "asym_pad", "dilation_2x3_same", "valid",
                                  "k1_stride3", "stride_2x1"],
                "family_conv1d": ["k5_dilation2"], "resnet_tiny": ["layer1_0_conv2", "fc"]}


@pytest.mark.tvm
@pytest.mark.parametrize("stem", list(GEMM_KERNELS))
def test_the_padded_float16_gemm_computes_the_kernel_on_rounded_operands(stem, tmp_path):
    """Steps 1-3 of the tensor-core schedule (float16 operands, the GEMM re-indexing with the
    batch as its own axis, padding to whole tiles, producers inlined), built for the CPU:
    the same output as the float32 kernel given the input and weight rounded to float16."""
    from tvm import tirx

    from cnncompiler.backends.cuda_tensorcore import gemm_form
    from cnncompiler.backends.precision import round_fp16

    kernels = kernels_of(spec_file(tmp_path, stem))
    rng = np.random.default_rng(0)
    batch = 3
    for name in GEMM_KERNELS[stem]:
        func = kernels[name]
        *ins, out = func.params  # buffers, the symbolic batch in their shapes
        shapes = [[int(d) if isinstance(d, tirx.IntImm) else batch for d in b.shape]
                  for b in (*ins, out)]
        arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes[:-1]]
        rounded = [round_fp16(a) if i == 0 or b.name.endswith("_weight") else a
                   for i, (a, b) in enumerate(zip(arrays, ins))]
        want = run_on_cpu(func, rounded, shapes[-1])
        got = run_on_cpu(gemm_form(func), arrays, shapes[-1])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
        plain = run_on_cpu(func, arrays, shapes[-1])
        assert np.abs(plain - want).max() > 1e-4, f"{name}: no rounding happened"


@pytest.mark.tvm
def test_a_one_row_gemm_keeps_its_float32_schedule():
    """Specialised for batch 1, a dense layer (and a conv with one output pixel) is a
    matrix-vector product: no rows to put on tensor cores; at batch 4 they have them."""
    from tvm import tirx

    from cnncompiler.backends.cuda_tensorcore import gemm_form
    from cnncompiler.backends.lower import build_module

    g, _ = load_checked(spec_path("lenet5"))
    mod = build_module(optimize(g, level=2)[0], batch_sizes=(1, 4))
    on_tensor_cores = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and gv.name_hint.startswith(("c5", "f6", "output")):
            rows = func.params[-1].shape[0]
            batch = int(rows) if isinstance(rows, tirx.IntImm) else "n"
            on_tensor_cores[(gv.name_hint.rstrip("0123456789"), batch)] = \
                gemm_form(func) is not None
    assert on_tensor_cores == {(k, b): b != 1 for k in ("c", "f", "output") for b in (1, 4, "n")}


@pytest.mark.tvm
def test_a_gemm_kernel_the_schedule_fails_on_is_a_compile_error(monkeypatch):
    """mixed never quietly runs a conv or dense kernel in float32: a failure names it."""
    import tvm

    from cnncompiler.backends import cuda_tensorcore

    def fail(func):
        raise RuntimeError("# the IR\n  ^^^\nError message: The scope is not a stage pipeline.\n"
                           "Definition of a scope that is a stage pipeline:\n- ...")

    monkeypatch.setattr(cuda_tensorcore, "_schedule_gemm", fail)
    kernels = kernels_of(spec_path("resnet_tiny"))
    with pytest.raises(CompileError, match="kernel 'fc': the tensor-core schedule failed: The "
                       "scope is not a stage pipeline.; compile with --precision fp32"):
        cuda_tensorcore.schedule_tensor_core(tvm.ir.GlobalVar("fc"), kernels["fc"])
    assert cuda_tensorcore.schedule_tensor_core(tvm.ir.GlobalVar("l_3"), kernels["l_3"]) is None


# -- numerics, emulated on the CPU -------------------------------------------------------------

def mixed_and_fp32_errors(stem: str) -> tuple[dict, dict, dict]:
    """Each output's error (max |error| / max |float64 output|) under mixed (emulated) and in
    float32, against float64, with batch norms calibrated as tests/compile_helpers does; and
    whether mixed keeps float64's top-1."""
    g, _ = load_checked(spec_path(stem))
    x = sample_input(g.graph["input_shape"], 2)
    params, _ = lively_params(g, x)
    optimized = optimize(g, level=2)[0]
    want = run_reference(g, x.astype(np.float64), params, dtype=np.float64)
    fp32 = run_reference(optimized, x, params)
    mixed = run_mixed_reference(optimized, x, params)

    def error(got):
        return {k: float(np.abs(got[k] - want[k]).max() / np.abs(want[k]).max()) for k in want}

    top1 = {k: bool((mixed[k].argmax(-1) == want[k].argmax(-1)).all()) for k in want}
    return error(mixed), error(fp32), top1


@pytest.mark.parametrize("stem", ["lenet5", "resnet_tiny", "resnet18_cifar"])
def test_mixed_stays_within_the_documented_bound(stem):
    """float16 operands and float32 accumulation: within MIXED_RTOL of the largest logit,
    with float64's top-1, and measurably not float32 (the rounding happens)."""
    mixed, fp32, top1 = mixed_and_fp32_errors(stem)
    for name, error in mixed.items():
        assert 100 * fp32[name] < error < MIXED_RTOL, (name, error, fp32[name])
        assert top1[name]


@pytest.mark.parametrize("stem", ["mobilenet_v1_cifar", "tdnn"])
def test_mixed_loses_at_most_float16s_share_more_than_float32(stem):
    """Where a net amplifies rounding (random calibrated batch norms on a net that float32
    already leaves 1e-5 off), mixed may pass MIXED_RTOL, but by no more than the ratio of
    float16's unit roundoff to float32's (2**13) over float32's own error."""
    mixed, fp32, top1 = mixed_and_fp32_errors(stem)
    for name, error in mixed.items():
        assert error < 2 ** 13 * fp32[name], (name, error, fp32[name])
        assert top1[name]


def test_rounding_to_float16_is_applied_to_tensor_core_layers_only():
    g, _ = load_checked(spec_path("mobilenet_v1_cifar"))
    names = tensor_core_layers(optimize(g, level=2)[0])
    assert names and not any("dw" in n and "pw" not in n for n in names)


# -- the policy's errors -----------------------------------------------------------------------

def test_the_cpu_refuses_mixed_as_a_cuda_policy(tmp_path):
    with pytest.raises(CompileError, match="precision 'mixed' is a CUDA policy.*--target cuda"):
        cc.compile(spec_path("lenet5"), target="cpu", precision="mixed",
                   output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CompileError, match="unknown precision 'fp8'; use one of fp32, mixed"):
        check_precision("fp8", "cuda")
    assert check_precision(None, "cpu") == "fp32"
    with pytest.raises(CompileError, match=r"needs tensor cores \(sm_70 or newer\).*sm_61"):
        check_precision("mixed", "cuda", "sm_61")
    assert check_precision("mixed", "cuda", "sm_80") == "mixed"


def test_the_cli_refuses_mixed_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cnncompiler", "compile",
                           str(spec_path("lenet5")), "--precision", "mixed",
                           "-o", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert "is a CUDA policy" in proc.stderr


def big_weight_params(g, layer: str, value: float) -> dict:
    params = init_params(g, 0)
    key = f"{layer}.weight"
    params[key] = params[key].copy()
    params[key].flat[3] = value
    return params


def test_a_weight_outside_float16_is_refused_naming_its_layer():
    g, _ = load_checked(spec_path("resnet_tiny"))
    optimized = optimize(g, level=2)[0]
    check_fp16_weights(optimized, init_params(g, 0))
    with pytest.raises(CompileError, match=r"layer 'layer1\.0\.conv2': a weight of magnitude "
                       r"(69999\.\d|70000)\b.*outside float16's range \(\|w\| <= 65504\)"):
        check_fp16_weights(optimized, big_weight_params(g, "layer1.0.conv2", 70000.0))


def test_a_weight_that_batch_norm_folding_takes_past_float16_is_refused():
    g, _ = load_checked(spec_path("resnet_tiny"))
    params = big_weight_params(g, "layer1.0.conv1", 7000.0)
    var = "layer1.0.bn1.running_var"
    params[var] = np.full_like(params[var], 1e-2)  # the folded scale is 1 / sqrt(var) = 10
    assert 7000.0 < FP16_MAX
    with pytest.raises(CompileError, match=r"layer 'layer1\.0\.conv1'.*batch norm folded"):
        check_fp16_weights(optimize(g, level=2)[0], params)


@needs_nvcc
@pytest.mark.tvm
def test_compiling_mixed_with_out_of_range_weights_fails_before_building(tmp_path):
    from cnncompiler.runtime.weights import write_weights

    g, _ = load_checked(spec_path("lenet5"))
    params = init_params(g, 0)
    first = next(k for k in params if k.endswith(".weight"))
    params[first] = params[first] * 0 + 1e5
    write_weights(tmp_path / "w.safetensors", params)
    with pytest.raises(CnncError, match=r"outside float16's range"):
        cc.compile(spec_path("lenet5"), target="cuda", precision="mixed",
                   weights=tmp_path / "w.safetensors", output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / art.MANIFEST).exists()


@needs_nvcc
@pytest.mark.tvm
def test_loading_weights_float16_cannot_hold_into_a_mixed_build_keeps_the_old_ones(mixed):
    _, directory, _ = mixed["resnet_tiny"]
    model = cc.load(directory)
    before = model.params
    with pytest.raises(CnncError, match=r"layer 'layer1\.0\.conv2': a weight of magnitude "
                       r"(69999\.\d|70000)\b.*keeps its weights"):
        model.load_params(big_weight_params(model.graph, "layer1.0.conv2", 70000.0))
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())
    model.load_params(init_params(model.graph, 1))  # in range: taken


@needs_nvcc
@pytest.mark.tvm
def test_a_mixed_build_refuses_to_run_weights_trained_past_float16(mixed, monkeypatch):
    from cnncompiler.errors import NonFiniteError

    _, directory, _ = mixed["resnet_tiny"]
    model = cc.load(directory)
    trained = big_weight_params(model.graph, "layer1.0.conv1", 1e5)

    def pull_trained_weights():  # what a trainer's last step leaves on the device
        model._params, model._args = trained, None
    monkeypatch.setattr(model, "_sync_from_training", pull_trained_weights)
    with pytest.raises(NonFiniteError, match=r"layer 'layer1\.0\.conv1'.*--precision fp32"):
        model.predict(np.zeros((1, *model.input_shape), np.float32))

"""CUDA builds, here without a GPU: every spec in specs/ compiles to an artifact whose library
holds device code (a fatbin, magic bytes 50 ed 55 ba), one device kernel per layer kernel;
without nvcc the compile fails with a message that says what to install. Running the code
needs a GPU: those tests are marked and skip here with the reason.

All the specs are compiled by ONE worker process (TVM must load its CUDA runtime when it is
imported, which this test process did long ago): it is what ``cc.compile(target="cuda")`` does
for one spec, ``build_artifact`` in a process prepared by ``backends.cuda.prepare_process``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.errors import ArtifactError, CnncError, CompileError
from cnncompiler.graph import load_checked
from cnncompiler.passes import optimize
from cnncompiler.runtime import artifact as art

from compile_helpers import assert_close, lively_params, sample_input, spec_path
from test_compile_layers import FAMILIES, family_spec
from conftest import HAVE_NVCC, ROOT, classic_specs, needs_gpu

pytestmark = [pytest.mark.tvm,
              pytest.mark.skipif(not HAVE_NVCC, reason="nvcc (the CUDA toolkit) is not installed")]

STEMS = [p.stem for p in classic_specs()]
# every layer type, one spec per family of tests/test_compile_layers.py (at -O2, so point-wise
# layers are compiled both fused into an epilogue and on their own)
FAMILY_STEMS = [f"family_{family}" for family in FAMILIES]
FATBIN_MAGIC = bytes.fromhex("50ed55ba")

WORKER = textwrap.dedent("""
    import json, sys, traceback
    from cnncompiler.backends.cuda import prepare_process
    prepare_process()
    from cnncompiler.compiler import build_artifact
    from cnncompiler.spec import load_spec

    jobs = json.loads(sys.argv[1])
    results = {}
    for stem, (path, out) in jobs.items():
        spec = load_spec(path)
        try:
            build_artifact(spec.text, spec.path, "cuda", out)
            results[stem] = None
        except Exception as exc:
            results[stem] = "".join(traceback.format_exception_only(exc)).strip()
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every spec compiled for CUDA: stem -> (artifact directory, error or None). Two workers
    share the specs: nvcc and TVM's codegen each keep one core busy."""
    root = tmp_path_factory.mktemp("cuda")
    paths = {stem: spec_path(stem) for stem in STEMS}
    for family in FAMILIES:
        paths[f"family_{family}"] = root / f"family_{family}.yaml"
        paths[f"family_{family}"].write_text(family_spec(family))
    stems = list(paths)
    workers = max(1, min(2, os.cpu_count() or 1))
    procs = []
    for i in range(workers):
        jobs = {stem: (str(paths[stem]), str(root / stem)) for stem in stems[i::workers]}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(jobs)],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = {}
    for proc in procs:
        out, err = proc.communicate(timeout=1500)
        assert proc.returncode == 0, err[-4000:]
        results |= json.loads(out.strip().splitlines()[-1])
    return {stem: (root / stem, results[stem]) for stem in stems}


@pytest.fixture
def never_loaded(monkeypatch):
    import tvm

    def refuse(*args, **kwargs):
        pytest.fail(f"the library was loaded: tvm.runtime.load_module{args}")

    monkeypatch.setattr(tvm.runtime, "load_module", refuse)


@pytest.mark.parametrize("stem", STEMS + FAMILY_STEMS)
def test_spec_compiles_to_device_code(built, stem):
    directory, error = built[stem]
    assert error is None, error
    data = (directory / art.LIBRARY).read_bytes()
    assert FATBIN_MAGIC in data, "no fatbin in model.so: the library holds no device code"
    manifest = art.verify(directory, "cuda")
    assert manifest["target"]["kind"] == "cuda" and manifest["target"]["arch"] == "sm_90"
    assert manifest["build"]["device_code"] == "fatbin"
    assert "nvcc" in manifest["build"]


def test_cuda_builds_default_to_fp32(built):
    """Precision ``mixed`` (tests/test_cuda_mixed.py) is asked for; the default is fp32."""
    directory, error = built["resnet_tiny"]
    assert error is None, error
    assert art.verify(directory, "cuda")["precision"] == "fp32"
    report = json.loads((directory / art.REPORT).read_text())
    assert report["precision"] == {"policy": "fp32", "tensor_core_kernels": []}


def device_kernels(directory: Path) -> set[str]:
    """The names of the device functions in the library's fatbin (its cubin's .text.NAME)."""
    data = (directory / art.LIBRARY).read_bytes()
    return {m.decode() for m in re.findall(rb"\.text\.([A-Za-z_]\w*)", data)}


@pytest.mark.parametrize("stem", ["resnet_tiny", "resnet18_cifar", "googlenet", "tdnn"])
def test_one_device_kernel_per_layer_kernel(built, stem):
    """Each PrimFunc of the lowered module (a fused conv + batch norm + add + relu among
    them) is one CUDA kernel: its pad and epilogue are inlined, not launched on their own."""
    from cnncompiler.backends.lower import build_module

    directory, error = built[stem]
    assert error is None, error
    g, _ = load_checked(spec_path(stem))
    mod = build_module(optimize(g, level=2)[0])
    funcs = sorted((gv.name_hint for gv in mod.get_global_vars() if gv.name_hint != "main"),
                   key=len, reverse=True)
    kernels = device_kernels(directory)
    assert kernels, "no device function names found in the fatbin"
    per_func = {f: [] for f in funcs}
    for k in kernels:
        owner = next((f for f in funcs if k.startswith(f + "_")), None)
        assert owner is not None, f"device kernel {k} belongs to no layer's PrimFunc"
        per_func[owner].append(k)
    split = {f: ks for f, ks in per_func.items() if len(ks) != 1}
    assert not split, f"PrimFuncs that are not exactly one device kernel: {split}"


def test_every_kernel_of_the_roi_family_runs_on_the_device(built):
    """RoI pool and align take their own CUDA schedule (dlight's rules would leave them
    unscheduled, built as host code): each of their PrimFuncs gives device kernels, one per
    stage (the box tables, then the pooling)."""
    from cnncompiler.backends.lower import build_module

    directory, error = built["family_roi"]
    assert error is None, error
    g, _ = load_checked(directory.parent / "family_roi.yaml")
    mod = build_module(optimize(g, level=2)[0])
    funcs = [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint != "main"]
    kernels = device_kernels(directory)
    missing = [f for f in funcs if not any(k.startswith(f + "_kernel") for k in kernels)]
    assert not missing, f"PrimFuncs with no device kernel: {missing}"


TRAIN_WORKER = textwrap.dedent("""
    import json, os, re, sys
    from pathlib import Path
    from cnncompiler.backends.cuda import find_nvcc, prepare_process
    prepare_process()
    os.environ["PATH"] = str(Path(find_nvcc()).parent) + os.pathsep + os.environ["PATH"]
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.train_build import compile_train_module
    from cnncompiler.graph import load_checked
    from cnncompiler.passes import optimize
    from cnncompiler.spec.losses import loss_terms

    g, _ = load_checked(sys.argv[1])
    g, _ = optimize(g, passes=["eliminate-dead"])
    train = g.graph["train"]
    terms = [t.to_json() for t in loss_terms(train.loss, g.graph["outputs"], train.loss_weights)]
    executable, _ = compile_train_module(g, terms, "adam", parse_target("cuda"))
    path = Path(sys.argv[2])
    executable.export_library(str(path))
    data = path.read_bytes()
    print(json.dumps(sorted({m.decode() for m in re.findall(rb"\\.text\\.([A-Za-z_]\\w*)", data)})))
""")

DETECTOR = """\
name: two_heads_on_boxes
inputs:
  image: [3, 16, 16]
  rois: {shape: [null, 5], batched: false}
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3, stride: 2, padding: 1, activation: relu}
  - {name: align, type: roi_align, inputs: [conv, rois], output_size: 3, spatial_scale: 0.5,
     sampling_ratio: 2, aligned: true}
  - {name: flat, type: flatten}
  - {name: cls, type: dense, units: 3}
  - {name: bbox, type: dense, units: 4, inputs: [flat]}
outputs: [cls, bbox]
train:
  loss: {cls: softmax_cross_entropy, bbox: smooth_l1}
"""


@pytest.mark.slow
def test_training_steps_build_device_code_for_every_kernel(tmp_path):
    """The training step for CUDA goes through the same checked schedules as inference: a
    kernel dlight would leave to the host is refused, so every kernel, the RoI layer's
    forward and gradient among them, is device code."""
    spec = tmp_path / "detector.yaml"
    spec.write_text(DETECTOR)
    proc = subprocess.run([sys.executable, "-c", TRAIN_WORKER, str(spec),
                           str(tmp_path / "train.so")], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    kernels = json.loads(proc.stdout.strip().splitlines()[-1])
    for stem in ("align_kernel", "align_grad_dx0_kernel", "conv_kernel", "adam_update"):
        assert any(k.startswith(stem) for k in kernels), (stem, kernels)


def test_a_kernel_left_without_a_gpu_schedule_is_refused():
    from tvm import te

    import tvm

    from cnncompiler.backends.cuda import CUDA_SCHEDULES, _binding_threads, schedule_checked
    from cnncompiler.backends.rules import CUDA_FAMILIES

    x = te.placeholder((4, 4), name="x")
    func = te.create_prim_func([x, te.compute((4, 4), lambda i, j: x[i, j] * 2, name="y")])
    gv = tvm.ir.GlobalVar("double")
    with pytest.raises(CompileError, match="kernel 'double' has no GPU schedule"):
        _binding_threads(gv, func)
    with tvm.target.Target({"kind": "cuda", "arch": "sm_90"}) as target:
        scheduled = schedule_checked(tvm.IRModule({gv: func}), target)[gv]
    assert "threadIdx" in scheduled.script()
    assert set(CUDA_SCHEDULES) == set(CUDA_FAMILIES) - {"dlight"}


def test_cuda_artifact_is_refused_on_the_cpu(built, never_loaded):
    directory, _ = built["lenet5"]
    with pytest.raises(ArtifactError, match="compiled for target 'cuda'.*--target cpu"):
        cc.load(directory, device="cpu")


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this machine has a GPU")
def test_cuda_artifact_says_it_needs_a_gpu(built, never_loaded):
    directory, _ = built["lenet5"]
    model = cc.load(directory)
    assert model.target == "cuda"
    with pytest.raises(CnncError, match="compiled for CUDA, but this machine has no CUDA GPU"):
        model.predict(np.zeros((1, 1, 32, 32), np.float32))


def test_compile_for_cuda_through_the_api(tmp_path):
    """From a process that already imported TVM: the compile runs in a worker."""
    model = cc.compile(spec_path("lenet5"), target="cuda", arch="sm_80", batch_sizes=(2,),
                       output_dir=tmp_path / "lenet5")
    assert model.target == "cuda" and model.batch_sizes == (2,)
    assert model.manifest["target"]["arch"] == "sm_80"
    assert FATBIN_MAGIC in (tmp_path / "lenet5" / art.LIBRARY).read_bytes()


def test_compile_for_cuda_reports_worker_errors(tmp_path):
    with pytest.raises(CompileError, match="unknown CUDA architecture 'sm_1'"):
        cc.compile(spec_path("lenet5"), target="cuda", arch="sm_1", output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_missing_nvcc_is_a_clear_error(no_nvcc, tmp_path):
    from cnncompiler.backends.cuda import find_nvcc

    with pytest.raises(CompileError) as info:
        find_nvcc()
    message = str(info.value)
    assert "no CUDA compiler found" in message and "install the CUDA toolkit" in message
    with pytest.raises(CompileError, match="no CUDA compiler found"):
        cc.compile(spec_path("lenet5"), target="cuda", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nvcc_is_found_through_cuda_home(monkeypatch, tmp_path):
    from cnncompiler.backends.cuda import find_nvcc

    fake = tmp_path / "toolkit" / "bin" / "nvcc"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "toolkit"))
    assert find_nvcc() == str(fake)


# -- on a GPU ------------------------------------------------------------------------------------

@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("stem", ["lenet5", "resnet_tiny", "mobilenet_v1_cifar", "tdnn"])
def test_cuda_model_matches_the_reference_on_a_gpu(built, stem):
    directory, error = built[stem]
    assert error is None, error
    model = cc.load(directory, device="cuda")
    x = sample_input(model.input_shape, 2)
    params, want = lively_params(model.graph, x)
    model.load_params(params)
    assert_close(model.predict(x), want[model.output_names[0]])


@pytest.mark.gpu
@needs_gpu
def test_cuda_model_runs_any_batch_size_on_a_gpu(built):
    directory, _ = built["resnet_tiny"]
    model = cc.load(directory, device="cuda")
    x = sample_input(model.input_shape, 5)
    y = model.predict(x)
    for n in (1, 3):
        assert_close(model.predict(np.ascontiguousarray(x[:n])), y[:n], rtol=1e-5)


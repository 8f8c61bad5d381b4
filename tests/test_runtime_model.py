"""The compiled model's API: predict and what it refuses, threads, weights in and out, saving,
specialised batch sizes, new weights seeded like PyTorch's, and deployment with TVM's runtime
alone (no compiler library in the process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.errors import CnncError, InputError
from cnncompiler.graph import load_checked
from cnncompiler.reference import init_params, run_reference

from compile_helpers import assert_close, lively_params, sample_input, spec_path
from conftest import ROOT, needs_torch

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    return cc.compile(spec_path("lenet5"), output_dir=tmp_path_factory.mktemp("m") / "lenet5")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """resnet_tiny, specialised for batches of 1 and 4."""
    return cc.compile(spec_path("resnet_tiny"), batch_sizes=(1, 4),
                      output_dir=tmp_path_factory.mktemp("m") / "resnet_tiny")


def x_for(model, n=2, seed=0):
    return sample_input(model.input_shape, n, seed)


def reference(model, x, params=None):
    return run_reference(model.graph, x, params or model.params)[model.output_names[0]]


# -- predict -----------------------------------------------------------------------------------

def test_predict_matches_the_reference(lenet):
    x = x_for(lenet, 3)
    y = lenet.predict(x)
    assert y.dtype == np.float32 and y.shape == (3, 10)
    assert_close(y, reference(lenet, x))
    assert_close(lenet(x), y, rtol=0)


EXPECTED = "expected x: float32[N, 1, 32, 32]"


@pytest.mark.parametrize("make,match", [
    (lambda: np.zeros((2, 1, 32, 32), np.complex64), "dtype complex64, not real numbers"),
    (lambda: np.array([["a"]]), "dtype <U1, not real numbers"),
    (lambda: [[1.0], [2.0, 3.0]], "received list, which does not convert"),
    (lambda: np.zeros((1, 32, 32), np.float32), "one sample .* without a batch axis.*x\\[None\\]"),
    (lambda: np.zeros((2, 32, 32), np.float32), "received shape \\(2, 32, 32\\)"),
    (lambda: np.zeros((2, 1, 28, 28), np.float32), "received shape \\(2, 1, 28, 28\\)"),
    (lambda: np.zeros((2, 3, 32, 32), np.float32), "received shape \\(2, 3, 32, 32\\)"),
    (lambda: np.zeros((2, 1, 1, 32, 32), np.float32), "received shape"),
    (lambda: np.zeros((0, 1, 32, 32), np.float32), "empty batch"),
    (lambda: np.float32(1.0), "received shape"),
])
def test_predict_refuses_what_does_not_fit(lenet, make, match):
    with pytest.raises(InputError, match=match) as info:
        lenet.predict(make())
    assert EXPECTED in str(info.value), "the error shows the expected input"


@pytest.mark.parametrize("convert", [
    lambda x: x.astype(np.float64), lambda x: x.astype(np.float16).astype(np.float64),
    lambda x: (x * 4).astype(np.int32), lambda x: x.tolist(),
    lambda x: np.ascontiguousarray(np.concatenate([x, x], axis=-1))[..., ::2],
], ids=["float64", "float16-values", "int32", "list", "strided"])
def test_any_real_array_is_converted_as_fit_converts_it(lenet, convert):
    """predict, fit and evaluate take the same inputs: any real-valued array, as float32."""
    x = x_for(lenet, 2, seed=4)
    given = convert(x)
    want = lenet.predict(np.ascontiguousarray(np.asarray(given, np.float32)))
    np.testing.assert_array_equal(lenet.predict(given), want)


@pytest.mark.torch
def test_tensors_of_other_libraries_are_taken(lenet):
    torch = pytest.importorskip("torch")
    x = x_for(lenet, 2, seed=5)
    np.testing.assert_array_equal(lenet.predict(torch.from_numpy(x)), lenet.predict(x))
    np.testing.assert_array_equal(lenet.predict(torch.from_numpy(x).double()), lenet.predict(x))
    with pytest.raises(InputError, match="requires grad: pass x.detach\\(\\)"):
        lenet.predict(torch.from_numpy(x).requires_grad_())


def test_outputs_are_the_callers_to_keep(lenet, tmp_path):
    """A later call changes no earlier result, even where the output is the input itself (an
    identity, removed at -O2), and changing the caller's input changes no result."""
    a, b = x_for(lenet, 2, seed=1), x_for(lenet, 2, seed=2)
    ya = lenet.predict(a)
    kept = ya.copy()
    lenet.predict(b)
    np.testing.assert_array_equal(ya, kept)
    spec = tmp_path / "same.yaml"
    spec.write_text("name: same\ninput: [2, 3]\nlayers:\n  - {name: i, type: identity}\n")
    same = cc.compile(spec, output_dir=tmp_path / "same")
    ya = same.predict(a[:, 0, :2, :3].copy())
    kept = ya.copy()
    same.predict(b[:, 0, :2, :3].copy())
    np.testing.assert_array_equal(ya, kept)
    x = b[:, 0, :2, :3].copy()
    y = same.predict(x)
    x += 1.0
    np.testing.assert_array_equal(y, b[:, 0, :2, :3])


def test_signature_and_repr(lenet):
    assert lenet.signature() == "predict(x: float32[N, 1, 32, 32]) -> {'output': float32[N, 10]}"
    assert "lenet5" in repr(lenet) and "target=cpu" in repr(lenet)


def test_threads_predicting_at_once_get_their_own_results(tiny):
    inputs = [x_for(tiny, 1 + i % 3, seed=i) for i in range(8)]
    serial = [tiny.predict(x) for x in inputs]
    start = threading.Barrier(8)
    results, errors = [[] for _ in inputs], []

    def work(i):
        try:
            start.wait()
            for _ in range(5):
                results[i].append(tiny.predict(inputs[i]))
        except Exception as exc:  # reported below, with the thread's number
            errors.append((i, exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i, runs in enumerate(results):
        assert len(runs) == 5
        for y in runs:
            np.testing.assert_array_equal(y, serial[i], err_msg=f"thread {i}")


# -- specialised batch sizes ---------------------------------------------------------------------

class Spy:
    """Stands between the model and its virtual machine, noting which function runs."""

    def __init__(self, vm, calls):
        self.vm, self.calls = vm, calls

    def __getitem__(self, name):
        self.calls.append(name)
        return self.vm[name]


def test_specialised_batch_sizes_are_used(tiny, monkeypatch):
    assert tiny.batch_sizes == (1, 4)
    assert tiny.manifest["batch_sizes"] == [1, 4]
    calls = []
    real = tiny._vm
    monkeypatch.setattr(tiny, "_vm", lambda: Spy(real(), calls))
    outputs = {n: tiny.predict(x_for(tiny, n, seed=7)) for n in (1, 4, 3, 5)}
    assert calls == ["main_b1", "main_b4", "main", "main"]
    x5 = x_for(tiny, 5, seed=7)
    for n, y in outputs.items():  # every function computes the same, sample by sample
        assert_close(y, reference(tiny, x5[:n]), what=f"batch {n}")


@pytest.mark.parametrize("sizes", [(0,), (-2,), (True,), ("4",), (2.0,)])
def test_batch_sizes_must_be_positive_integers(sizes, tmp_path):
    with pytest.raises(CnncError, match="batch size"):
        cc.compile(spec_path("lenet5"), batch_sizes=sizes, output_dir=tmp_path / "x")


# -- weights ---------------------------------------------------------------------------------------

@pytest.fixture
def fresh_tiny(tiny, tmp_path):
    """A private copy of resnet_tiny whose weights a test may change."""
    return cc.load(tiny.save(tmp_path / "tiny"))


def torch_twin_state(seed=0):
    import torch
    from torch_models import BUILDERS

    torch.manual_seed(seed)
    twin = BUILDERS["resnet_tiny"]().eval()
    with torch.no_grad():  # batch norms that do something
        for m in twin.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return twin


@needs_torch
def test_load_params_from_a_torch_state_dict(fresh_tiny):
    import torch

    twin = torch_twin_state()
    state = twin.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)
    fresh_tiny.load_params(state)
    x = x_for(fresh_tiny, 3)
    with torch.no_grad():
        want = twin(torch.from_numpy(x)).numpy()
    assert_close(fresh_tiny.predict(x), want)


@needs_torch
def test_load_params_from_safetensors_saved_by_torch(fresh_tiny, tmp_path):
    import torch
    from safetensors.torch import save_file

    twin = torch_twin_state(seed=1)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, str(path))
    fresh_tiny.load_params(path)
    x = x_for(fresh_tiny, 2)
    with torch.no_grad():
        want = twin(torch.from_numpy(x)).numpy()
    assert_close(fresh_tiny.predict(x), want)


def test_load_params_from_safetensors_written_with_numpy(fresh_tiny, tmp_path):
    from safetensors.numpy import save_file

    x = x_for(fresh_tiny, 2)
    params, want = lively_params(fresh_tiny.graph, x, seed=5)
    path = tmp_path / "w.safetensors"
    save_file(params, str(path))
    fresh_tiny.load_params(str(path))
    assert_close(fresh_tiny.predict(x), want[fresh_tiny.output_names[0]])


@pytest.mark.parametrize("edit,match", [
    (lambda p: p.update({"conv1.wieght": p["conv1.weight"]}),
     "unknown weight 'conv1.wieght'.*conv1.weight"),
    (lambda p: p.update({"fc.weight": np.zeros((10, 17), np.float32)}),
     "'fc.weight' has shape \\(10, 17\\); the spec needs \\(10, 16\\)"),
    (lambda p: p.pop("layer1.0.bn1.running_var"), "missing weights: layer1.0.bn1.running_var"),
    (lambda p: p.update({"fc.bias": np.full(10, np.nan, np.float32)}), "NaN or infinite"),
    (lambda p: p.update({"fc.bias": np.array(["a"] * 10)}), "dtype"),
])
def test_bad_weights_are_refused_and_change_nothing(fresh_tiny, edit, match):
    x = x_for(fresh_tiny, 1)
    before = fresh_tiny.predict(x)
    params = fresh_tiny.params
    params = {k: v * 2 for k, v in params.items()}
    edit(params)
    with pytest.raises(InputError, match=match):
        fresh_tiny.load_params(params)
    np.testing.assert_array_equal(fresh_tiny.predict(x), before)


def test_refusals_of_weights_list_every_problem(fresh_tiny):
    params = fresh_tiny.params
    params["fc.weight"] = np.zeros((3, 3), np.float32)
    params["extra"] = np.zeros(1, np.float32)
    params.pop("conv1.bias")
    with pytest.raises(InputError) as info:
        fresh_tiny.load_params(params)
    message = str(info.value)
    for part in ("fc.weight", "unknown weight 'extra'", "missing weights: conv1.bias"):
        assert part in message


def test_load_some_params_with_strict_false(fresh_tiny):
    x = x_for(fresh_tiny, 2)
    fc = {"fc.bias": np.arange(10, dtype=np.float32)}
    fresh_tiny.load_params(fc, strict=False)
    params = fresh_tiny.params
    np.testing.assert_array_equal(params["fc.bias"], fc["fc.bias"])
    assert_close(fresh_tiny.predict(x), reference(fresh_tiny, x, params))


def test_params_round_trip(fresh_tiny):
    x = x_for(fresh_tiny, 2)
    params, _ = lively_params(fresh_tiny.graph, x, seed=9)
    fresh_tiny.load_params(params)
    got = fresh_tiny.params
    assert set(got) == set(params)
    for k in params:
        np.testing.assert_array_equal(got[k], params[k])
    got["fc.bias"][:] = 100.0  # a copy: changing it changes nothing
    np.testing.assert_array_equal(fresh_tiny.params["fc.bias"], params["fc.bias"])
    y = fresh_tiny.predict(x)
    fresh_tiny.load_params(fresh_tiny.params)
    np.testing.assert_array_equal(fresh_tiny.predict(x), y)


def test_params_loaded_from_a_reading_are_not_aliased(fresh_tiny):
    params = fresh_tiny.params
    x = x_for(fresh_tiny, 1)
    fresh_tiny.load_params(params)
    y = fresh_tiny.predict(x)
    params["fc.bias"] += 5.0  # the caller's arrays stay the caller's
    np.testing.assert_array_equal(fresh_tiny.predict(x), y)


def test_loaded_weights_are_those_of_the_artifact_file(lenet):
    from safetensors.numpy import load_file

    from cnncompiler.runtime import artifact as art

    loaded = cc.load(lenet.directory)
    want = load_file(str(lenet.directory / art.WEIGHTS))
    got = loaded.params
    assert got.keys() == want.keys()
    for name, array in want.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], array)
    got["output.bias"][:] = 7.0  # a copy, though the model's weights are read in place
    np.testing.assert_array_equal(loaded.params["output.bias"], want["output.bias"])


# -- saving --------------------------------------------------------------------------------------

def test_save_and_load_keep_the_new_weights(fresh_tiny, tmp_path):
    x = x_for(fresh_tiny, 2)
    params, _ = lively_params(fresh_tiny.graph, x, seed=11)
    fresh_tiny.load_params(params)
    y = fresh_tiny.predict(x)
    out = fresh_tiny.save(tmp_path / "saved")
    again = cc.load(out)
    np.testing.assert_array_equal(again.predict(x), y)
    assert again.batch_sizes == (1, 4)
    for k, v in params.items():
        np.testing.assert_array_equal(again.params[k], v)


def test_save_in_place(fresh_tiny):
    x = x_for(fresh_tiny, 1)
    fresh_tiny.load_params({"fc.bias": np.ones(10, np.float32)}, strict=False)
    fresh_tiny.save(fresh_tiny.directory)
    again = cc.load(fresh_tiny.directory)  # the manifest's hashes were updated
    np.testing.assert_array_equal(again.predict(x), fresh_tiny.predict(x))


def test_save_refuses_to_overwrite_what_is_no_artifact(lenet, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CnncError, match="not a cnnc artifact"):
        lenet.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_compile_with_weights_ships_them(tmp_path):
    from safetensors.numpy import save_file

    g, _ = load_checked(spec_path("lenet5"))
    params = init_params(g, seed=42)
    save_file(params, str(tmp_path / "w.safetensors"))
    model = cc.compile(spec_path("lenet5"), output_dir=tmp_path / "out",
                       weights=tmp_path / "w.safetensors")
    for k, v in params.items():
        np.testing.assert_array_equal(model.params[k], v)


# -- new weights -----------------------------------------------------------------------------------

def test_new_weights_follow_the_seed(lenet, tmp_path):
    g = lenet.graph
    again = cc.compile(spec_path("lenet5"), output_dir=tmp_path / "again")
    other = cc.compile(spec_path("lenet5"), output_dir=tmp_path / "other", seed=1)
    for k, v in lenet.params.items():
        np.testing.assert_array_equal(again.params[k], v, err_msg=k)
        np.testing.assert_array_equal(v, init_params(g, 0)[k])
        if not k.endswith(("running_mean", "running_var")):
            assert not np.array_equal(other.params[k], v), f"seed 1 gave {k} of seed 0"


@needs_torch
@pytest.mark.parametrize("stem", ["lenet5", "resnet_tiny"])
def test_new_weights_are_drawn_like_pytorch_defaults(stem):
    """Kaiming-uniform (a = sqrt 5) weights and fan-in biases, U(-1/sqrt(fan_in), ...): the
    same bounds PyTorch's modules use; batch norm ones and zeros."""
    import torch
    from torch_models import BUILDERS

    g, _ = load_checked(spec_path(stem))
    ours = init_params(g, seed=0)
    torch.manual_seed(0)
    theirs = {k: v.numpy() for k, v in BUILDERS[stem]().state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert set(ours) == set(theirs)
    for k, w in theirs.items():
        v = ours[k]
        assert v.shape == w.shape and v.dtype == np.float32, k
        if k.endswith(("running_mean", "running_var")) or np.unique(w).size == 1:
            np.testing.assert_array_equal(v, w, err_msg=k)  # constants: ones and zeros
            continue
        weight = theirs[k.rsplit(".", 1)[0] + ".weight"]
        bound = 1 / np.sqrt(np.prod(weight.shape[1:]))  # 1/sqrt(fan_in), weight and bias alike
        assert np.abs(w).max() <= bound, f"{k}: the twin is not PyTorch's default"
        assert np.abs(v).max() <= bound, f"{k}: beyond PyTorch's bound {bound}"
        if v.size >= 500:  # the bound is reached, and the spread is uniform's
            assert np.abs(v).max() >= bound * 0.95, k
            assert abs(v.std() - w.std()) < 0.1 * w.std(), k


# -- deployment with the runtime alone -------------------------------------------------------------

RUNTIME_ONLY = textwrap.dedent("""
    import json, sys
    import numpy as np
    import cnncompiler as cc

    model = cc.load(sys.argv[1])
    x = np.load(sys.argv[2])
    y = model.predict(x)
    np.save(sys.argv[3], y)
    maps = open("/proc/self/maps").read()
    print(json.dumps({
        "compiler_loaded": "libtvm_compiler" in maps,
        "runtime_loaded": "libtvm_runtime" in maps,
        "relax_imported": "tvm.relax" in sys.modules,
    }))
""")


def test_artifact_runs_with_the_tvm_runtime_alone(lenet, tmp_path):
    x = x_for(lenet, 3)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(lenet.directory),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"compiler_loaded": False, "runtime_loaded": True, "relax_imported": False}
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), lenet.predict(x))


LOAD_CUDA_RUNTIME = textwrap.dedent("""
    import ctypes, json, sys
    from pathlib import Path
    import tvm
    from cnncompiler.runtime.model import load_cuda_runtime

    calls = []
    real = ctypes.CDLL
    ctypes.CDLL = lambda path, *a, **k: calls.append(str(path)) or real(path, *a, **k)
    try:
        load_cuda_runtime(tvm)   # must not raise, driver or not
    finally:
        ctypes.CDLL = real
    maps = open("/proc/self/maps").read()
    tried = [Path(c).name for c in calls]
    print(json.dumps({"sidecar": "libtvm_runtime_cuda" in maps or
                                 tried == ["libtvm_runtime_cuda.so"],
                      "compiler_loaded": "libtvm_compiler" in maps}))
""")


def test_runtime_only_mode_loads_the_cuda_runtime_itself():
    # TVM's own loader for libtvm_runtime_cuda sits in compiler-side hooks that fail with
    # TVM_USE_RUNTIME_LIB=1, leaving CUDA devices invisible (seen on an H200): cnnc loads it.
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run([sys.executable, "-c", LOAD_CUDA_RUNTIME], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"sidecar": True, "compiler_loaded": False}


@pytest.mark.torch
def test_a_pytorch_file_is_explained_not_parsed(lenet, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "lenet.pt"
    torch.save({k: torch.from_numpy(v) for k, v in lenet.params.items()}, path)
    with pytest.raises(InputError, match="is a PyTorch file .* cnnc never unpickles.*"
                                         "torch.load\\(path, weights_only=True\\)"):
        lenet.load_params(path)

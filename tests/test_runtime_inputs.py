"""Runtime inputs that once escaped as Python errors, large batches, and a process whose
environment asks for TVM's runtime alone."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.errors import InputError
from cnncompiler.runtime import model as runtime_model

from compile_helpers import spec_path

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    out = tmp_path_factory.mktemp("inputs") / "lenet5"
    cc.compile(spec_path("lenet5"), output_dir=out, batch_sizes=[4])
    return out


@pytest.mark.parametrize("weights, match", [
    ({5: np.zeros(3)}, "weight names must be strings such as 'conv1.weight'; received 5 \\(int\\)"),
    ({None: np.zeros(3)}, "received None \\(NoneType\\)"),
    ({("c1", "weight"): np.zeros(3)}, "received \\('c1', 'weight'\\) \\(tuple\\)"),
])
def test_weight_names_that_are_not_strings_are_refused(lenet, weights, match):
    model = cc.load(lenet)
    before = model.params
    with pytest.raises(InputError, match=match):
        model.load_params(weights, strict=False)
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


def test_a_float32_array_is_taken_as_it_is_and_others_are_checked_as_before(lenet):
    model = cc.load(lenet)
    x = np.random.default_rng(1).standard_normal((3, 1, 32, 32)).astype(np.float32)
    assert model.check_inputs(x)[0] is x, "a C-contiguous float32 batch needs no copy"
    want = model.predict(x).copy()
    fortran = np.asfortranarray(x)
    assert not fortran.flags.c_contiguous
    np.testing.assert_array_equal(model.predict(fortran), want)
    with pytest.raises(InputError, match="an empty batch"):
        model.predict(x[:0])
    with pytest.raises(InputError, match="received shape \\(3, 1, 32, 16\\)"):
        model.predict(np.ascontiguousarray(x[..., :16]))
    with pytest.raises(InputError, match="without a batch axis"):
        model.predict(x[0])


def test_a_batch_beyond_the_memory_bound_runs_in_pieces_with_the_same_result(lenet,
                                                                           monkeypatch):
    model = cc.load(lenet)
    x = np.random.default_rng(0).standard_normal((11, 1, 32, 32)).astype(np.float32)
    whole = model.predict(x).copy()
    monkeypatch.setattr(runtime_model, "CHUNK_BYTES", model.activation_bytes(5))
    assert model.chunk_size() == 4, "a compiled batch size that fits is preferred"
    calls = []
    real = model._run
    monkeypatch.setattr(model, "_run", lambda parts: calls.append(len(parts[0])) or real(parts))
    np.testing.assert_array_equal(model.predict(x), whole)
    assert calls == [4, 4, 3]
    monkeypatch.setattr(runtime_model, "CHUNK_BYTES", model.activation_bytes(3))
    assert model.activation_bytes(4) > runtime_model.CHUNK_BYTES
    assert model.chunk_size() == 3


def test_the_bound_is_the_memory_the_build_planned(lenet, monkeypatch):
    """A batch runs whole where its planned activations fit the bound, though its layers'
    outputs together would not; the compiled batch size's own plan counts for it."""
    model = cc.load(lenet)
    memory = model.manifest["build"]["memory"]
    assert model.activation_bytes(4) == memory["main_b4"]["total"]
    assert model.activation_bytes(7) == memory["main"]["fixed"] + 7 * memory["main"]["per_sample"]
    assert model.activation_bytes(7) < 7 * model._sample_bytes
    monkeypatch.setattr(runtime_model, "CHUNK_BYTES", model.activation_bytes(7))
    calls = []
    real = model._run
    monkeypatch.setattr(model, "_run", lambda parts: calls.append(len(parts[0])) or real(parts))
    model.predict(np.zeros((7, 1, 32, 32), np.float32))
    assert calls == [7]


def test_compile_works_with_the_runtime_only_variable_set(tmp_path):
    """``TVM_USE_RUNTIME_LIB=1`` (which running a model wants) left in the environment: the
    CLI compiles anyway, and so does a process that already imported TVM's runtime alone (in
    a worker)."""
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "cnncompiler.cli", "compile",
                           str(spec_path("lenet5")), "-o", str(out)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    script = (
        "import tvm, numpy as np, cnncompiler as cc\n"
        "assert 'tvm_compiler' not in tvm.base._LOADED_LIBS\n"
        f"m = cc.compile({str(spec_path('lenet5'))!r}, output_dir={str(tmp_path / 'api')!r})\n"
        "print(m.predict(np.zeros((1, 1, 32, 32), np.float32)).shape)\n"
        "try:\n"
        "    m.train_step(np.zeros((1, 1, 32, 32), np.float32), np.array([0]))\n"
        "except cc.CompileError as e:\n"
        "    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "(1, 10)" in proc.stdout
    assert "refused: training needs TVM's compiler, but this process loaded TVM's runtime " \
           "alone (TVM_USE_RUNTIME_LIB=1" in proc.stdout


@pytest.mark.parametrize("memory", [None, "lots", {"main": {"fixed": -1, "per_sample": 5}},
                                    {"main_b4": {"total": "4 MiB"}}, {"main": {"fixed": True}}])
def test_a_memory_report_that_is_not_counts_falls_back_to_the_bound(lenet, memory):
    model = cc.load(lenet)
    model.manifest = {**model.manifest, "build": {**model.manifest["build"], "memory": memory}}
    assert model.activation_bytes(4) == 4 * model._sample_bytes

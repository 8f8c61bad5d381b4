"""Layer types declared outside the package (examples/custom_layer.py): they check, compile
for the CPU and CUDA, fuse into an epilogue when point-wise, and train, with gradients that
match finite differences; the CLI loads them with --layers."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.cli import main as cnnc
from cnncompiler.errors import CnncError
from cnncompiler.layers import LAYER_TYPES, Layer, register
from cnncompiler.layers.custom import custom_layer_files, load_layer_file
from cnncompiler.reference import init_params, run_reference

from compile_helpers import assert_close, write_spec
from conftest import ROOT

pytestmark = pytest.mark.tvm

EXAMPLE = ROOT / "examples" / "custom_layer.py"
CUSTOM = ("softsign", "channel_shuffle")

NET = """\
name: custom_net
input: [4, 6, 6]
layers:
  - {name: c1, type: conv2d, filters: 8, kernel: 3, padding: 1}
  - {name: s1, type: softsign}
  - {name: shuffle, type: channel_shuffle, groups: 2}
  - {name: c2, type: conv2d, filters: 6, kernel: 3, groups: 2}
  - {name: s2, type: softsign}
  - {name: flat, type: flatten}
  - {name: fc, type: dense, units: 3}
"""


@pytest.fixture(scope="module")
def custom_types():
    """The example's layer types, registered for this module only."""
    added = load_layer_file(EXAMPLE)
    assert sorted(added) == sorted(CUSTOM)
    yield
    for name in CUSTOM:
        del LAYER_TYPES[name]


def test_the_example_runs():
    proc = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "'conv1': 'conv2d + batchnorm(folded) + softsign'" in proc.stdout
    assert "compiled for CUDA:" in proc.stdout


def test_the_cli_loads_layer_files(tmp_path, capsys):
    spec = write_spec(tmp_path, "custom_net", NET)
    assert cnnc(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "unknown layer type 'softsign'" in err and "cnnc --layers FILE" in err
    try:
        assert cnnc(["--layers", str(EXAMPLE), "check", str(spec)]) == 0
        assert "ok: 7 layers checked" in capsys.readouterr().out
    finally:
        for name in CUSTOM:
            LAYER_TYPES.pop(name, None)


@pytest.mark.parametrize("level", [0, 2])
def test_custom_layers_compile_to_the_reference(custom_types, tmp_path, level):
    spec = write_spec(tmp_path, "custom_net", NET)
    model = cc.compile(spec, opt_level=level)
    if level == 2:  # the point-wise one fuses into the conv before it
        assert model.optimized.nodes["c1"]["layer"].describe() == "conv2d + softsign"
    x = np.random.default_rng(0).standard_normal((5, 4, 6, 6)).astype(np.float32)
    params = init_params(model.graph, 1)
    model.load_params(params)
    want = run_reference(model.graph, x, params)["fc"]
    assert_close(model.predict(x), want, what=f"custom layers at -O{level}")


def test_custom_layer_gradients_match_finite_differences(custom_types):
    from test_train_grads import Case, _close

    case = Case("custom", (NET, "softmax_cross_entropy", 0.0))
    rng = np.random.default_rng(3)
    bad = []
    for name, grad in case.grads.items():
        direction = rng.standard_normal(grad.shape)
        fd, analytic = case.directional(name, direction), float((grad * direction).sum())
        if not _close(fd, analytic):
            bad.append(f"{name}: finite difference {fd:.10g}, compiled {analytic:.10g}")
    assert not bad, "\n".join(bad)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA toolkit) is not installed")
def test_custom_layers_compile_for_cuda_in_the_worker(custom_types, tmp_path):
    """The CUDA compile runs in a fresh process: it loads the layer file too."""
    assert str(EXAMPLE.resolve()) in custom_layer_files()
    spec = write_spec(tmp_path, "custom_net", NET)
    model = cc.compile(spec, target="cuda", output_dir=tmp_path / "cuda")
    assert model.target == "cuda"


def test_a_layer_type_cannot_take_a_builtin_name():
    with pytest.raises(ValueError, match="layer type 'relu' is already declared by "
                                         "cnncompiler.layers.activation.ReLU"):
        @register("relu")
        class MyReLU(Layer):
            pass
    assert LAYER_TYPES["relu"].__module__ == "cnncompiler.layers.activation"


def test_a_broken_layer_file_is_named(tmp_path):
    bad = tmp_path / "bad_layers.py"
    bad.write_text("from cnncompiler.layers import register\nraise RuntimeError('no such op')\n")
    with pytest.raises(CnncError, match=r"bad_layers.py: importing the layer file failed: "
                                        r"RuntimeError: no such op"):
        load_layer_file(bad)
    with pytest.raises(CnncError, match="no such layer file"):
        load_layer_file(tmp_path / "missing.py")

"""``cnnc compile``, ``cnnc run`` and ``cnnc bench``: what they print, what they write, and
that no mistake a user can make prints a traceback.

Most commands run in this process through ``cli.main``; ``run`` and ``bench`` also run once as
real processes, where they load TVM's runtime alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm  # noqa: F401  (imported first: in-process 'run' must not switch TVM to runtime-only)

import cnncompiler as cc
from cnncompiler.cli import main
from cnncompiler.graph import topo_layers
from cnncompiler.reference import run_reference
from cnncompiler.runtime import artifact as art

from compile_helpers import spec_path
from conftest import ROOT, SPECS

pytestmark = pytest.mark.tvm


def cnnc(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


@pytest.fixture(scope="module")
def lenet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "lenet5"
    cc.compile(spec_path("lenet5"), output_dir=out)
    return out


@pytest.fixture(scope="module")
def two_outputs_dir(tmp_path_factory):
    """A model with two outputs (cnnc run writes them to an .npz)."""
    d = tmp_path_factory.mktemp("cli2")
    spec = d / "two.yaml"
    spec.write_text("name: two\ninput: [3, 4, 4]\nlayers:\n"
                    "  - {name: a, type: conv2d, filters: 2, kernel: 1}\n"
                    "  - {name: b, type: global_avgpool, inputs: [input]}\n"
                    "outputs: [a, b]\n")
    cc.compile(spec, output_dir=d / "out")
    return d / "out"


# -- compile -------------------------------------------------------------------------------------

def test_compile_explain_prints_applied_and_declined_fusions(capsys, tmp_path):
    out = tmp_path / "tiny"
    code, stdout, _ = cnnc(capsys, "compile", spec_path("resnet_tiny"), "-o", out, "--explain")
    assert code == 0
    assert "fold-batchnorm: folded batchnorm 'layer1.0.bn1' into conv2d 'layer1.0.conv1'" in stdout
    assert ("fuse-epilogue: fused add 'layer1.0.add' into 'layer1.0.conv2' "
            "(conv2d + batchnorm(folded) + add)") in stdout
    assert ("fuse-epilogue: declined: 'layer1.0.add' not fused into 'conv1': 'conv1' has 2 "
            "readers") in stdout
    assert "kernels:" in stdout
    assert ("layer1.0.conv2: conv2d + batchnorm(folded) + add + relu  <- layer1.0.conv2, "
            "layer1.0.bn2, layer1.0.add, layer1.0.relu2") in stdout
    assert "compiled resnet_tiny for cpu" in stdout and str(out) in stdout
    assert (out / art.REPORT).is_file()


def test_compile_without_explain_is_one_line(capsys, lenet_dir, tmp_path):
    code, stdout, _ = cnnc(capsys, "compile", spec_path("lenet5"), "-o", tmp_path / "l")
    assert code == 0
    assert stdout.count("\n") == 1 and stdout.startswith("compiled lenet5 for cpu")


def report_of(directory) -> dict:
    return json.loads((Path(directory) / art.REPORT).read_text())


@pytest.mark.parametrize("flags,passes,level,applied", [
    (["-O0"], [], 0, set()),
    (["-O1"], ["eliminate-dead", "drop-dropout", "drop-identity", "fold-batchnorm"], 1,
     {"fold-batchnorm"}),
    (["-O2"], ["eliminate-dead", "drop-dropout", "drop-identity", "fold-batchnorm",
               "fuse-epilogue"], 2, {"fold-batchnorm", "fuse-epilogue"}),
    (["--passes", "fuse-epilogue"], ["fuse-epilogue"], None, {"fuse-epilogue"}),
    (["--passes", ""], [], None, set()),
])
def test_optimisation_levels_and_passes(capsys, tmp_path, flags, passes, level, applied):
    out = tmp_path / "tiny"
    code, _, _ = cnnc(capsys, "compile", spec_path("resnet_tiny"), "-o", out, *flags)
    assert code == 0
    manifest = json.loads((out / art.MANIFEST).read_text())
    assert manifest["optimization"] == {"level": level, "passes": passes}
    report = report_of(out)
    assert [r["pass"] for r in report["passes"]] == passes
    assert {r["pass"] for r in report["passes"] if r["applied"]} == applied
    kinds = {k["what"].split(" ")[0] for k in report["kernels"]}
    assert ("batchnorm" in kinds) == ("fold-batchnorm" not in applied
                                      and "fuse-epilogue" not in applied)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = cc.load(out)
    want = run_reference(model.graph, x, model.params)["fc"]
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-4, atol=1e-5)


def test_report_json_in_the_artifact(lenet_dir):
    report = report_of(lenet_dir)
    assert set(report) >= {"passes", "warnings", "kernels"}
    model = cc.load(lenet_dir)
    assert [k["kernel"] for k in report["kernels"]] == topo_layers(model.optimized)[1:]
    computed = [layer for k in report["kernels"] for layer in k["computes"]]
    assert sorted(computed) == sorted(n for n in model.graph if n != "input")
    first = report["kernels"][0]
    assert first["what"] == "conv2d + tanh" and len(first["computes"]) == 2
    manifest = art.verify(lenet_dir)
    assert manifest["files"][art.REPORT]["sha256"] == art.sha256_file(lenet_dir / art.REPORT)


def test_compile_batch_sizes_seed_and_weights(capsys, tmp_path, lenet_dir):
    weights = tmp_path / "w.safetensors"
    shutil.copyfile(lenet_dir / art.WEIGHTS, weights)
    out = tmp_path / "l"
    code, _, _ = cnnc(capsys, "compile", spec_path("lenet5"), "-o", out, "--batch-sizes", "1,8",
                      "--weights", weights, "--seed", "3")
    assert code == 0
    model = cc.load(out)
    assert model.batch_sizes == (1, 8)
    original = cc.load(lenet_dir).params
    for k, v in model.params.items():  # the shipped weights win over the seed
        np.testing.assert_array_equal(v, original[k])


# -- run and bench -------------------------------------------------------------------------------

def test_run_writes_the_output(capsys, lenet_dir, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, stdout, _ = cnnc(capsys, "run", lenet_dir, "--input", tmp_path / "x.npy",
                           "-o", tmp_path / "out" / "y.npy")
    assert code == 0
    y = np.load(tmp_path / "out" / "y.npy")
    np.testing.assert_array_equal(y, cc.load(lenet_dir).predict(x))
    assert "(3, 10)" in stdout


def test_run_with_several_outputs_writes_an_npz(capsys, two_outputs_dir, tmp_path):
    x = np.ones((2, 3, 4, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, _ = cnnc(capsys, "run", two_outputs_dir, "--input", tmp_path / "x.npy",
                      "-o", tmp_path / "y.npz")
    assert code == 0
    with np.load(tmp_path / "y.npz") as y:
        assert sorted(y.files) == ["a", "b"]
        assert y["a"].shape == (2, 2, 4, 4) and y["b"].shape == (2, 3, 1, 1)


def test_bench_prints_a_table_and_json(capsys, lenet_dir):
    from cnncompiler.threads import default_threads

    code, stdout, _ = cnnc(capsys, "bench", lenet_dir, "--batch", "1,4", "--repeat", "3",
                           "--warmup", "1")
    assert code == 0
    assert f"lenet5 (cpu, {default_threads()} threads), median of 3 runs after 1 warm-up " \
        "runs" in stdout
    rows = [line.split() for line in stdout.splitlines()[2:] if line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["1", "4"]
    assert all(len(r) == 6 and r[5] != "-" for r in rows), stdout  # peak memory measured
    code, stdout, _ = cnnc(capsys, "bench", lenet_dir, "--batch", "2", "--repeat", "2",
                           "--warmup", "0", "--json")
    assert code == 0
    data = json.loads(stdout)
    assert data["target"] == "cpu"
    (result,) = data["results"]
    assert result["batch"] == 2 and result["repeat"] == 2 and result["median_ms"] > 0
    assert result["throughput"] == pytest.approx(2 / (result["median_ms"] / 1e3))
    # a fresh process ran one batch: at least the planned activations became resident
    assert result["peak"]["bytes"] >= result["activation_bytes"] > 0


@pytest.fixture(scope="module")
def lenet_onnx(tmp_path_factory):
    """LeNet-5's PyTorch twin, exported to ONNX with a dynamic batch axis."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    import warnings

    from torch_models import BUILDERS

    path = tmp_path_factory.mktemp("onnx") / "lenet5.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(BUILDERS["lenet5"]().eval(), torch.zeros(1, 1, 32, 32), str(path),
                          dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


def test_bench_against_onnx_runtime(capsys, lenet_dir, lenet_onnx):
    code, stdout, stderr = cnnc(capsys, "bench", lenet_dir, "--batch", "1,3", "--repeat", "2",
                                "--warmup", "0", "--onnx", lenet_onnx, "--json")
    assert code == 0, stderr
    for result in json.loads(stdout)["results"]:
        ort = result["onnxruntime"]
        assert ort["median_ms"] > 0 and ort["peak"]["bytes"] > 0
        assert result["peak"]["bytes"] > 0
    code, stdout, _ = cnnc(capsys, "bench", lenet_dir, "--batch", "2", "--repeat", "2",
                           "--onnx", lenet_onnx, "--no-memory")
    assert code == 0 and "ONNX Runtime" in stdout and "cnnc/ORT" in stdout
    (row,) = [line.split() for line in stdout.splitlines() if line.split()[0] == "2"]
    assert row[5] == "-" and row[7] == "-"  # --no-memory: neither peak measured


def test_bench_refuses_an_onnx_model_of_another_net(capsys, lenet_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")

    other = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8), str(other),
                      dynamo=False)
    code, _, stderr = cnnc(capsys, "bench", lenet_dir, "--onnx", other)
    assert code == 1 and "takes input [1, 3, 8, 8], the artifact (N, 1, 32, 32)" in stderr
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, _, stderr = cnnc(capsys, "bench", lenet_dir, "--onnx", tmp_path / "junk.onnx")
    assert code == 1 and "ONNX Runtime cannot load" in stderr
    code, _, stderr = cnnc(capsys, "bench", lenet_dir, "--onnx", tmp_path / "none.onnx")
    assert code == 1 and "no ONNX model at" in stderr


RUN_AND_LOOK = """
import json, sys
from cnncompiler.cli import main
code = main(sys.argv[1:])
maps = open("/proc/self/maps").read()
print(json.dumps({"compiler": "libtvm_compiler" in maps, "runtime": "libtvm_runtime" in maps}))
sys.exit(code)
"""


def test_run_and_bench_as_processes_load_no_compiler(lenet_dir, tmp_path):
    x = np.zeros((2, 1, 32, 32), np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    run = subprocess.run([sys.executable, "-c", RUN_AND_LOOK, "run", str(lenet_dir), "--input",
                          str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {"compiler": False, "runtime": True}
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), cc.load(lenet_dir).predict(x))
    bench = subprocess.run([sys.executable, "-m", "cnncompiler.cli", "bench", str(lenet_dir),
                            "--repeat", "2", "--warmup", "0", "--json"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["results"][0]["batch"] == 1


# -- errors, never tracebacks ----------------------------------------------------------------------

@pytest.fixture
def files(tmp_path, lenet_dir):
    """Inputs for the error cases: good and bad arrays, a tampered artifact, a broken spec."""
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 32, 32), np.float32))
    np.save(tmp_path / "xc.npy", np.zeros((1, 1, 32, 32), np.complex64))
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3, 32, 32), np.float32))
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 1, 32, 32), np.float32))
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    tampered = tmp_path / "tampered"
    shutil.copytree(lenet_dir, tampered)
    with open(tampered / art.LIBRARY, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    (tmp_path / "broken.yaml").write_text("name: broken\ninput: [1, 8, 8]\nlayers:\n"
                                          "  - {type: dense, units: 3}\n")
    (tmp_path / "not_yaml.yaml").write_text("name: [unclosed\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("mine")
    return tmp_path


ERRORS = [
    (["compile", "{tmp}/missing.yaml", "-o", "{tmp}/o"], "missing.yaml"),
    (["compile", "{tmp}/broken.yaml", "-o", "{tmp}/o"], "add {type: flatten}"),
    (["compile", "{tmp}/not_yaml.yaml", "-o", "{tmp}/o"], "not_yaml.yaml:"),
    (["compile", "{lenet}", "-o", "{tmp}/o", "--passes", "fold-batchnrom"],
     "unknown pass 'fold-batchnrom'"),
    (["compile", "{lenet}", "-o", "{tmp}/o", "--target", "tpu"], "unknown target 'tpu'"),
    (["compile", "{lenet}", "-o", "{tmp}/o", "--target", "llvm -mcpu"], "cannot read"),
    (["compile", "{lenet}", "-o", "{tmp}/o", "--target", "cuda", "--arch", "ampere"],
     "unknown CUDA architecture 'ampere'"),
    (["compile", "{lenet}", "-o", "{tmp}/o", "--batch-sizes", "1,x"], "batch sizes"),
    (["compile", "{lenet}", "-o", "{tmp}/o", "--batch-sizes", "0"], "positive"),
    (["compile", "{lenet}", "-o", "{tmp}/o", "--weights", "{tmp}/none.safetensors"],
     "no weights file"),
    (["compile", "{lenet}", "-o", "{tmp}/o", "--weights", "{tmp}/x.npy"], "x.npy"),
    (["compile", "{lenet}", "-o", "{tmp}/a_file"], "is a file"),
    (["compile", "{lenet}", "-o", "{tmp}/occupied"], "refusing to overwrite"),
    (["run", "{tmp}/nowhere", "--input", "{tmp}/x.npy", "-o", "{tmp}/y.npy"], "does not exist"),
    (["run", "{tmp}/tampered", "--input", "{tmp}/x.npy", "-o", "{tmp}/y.npy"], "sha256"),
    (["run", "{art}", "--input", "{tmp}/x.npy", "-o", "{tmp}/y.npy", "--device", "cuda"],
     "compiled for target 'cpu'"),
    (["run", "{art}", "--input", "{tmp}/missing.npy", "-o", "{tmp}/y.npy"], "no input file"),
    (["run", "{art}", "--input", "{tmp}/garbage.npy", "-o", "{tmp}/y.npy"], "not a readable"),
    (["run", "{art}", "--input", "{tmp}/objects.npy", "-o", "{tmp}/y.npy"], "not a readable"),
    (["run", "{art}", "--input", "{tmp}/x.npz", "-o", "{tmp}/y.npy"], "npz"),
    (["run", "{art}", "--input", "{tmp}/wrong.npy", "-o", "{tmp}/y.npy"],
     "received shape \\(1, 3, 32, 32\\); expected x: float32\\[N, 1, 32, 32\\]"),
    (["run", "{art}", "--input", "{tmp}/xc.npy", "-o", "{tmp}/y.npy"], "complex64, not real"),
    (["bench", "{tmp}/tampered"], "sha256"),
    (["bench", "{art}", "--batch", "0"], "positive"),
    (["bench", "{art}", "--batch", "two"], "batch sizes"),
    (["bench", "{art}", "--repeat", "0"], "--repeat must be at least 1"),
    (["bench", "{art}", "--warmup", "-1"], "--warmup at least 0"),
]


@pytest.mark.parametrize("argv,match", ERRORS, ids=[f"{a[0]}-{i}" for i, (a, _) in
                                                     enumerate(ERRORS)])
def test_errors_are_messages_not_tracebacks(capsys, files, lenet_dir, argv, match):
    import re

    subst = {"{tmp}": str(files), "{lenet}": str(spec_path("lenet5")), "{art}": str(lenet_dir)}
    args = []
    for a in argv:
        for k, v in subst.items():
            a = a.replace(k, v)
        args.append(a)
    code, stdout, stderr = cnnc(capsys, *args)
    assert code == 1, (stdout, stderr)
    assert re.search(match, stderr), stderr
    assert not (files / "o").exists(), "a failed compile left an artifact"
    assert (files / "occupied" / "keep.txt").read_text() == "mine"


def test_usage_errors_exit_two_without_traceback(capsys, lenet_dir):
    code, _, stderr = cnnc(capsys, "compile", spec_path("lenet5"), "-o", "x", "-O3")
    assert code == 2 and "invalid choice: 3" in stderr
    code, _, stderr = cnnc(capsys, "run", lenet_dir)
    assert code == 2 and "--input" in stderr


def test_compile_for_cuda_without_nvcc_is_a_message(capsys, tmp_path, no_nvcc):
    code, _, stderr = cnnc(capsys, "compile", SPECS / "lenet5.yaml", "-o", tmp_path / "o",
                           "--target", "cuda")
    assert code == 1
    assert stderr.startswith("cnnc: error: cannot compile for CUDA: no CUDA compiler found")
    assert not (tmp_path / "o").exists()

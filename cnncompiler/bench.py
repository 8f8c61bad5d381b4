"""``cnnc bench``'s measurements: latency, and the memory one inference needs, of a compiled
model and, side by side, of the same net in ONNX Runtime.

    cnnc bench build/resnet18_cifar --batch 1,64
    cnnc bench build/resnet18_cifar --batch 1,64 --onnx resnet18_cifar.onnx

Peak memory is measured, not estimated: for each batch size a fresh process loads the model
and runs it once, and reports how far that raised its peak resident set (Linux: VmHWM after
resetting it through /proc/self/clear_refs). A fresh process each time, because a warm
allocator pool would hide what a batch size costs; the same for both engines, on the same
number of threads. The activation memory cnnc's build planned is shown beside it.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .errors import CnncError, InputError
from .runtime.model import planned_activation_bytes
from .threads import default_threads


def random_input(shape, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def time_runs(predict, x, warmup: int, repeat: int) -> dict:
    """Median and best latency (ms) of ``repeat`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        predict(x)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - start)
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}


# -- memory --------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def first_run_growth(predict, x) -> int:
    """Bytes by which one call of ``predict`` raises this process's peak resident set above
    where it stood: the activations, workspaces and allocator pools inference needs."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # free heap pages would hide new allocations
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    base = _status_kib("VmRSS")
    predict(x)
    return max(_status_kib("VmHWM") - base, 0) * 1024


PEAK_TIMEOUT_S = 600


def peak_in_fresh_process(engine: str, path: str, shape: tuple, threads: int) -> dict:
    """``first_run_growth`` of ``engine`` (cnnc or onnxruntime) on ``path`` for one input of
    ``shape`` (batch first), measured by a new Python process: {"bytes": N} or {"error": why}."""
    if not Path("/proc/self/clear_refs").exists():
        return {"error": "peak memory is measured through Linux's /proc only"}
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), TVM_USE_RUNTIME_LIB="1")
    argv = [sys.executable, "-m", "cnncompiler.bench", engine, path,
            ",".join(map(str, shape)), str(threads)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=env,
                             timeout=PEAK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"the measuring process ran past {PEAK_TIMEOUT_S} s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the measuring process exited with {out.returncode}: {last}"}
    try:
        return {"bytes": int(json.loads(lines[-1])["bytes"])}
    except (ValueError, KeyError, TypeError):
        return {"error": f"the measuring process printed {lines[-1][:100]!r}"}


# -- ONNX Runtime ---------------------------------------------------------------------------------

class OnnxModel:
    """An ONNX model of the same net in ONNX Runtime, on ``threads`` threads."""

    def __init__(self, path: str, threads: int):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CnncError("--onnx needs ONNX Runtime: pip install onnxruntime") from None
        if not Path(path).is_file():
            raise InputError(f"no ONNX model at '{path}'")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 (ORT raises its own exception types)
            raise InputError(f"ONNX Runtime cannot load '{path}': "
                             f"{str(exc).splitlines()[0][:300]}") from None
        self.path = path
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"'{path}' has {len(inputs)} inputs; cnnc bench compares models "
                             "with one input")
        self.input = inputs[0]
        self.version = ort.__version__

    def check_input(self, input_shape: tuple) -> None:
        """The ONNX input must take the artifact's float32 (N, *input_shape) batches."""
        dims = list(self.input.shape)
        if len(dims) != len(input_shape) + 1 or any(
                isinstance(d, int) and d != want for d, want in zip(dims[1:], input_shape)):
            raise InputError(f"'{self.path}' takes input {dims}, the artifact (N, "
                             f"{', '.join(map(str, input_shape))}); compare the same net")
        if self.input.type != "tensor(float)":
            raise InputError(f"'{self.path}' takes {self.input.type}, the artifact float32; "
                             "export the ONNX model in float32")

    def takes_batch(self, batch: int) -> bool:
        """False where the model was exported with another fixed batch size."""
        first = self.input.shape[0]
        return not isinstance(first, int) or first == batch

    def predict(self, x: np.ndarray):
        try:
            return self.session.run(None, {self.input.name: x})[0]
        except Exception as exc:  # noqa: BLE001 (ORT raises its own exception types)
            raise InputError(f"ONNX Runtime failed to run '{self.path}' on a batch of shape "
                             f"{x.shape}: {str(exc).splitlines()[0][:300]}") from None


# -- one batch size, both engines ----------------------------------------------------------------

def bench_model(model, batch: int, warmup: int, repeat: int, seed: int = 0, onnx=None,
                memory: bool = False) -> dict:
    """Latency of ``model`` (and of ``onnx``, an OnnxModel of the same net) at ``batch``:
    median of ``repeat`` timed runs after ``warmup``; with ``memory``, the peak memory one
    inference needs, each engine measured in a fresh process."""
    one_input = len(model.input_names) == 1
    x = random_input(model.input_shape, batch, seed) if one_input else \
        {name: random_input(shape, batch, seed) for name, shape in model.input_shapes.items()}
    if onnx is not None and not one_input:
        raise InputError("--onnx compares models of one input; this one has "
                         f"{', '.join(model.input_names)}")
    timed = time_runs(model.predict, x, warmup, repeat)
    row = {"batch": batch, **timed, "throughput": batch / (timed["median_ms"] / 1e3),
           "repeat": repeat, "warmup": warmup,
           "activation_bytes": planned_activation_bytes(model.manifest, batch)}
    threads = default_threads()
    if memory and model.target == "cpu" and one_input:  # the fresh process feeds one array
        row["peak"] = peak_in_fresh_process("cnnc", str(model.directory), x.shape, threads)
    if onnx is not None:
        if not onnx.takes_batch(batch):
            row["onnxruntime"] = {"error": f"the ONNX model takes batch {onnx.input.shape[0]}"}
        else:
            ort = time_runs(onnx.predict, x, warmup, repeat)
            if memory:
                ort["peak"] = peak_in_fresh_process("onnxruntime", onnx.path, x.shape, threads)
            row["onnxruntime"] = ort
    return row


# -- the fresh process that measures one peak ------------------------------------------------------

def _measure(engine: str, path: str, shape: tuple, threads: int) -> int:
    x = random_input(shape[1:], shape[0])
    if engine == "cnnc":
        from .runtime.model import load

        model = load(path)
        model.prepare()  # the weights resident before the baseline is taken
        return first_run_growth(model.predict, x)
    onnx = OnnxModel(path, threads)
    return first_run_growth(onnx.predict, x)


if __name__ == "__main__":
    name, target, dims, count = sys.argv[1:5]
    shape = tuple(int(d) for d in dims.split(","))
    print(json.dumps({"bytes": _measure(name, target, shape, int(count))}), flush=True)

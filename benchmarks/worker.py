"""One engine (cnnc, onnxruntime or torch) serving timing requests from benchmarks/run.py.

Each engine runs in a process of its own, so thread pools never compete and memory is measured
per engine; run.py asks the engines in turn (interleaved rounds), so a change in the machine's
load hits all of them alike. Protocol: one JSON request per line on stdin, one JSON reply per
line on stdout.

    python benchmarks/worker.py cnnc resnet18_cifar WORKDIR --batches 1,64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

THREADS = "2"
for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, THREADS)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import MODELS, input_batch, torch_model  # noqa: E402


from cnncompiler.bench import first_run_growth  # noqa: E402  (as cnnc bench measures it)


class Cnnc:
    """cnnc's default build: its own schedules only, whatever the tuning cache holds."""

    name = "cnnc"
    tuning_cache = False

    def __init__(self, bench, workdir: Path, batches, load_only: bool = False):
        import cnncompiler as cc

        start = time.perf_counter()
        if load_only:  # the artifact the timing worker compiled
            self.model = cc.load(workdir / self.name)
        else:
            self.model = cc.compile(bench.spec, batch_sizes=batches,
                                    output_dir=workdir / self.name,
                                    tuning_cache=self.tuning_cache)
        self.compile_seconds = time.perf_counter() - start
        self.model.load_params(str(workdir / "weights.npz"))
        self.model.prepare()  # weights on the device now, not during a measured run
        self.info = {"compile_s": self.compile_seconds,
                     "memory": self.model.manifest["build"].get("memory", {}),
                     "kernels": self.model.manifest["build"].get("kernels", {}),
                     "fallbacks": self.model.manifest["build"].get("fallbacks", {}),
                     "tuned_kernels": self.model.manifest["build"].get("tuned_kernels", 0)}

    def predict(self, x):
        return self.model.predict(x)

    def kernel_times(self, batch: int, number: int = 10) -> list:
        """(kernel symbol, best ms) of each kernel main_b<batch> calls, in call order."""
        import tvm

        x = input_batch(self.model.input_shape, batch)
        self.model.predict(x)
        vm, (_, lib, dev) = self.model._vm(), self.model._open()
        calls = []

        def instrument(func, symbol, before, ret, *args):
            if before and not symbol.startswith("vm."):
                calls.append((symbol, [tuple(a.shape) for a in args]))
            return 0

        fn = f"main_b{batch}" if batch in self.model.batch_sizes else "main"
        vm.set_instrument(instrument)
        vm[fn](tvm.runtime.tensor(x, dev), *self.model._device_args())
        vm.set_instrument(lambda *a: 0)
        kernels = lib.imports[0]
        rng = np.random.default_rng(0)
        out = []
        for symbol, shapes in calls:
            args = [tvm.runtime.tensor(rng.standard_normal(s).astype(np.float32), dev)
                    for s in shapes]
            ev = kernels.time_evaluator(symbol, dev, number=number, repeat=3)
            out.append((symbol, min(ev(*args).results) * 1e3))
        return out


class CnncTuned(Cnnc):
    """cnnc with the tuned schedules of the tuning cache ($CNNC_CACHE/tuning, else the default one)."""

    name = "cnnc_tuned"
    tuning_cache = None


class OnnxRuntime:
    def __init__(self, bench, workdir: Path, batches, load_only: bool = False):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(THREADS)
        so.inter_op_num_threads = 1
        start = time.perf_counter()
        self.session = ort.InferenceSession(str(workdir / "model.onnx"), so,
                                            providers=["CPUExecutionProvider"])
        self.info = {"load_s": time.perf_counter() - start, "version": ort.__version__}

    def predict(self, x):
        return self.session.run(None, {"x": x})[0]


class Torch:
    def __init__(self, bench, workdir: Path, batches, load_only: bool = False):
        import torch

        torch.set_num_threads(int(THREADS))
        state = dict(np.load(workdir / "weights.npz"))
        self.torch = torch
        self.model = torch_model(bench.key, state)
        self.info = {"version": torch.__version__}

    def predict(self, x):
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()


ENGINES = {"cnnc": Cnnc, "cnnc_tuned": CnncTuned, "onnxruntime": OnnxRuntime, "torch": Torch}


def serve(engine, bench, workdir: Path) -> None:
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "quit":
            return
        if cmd == "time":
            x = input_batch(input_shape(bench), req["batch"], seed=1)
            for _ in range(req.get("warmup", 1)):
                engine.predict(x)
            times = []
            for _ in range(req["reps"]):
                t0 = time.perf_counter()
                engine.predict(x)
                times.append(time.perf_counter() - t0)
            reply = {"times": times}
        elif cmd == "output":
            x = np.load(req["input"])
            np.save(req["output"], np.asarray(engine.predict(x), np.float32))
            reply = {"ok": True}
        elif cmd == "kernels":
            reply = {"kernels": engine.kernel_times(req["batch"])}
        else:
            reply = {"error": f"unknown command {cmd}"}
        print(json.dumps(reply), flush=True)


_SHAPES: dict = {}


def input_shape(bench):
    if bench.key not in _SHAPES:
        from cnncompiler.graph import load_checked

        g, _ = load_checked(str(bench.spec))
        _SHAPES[bench.key] = tuple(g.graph["input_shape"])
    return _SHAPES[bench.key]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=ENGINES)
    ap.add_argument("model", choices=MODELS)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--batches", default="1")
    ap.add_argument("--memory", type=int, metavar="BATCH",
                    help="load (cnnc: the artifact already compiled in WORKDIR), run one batch "
                         "of this size, print the peak resident set growth, and exit")
    args = ap.parse_args()
    bench = MODELS[args.model]
    batches = tuple(int(b) for b in args.batches.split(","))
    if args.memory:
        engine = ENGINES[args.engine](bench, args.workdir, batches, load_only=True)
        x = input_batch(input_shape(bench), args.memory)
        print(json.dumps({"peak_growth": first_run_growth(engine.predict, x)}), flush=True)
        return
    try:
        engine = ENGINES[args.engine](bench, args.workdir, batches)
        ready = {"ready": True, "info": engine.info}
    except Exception as exc:  # noqa: BLE001 (reported to run.py, which prints it)
        ready = {"ready": False, "error": f"{type(exc).__name__}: {exc}"}
        engine = None
    # the engines print their own chatter; the protocol owns stdout from here on
    print(json.dumps(ready), flush=True)
    if engine is not None:
        serve(engine, bench, args.workdir)


if __name__ == "__main__":
    main()

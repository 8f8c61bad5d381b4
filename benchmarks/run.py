"""cnnc against ONNX Runtime and PyTorch eager, side by side, 2 threads each.

    python benchmarks/run.py                      # every model, every batch size
    python benchmarks/run.py --models lenet5,resnet18_cifar --rounds 3
    python benchmarks/run.py --json results.json
    python benchmarks/run.py --tune-budget 10m    # also cnnc after tuning, per model

For each network (specs/<key>.yaml and its PyTorch twin in tests/torch_models.py) it makes one
set of weights, exports the PyTorch module to ONNX, loads the same state_dict into cnnc, checks
that the three agree with cnnc's numpy reference, then prints:

- latency (median of all timed runs) per batch size, cnnc's default build, ONNX Runtime and
  PyTorch, and cnnc's ratios to each; with ``--tune-budget`` (or ``--tuned``) also cnnc with
  the tuned schedules of the tuning cache, after ``cnnc tune`` ran on the model's batch sizes
  for that long (a second run finds the kernels in the cache and skips them);
- compile time;
- peak activation memory: what cnnc's memory planning allocates, and for all three engines how
  far one inference at that batch size raises a fresh process's peak resident set (the same
  measure for all: activations, scratch and allocator pools, not the weights);
- the biggest conv layers' achieved GFLOP/s in cnnc, next to numpy's sgemm rate on 2 threads.

Each engine runs in its own worker process (benchmarks/worker.py); the timing rounds ask the
engines in turn, so a change in the machine's load hits all three alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import (DEFAULT, MODELS, ROOT, export_onnx, input_batch, state_arrays,  # noqa: E402
                    torch_model)

ENGINES = ("cnnc", "onnxruntime", "torch")
TUNED = "cnnc_tuned"
SAMPLE_SECONDS = 0.25   # timed work per engine per round
RTOL = 1e-4


class Worker:
    """An engine in its own process, spoken to in JSON lines."""

    def __init__(self, engine: str, model: str, workdir: Path, batches):
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.engine = engine
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py"), engine, model, str(workdir),
             "--batches", ",".join(map(str, batches))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=env, cwd=str(ROOT))
        self.ready = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
        raise RuntimeError(f"{self.engine} worker exited (code {self.proc.wait()})")

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=60)


def tune(bench, budget: str) -> dict:
    """``cnnc tune`` on the model's batch sizes (2 threads, as the timing); its progress goes to
    stderr as it runs, its summary comes back."""
    print(f"\n-- cnnc tune {bench.key} --budget {budget}", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, "-m", "cnncompiler.cli", "tune", str(bench.spec),
                          "--budget", budget, "--threads", "2", "--json",
                          "--batch-sizes", ",".join(map(str, bench.batches))],
                         stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if out.returncode:
        raise RuntimeError(f"cnnc tune {bench.key} failed (exit code {out.returncode})")
    return json.loads(out.stdout)


def first_run_memory(engine: str, bench, workdir: Path, batch: int) -> int | None:
    """Peak resident set growth of one inference in a fresh process (see worker.py)."""
    out = subprocess.run([sys.executable, str(HERE / "worker.py"), engine, bench.key,
                          str(workdir), "--memory", str(batch)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"), cwd=str(ROOT))
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)["peak_growth"]
    return None


def sgemm_gflops(size: int = 2048) -> float:
    """numpy's float32 matrix product on 2 threads, in GFLOP/s (best of 5)."""
    code = ("import time, numpy as np\n"
            f"a = np.random.rand({size}, {size}).astype(np.float32); b = a.copy(); a @ b\n"
            "best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter())"
            " for _ in range(5))\n"
            f"print(2 * {size} ** 3 / best / 1e9)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return float(out.stdout.strip() or "nan")


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def prepare(bench, workdir: Path):
    """Weights, the ONNX export and the optimised graph (for kernel FLOPs)."""
    from cnncompiler.compiler import _front_end
    from cnncompiler.spec import load_spec

    spec = load_spec(str(bench.spec))
    graph, optimized, *_ = _front_end(spec.text, spec.path, 2, None)
    model = torch_model(bench.key, seed=bench.seed)
    state = state_arrays(model)
    np.savez(workdir / "weights.npz", **state)
    export_onnx(model, graph.graph["input_shape"], workdir / "model.onnx")
    return graph, optimized, state


def check_outputs(bench, workers, graph, state, workdir: Path) -> dict:
    """Each engine's output on one batch of 2, against the float64 numpy reference."""
    from cnncompiler.reference import run_reference

    x = input_batch(graph.graph["input_shape"], 2, seed=7)
    np.save(workdir / "check_x.npy", x)
    ref = run_reference(graph, x, state, dtype=np.float64)[graph.graph["outputs"][0]]
    errors = {}
    for name, w in workers.items():
        path = workdir / f"check_{name}.npy"
        w.ask(cmd="output", input=str(workdir / "check_x.npy"), output=str(path))
        errors[name] = relative_error(np.load(path), ref)
    return errors


def time_batch(workers: dict, batch: int, rounds: int) -> dict:
    """Interleaved rounds; each engine's times of every round pooled."""
    reps = {}
    for name, w in workers.items():
        first = w.ask(cmd="time", batch=batch, reps=1, warmup=2)["times"][0]
        reps[name] = int(min(max(SAMPLE_SECONDS / max(first, 1e-6), 3), 200))
    pooled = {name: [] for name in workers}
    for _ in range(rounds):
        for name, w in workers.items():
            pooled[name] += w.ask(cmd="time", batch=batch, reps=reps[name], warmup=1)["times"]
    return {name: {"median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3,
                   "runs": len(t)} for name, t in pooled.items()}


def kernel_flops(optimized) -> dict:
    """kernel name -> (layer, FLOPs per sample, is a conv)."""
    from cnncompiler.graph import topo_layers
    from cnncompiler.graph.signature import kernel_name

    out = {}
    for node in topo_layers(optimized):
        if node == "input":
            continue
        data = optimized.nodes[node]
        layer = data["layer"]
        base = layer.base.type_name if layer.type_name == "fused" else layer.type_name
        in_shapes = [optimized.nodes[s]["shape"] for s in data["inputs"]]
        out[kernel_name(node)] = (node, layer.flops(in_shapes, data["shape"]),
                                  base in ("conv2d", "conv1d"))
    return out


def match_kernel(symbol: str, flops: dict):
    """The layer a kernel symbol computes: its name, or its name plus the numeric suffix TVM
    adds to a second function's copy."""
    best = None
    for name in flops:
        if symbol.startswith(name) and symbol[len(name):].isdigit() or symbol == name:
            if best is None or len(name) > len(best):
                best = name
    return flops.get(best)


def conv_table(kernels: dict, flops: dict, top: int = 4) -> list[dict]:
    """The ``top`` conv layers by FLOPs with their time and rate at each batch size."""
    rows = {}
    for batch, times in kernels.items():
        for symbol, ms in times:
            hit = match_kernel(symbol, flops)
            if hit is None or not hit[2]:
                continue
            node, f, _ = hit
            row = rows.setdefault(node, {"layer": node, "mflop": f / 1e6})
            row[f"ms_b{batch}"] = ms
            row[f"gflops_b{batch}"] = f * batch / (ms * 1e-3) / 1e9
    return sorted(rows.values(), key=lambda r: -r["mflop"])[:top]


def run_model(bench, rounds: int, kernels: bool, tuned: bool = False,
              tune_budget: str | None = None) -> dict:
    result = {"model": bench.key, "title": bench.title}
    engines = ENGINES[:1] + (TUNED,) * tuned + ENGINES[1:]
    if tune_budget:
        result["tuning"] = tune(bench, tune_budget)
    with tempfile.TemporaryDirectory(prefix=f"cnnc-bench-{bench.key}-") as tmp:
        workdir = Path(tmp)
        graph, optimized, state = prepare(bench, workdir)
        workers = {}
        try:
            for name in engines:  # one at a time: cnnc's compile time is measured alone
                w = Worker(name, bench.key, workdir, bench.batches)
                if not w.ready.get("ready"):
                    raise RuntimeError(f"{name} failed to load {bench.key}: {w.ready.get('error')}")
                workers[name] = w
            result["info"] = {n: w.ready["info"] for n, w in workers.items()}
            result["errors"] = check_outputs(bench, workers, graph, state, workdir)
            result["latency"] = {b: time_batch(workers, b, rounds) for b in bench.batches}
            result["memory"] = {b: {n: first_run_memory(n, bench, workdir, b) for n in engines}
                                for b in bench.batches}
            if kernels:
                times = {b: workers["cnnc"].ask(cmd="kernels", batch=b)["kernels"]
                         for b in bench.batches}
                result["convs"] = conv_table(times, kernel_flops(optimized))
        finally:
            for w in workers.values():
                w.close()
    return result


# -- printing ------------------------------------------------------------------------------------

def mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def planned_bytes(memory: dict, batch: int):
    entry = memory.get(f"main_b{batch}") or memory.get(str(batch))
    if isinstance(entry, dict):
        return entry.get("total")
    return entry


def print_model(r: dict, sgemm: float) -> None:
    print(f"\n== {r['title']}  [{r['model']}]")
    info = r["info"]["cnnc"]
    errs = ", ".join(f"{k} {v:.1e}" for k, v in r["errors"].items())
    ok = all(v <= RTOL for v in r["errors"].values())
    print(f"compile {info['compile_s']:.1f} s; output rel. error vs numpy reference: {errs} "
          f"({'ok' if ok else 'ABOVE ' + str(RTOL)})")
    if info.get("fallbacks"):
        print("layers on the generic schedule: " + ", ".join(info["fallbacks"]))
    if r.get("tuning"):
        t = r["tuning"]
        print(f"tuning: {t['spent_s']:.0f} s of a {t['budget_s']:.0f} s budget; "
              f"{r['info'][TUNED].get('tuned_kernels', 0)} kernels of the tuned build run tuned "
              "schedules "
              f"(cnnc_tuned compile {r['info'][TUNED]['compile_s']:.1f} s)")
    print(f"{'batch':>5} {'cnnc ms':>9} {'tuned ms':>9} {'ORT ms':>9} {'torch ms':>9} "
          f"{'cnnc/ORT':>9} {'tuned/ORT':>9} {'cnnc/torch':>10}   (median; min in brackets)")
    for b, lat in r["latency"].items():
        c, o, t = (lat[e]["median_ms"] for e in ENGINES)
        tuned = lat.get(TUNED, {}).get("median_ms")
        cells = (f"{'-':>9}", f"{'-':>9}") if tuned is None else \
            (f"{tuned:>9.3f}", f"{tuned / o:>9.2f}")
        mins = " / ".join(f"{lat[e]['min_ms']:.3f}" for e in ENGINES[:1] + (TUNED,) * (
            tuned is not None) + ENGINES[1:])
        print(f"{b:>5} {c:>9.3f} {cells[0]} {o:>9.3f} {t:>9.3f} {c / o:>9.2f} {cells[1]} "
              f"{c / t:>10.2f}   [{mins}]")
    print(f"{'batch':>5} {'cnnc planned MiB':>17} {'first-run RSS growth MiB: cnnc':>31} "
          f"{'ORT':>7} {'torch':>7}")
    for b, mem in r["memory"].items():
        print(f"{b:>5} {mib(planned_bytes(info.get('memory', {}), b)):>17} "
              f"{mib(mem['cnnc']):>31} {mib(mem['onnxruntime']):>7} {mib(mem['torch']):>7}")
    if r.get("convs"):
        batches = list(r["latency"])
        head = " ".join(f"{'ms b' + str(b):>9} {'GFLOP/s':>8}" for b in batches)
        print(f"{'biggest conv layers':<28} {'MFLOP':>7} {head}   (sgemm {sgemm:.0f} GFLOP/s)")
        for row in r["convs"]:
            cells = " ".join(f"{row.get(f'ms_b{b}', float('nan')):>9.3f} "
                             f"{row.get(f'gflops_b{b}', float('nan')):>8.1f}" for b in batches)
            print(f"{row['layer']:<28} {row['mflop']:>7.1f} {cells}")


def print_summary(results: list[dict]) -> None:
    tuned = any(TUNED in lat for r in results for lat in r["latency"].values())
    print("\n== summary: cnnc default build" + (" / cnnc tuned" if tuned else "")
          + " / ONNX Runtime / PyTorch eager (median ms, 2 threads)")
    print(f"{'model':<22} {'batch':>5} {'cnnc':>9} " + (f"{'tuned':>9} " if tuned else "")
          + f"{'ORT':>9} {'torch':>9} {'/ORT':>6} " + (f"{'tuned/ORT':>9} " if tuned else "")
          + f"{'/torch':>7} {'target met':>11}")
    for r in results:
        target = MODELS[r["model"]].target
        for b, lat in r["latency"].items():
            c, o, t = (lat[e]["median_ms"] for e in ENGINES)
            row = f"{r['model']:<22} {b:>5} {c:>9.3f} "
            if tuned:
                u = lat.get(TUNED, {}).get("median_ms", float("nan"))
                row += f"{u:>9.3f} {o:>9.3f} {t:>9.3f} {c / o:>6.2f} {u / o:>9.2f} "
            else:
                row += f"{o:>9.3f} {t:>9.3f} {c / o:>6.2f} "
            met = f"{'yes' if c <= target * o else 'no'} ({target:g})"
            print(row + f"{c / t:>7.2f} {met:>11}")
    print("target met: the default build at most the given multiple of ONNX Runtime's latency")
    for r in results:
        line = f"compile {r['model']}: {r['info']['cnnc']['compile_s']:.1f} s"
        if r.get("tuning"):
            line += (f"; tuning {r['tuning']['spent_s']:.0f} s of {r['tuning']['budget_s']:.0f} s"
                     f", {sum(k['faster'] for k in r['tuning']['kernels'])} kernels faster")
        print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT),
                    help=f"comma-separated, of: {', '.join(MODELS)}; or 'all' "
                         f"(default: {','.join(DEFAULT)})")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-layer conv table")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--tune-budget", metavar="TIME",
                    help="run cnnc tune on each model for this long (e.g. 10m) before timing, "
                         "and time cnnc with the tuned schedules too")
    ap.add_argument("--tuned", action="store_true",
                    help="time cnnc with the tuned schedules the cache already holds")
    ap.add_argument("--cache", help="cnnc's cache root (sets CNNC_CACHE for the tuning and "
                                    "the workers; the records go to its tuning/ folder)")
    args = ap.parse_args(argv)
    if args.cache:
        os.environ["CNNC_CACHE"] = str(Path(args.cache).resolve())
    if args.tune_budget:
        from cnncompiler.backends.tuning import parse_budget
        from cnncompiler.errors import CnncError

        try:
            parse_budget(args.tune_budget, "--tune-budget")
        except CnncError as exc:
            ap.error(str(exc))
    keys = list(MODELS) if args.models == "all" else [k for k in args.models.split(",") if k]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    sgemm = sgemm_gflops()
    print(f"numpy sgemm 2048^3, 2 threads: {sgemm:.0f} GFLOP/s; load average "
          f"{os.getloadavg()[0]:.1f} at start")
    results = []
    for key in keys:
        start = time.perf_counter()
        r = run_model(MODELS[key], args.rounds, not args.no_kernels,
                      tuned=bool(args.tune_budget or args.tuned), tune_budget=args.tune_budget)
        r["seconds"] = time.perf_counter() - start
        print_model(r, sgemm)
        results.append(r)
    print_summary(results)
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps({"sgemm_gflops": sgemm, "results": results},
                                              indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

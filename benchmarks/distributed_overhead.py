"""What data-parallel training costs on one machine: the time of one training step of the
same global batch on 1 process x 2 threads against 2 processes x 1 thread (gloo, the same two
cores), and the share of it spent summing gradients. Reports; asserts nothing.

    python benchmarks/distributed_overhead.py                     # LeNet-5 and ResNet-18 CIFAR
    python benchmarks/distributed_overhead.py --only lenet5 --steps 30 --json

The processes step through ``model.train_step`` (what ``fit`` calls), so the times include the
batch's upload, the two small host all-reduces of each step (the global count and the reported
totals) and the in-step gradient all-reduce. The step of each configuration is compiled once
before the clock starts (a second run finds it in the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = (("lenet5", 64), ("resnet18_cifar", 32))   # (spec, global batch)


def worker(spec: str, global_batch: int, steps: int, warmup: int) -> dict:
    """One process's part: time ``steps`` steps; rank 0 prints the median as JSON."""
    import numpy as np

    import cnncompiler as cc
    from cnncompiler.train import distributed

    replicas = distributed.init_from_env("cpu")
    world, rank = (replicas.world, replicas.rank) if replicas else (1, 0)
    model = cc.compile(str(ROOT / "specs" / f"{spec}.yaml"), target="cpu", seed=0)
    rng = np.random.default_rng(rank)
    batch = global_batch // world
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    from cnncompiler.graph import layer_node

    classes = layer_node(model.graph, model.output_names[0]).shape[-1]
    y = rng.integers(0, classes, batch).astype(np.int32)
    model.trainer.prepare()
    for _ in range(warmup):
        model.train_step(x, y)
    times = []
    for _ in range(steps):
        if replicas:
            replicas.barrier()
        start = time.perf_counter()
        model.train_step(x, y)
        times.append(time.perf_counter() - start)
    result = {"spec": spec, "processes": world, "threads": int(os.environ["TVM_NUM_THREADS"]),
              "global_batch": global_batch, "step_ms": 1e3 * statistics.median(times)}
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    distributed.shutdown()
    return result


def run(spec: str, global_batch: int, processes: int, steps: int, warmup: int) -> dict:
    env = dict(os.environ, TVM_NUM_THREADS=str(2 // processes), OMP_NUM_THREADS="1")
    me = [str(Path(__file__).resolve()), "--worker", "--only", spec, "--batch",
          str(global_batch), "--steps", str(steps), "--warmup", str(warmup)]
    command = [sys.executable, *me] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={processes}", *me]
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="one spec of CASES")
    parser.add_argument("--batch", type=int, help="the global batch (default: the case's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = [(s, args.batch or b) for s, b in CASES if args.only in (None, s)]
    if args.worker:
        worker(cases[0][0], cases[0][1], args.steps, args.warmup)
        return 0
    rows = []
    for spec, batch in cases:
        one = run(spec, batch, 1, args.steps, args.warmup)
        two = run(spec, batch, 2, args.steps, args.warmup)
        rows.append({"spec": spec, "global_batch": batch, "1x2_ms": one["step_ms"],
                     "2x1_ms": two["step_ms"], "ratio": two["step_ms"] / one["step_ms"]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'spec':<16}{'batch':>6}{'1 proc x 2 thr':>16}{'2 proc x 1 thr':>16}{'ratio':>8}")
    for r in rows:
        print(f"{r['spec']:<16}{r['global_batch']:>6}{r['1x2_ms']:>13.2f} ms"
              f"{r['2x1_ms']:>13.2f} ms{r['ratio']:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

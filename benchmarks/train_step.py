"""Images per second of one training step (forward in training mode, loss, backward, SGD with
momentum) of the compiled model against PyTorch eager on the same net, weights and batch, both
on the same number of CPU threads. Reports; asserts nothing.

    python benchmarks/train_step.py                       # LeNet-5 @ 64, ResNet-18 CIFAR @ 32
    python benchmarks/train_step.py --only lenet5 --repeat 30 --json

The compiled step is timed through the public API (``model.train_step``), so its numbers include
what a training loop pays per step: the batch's upload and the loss coming back. Its one-off
compile time is shown apart (a second run finds it in the cache, $CNNC_CACHE/train or ~/.cache/cnnc/train).
The PyTorch twins are the hand-written nets of tests/torch_models.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

THREADS = 2
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))  # read when TVM starts its thread pool

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = (("lenet5", 64), ("resnet18_cifar", 32))


def _median_step_seconds(step, warmup: int, repeat: int, budget_s: float) -> tuple[float, int]:
    """Median of ``repeat`` timed steps after ``warmup``; fewer (at least 3) when the timed
    steps pass ``budget_s`` seconds. Returns (median seconds, steps timed)."""
    for _ in range(warmup):
        step()
    times, spent = [], 0.0
    while len(times) < repeat and (len(times) < 3 or spent < budget_s):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times), len(times)


def bench(name: str, batch: int, warmup: int, repeat: int, budget_s: float) -> dict:
    import torch

    import cnncompiler as cc

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_models import BUILDERS

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    net = BUILDERS[name]()
    model = cc.compile(ROOT / "specs" / f"{name}.yaml")
    model.load_params(net.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    optimizer = {"type": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    model.set_optimizer(optimizer)

    start = time.perf_counter()
    model.train_step(x, y)  # compiles (or loads from the cache) the training step
    first = time.perf_counter() - start
    ours, ours_runs = _median_step_seconds(lambda: model.train_step(x, y), warmup, repeat,
                                           budget_s)

    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    net.train()

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    theirs, theirs_runs = _median_step_seconds(torch_step, warmup + 1, repeat, budget_s)
    return {"net": name, "batch": batch, "threads": THREADS,
            "runs": {"cnnc": ours_runs, "torch": theirs_runs},
            "cnnc_images_per_s": batch / ours, "torch_images_per_s": batch / theirs,
            "ratio": theirs / ours, "cnnc_ms": ours * 1e3, "torch_ms": theirs * 1e3,
            "cnnc_first_step_s": first}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of timed steps per net and side, after which fewer than "
                             "--repeat (at least 3) are taken (default 60)")
    parser.add_argument("--only", choices=[n for n, _ in CASES])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        print("this benchmark compares against PyTorch: pip install torch", file=sys.stderr)
        return 2
    rows = [bench(n, b, args.warmup, args.repeat, args.budget) for n, b in CASES
            if args.only in (None, n)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"training step (forward, loss, backward, SGD momentum), {THREADS} threads each, "
          f"median of up to {args.repeat} steps ({args.budget:.0f} s budget per side)")
    print(f"{'net':<16}{'batch':>6}{'cnnc img/s':>12}{'torch img/s':>13}{'cnnc/torch':>12}"
          f"{'cnnc ms':>10}{'torch ms':>10}{'compile s':>11}")
    for r in rows:
        print(f"{r['net']:<16}{r['batch']:>6}{r['cnnc_images_per_s']:>12.1f}"
              f"{r['torch_images_per_s']:>13.1f}{r['ratio']:>11.2f}x{r['cnnc_ms']:>10.1f}"
              f"{r['torch_ms']:>10.1f}{r['cnnc_first_step_s']:>11.1f}"
              f"   ({r['runs']['cnnc']}/{r['runs']['torch']} steps timed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

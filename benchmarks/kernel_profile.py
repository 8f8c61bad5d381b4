"""Where a whole run's time goes: each kernel timed inside a call of the compiled function,
not alone. A kernel timed alone finds its weights and input in cache; inside a run they were
last touched one or more kernels ago, which is what ONNX Runtime's own per-node profile
(``SessionOptions.enable_profiling``) measures too, so the two compare layer by layer.

    python benchmarks/kernel_profile.py specs/mobilenet_v1.yaml --batch 8
    python benchmarks/kernel_profile.py specs/googlenet.yaml --batch 1 --top 0   # every kernel

The VM calls a Python instrument before and after every call it makes; each kernel's time is
its median over the timed runs, times its calls per run (a kernel shared by layers of one
shape is called once for each). The instrument adds a few microseconds per call: the column
total is a little above the plain call's median, printed first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

os.environ.setdefault("TVM_NUM_THREADS", "2")


def profile(model, batch: int, rounds: int) -> tuple[float, list[tuple[float, int, str]]]:
    """(median ms of a plain call, [(ms per run, calls per run, kernel)]) for ``main_b<batch>``
    (``main`` where the build has no function for that batch size)."""
    import numpy as np
    import tvm

    from cnncompiler.bench import time_runs

    x = np.random.default_rng(0).standard_normal((batch, *model.input_shape)).astype(np.float32)
    model.predict(x)
    _, _, dev = model._open()
    args, inputs = model._device_args(), tvm.runtime.tensor(x, dev)
    vm = model._vm()
    name = f"main_b{batch}" if batch in model.batch_sizes else "main"
    plain = time_runs(lambda _: vm[name](inputs, *args), x, 0, rounds)["median_ms"]

    durations, started = defaultdict(list), {}

    def instrument(func, symbol, before_run, ret_value, *call_args):
        now = time.perf_counter()
        if before_run:
            started[symbol] = now
        else:
            durations[symbol].append(now - started.pop(symbol))
        return 0  # VMInstrumentReturnKind.kNoOp: run the call as usual

    vm.set_instrument(instrument)
    function = vm[name]
    function(inputs, *args)  # a warm-up run, not counted
    durations.clear()
    for _ in range(rounds):
        function(inputs, *args)
    rows = []
    for symbol, times in durations.items():
        calls = len(times) // rounds
        rows.append((statistics.median(times) * calls * 1e3, calls, symbol))
    return plain, sorted(rows, reverse=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--top", type=int, default=30, help="kernels to list; 0: all")
    args = ap.parse_args(argv)

    import cnncompiler as cc

    model = cc.compile(args.spec, batch_sizes=(args.batch,))
    plain, rows = profile(model, args.batch, args.rounds)
    total = sum(ms for ms, _, _ in rows)
    print(f"{args.spec} batch {args.batch}: call {plain:.3f} ms (median of {args.rounds}); "
          f"kernels inside it {total:.3f} ms over {len(rows)} functions")
    print(f"{'ms/run':>9} {'share':>6} {'calls':>5}  kernel")
    for ms, calls, symbol in rows[:args.top or None]:
        print(f"{ms:>9.3f} {100 * ms / total:>5.1f}% {calls:>5}  {symbol}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Timing one kernel as the model runs it: built alone for the target, marked ``noalias`` as
the model's build marks every kernel (backends/cpu/__init__.py says why that matters), run by
TVM's runtime with its ``time_evaluator`` on the tuning process's thread pool.

    bench = KernelBench(func, target)      # random inputs for the unscheduled kernel's buffers
    module = bench.build(scheduled_func)
    bench.time(module)                      # ms: the best of a few timed repeats
    bench.same_output(module, reference)    # does a candidate compute what the default does?
"""

from __future__ import annotations

import os

import numpy as np
import tvm

from cnncompiler.threads import default_threads

MIN_REPEAT_MS = 25  # each timed repeat runs the kernel this long at least
THREADS_ENV = "TVM_NUM_THREADS"


def use_threads(threads: int | None = None) -> int:
    """Ask TVM's runtime for ``threads`` threads (default: what models run on,
    cnncompiler/threads.py) and return how many it has. TVM sizes its pool once, on first use."""
    os.environ[THREADS_ENV] = str(threads if threads is not None else default_threads())
    return int(tvm.get_global_func("runtime.NumThreads")())


class KernelBench:
    def __init__(self, func, target, seed: int = 0):
        self.target = target
        self.dev = tvm.cpu()
        rng = np.random.default_rng(seed)
        self.args = [tvm.runtime.tensor(rng.standard_normal([int(s) for s in p.shape])
                                        .astype(p.dtype), self.dev) for p in func.params]

    def build(self, scheduled):
        func = scheduled.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
        return tvm.tirx.build(tvm.IRModule({"main": func}), target=self.target)

    def time(self, module, repeat: int = 3, min_repeat_ms: int = MIN_REPEAT_MS) -> float:
        """Milliseconds per run: the best repeat, so a moment of load elsewhere on the machine
        does not count against a schedule."""
        evaluator = module.time_evaluator("main", self.dev, number=1, repeat=repeat,
                                          min_repeat_ms=min_repeat_ms)
        module["main"](*self.args)  # warm caches and the thread pool
        return min(evaluator(*self.args).results) * 1e3

    def output(self, module) -> np.ndarray:
        module["main"](*self.args)
        return self.args[-1].numpy().copy()

    def same_output(self, module, reference: np.ndarray, rtol: float = 1e-4) -> bool:
        got = self.output(module)
        scale = max(float(np.abs(reference).max()), 1e-6)
        return bool(np.all(np.abs(got - reference) <= rtol * scale))

"""MetaSchedule on one kernel within a wall-clock share: TVM's own schedule search (its CPU
schedule rules, evolutionary search, an XGBoost cost model where xgboost is installed) over the
kernel's unscheduled compute, in cnnc's blocked layout.

MetaSchedule counts trials, not seconds; a measure callback stops the search after the round of
trials (``TRIALS_PER_ROUND`` builds and runs) that the next one, as long again, would carry past
the deadline. The first round always runs; its length is not known before. A search can also be
given a number of trials and no deadline, so that what it runs does not depend on the machine's
speed. The best schedule comes back as its trace, JSON that replays onto the same unscheduled
PrimFunc in any later process:

    found = metaschedule_search(task.func, target, seconds=120, threads=2)
    found = metaschedule_search(task.func, target, seconds=None, threads=2, trials=8)
    if found.config: func = apply_trace(task.func, found.config["trace"])

Candidates are built in worker processes by ``build_candidate`` and each build and run is
killed after ``CANDIDATE_TIMEOUT_S``: both chosen so that a machine busy with other work makes
the search slower, not empty (see ``build_candidate``).

The tuning database lives in memory for the search alone (TVM-NOTES: its JSON writer is what
crashes with the newer tvm-ffi); what is kept is the trace, in cnnc's own tuning cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule, Trace

TRIALS_PER_ROUND = 8
MAX_TRIALS = 10_000      # the deadline ends a search long before this
# A candidate's build takes about a second and its run less on a quiet machine; a machine busy
# with other work stretches both many times over, and a killed candidate is a lost trial.
CANDIDATE_TIMEOUT_S = 120.0


@dataclass
class Found:
    config: dict | None   # {"trace": JSON text}: what the tuning cache records; None: nothing
    trials: int           # that built and ran, or MetaSchedule failed (``error`` says why)
    error: str = ""


@derived_object
class WatchRounds(ms.measure_callback.PyMeasureCallback):
    """Counts the trials, keeps the first failed candidate's message, and ends the search when
    another round of trials, as long as the last, would end after ``deadline``
    (time.monotonic)."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.trials = 0
        self.first_error = ""
        self.round_start = time.monotonic()

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
              runner_results) -> None:
        self.trials += len(measure_candidates)
        for built, ran in zip(builder_results, runner_results):
            self.first_error = self.first_error or _last_line(built.error_msg or ran.error_msg)
        now = time.monotonic()
        last_round, self.round_start = now - self.round_start, now
        if now + last_round >= self.deadline:
            task_scheduler.terminate_task(task_id)


def build_candidate(mod, target, _params):
    """MetaSchedule's default build of a candidate, less its first step: importing the tensor
    intrinsics of every target. Each round's builder pool starts fresh workers, and in each that
    import (its CUDA intrinsics above all) takes tens of seconds of CPU on a 2-core machine,
    inside the build's timeout: on a busy machine no build of the round would finish in time.
    The intrinsics serve the schedule, which is applied in the searching process where
    MetaSchedule has them loaded; building a scheduled CPU kernel needs none of them."""
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _last_line(message: str | None) -> str:
    lines = (message or "").strip().splitlines()
    return lines[-1][:200] if lines else ""


def cost_model() -> str:
    """MetaSchedule's XGBoost model where xgboost is installed, else random sampling."""
    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"


def metaschedule_search(func, target, seconds: float | None, threads: int, seed: int = 0, *,
                        trials: int = MAX_TRIALS,
                        timeout_s: float = CANDIDATE_TIMEOUT_S) -> Found:
    """The best schedule MetaSchedule finds for ``func`` in about ``seconds`` (None: no
    deadline) and at most ``trials`` trials, each candidate's build and run killed after
    ``timeout_s``. Its failures are results too (``Found.error``): the kernel then keeps what
    the tiles found."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    watch = WatchRounds(math.inf if seconds is None else time.monotonic() + seconds)
    callbacks = [*ms.MeasureCallback.create("default"), watch]
    quiet = logging.getLogger("tvm.s_tir.meta_schedule")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its per-round tables would drown cnnc's progress lines
    try:
        # its log handler writes to stdout, which `cnnc tune --json` keeps for the summary
        with tempfile.TemporaryDirectory(prefix="cnnc-ms-") as work, \
                contextlib.redirect_stdout(sys.stderr):
            builder = ms.builder.LocalBuilder(max_workers=threads, timeout_sec=timeout_s,
                                              f_build=build_candidate)
            runner = ms.runner.LocalRunner(timeout_sec=timeout_s)
            database = ms.tune_tir(mod, target, work, max_trials_global=trials,
                                   num_trials_per_iter=min(TRIALS_PER_ROUND, trials),
                                   builder=builder, runner=runner, database="memory",
                                   cost_model=cost_model(), measure_callbacks=callbacks,
                                   num_tuning_cores=threads, seed=seed)
            sch = ms.tir_integration.compile_tir(database, mod, target)
    except Exception as exc:  # noqa: BLE001 (TVM raises many kinds; tuning goes on)
        why = _last_line(str(exc))
        return Found(None, watch.trials, type(exc).__name__ + (f": {why}" if why else ""))
    finally:
        quiet.setLevel(level)
    if sch is None:
        why = f" (the first failure: {watch.first_error})" if watch.first_error else ""
        return Found(None, watch.trials, f"no candidate built and ran{why}")
    trace = tvm.ir.save_json(sch.trace.as_json(remove_postproc=False))
    return Found({"trace": trace}, watch.trials)


def apply_trace(func, trace: str):
    """``func`` (unscheduled) scheduled by a recorded MetaSchedule trace."""
    sch = Schedule(tvm.IRModule({"main": func}))
    Trace.apply_json_to_schedule(tvm.ir.load_json(trace), sch)
    return sch.mod["main"]

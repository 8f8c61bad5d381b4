"""MetaSchedule on one kernel within a wall-clock share: TVM's own schedule search (its CPU
schedule rules, evolutionary search, an XGBoost cost model where xgboost is installed) over the
kernel's unscheduled compute, in cnnc's blocked layout.

MetaSchedule counts trials, not seconds; a measure callback stops the search after the round of
trials (``TRIALS_PER_ROUND`` builds and runs) that the next one, as long again, would carry past
the deadline. The first round always runs; its length is not known before. The best schedule comes back as
its trace, JSON that replays onto the same unscheduled PrimFunc in any later process:

    found = metaschedule_search(task.func, target, seconds=120, threads=2)
    if found.config: func = apply_trace(task.func, found.config["trace"])

The tuning database lives in memory for the search alone (TVM-NOTES: its JSON writer is what
crashes with the newer tvm-ffi); what is kept is the trace, in cnnc's own tuning cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
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


@dataclass
class Found:
    config: dict | None   # {"trace": JSON text}: what the tuning cache records; None: nothing
    trials: int           # that built and ran, or MetaSchedule failed (``error`` says why)
    error: str = ""


@derived_object
class StopAtDeadline(ms.measure_callback.PyMeasureCallback):
    """Ends the search when another round of trials, as long as the last, would end after
    ``deadline`` (time.monotonic)."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.trials = 0
        self.round_start = time.monotonic()

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
              runner_results) -> None:
        self.trials += len(measure_candidates)
        now = time.monotonic()
        last_round, self.round_start = now - self.round_start, now
        if now + last_round >= self.deadline:
            task_scheduler.terminate_task(task_id)


def cost_model() -> str:
    """MetaSchedule's XGBoost model where xgboost is installed, else random sampling."""
    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"


def metaschedule_search(func, target, seconds: float, threads: int, seed: int = 0) -> Found:
    """The best schedule MetaSchedule finds for ``func`` in about ``seconds``. Its failures
    are results too (``Found.error``): the kernel then keeps what the tiles found."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    stop = StopAtDeadline(time.monotonic() + seconds)
    callbacks = [*ms.MeasureCallback.create("default"), stop]
    quiet = logging.getLogger("tvm.s_tir.meta_schedule")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its per-round tables would drown cnnc's progress lines
    try:
        # its log handler writes to stdout, which `cnnc tune --json` keeps for the summary
        with tempfile.TemporaryDirectory(prefix="cnnc-ms-") as work, \
                contextlib.redirect_stdout(sys.stderr):
            database = ms.tune_tir(mod, target, work, max_trials_global=MAX_TRIALS,
                                   num_trials_per_iter=TRIALS_PER_ROUND, database="memory",
                                   cost_model=cost_model(), measure_callbacks=callbacks,
                                   num_tuning_cores=threads, seed=seed)
            sch = ms.tir_integration.compile_tir(database, mod, target)
    except Exception as exc:  # noqa: BLE001 (TVM raises many kinds; tuning goes on)
        lines = str(exc).strip().splitlines()
        return Found(None, stop.trials, f"{type(exc).__name__}: {lines[-1][:200] if lines else ''}")
    finally:
        quiet.setLevel(level)
    if sch is None:
        return Found(None, stop.trials, "no candidate built and ran")
    trace = tvm.ir.save_json(sch.trace.as_json(remove_postproc=False))
    return Found({"trace": trace}, stop.trials)


def apply_trace(func, trace: str):
    """``func`` (unscheduled) scheduled by a recorded MetaSchedule trace."""
    sch = Schedule(tvm.IRModule({"main": func}))
    Trace.apply_json_to_schedule(tvm.ir.load_json(trace), sch)
    return sch.mod["main"]

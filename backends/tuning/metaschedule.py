"""MetaSchedule on one kernel within a hard wall-clock share: TVM's own schedule search (its CPU
schedule rules, evolutionary search, an XGBoost cost model where xgboost is installed) over the
kernel's unscheduled compute, in cnnc's blocked layout, run in a worker process of its own.

MetaSchedule counts trials, not seconds, and a round of trials (``TRIALS_PER_ROUND`` builds
and runs; the first also sets up the search space, the cost model and the worker pools, about
a minute on 2 cores) cannot be cut short from inside. So the search runs in
``python -m cnncompiler.backends.tuning.metaschedule JOB_DIR``, in a process group of its own
(its builder and runner pools with it). After each round the worker writes the best schedule
found so far, as its trace, and the trial count, atomically to ``progress.json``; it ends the
search itself after the round that the next one, as long again, would carry past the deadline.
The parent waits until the deadline and no longer: a worker still running then is stopped,
its whole group (SIGTERM, then SIGKILL), and what its finished rounds recorded is the result.
A search can also be given a number of trials and no deadline, so that what it runs does not
depend on the machine's speed. The trace is JSON that replays onto the same unscheduled
PrimFunc in any later process:

    found = metaschedule_search(task.func, target, seconds=120, threads=2, work_dir=cache.dir)
    found = metaschedule_search(task.func, target, None, threads=2, trials=8, work_dir=...)
    if found.config: func = apply_trace(task.func, found.config["trace"])

The job lives in a private folder made under ``work_dir`` (the tuning cache) for the search
alone: the request, the progress file, the worker's log and its temporary files (TMPDIR points
there, so the builders' files are in it too); the folder is removed when the search ends,
killed or not. A progress file that cannot be read is ignored with a warning.

Candidates are built in MetaSchedule's pool by ``build_candidate`` and each build and run is
killed after ``CANDIDATE_TIMEOUT_S``: both chosen so that a machine busy with other work makes
the search slower, not empty (see ``build_candidate``). The tuning database lives in the
worker's memory (TVM-NOTES: its JSON writer is what crashes with the newer tvm-ffi); what is
kept is the trace, in cnnc's own tuning cache.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule, Trace

from .cache import TuningCacheWarning

TRIALS_PER_ROUND = 8
MAX_TRIALS = 10_000      # the deadline ends a search long before this
# A candidate's build takes about a second and its run less on a quiet machine; a machine busy
# with other work stretches both many times over, and a killed candidate is a lost trial.
CANDIDATE_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0       # after SIGTERM the worker's group has this long before SIGKILL
JOB, PROGRESS, LOG = "job.json", "progress.json", "worker.log"
PROGRESS_FORMAT = 1
RUNTIME_ONLY = "TVM_USE_RUNTIME_LIB"   # backends/__init__.py: the worker needs the compiler


@dataclass
class Found:
    config: dict | None   # {"trace": JSON text}: what the tuning cache records; None: nothing
    trials: int           # that built and ran, or MetaSchedule failed (``error`` says why)
    error: str = ""
    cut_short: bool = False   # stopped at the deadline: ``config`` is what its rounds found


# -- the parent: a worker per search, stopped at the deadline ------------------------------------

def metaschedule_search(func, target, seconds: float | None, threads: int, seed: int = 0, *,
                        work_dir, trials: int = MAX_TRIALS,
                        timeout_s: float = CANDIDATE_TIMEOUT_S) -> Found:
    """The best schedule MetaSchedule finds for ``func`` within ``seconds`` (None: no
    deadline) and at most ``trials`` trials, each candidate's build and run killed after
    ``timeout_s``, searched in a worker process whose files live under ``work_dir`` while it
    runs. Its failures are results too (``Found.error``): the kernel then keeps what the
    tiles found."""
    deadline = None if seconds is None else time.monotonic() + seconds
    job = {"func": tvm.ir.save_json(func), "target": str(target), "threads": threads,
           "seed": seed, "trials": trials, "timeout_s": timeout_s,
           # time.monotonic() is one clock for every process of the machine
           "deadline": deadline}
    return run_worker(job, deadline, work_dir)


def worker_command(job_dir: Path) -> list[str]:
    """The command line of the worker that searches the job in ``job_dir``."""
    return [sys.executable, "-m", __name__, str(job_dir)]


def run_worker(job: dict, deadline: float | None, work_dir) -> Found:
    """Run ``job`` in a worker process until it ends or ``deadline`` (time.monotonic) passes,
    then stop its process group; what its last progress file says."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    job_dir = Path(tempfile.mkdtemp(prefix=".metaschedule-", dir=work_dir))
    try:
        (job_dir / JOB).write_text(json.dumps(job))   # a private folder: no reader before us
        (job_dir / "tmp").mkdir()
        env = {k: v for k, v in os.environ.items() if k != RUNTIME_ONLY}
        env["TMPDIR"] = str(job_dir / "tmp")
        with open(job_dir / LOG, "wb") as log:
            proc = subprocess.Popen(worker_command(job_dir), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        killed = False
        try:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            stop_group(proc)   # on a normal end too: no pool worker outlives the search
        return _found(read_progress(job_dir / PROGRESS), proc.returncode, killed,
                      _last_line(_tail(job_dir / LOG)))
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)   # made above, for this search alone


def stop_group(proc: subprocess.Popen, grace: float | None = None) -> None:
    """End every process of ``proc``'s group (it leads its own session): SIGTERM, then
    SIGKILL to whatever is still running after ``grace`` seconds (``STOP_GRACE_S``)."""
    grace = STOP_GRACE_S if grace is None else grace
    group = proc.pid
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    end = time.monotonic() + grace
    while time.monotonic() < end and group_running(group, proc):
        time.sleep(0.05)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def group_running(group: int, leader: subprocess.Popen) -> bool:
    """Does a process of ``group`` still run? (Ended ones waiting to be reaped do not count:
    where nothing reaps orphans they would stay forever.)"""
    leader.poll()
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        try:
            os.killpg(group, 0)
            return True
        except ProcessLookupError:
            return False
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue   # ended while we looked
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            return True
    return False


def read_progress(path: Path) -> dict | None:
    """The worker's last progress record; None when it wrote none, and (with a warning) when
    what is there cannot be read."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != PROGRESS_FORMAT:
            raise ValueError(f"expected a progress record of format {PROGRESS_FORMAT}")
        checks = {"trials": int, "done": bool, "error": str}
        for key, kind in checks.items():
            if not isinstance(data.get(key), kind):
                raise ValueError(f"'{key}' is not a {kind.__name__}")
        if data.get("trace") is not None and not isinstance(data["trace"], str):
            raise ValueError("'trace' is not JSON text")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        warnings.warn(f"ignoring MetaSchedule progress file {path}: {exc}; the kernel keeps "
                      "what the tiles found", TuningCacheWarning, stacklevel=2)
        return None
    return data


def _found(progress: dict | None, code: int | None, killed: bool, log_line: str) -> Found:
    """The search's result from its progress record and how its worker ended."""
    trials = progress["trials"] if progress else 0
    trace = progress.get("trace") if progress else None
    config = {"trace": trace} if trace else None
    if killed:
        return Found(config, trials, cut_short=True)
    if progress and progress["error"]:
        return Found(config, trials, progress["error"])
    if progress and progress["done"]:
        if config is None:
            first = progress.get("first_error") or ""
            return Found(None, trials, "no candidate built and ran"
                         + (f" (the first failure: {first})" if first else ""))
        return Found(config, trials)
    why = f"exit code {code}" if code is not None and code >= 0 else \
        f"signal {-code}" if code is not None else "no exit code"
    return Found(config, trials, f"the MetaSchedule worker ended before its search did ({why})"
                 + (f": {log_line}" if log_line else ""))


def _tail(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _last_line(message: str | None) -> str:
    lines = (message or "").strip().splitlines()
    return lines[-1][:200] if lines else ""


# -- the worker -----------------------------------------------------------------------------------

class Progress:
    """The worker's progress file, rewritten whole (temporary file, then rename) after each
    round, so the parent reads the last complete record whenever it stops the worker."""

    def __init__(self, path: Path):
        self.path = path
        self.trials, self.best_s, self.trace, self.first_error = 0, math.inf, None, ""

    def write(self, done: bool = False, error: str = "") -> None:
        data = {"format": PROGRESS_FORMAT, "trials": self.trials, "trace": self.trace,
                "best_ms": None if self.trace is None else self.best_s * 1e3,
                "first_error": self.first_error, "done": done, "error": error}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)


@derived_object
class WatchRounds(ms.measure_callback.PyMeasureCallback):
    """After each round: counts the trials, keeps the fastest candidate's trace and the first
    failed candidate's message, writes them to ``progress``, and ends the search when another
    round, as long as the last, would end after ``deadline`` (time.monotonic)."""

    def __init__(self, deadline: float, progress: Progress):
        super().__init__()
        self.deadline = deadline
        self.progress = progress
        self.round_start = time.monotonic()

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
              runner_results) -> None:
        progress = self.progress
        progress.trials += len(measure_candidates)
        for candidate, built, ran in zip(measure_candidates, builder_results, runner_results):
            failed = built.error_msg or ran.error_msg
            progress.first_error = progress.first_error or _last_line(failed)
            seconds = [float(s) for s in ran.run_secs or ()]
            if not failed and seconds and sum(seconds) / len(seconds) < progress.best_s:
                progress.best_s = sum(seconds) / len(seconds)
                progress.trace = tvm.ir.save_json(
                    candidate.sch.trace.as_json(remove_postproc=False))
        progress.write()
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


def cost_model() -> str:
    """MetaSchedule's XGBoost model where xgboost is installed, else random sampling."""
    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"


def search_job(job: dict, progress: Progress, work: str) -> None:
    """The worker's search: MetaSchedule's ``tune_tir`` on the job's kernel, ``progress``
    written after every round."""
    func = tvm.ir.load_json(job["func"])
    target = tvm.target.Target(job["target"])
    threads, trials, timeout_s = job["threads"], job["trials"], job["timeout_s"]
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    deadline = math.inf if job["deadline"] is None else job["deadline"]
    callbacks = [*ms.MeasureCallback.create("default"), WatchRounds(deadline, progress)]
    # its per-round tables would fill the worker's log
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    builder = ms.builder.LocalBuilder(max_workers=threads, timeout_sec=timeout_s,
                                      f_build=build_candidate)
    runner = ms.runner.LocalRunner(timeout_sec=timeout_s)
    ms.tune_tir(mod, target, work, max_trials_global=trials,
                num_trials_per_iter=min(TRIALS_PER_ROUND, trials), builder=builder,
                runner=runner, database="memory", cost_model=cost_model(),
                measure_callbacks=callbacks, num_tuning_cores=threads, seed=job["seed"])


def _end_with_parent(parent: int) -> None:
    """Stop this worker's group when the process that started it is gone (killed before it
    could stop us): a search nobody waits for would only take the machine."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.killpg(0, signal.SIGKILL)


def worker_main(job_dir: str) -> int:
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True).start()
    folder = Path(job_dir)
    job = json.loads((folder / JOB).read_text())
    progress = Progress(folder / PROGRESS)
    try:
        search_job(job, progress, str(folder / "tune"))
    except Exception as exc:  # noqa: BLE001 (TVM raises many kinds; the parent reports it)
        why = _last_line(str(exc))
        progress.write(done=True, error=type(exc).__name__ + (f": {why}" if why else ""))
        return 1
    progress.write(done=True)
    return 0


def apply_trace(func, trace: str):
    """``func`` (unscheduled) scheduled by a recorded MetaSchedule trace."""
    sch = Schedule(tvm.IRModule({"main": func}))
    Trace.apply_json_to_schedule(tvm.ir.load_json(trace), sch)
    return sch.mod["main"]


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))

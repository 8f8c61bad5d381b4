"""Tuning as a budget: the model's kernels searched within a wall-clock budget, every result kept
in the tuning cache.

The budget is shared among the kernels by their FLOPs, biggest first, and what one kernel
leaves unused goes to the rest; kernels under ``min_flops`` are not worth a build and are
skipped. Each kernel's search starts from cnnc's default schedule, measured the same way as
every candidate; the best candidate is timed against the default once more, interleaved, and
checked to compute the same output before its time is recorded. A kernel already in the cache
is skipped (``retune`` searches it again); one whose search the budget cut short carries on
where it stopped.

The budget is a deadline for the whole call, from ``started`` (default: the call) to its
return: finding the kernels, timing tiles and confirming a winner all look at the time left,
a kernel's search keeps back what timing its best candidate will take (estimated from how
long building and timing its default took), and MetaSchedule runs in a worker process that
is stopped at the kernel's deadline (metaschedule.py). ``build_after`` leaves time for building
the whole model afterwards, estimated from the kernels' own build times, as ``cnnc compile
--tune-budget`` does.

    summary = tune_model(g, choice, (1, 64), budget_s=600, cache=TuningCache(),
                         progress=print)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import tvm

from .budget import format_seconds
from .cache import WIN_MARGIN, Record, TuningCache, describe_config
from .measure import KernelBench, use_threads
from .space import apply_config
from .tasks import KernelTask, find_tasks, target_key

MIN_FLOPS = 4_000_000    # below this a kernel runs in microseconds: not worth a search
MIN_SHARE_S = 1.0        # a kernel's search gets at least this long, while the budget lasts
CONFIRM_ROUNDS = 3
CONFIRM_STEPS = 2        # a confirmation takes about as long as this many candidates
STRATEGY_NAMES = {"both": "cnnc's tiles, then MetaSchedule",
                  "tiles": "cnnc's tiles", "metaschedule": "MetaSchedule"}
STRATEGIES = tuple(STRATEGY_NAMES)
# MetaSchedule runs on a kernel when this much of its share is left: its first round (search
# space, cost model and worker pools set up, 8 candidates built and run) took about a minute on
# a 2-core machine whatever the kernel; a worker stopped before it ends has found nothing
MIN_METASCHEDULE_S = 90.0
# a kernel's share of building a model: ResNet-18 CIFAR's 46 kernel functions (batch 1 and the
# symbolic batch) were compiled and linked in 18.7 s on a 2-core machine
BUILD_S_PER_KERNEL = 0.4


@dataclass
class KernelResult:
    label: str
    flops: int
    status: str            # tuned, cached, out of budget, failed: why
    record: Record | None = None
    trials: int = 0
    seconds: float = 0.0


@dataclass
class KernelSearch:
    record: Record         # what to cache
    trials: int            # run now
    note: str              # what went wrong or was cut short ("" when nothing was)
    build_s: float         # how long building the kernel's default schedule took


@dataclass
class TuneSummary:
    budget_s: float
    spent_s: float = 0.0
    threads: int = 0
    cache_dir: str = ""
    tiny: int = 0
    kernels: list = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(k.status == status for k in self.kernels)

    def wins(self) -> int:
        return sum(k.record is not None and k.record.wins(WIN_MARGIN) for k in self.kernels)

    def to_json(self) -> dict:
        return {"budget_s": round(self.budget_s, 1), "spent_s": round(self.spent_s, 1),
                "threads": self.threads, "cache": self.cache_dir, "skipped_tiny": self.tiny,
                "kernels": [{"kernel": k.label, "status": k.status, "trials": k.trials,
                             "seconds": round(k.seconds, 1),
                             "default_ms": k.record and round(k.record.default_ms, 4),
                             "best_ms": k.record and round(k.record.best_ms, 4),
                             "faster": bool(k.record and k.record.wins(WIN_MARGIN))}
                            for k in self.kernels]}


def searched(record: Record, strategy: str) -> bool:
    """Has ``record``'s kernel had the search ``strategy`` asks for? (Then it is skipped.)"""
    tiles = record.complete or strategy == "metaschedule"
    return tiles and (strategy == "tiles" or record.metaschedule_trials > 0)


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def format_flops(flops: int) -> str:
    return f"{flops / 1e9:.2f} GFLOP" if flops >= 1e9 else f"{flops / 1e6:.1f} MFLOP"


def search_kernel(task: KernelTask, seconds: float, target, target_id: str, threads: int,
                  previous: Record | None = None, strategy: str = "both", *,
                  work_dir) -> KernelSearch:
    """Search ``task`` for at most about ``seconds``: the tiles of cnnc's rule (``strategy``
    tiles or both), then MetaSchedule with the time left (metaschedule or both), its worker's
    files under ``work_dir``. Time to build and time the best candidate once more is kept
    back: each step is estimated from how long the default schedule took."""
    start = time.monotonic()
    deadline = start + seconds
    rule, func = task.rule, task.func
    bench = KernelBench(func, target)
    default_config = rule.default_config(func)
    default = bench.build(rule.schedule(func))   # exactly what the build uses untuned
    build_s = time.monotonic() - start
    reference = bench.output(default)
    default_ms = bench.time(default)
    step_s = time.monotonic() - start             # a candidate's build and timing, about
    carried = previous is not None and previous.default_config == default_config
    tried = [list(t) for t in previous.trials] if carried else []
    done = {_key(c) for c, _ in tried} | {_key(default_config)}
    fresh = {}                                    # config key -> ms, measured in this run
    complete = carried and previous.complete
    # the confirmation (a build and interleaved timings) and re-timing the previous best
    reserve_s = step_s * (CONFIRM_STEPS + int(carried))
    if strategy in ("tiles", "both"):
        complete = True
        for config in rule.candidates(func, tried, baseline=(default_config, default_ms)):
            if _key(config) in done:
                continue
            if time.monotonic() + step_s + reserve_s >= deadline:
                complete = False
                break
            ms = _time_config(bench, rule, func, config)
            tried.append([config, ms])
            done.add(_key(config))
            fresh[_key(config)] = ms
    tile_trials = len(fresh)
    ms_trials, note = 0, ""
    left = deadline - time.monotonic() - reserve_s - step_s   # step_s: timing what it finds
    if strategy in ("metaschedule", "both") and left >= MIN_METASCHEDULE_S:
        from .metaschedule import metaschedule_search

        found = metaschedule_search(func, target, left, threads, work_dir=work_dir)
        # a failed run counts as one trial, so the next run does not repeat it
        ms_trials = max(found.trials, 1 if found.error else 0)
        note = _metaschedule_note(found)
        if found.config is not None:
            ms = _time_config(bench, rule, func, found.config)
            tried.append([found.config, ms])
            fresh[_key(found.config)] = ms
    # only times taken now compare with the default just measured
    timed = [(ms, c) for c, ms in tried if fresh.get(_key(c)) is not None]
    if carried and previous.best_config != default_config:
        ms = _time_config(bench, rule, func, previous.best_config)
        if ms is not None:
            timed.append((ms, previous.best_config))
    best_ms, best_config = min(timed, key=lambda t: t[0]) if timed else (default_ms, None)
    if best_config is None or best_ms >= default_ms:
        best_ms, best_config = default_ms, default_config
    else:
        default_ms, best_ms, best_config = _confirm(bench, default, reference, rule, func,
                                                    best_config, default_config)
    spent = time.monotonic() - start
    record = Record(workload=task.workload, target=target_id, kernel=task.label,
                    rule=rule.name, flops=task.flops, default_config=default_config,
                    default_ms=default_ms, best_config=best_config, best_ms=best_ms,
                    threads=threads, trials=tried, complete=complete,
                    seconds=spent + (previous.seconds if carried else 0.0),
                    metaschedule_trials=ms_trials + (previous.metaschedule_trials
                                                     if carried else 0))
    return KernelSearch(record, tile_trials + ms_trials, note, build_s)


def _metaschedule_note(found) -> str:
    if found.error:
        return f"MetaSchedule: {found.error}"
    if found.cut_short:
        return ("MetaSchedule stopped at the deadline, "
                + (f"{found.trials} trial{'s' * (found.trials != 1)} kept" if found.trials
                   else "before its first round ended"))
    return ""


def _time_config(bench, rule, func, config: dict) -> float | None:
    """Milliseconds of the kernel scheduled with ``config``; None when TVM refuses it."""
    try:
        return bench.time(bench.build(apply_config(rule, func, config)))
    except Exception:  # noqa: BLE001 (TVM refuses some tiles; the candidate is dropped)
        return None


def _confirm(bench, default, reference, rule, func, config, default_config):
    """(default ms, best ms, best config) from interleaved head-to-head timing; the default
    when the candidate computes anything else."""
    best = bench.build(apply_config(rule, func, config))
    if not bench.same_output(best, reference):
        ms = bench.time(default)
        return ms, ms, default_config
    pairs = [(bench.time(default), bench.time(best)) for _ in range(CONFIRM_ROUNDS)]
    default_ms = sorted(p[0] for p in pairs)[CONFIRM_ROUNDS // 2]
    best_ms = sorted(p[1] for p in pairs)[CONFIRM_ROUNDS // 2]
    if best_ms >= default_ms:
        return default_ms, default_ms, default_config
    return default_ms, best_ms, config


def tune_model(g, choice, batch_sizes, budget_s: float, cache: TuningCache, *,
               threads: int | None = None, retune: bool = False, min_flops: int = MIN_FLOPS,
               strategy: str = "both", progress=None, started: float | None = None,
               build_after: bool = False) -> TuneSummary:
    """Tune the kernels of the batch-specialised functions of ``g`` within ``budget_s``
    seconds of wall-clock time from ``started`` (time.monotonic(); default: now), recording
    every result in ``cache``; with ``build_after``, time to build the model is left at the
    end. ``strategy``: "tiles" (cnnc's schedule rules with other tiles), "metaschedule", or
    "both" (tiles, then MetaSchedule with the rest of each kernel's share)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown tuning strategy {strategy!r}; expected one of {STRATEGIES}")
    say = progress or (lambda line: None)
    start = time.monotonic() if started is None else started
    deadline = start + budget_s
    threads = use_threads(threads)
    target = tvm.target.Target(choice.config)
    target_id = target_key(choice)
    summary = TuneSummary(budget_s, threads=threads, cache_dir=str(cache.dir))
    cache.check_writable()  # before the budget is spent, not after
    tasks, kernel_count = find_tasks(g, choice, batch_sizes)
    build = BuildEstimate(kernel_count if build_after else 0)
    big = [t for t in tasks if t.flops >= min_flops]
    summary.tiny = len(tasks) - len(big)
    todo, previous = [], {}
    for task in big:
        record = None if retune else cache.get(task.workload, target_id)
        if record is not None and searched(record, strategy):
            summary.kernels.append(KernelResult(task.label, task.flops, "cached", record))
        else:
            todo.append(task)
            previous[task.workload] = record
    cached = summary.count("cached")
    say(f"tuning {g.graph['name']} for {choice.describe()}, batch "
        f"{','.join(map(str, batch_sizes))}, {threads} threads: {len(todo)} kernels to tune"
        + (f", {cached} already tuned in the cache" if cached else "")
        + (f", {summary.tiny} too small to tune" if summary.tiny else "")
        + f"; budget {format_seconds(budget_s)}"
        + (f" (about {format_seconds(build.seconds())} of it kept to build the model)"
           if build_after else "")
        + f", search: {STRATEGY_NAMES[strategy]}")
    for i, task in enumerate(todo):
        left = deadline - build.seconds() - time.monotonic()
        if left < MIN_SHARE_S:
            summary.kernels.append(KernelResult(task.label, task.flops, "out of budget"))
            continue
        share = left * task.work / sum(t.work for t in todo[i:])
        share = min(left, max(share, MIN_SHARE_S))
        head = f"[{i + 1:>{len(str(len(todo)))}}/{len(todo)}] {task.label}"
        record = previous.get(task.workload)
        tiles_done = strategy == "metaschedule" or (record is not None and record.complete)
        if strategy != "tiles" and tiles_done and share < MIN_METASCHEDULE_S:
            # nothing left to try in so short a share: the time goes to the other kernels
            status = "cached" if record is not None else "out of budget"
            summary.kernels.append(KernelResult(task.label, task.flops, status, record))
            say(f"{head}: {format_seconds(share)} share, under the {MIN_METASCHEDULE_S:.0f} s "
                "MetaSchedule needs: skipped")
            continue
        kernel_start = time.monotonic()
        try:
            found = search_kernel(task, share, target, target_id, threads, record, strategy,
                                  work_dir=cache.dir)
            cache.put(found.record)
        except Exception as exc:  # noqa: BLE001 (one kernel TVM cannot build or time)
            why = _one_line(exc)
            summary.kernels.append(KernelResult(task.label, task.flops, f"failed: {why}"))
            say(f"{head}: failed ({why}); it keeps cnnc's default schedule")
            continue
        build.timed(found.build_s)
        record, trials = found.record, found.trials
        result = KernelResult(task.label, task.flops, "tuned", record, trials,
                              time.monotonic() - kernel_start)
        summary.kernels.append(result)
        say(f"{head}: {format_flops(task.flops)}, {format_seconds(result.seconds)}, "
            f"{trials} trial{'s' * (trials != 1)}"
            f"{'' if record.complete else ' (budget ran out first)'}; {_verdict(record)}"
            + (f" [{found.note}]" if found.note else ""))
    summary.spent_s = time.monotonic() - start
    left_out = summary.count("out of budget")
    failed = sum(k.status.startswith("failed") for k in summary.kernels)
    say(f"tuned {summary.count('tuned')} kernels in {format_seconds(summary.spent_s)}: "
        f"{summary.wins()} of {len(summary.kernels)} now faster than cnnc's default schedule"
        + (f"; {left_out} left for a larger budget" if left_out else "")
        + (f"; {failed} failed (see above)" if failed else "")
        + f"; cache {cache.dir}")
    return summary


class BuildEstimate:
    """How long building the model's ``kernels`` kernel functions will take: each as long as
    ``BUILD_S_PER_KERNEL`` (measured on a quiet 2-core machine, the model's own compile
    passes and linking included), or as the kernels tuned so far each took to build alone
    where that is longer: a busy machine builds slower."""

    def __init__(self, kernels: int):
        self.kernels = kernels
        self.builds: list[float] = []

    def timed(self, build_s: float) -> None:
        self.builds.append(build_s)

    def seconds(self) -> float:
        each = sum(self.builds) / len(self.builds) if self.builds else 0.0
        return self.kernels * max(each, BUILD_S_PER_KERNEL)


def _one_line(exc: Exception) -> str:
    """An exception as one short line (TVM's messages run to pages of stack)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1][:200]}" if lines else type(exc).__name__


def _verdict(record: Record) -> str:
    base = f"default {record.default_ms:.3f} ms"
    if record.wins(WIN_MARGIN):
        return (f"{base}, tuned {record.best_ms:.3f} ms ({record.speedup:.2f}x, "
                f"{describe_config(record.best_config)})")
    if record.best_config != record.default_config:
        return f"{base}, best {record.best_ms:.3f} ms: within {WIN_MARGIN:.0%}, default kept"
    return f"{base}: nothing faster, default kept"

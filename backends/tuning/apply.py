"""Tuned schedules in a build: the schedule hook ``emit_kernel`` calls for every kernel.

A kernel gets its tuned schedule only when the cache holds a record for its workload and
target whose best schedule was measured faster than cnnc's default (by the margin tuning
uses), on the thread count the model will run on, and that default is still the one cnnc
picks today; in every other case, and whenever
the tuned schedule fails to apply, the kernel keeps the default. So a build with the cache is
never slower than one without, kernel by kernel, as far as the measurements go.

    hook = TunedSchedules(TuningCache(), choice)
    build_cpu(g, choice, lib_path, batch_sizes, schedule_hook=hook)
    hook.report()     # which kernels use tuned schedules, and their measured times
"""

from __future__ import annotations

import warnings

from .cache import WIN_MARGIN, TuningCache, TuningCacheWarning, describe_config
from cnncompiler.threads import default_threads

from .space import apply_config, is_static, rule_for
from .tasks import target_key, workload_key


class TunedSchedules:
    def __init__(self, cache: TuningCache, choice):
        self.cache = cache
        self.target = target_key(choice)
        self.threads = default_threads()  # what the model will run on (cnncompiler/threads.py)
        self.applied: dict[tuple[str, int], dict] = {}
        self.kept: dict[tuple[str, int], str] = {}
        self._active: bool | None = None

    def __call__(self, name: str, func, schedule):
        if self._active is None:  # looked at on the first kernel: no cache, no cost
            self._active = self.cache.dir.is_dir()
        rule = rule_for(schedule) if self._active else None
        if rule is None or not is_static(func):
            return schedule(func)
        batch = int(func.params[0].shape[0])
        record = self.cache.get(workload_key(func), self.target)
        if record is None:
            return schedule(func)
        if record.threads != self.threads:
            self.kept[(name, batch)] = (f"tuned on {record.threads} threads, the model runs on "
                                        f"{self.threads}: tune again with --threads "
                                        f"{self.threads}")
            return schedule(func)
        if record.default_config != rule.default_config(func):
            self.kept[(name, batch)] = "tuned against another default schedule: tune again"
            return schedule(func)
        if not record.wins(WIN_MARGIN):
            self.kept[(name, batch)] = "cnnc's default measured as fast"
            return schedule(func)
        try:
            scheduled = apply_config(rule, func, record.best_config)
        except Exception as exc:  # noqa: BLE001 (a record from another cnnc: keep the default)
            warnings.warn(f"tuned schedule for kernel '{name}' (batch {batch}) does not apply "
                          f"({type(exc).__name__}); it keeps cnnc's default", TuningCacheWarning,
                          stacklevel=2)
            return schedule(func)
        self.applied[(name, batch)] = {
            "kernel": name, "batch": batch, "schedule": f"{rule.name} "
            f"{describe_config(record.best_config)}", "default_ms": round(record.default_ms, 4),
            "tuned_ms": round(record.best_ms, 4), "speedup": round(record.speedup, 3)}
        return scheduled

    def report(self) -> dict:
        return {"cache": str(self.cache.dir),
                "tuned": sorted(self.applied.values(), key=lambda r: (r["batch"], r["kernel"])),
                "kept_default": [{"kernel": k, "batch": b, "why": why}
                                 for (k, b), why in sorted(self.kept.items())]}

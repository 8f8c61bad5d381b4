"""The tuning cache: one JSON record per (kernel workload, target), shared by every model and run.

A record holds what tuning measured for one kernel: the time of cnnc's default schedule, the
best schedule found and its time, and every trial. Its file name is a digest of the workload
key (the structural hash of the kernel's unscheduled PrimFunc) and the target, so the same
convolution in two networks, or compiled twice, finds the same record.

    cache = TuningCache()                       # $CNNC_CACHE/tuning, else ~/.cache/cnnc/tuning
    record = cache.get(workload, target_key)    # None when absent or unreadable
    cache.put(record)                           # written atomically

A record that cannot be read (truncated, edited, from another format) is ignored with a
warning, never an error: the kernel then keeps cnnc's default schedule. No TVM here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnncompiler.cache import cache_root
from cnncompiler.errors import CnncError

FORMAT = 1
WIN_MARGIN = 0.02   # a tuned schedule must be this much faster than the default to be used


class TuningCacheWarning(UserWarning):
    """A tuning record was unreadable and is ignored."""


def default_cache_dir() -> Path:
    """``tuning/`` under cnnc's cache root (cnncompiler/cache.py)."""
    return cache_root() / "tuning"


@dataclass
class Record:
    """What tuning measured for one kernel on one target. Times are milliseconds, the best of
    several timed runs with TVM's runtime (``threads`` threads)."""

    workload: str               # structural hash of the unscheduled PrimFunc, hex
    target: str                 # the target key (TVM target config as sorted JSON)
    kernel: str                 # a kernel name it was tuned under, for people reading it
    rule: str                   # schedule family: conv, dense
    flops: int
    default_config: dict        # cnnc's default schedule when it was measured
    default_ms: float
    best_config: dict
    best_ms: float
    threads: int
    trials: list = field(default_factory=list)   # [config, ms] in the order tried
    complete: bool = False      # every tile of cnnc's schedule rule was tried
    metaschedule_trials: int = 0  # MetaSchedule trials run on it, all runs together
    seconds: float = 0.0        # tuning time spent on it, all runs together
    format: int = FORMAT

    @property
    def speedup(self) -> float:
        return self.default_ms / self.best_ms if self.best_ms > 0 else 0.0

    def wins(self, margin: float = WIN_MARGIN) -> bool:
        """The best schedule measured faster than the default by more than ``margin``."""
        return self.best_config != self.default_config and \
            self.best_ms < self.default_ms * (1.0 - margin)


def describe_config(config: dict) -> str:
    """A tuning result as people read it: the tile's knobs, or that it is a MetaSchedule trace."""
    if "trace" in config:
        return "MetaSchedule trace"
    return " ".join(f"{k}={v}" for k, v in config.items() if v is not None)


_FIELD_TYPES = {"workload": str, "target": str, "kernel": str, "rule": str, "flops": int,
                "default_config": dict, "default_ms": (int, float), "best_config": dict,
                "best_ms": (int, float), "threads": int, "trials": list, "complete": bool,
                "seconds": (int, float), "format": int}
_OPTIONAL = {"metaschedule_trials": int}   # absent from records of earlier cnnc versions


def record_from_json(data) -> Record:
    """A Record from parsed JSON; ValueError says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
    for key, kind in _FIELD_TYPES.items():
        if key not in data:
            raise ValueError(f"no '{key}'")
        if not isinstance(data[key], kind) or isinstance(data[key], bool) and kind is not bool:
            raise ValueError(f"'{key}' is a {type(data[key]).__name__}")
    if not all(math.isfinite(data[k]) and data[k] > 0 for k in ("default_ms", "best_ms")):
        raise ValueError("times must be positive and finite")
    for i, trial in enumerate(data["trials"]):
        if not (isinstance(trial, list) and len(trial) == 2 and isinstance(trial[0], dict)
                and (trial[1] is None or isinstance(trial[1], (int, float))
                     and not isinstance(trial[1], bool) and math.isfinite(trial[1]))):
            raise ValueError(f"trial {i} is not a [configuration, milliseconds] pair")
    optional = {k: data[k] for k, kind in _OPTIONAL.items() if k in data}
    for key, value in optional.items():
        if not isinstance(value, _OPTIONAL[key]) or isinstance(value, bool):
            raise ValueError(f"'{key}' is a {type(value).__name__}")
    return Record(**{k: data[k] for k in _FIELD_TYPES}, **optional)


class TuningCache:
    """A directory of tuning records (made on the first write)."""

    def __init__(self, directory: str | Path | None = None):
        self.dir = Path(directory).expanduser() if directory else default_cache_dir()
        self._seen: dict[str, Record | None] = {}

    @staticmethod
    def file_name(workload: str, target: str) -> str:
        digest = hashlib.sha256(f"{FORMAT}\n{workload}\n{target}".encode()).hexdigest()
        return f"{digest[:32]}.json"

    def path(self, workload: str, target: str) -> Path:
        return self.dir / self.file_name(workload, target)

    def get(self, workload: str, target: str) -> Record | None:
        """The record for this kernel and target; None (and one warning) when unreadable."""
        path = self.path(workload, target)
        if str(path) in self._seen:
            return self._seen[str(path)]
        record = None
        if path.is_file():
            try:
                record = record_from_json(json.loads(path.read_text()))
                if (record.workload, record.target) != (workload, target):
                    raise ValueError("it belongs to another kernel or target")
            except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
                warnings.warn(f"ignoring tuning record {path}: {exc}; the kernel keeps cnnc's "
                              "default schedule (delete the file, or tune again to rewrite it)",
                              TuningCacheWarning, stacklevel=2)
                record = None
        self._seen[str(path)] = record
        return record

    def check_writable(self) -> None:
        """Raise CnncError, naming the directory, unless records can be written to it."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.dir).close()
        except OSError as exc:
            raise CnncError(f"cannot write the tuning cache '{self.dir}': {exc.strerror or exc}"
                            "; give a writable directory with --cache or $CNNC_CACHE") from None

    def put(self, record: Record) -> Path:
        """Write ``record`` atomically (a reader never sees half a file), readable by every
        user the umask allows, as any other file (mkstemp alone makes it private)."""
        path = self.path(record.workload, record.target)
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".json", dir=self.dir)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(record), f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._seen[str(path)] = record
        return path

    def records(self) -> list[Record]:
        """Every readable record (unreadable ones are warned about and skipped)."""
        out = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else ():
            try:
                out.append(record_from_json(json.loads(path.read_text())))
            except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
                warnings.warn(f"ignoring tuning record {path}: {exc}", TuningCacheWarning,
                              stacklevel=2)
        return out

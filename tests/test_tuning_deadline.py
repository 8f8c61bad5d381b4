"""Tuning keeps its deadline (backends/tuning): MetaSchedule's worker process is stopped at
its deadline, its whole process group with it, and what its finished rounds recorded is kept;
a progress file that cannot be read is ignored with a warning; a budget already spent tunes
nothing.

The workers here are small Python programs standing in for MetaSchedule (a real search runs
in tests/test_tuning.py), so nothing depends on how fast the machine is: the deadlines leave
seconds for a program to start, and the bounds on stopping are a minute.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from cnncompiler.backends.tuning import TuningCache, TuningCacheWarning

from test_tuning import SPEC

tvm = pytest.importorskip("tvm")

pytestmark = pytest.mark.tvm

metaschedule = pytest.importorskip("cnncompiler.backends.tuning.metaschedule")

TRACE = '{"recorded": "before the deadline"}'

# writes one round's progress, starts a child in its group, then hangs, deaf to SIGTERM (the
# child too: an ignored signal stays ignored across exec), so that only SIGKILL ends them
HANGING_WORKER = textwrap.dedent(f"""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job = Path(sys.argv[1])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    progress = {{"format": 1, "trials": 8, "trace": {TRACE!r}, "first_error": "",
                 "done": False, "error": ""}}
    (job / "progress.json.tmp").write_text(json.dumps(progress))
    os.replace(job / "progress.json.tmp", job / "progress.json")
    Path(os.environ["CNNC_TEST_PIDS"]).write_text(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(600)
""")

# writes half a progress file, not atomically, and ends
CORRUPT_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    Path(sys.argv[1], "progress.json").write_text('{"format": 1, "trials": 8, "tra')
""")


def use_worker(monkeypatch, script: str) -> None:
    monkeypatch.setattr(metaschedule, "worker_command",
                        lambda job_dir: [sys.executable, "-c", script, str(job_dir)])


def running(pid: int) -> bool:
    """Is ``pid`` a process that has not ended? (An ended one nobody reaped yet has.)"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see processes")
def test_a_hanging_worker_is_killed_at_its_deadline_and_its_rounds_are_kept(monkeypatch,
                                                                           tmp_path):
    pids = tmp_path / "pids"
    work = tmp_path / "cache"
    monkeypatch.setenv("CNNC_TEST_PIDS", str(pids))
    monkeypatch.setattr(metaschedule, "STOP_GRACE_S", 1.0)
    use_worker(monkeypatch, HANGING_WORKER)
    deadline = time.monotonic() + 10   # seconds for a Python program to start, on a busy machine
    found = metaschedule.run_worker({"what": "hang"}, deadline, work)
    stopped = time.monotonic()
    assert pids.exists(), "the stand-in worker never started"
    assert found.cut_short and not found.error
    assert found.config == {"trace": TRACE} and found.trials == 8
    assert deadline <= stopped < deadline + 60
    worker, child = (int(p) for p in pids.read_text().split())
    assert not running(worker) and not running(child), "the worker's group outlived it"
    assert list(work.iterdir()) == [], "the worker's folder was left behind"


def test_a_worker_that_ends_early_is_not_waited_for(monkeypatch, tmp_path):
    use_worker(monkeypatch, "print('nothing to do')")
    found = metaschedule.run_worker({}, time.monotonic() + 3600, tmp_path)
    assert found.config is None and not found.cut_short
    assert found.error.startswith("the MetaSchedule worker ended before its search did "
                                  "(exit code 0)")


def test_a_corrupt_progress_file_is_ignored_with_a_warning(monkeypatch, tmp_path):
    use_worker(monkeypatch, CORRUPT_WORKER)
    with pytest.warns(TuningCacheWarning, match="ignoring MetaSchedule progress file .*"
                                                "progress.json: .*the kernel keeps what the "
                                                "tiles found"):
        found = metaschedule.run_worker({}, None, tmp_path)
    assert found.config is None and found.trials == 0 and "ended before" in found.error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, why", [
    ('{"format": 1, "trials": 8, "tra', "Expecting|Unterminated"),
    ("[1, 2]", "expected a progress record of format 1"),
    ('{"format": 2, "trials": 8, "done": true, "error": ""}', "format 1"),
    ('{"format": 1, "trials": "8", "done": true, "error": ""}', "'trials' is not a int"),
    ('{"format": 1, "trials": 8, "done": true, "error": "", "trace": 3}', "'trace' is not"),
    (b"\xff\xfe", "decode"),
])
def test_unreadable_progress_records_are_warned_about(tmp_path, text, why):
    path = tmp_path / "progress.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.warns(TuningCacheWarning, match=why):
        assert metaschedule.read_progress(path) is None


def test_a_progress_record_reads_back(tmp_path):
    progress = metaschedule.Progress(tmp_path / "progress.json")
    progress.trials, progress.best_s, progress.trace = 16, 0.001, TRACE
    progress.write()
    data = metaschedule.read_progress(tmp_path / "progress.json")
    assert (data["trials"], data["trace"], data["done"]) == (16, TRACE, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json"]


def test_a_budget_already_spent_tunes_nothing(tmp_path):
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.tuning.search import tune_model
    from cnncompiler.compiler import _front_end

    optimized = _front_end(SPEC, "tune_tiny.yaml", 2, None)[1]
    cache = TuningCache(tmp_path / "cache")
    lines = []
    summary = tune_model(optimized, parse_target("cpu"), (8,), budget_s=5, cache=cache,
                         started=time.monotonic() - 60, progress=lines.append)
    assert {k.status for k in summary.kernels} == {"out of budget"}
    assert cache.records() == [] and "left for a larger budget" in lines[-1]

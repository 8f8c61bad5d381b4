"""Tuning as a budget (backends/tuning): the budget as typed, the cache and its records, and
the one rule a build follows: a tuned schedule replaces cnnc's default only where it was
measured faster, and the model still computes what the numpy reference does.

Records are written by hand where a test needs a given verdict (a win, a loss, a stale
default), so no test depends on what a measurement on a busy machine happens to say; the real
tuning runs have budgets of seconds and MetaSchedule's a count of trials. No timing asserts.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.backends.tuning import (Record, TuningCache, TuningCacheWarning,
                                         parse_budget)
from cnncompiler.cli import main
from cnncompiler.errors import CnncError
from cnncompiler.reference import run_reference
from cnncompiler.runtime.model import load_report

from compile_helpers import assert_close, sample_input, write_spec

tvm = pytest.importorskip("tvm")

pytestmark = pytest.mark.tvm

BATCH = 8
# three kernels worth tuning at batch 8 (two convs and the dense, each above 4 MFLOP; the second
# conv's kernel computes the pool after it too: backends/cpu/conv_pool.py)
SPEC = """\
name: tune_tiny
input: [8, 16, 16]
layers:
  - {name: conv1, type: conv2d, filters: 32, kernel: 3, padding: 1}
  - {name: relu1, type: relu}
  - {name: conv2, type: conv2d, filters: 32, kernel: 1}
  - {name: pool, type: maxpool2d, kernel: 2}
  - {name: flatten, type: flatten}
  - {name: fc, type: dense, units: 256}
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_spec(tmp_path_factory.mktemp("tune"), "tune_tiny", SPEC)


@pytest.fixture(scope="module")
def tasks(spec):
    """The tunable kernels of the spec at batch 8, by kernel name."""
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.tuning.tasks import extract_tasks, target_key
    from cnncompiler.compiler import _front_end
    from cnncompiler.spec import load_spec

    loaded = load_spec(str(spec))
    optimized = _front_end(loaded.text, loaded.path, 2, None)[1]
    choice = parse_target("cpu")
    return {t.names[0]: t for t in extract_tasks(optimized, choice, (BATCH,))}, \
        target_key(choice)


def report(model) -> dict:
    return load_report(model.directory)


def check_outputs(model) -> None:
    x = sample_input(model.input_shape, BATCH)
    want = run_reference(model.graph, x, model.params, dtype=np.float64)
    assert_close(model.predict(x), next(iter(want.values())), what="tuned build")


def record(task, target, default_ms, best_ms, best_config, default_config=None,
           threads=None) -> Record:
    """A record as tuning writes it, on the thread count models run on here by default."""
    from cnncompiler.threads import default_threads

    default_config = default_config or task.rule.default_config(task.func)
    return Record(workload=task.workload, target=target, kernel=task.label, rule=task.rule.name,
                  flops=task.flops, default_config=default_config, default_ms=default_ms,
                  best_config=best_config, best_ms=best_ms, threads=threads or default_threads(),
                  complete=True)


def other_config(task) -> dict:
    """A valid configuration of the task's rule that is not its default."""
    default = task.rule.default_config(task.func)
    return next(c for c in task.rule.candidates(task.func, []) if c != default)


# -- the budget ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("10m", 600), ("90s", 90), ("1h", 3600),
                                           ("1h30m", 5400), ("2.5m", 150), ("45", 45),
                                           (" 10M ", 600), (30, 30)])
def test_budget_parses(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "ten minutes", "-5m", "10m10m", "30m1h",
                                  "0s", "0", "inf", "nan", "1e9", "200h", True, None])
def test_bad_budget_is_a_clear_error(text):
    with pytest.raises(CnncError, match=r"--budget '.*' is (not a duration|out of range); "
                                        r"expected .*e\.g\. .*10m"):
        parse_budget(text)


# -- tuning and using the results ------------------------------------------------------------

def test_tiny_budget_fills_the_cache_and_the_next_compile_uses_it(spec, tmp_path):
    cache = tmp_path / "cache"
    lines = []
    # the budget covers the build after tuning too: about 0.4 s a kernel function is kept back
    model = cc.compile(spec, batch_sizes=(BATCH,), tune_budget="10s", tuning_cache=cache,
                       progress=lines.append)
    records = TuningCache(cache).records()
    assert records, "tuning wrote no record"
    assert lines[0].startswith("tuning tune_tiny") and "budget 10s" in lines[0]
    assert any(line.startswith("[1/") and "default" in line for line in lines)
    search = report(model)["tuning"]["search"]
    assert search["budget_s"] == 10 and {k["status"] for k in search["kernels"]} <= \
        {"tuned", "out of budget"}
    check_outputs(model)

    again = cc.compile(spec, batch_sizes=(BATCH,), tuning_cache=cache)
    tuning = report(again)["tuning"]
    assert tuning["cache"] == str(cache) and tuning["search"] is None
    # the kernels running tuned schedules are exactly those whose record is a measured win
    wins = {r.kernel.split(" b")[0] for r in records if r.wins(0.02)}
    assert {t["kernel"] for t in tuning["tuned"]} == wins
    assert again.manifest["build"]["tuned_kernels"] == len(wins)
    check_outputs(again)


def test_only_measured_wins_are_applied(spec, tasks, tmp_path):
    by_name, target = tasks
    conv1, conv2, fc = by_name["conv1"], by_name["conv2"], by_name["fc"]
    cache = TuningCache(tmp_path)
    cache.put(record(conv1, target, 1.0, 0.8, other_config(conv1)))     # a win
    cache.put(record(conv2, target, 1.0, 1.3, other_config(conv2)))     # slower: never used
    cache.put(record(fc, target, 1.0, 0.5, other_config(fc)))           # a win, dense
    model = cc.compile(spec, batch_sizes=(BATCH,), tuning_cache=tmp_path)
    tuning = report(model)["tuning"]
    assert {(t["kernel"], t["batch"]) for t in tuning["tuned"]} == {("conv1", BATCH),
                                                                    ("fc", BATCH)}
    assert [(k["kernel"], k["why"]) for k in tuning["kept_default"]] == \
        [("conv2", "cnnc's default measured as fast")]
    rows = {k["kernel"]: k["tuned_batches"] for k in report(model)["kernels"]}
    assert rows["conv1"] == [BATCH] and rows["conv2"] == [] and rows["fc"] == [BATCH]
    check_outputs(model)


def test_default_schedules_only_when_asked(spec, tasks, tmp_path):
    by_name, target = tasks
    conv1 = by_name["conv1"]
    TuningCache(tmp_path).put(record(conv1, target, 1.0, 0.8, other_config(conv1)))
    model = cc.compile(spec, batch_sizes=(BATCH,), tuning_cache=False)
    assert report(model)["tuning"]["tuned"] == [] and report(model)["tuning"]["cache"] is None


def test_record_against_another_default_is_not_applied(spec, tasks, tmp_path):
    by_name, target = tasks
    conv1 = by_name["conv1"]
    stale = other_config(conv1)
    TuningCache(tmp_path).put(record(conv1, target, 1.0, 0.5, conv1.rule.default_config(
        conv1.func), default_config=stale))
    model = cc.compile(spec, batch_sizes=(BATCH,), tuning_cache=tmp_path)
    assert report(model)["tuning"]["tuned"] == []
    assert "another default" in report(model)["tuning"]["kept_default"][0]["why"]


def test_record_from_another_thread_count_is_not_applied(spec, tasks, tmp_path):
    from cnncompiler.threads import default_threads

    by_name, target = tasks
    conv1 = by_name["conv1"]
    TuningCache(tmp_path).put(record(conv1, target, 1.0, 0.5, other_config(conv1),
                                     threads=default_threads() + 1))
    model = cc.compile(spec, batch_sizes=(BATCH,), tuning_cache=tmp_path)
    assert report(model)["tuning"]["tuned"] == []
    assert f"tuned on {default_threads() + 1} threads" in \
        report(model)["tuning"]["kept_default"][0]["why"]


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.update(default_ms=float("inf")), "positive and finite"),
    (lambda r: r.update(trials=[["ro", 1.0]]), "trial 0 is not a"),
    (lambda r: r.update(trials=[[{}, "fast"]]), "trial 0 is not a"),
])
def test_records_with_bad_contents_are_ignored(tasks, tmp_path, damage, message):
    conv1, target = tasks[0]["conv1"], tasks[1]
    data = asdict(record(conv1, target, 1.0, 0.8, other_config(conv1)))
    damage(data)
    cache = TuningCache(tmp_path)
    cache.path(conv1.workload, target).write_text(json.dumps(data))
    with pytest.warns(TuningCacheWarning, match=message):
        assert cache.get(conv1.workload, target) is None


def test_an_unwritable_cache_is_an_error_before_tuning(spec, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = cnnc(capsys, "tune", spec, "--budget", "5s", "--batch-sizes", BATCH,
                        "--cache", blocker / "cache")
    assert code == 1 and "cannot write the tuning cache" in err


def test_corrupt_records_are_ignored_with_a_warning(spec, tasks, tmp_path):
    by_name, target = tasks
    cache = TuningCache(tmp_path)
    conv1, conv2 = by_name["conv1"], by_name["conv2"]
    cache.put(record(conv1, target, 1.0, 0.8, other_config(conv1)))
    cache.path(conv1.workload, target).write_text('{"format": 1, "workload": "trunc')
    broken = asdict(record(conv2, target, 1.0, 0.8, {}))
    broken["best_ms"] = "fast"
    cache.path(conv2.workload, target).write_text(json.dumps(broken))
    with pytest.warns(TuningCacheWarning, match="ignoring tuning record") as caught:
        model = cc.compile(spec, batch_sizes=(BATCH,), tuning_cache=tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "'best_ms' is a str" in messages
    assert report(model)["tuning"]["tuned"] == []
    check_outputs(model)


def test_a_record_that_does_not_apply_keeps_the_default(spec, tasks, tmp_path):
    by_name, target = tasks
    conv1 = by_name["conv1"]
    TuningCache(tmp_path).put(record(conv1, target, 1.0, 0.5, {"ro": 3, "nonsense": 1}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = cc.compile(spec, batch_sizes=(BATCH,), tuning_cache=tmp_path)
    assert any("does not apply" in str(w.message) for w in caught)
    assert report(model)["tuning"]["tuned"] == []
    check_outputs(model)


# -- the command line ---------------------------------------------------------------------------

def cnnc(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def test_cli_tune_then_compile_explains(spec, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, out, err = cnnc(capsys, "tune", spec, "--budget", "2s", "--batch-sizes", BATCH,
                          "--cache", cache)
    assert code == 0, err
    assert out.startswith("tuning tune_tiny") and "[1/" in out and "cache" in out
    code, out, err = cnnc(capsys, "compile", spec, "--batch-sizes", BATCH, "--cache", cache,
                          "-o", tmp_path / "art", "--explain")
    assert code == 0, err
    assert f"tuned schedules from {cache}" in out


@pytest.mark.parametrize("argv, message", [
    (["tune", "{spec}", "--budget", "10x"], "--budget '10x' is not a duration"),
    (["tune", "{spec}", "--budget", "0s"], "out of range"),
    (["tune", "{spec}", "--budget", "1m", "--target", "cuda"], "CPU target only"),
    (["compile", "{spec}", "-o", "{out}", "--tune-budget", "1m"], "--batch-sizes 1,64"),
    (["compile", "{spec}", "-o", "{out}", "--tune-budget", "soon", "--batch-sizes", "2"],
     "'soon' is not a duration"),
])
def test_cli_tuning_mistakes_are_errors(spec, tmp_path, capsys, argv, message):
    argv = [a.format(spec=spec, out=tmp_path / "out") for a in argv]
    code, _, err = cnnc(capsys, *argv)
    assert code == 1 and message in err


def test_every_cache_shares_one_root(monkeypatch, tmp_path):
    from cnncompiler.backends.train_build import cache_dir as train_cache_dir
    from cnncompiler.backends.tuning import default_cache_dir

    monkeypatch.setenv("CNNC_CACHE", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "tuning"
    assert train_cache_dir() == tmp_path / "root" / "train"
    monkeypatch.delenv("CNNC_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cnnc" / "tuning"
    assert train_cache_dir() == tmp_path / "xdg" / "cnnc" / "train"


# -- MetaSchedule --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def metaschedule_result(tasks, tmp_path_factory):
    """One round of MetaSchedule trials (8) on the 1x1 conv (and the pool its kernel
    computes) in its worker process, counted and not timed, each candidate given minutes to
    build and run: a busy machine makes it slower, not empty. The worker's folder is gone
    afterwards."""
    from cnncompiler.backends.tuning.metaschedule import TRIALS_PER_ROUND, metaschedule_search
    from cnncompiler.backends.targets import parse_target

    conv2 = tasks[0]["conv2"]
    work = tmp_path_factory.mktemp("metaschedule")
    found = metaschedule_search(conv2.func, tvm.target.Target(parse_target("cpu").config),
                                seconds=None, threads=2, trials=TRIALS_PER_ROUND,
                                timeout_s=600, work_dir=work)
    assert found.config is not None, f"MetaSchedule found no schedule: {found.error}"
    assert 0 < found.trials <= TRIALS_PER_ROUND and not found.cut_short
    assert list(work.iterdir()) == []
    return conv2, found


def test_a_metaschedule_trace_replays_to_the_same_kernel(metaschedule_result):
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.tuning.measure import KernelBench
    from cnncompiler.backends.tuning.space import apply_config

    conv2, found = metaschedule_result
    config = json.loads(json.dumps(found.config))  # as the cache stores and reads it back
    bench = KernelBench(conv2.func, tvm.target.Target(parse_target("cpu").config))
    reference = bench.output(bench.build(conv2.rule.schedule(conv2.func)))
    tuned = bench.build(apply_config(conv2.rule, conv2.func, config))
    assert bench.same_output(tuned, reference)


def test_a_metaschedule_win_is_applied_in_the_build(spec, tasks, metaschedule_result, tmp_path):
    _, target = tasks
    conv2, found = metaschedule_result
    TuningCache(tmp_path).put(record(conv2, target, 1.0, 0.5, found.config))
    model = cc.compile(spec, batch_sizes=(BATCH,), tuning_cache=tmp_path)
    tuned = report(model)["tuning"]["tuned"]
    assert [(t["kernel"], t["schedule"]) for t in tuned] == \
        [("conv2", "conv_pool MetaSchedule trace")]
    check_outputs(model)


def test_a_conv_computing_its_pool_is_tuned_by_its_register_tile(tasks):
    """The conv whose kernel computes the pool after it (conv_pool) is a task of its own rule:
    other register tiles, never a chunked reduction, each computing what the default does."""
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.tuning.measure import KernelBench

    conv2 = tasks[0]["conv2"]
    assert conv2.rule.name == "conv_pool"
    configs = list(conv2.rule.candidates(conv2.func, []))
    assert configs and all((c["rh"], c["ci"]) == (1, None) for c in configs)
    bench = KernelBench(conv2.func, tvm.target.Target(parse_target("cpu").config))
    reference = bench.output(bench.build(conv2.rule.schedule(conv2.func)))
    for config in configs[:3]:
        tuned = bench.build(conv2.rule.apply(conv2.func, config))
        assert bench.same_output(tuned, reference), config


def test_searched_kernels_are_skipped_per_strategy(tasks):
    from cnncompiler.backends.tuning.search import searched

    conv1 = tasks[0]["conv1"]
    tiles_done = record(conv1, tasks[1], 1.0, 1.0, {})
    assert searched(tiles_done, "tiles") and not searched(tiles_done, "both")
    assert not searched(tiles_done, "metaschedule")
    tiles_done.metaschedule_trials = 8
    assert searched(tiles_done, "both") and searched(tiles_done, "metaschedule")
    tiles_done.complete = False
    assert not searched(tiles_done, "both") and searched(tiles_done, "metaschedule")


def test_records_without_the_newer_fields_still_read(tasks, tmp_path):
    conv1, target = tasks[0]["conv1"], tasks[1]
    cache = TuningCache(tmp_path)
    old = asdict(record(conv1, target, 1.0, 0.8, other_config(conv1)))
    del old["metaschedule_trials"]
    cache.path(conv1.workload, target).write_text(json.dumps(old))
    got = TuningCache(tmp_path).get(conv1.workload, target)
    assert got is not None and got.metaschedule_trials == 0

"""How many threads kernels run on: one per physical core unless TVM_NUM_THREADS says
otherwise (TVM alone would take half the logical CPUs, assuming two hyperthreads a core)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cnncompiler import threads


def fake_topology(root, siblings: list[str]):
    """CPU i shares its core with the CPUs listed in siblings[i] (as Linux writes them)."""
    for cpu, listed in enumerate(siblings):
        d = root / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "thread_siblings_list").write_text(f"{listed}\n")


@pytest.mark.parametrize("cores, want", [
    (["0", "1"], 2),                            # two cores, no SMT (TVM alone would take 1)
    (["0,2", "1,3", "0,2", "1,3"], 2),          # two cores with two hyperthreads each
    (["0-1", "0-1", "2", "3"], 3),              # one SMT core and two without
])
def test_physical_cores_from_the_topology(monkeypatch, tmp_path, cores, want):
    fake_topology(tmp_path, cores)
    monkeypatch.setattr(threads, "TOPOLOGY", tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(len(cores))))
    assert threads.physical_cores() == want


def test_unreadable_topology_counts_cpus(monkeypatch, tmp_path):
    monkeypatch.setattr(threads, "TOPOLOGY", tmp_path / "absent")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert threads.physical_cores() == 3


@pytest.mark.parametrize("value, use_default", [("3", False), ("", True), ("zero", True),
                                                ("0", True)])
def test_the_user_setting_wins_when_valid(monkeypatch, value, use_default):
    monkeypatch.setenv("TVM_NUM_THREADS", value)
    want = threads.physical_cores() if use_default else int(value)
    assert threads.default_threads() == want


PROBE = "import cnncompiler, tvm; print(tvm.get_global_func('runtime.NumThreads')())"


@pytest.mark.tvm
@pytest.mark.parametrize("setting", [None, "1"])
def test_tvm_runs_on_the_chosen_thread_count(setting):
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    if setting:
        env["TVM_NUM_THREADS"] = setting
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, check=True)
    assert int(out.stdout) == (int(setting) if setting else threads.physical_cores())

"""Nothing lost: a kill -9 at any file-system step of a compile, a save or a checkpoint leaves
the old state or the new one, loadable at its own path; what a killed writer left behind is
cleaned up; a second writer of the same directory is refused; the directory's other contents
(a run's checkpoints) are never touched.

The kills are real: a forked child counts the file-system calls of one operation and sends
itself SIGKILL before call number k, for every k until the operation completes.
"""

from __future__ import annotations

import builtins
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler import storage
from cnncompiler.errors import ArtifactError, BusyError
from cnncompiler.runtime import artifact as art
from cnncompiler.train.checkpoint import read_checkpoint

from compile_helpers import spec_path

pytestmark = [pytest.mark.tvm, pytest.mark.skipif(sys.platform != "linux",
                                                  reason="kills are tested with fork on Linux")]

STEPS = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "rmdir"), (os, "mkdir"),
         (os, "fsync"), (os, "ftruncate"), (os, "open"), (builtins, "open"), (shutil, "rmtree")]


def _kill_before_step(k: int) -> None:
    """In this (child) process: SIGKILL just before the k-th file-system call."""
    count = [0]

    def counted(fn):
        def call(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return call

    for module, name in STEPS:
        setattr(module, name, counted(getattr(module, name)))


def run_killed_at(k: int, operation) -> bool:
    """Run ``operation`` in a forked child killed before its k-th file-system call; True when
    it was killed (k within the operation), False when it finished first."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, only the operation
        try:
            _kill_before_step(k)
            operation()
        except BaseException:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the operation failed in the child without a kill"
    return False


def kill_at_every_step(operation, check, limit: int = 400) -> int:
    """Kill ``operation`` before each of its file-system steps in turn, calling ``check()``
    after each kill; returns the number of steps."""
    for k in range(1, limit):
        if not run_killed_at(k, operation):
            return k - 1
        check(k)
    raise AssertionError(f"the operation took more than {limit} file-system steps")


def leftovers(directory: Path) -> list[str]:
    return sorted(e.name for e in Path(directory).rglob("*")
                  if e.name.startswith((storage.STAGING_PREFIX, storage.TEMP_PREFIX))
                  or e.name == storage.JOURNAL)


def tree_bytes(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()
            and p.name != storage.LOCK}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """LeNet-5 compiled twice (seeds 0 and 1): an old and a new state to tell apart."""
    root = tmp_path_factory.mktemp("storage")
    cc.compile(spec_path("lenet5"), output_dir=root / "old", seed=0)
    cc.compile(spec_path("lenet5"), output_dir=root / "new", seed=1)
    return root


def weights_of(directory) -> dict:
    return cc.load(directory).params


def assert_state_is_one_of(directory, *states) -> None:
    params = weights_of(directory)
    assert any(all(np.array_equal(params[k], s[k]) for k in s) for s in states), \
        "the artifact holds neither the old weights nor the new ones"


def test_a_killed_save_leaves_the_old_or_the_new_artifact(built, tmp_path):
    old, new = weights_of(built / "old"), weights_of(built / "new")
    target = tmp_path / "out"
    shutil.copytree(built / "old", target)
    (target / "checkpoints" / "last").mkdir(parents=True)
    (target / "checkpoints" / "last" / "note.txt").write_text("a run's checkpoint")
    model = cc.load(built / "new")
    journalled = []

    def check(k):
        journalled.append((target / storage.JOURNAL).exists())
        assert_state_is_one_of(target, old, new)  # a reader rolls a journal forward
        assert not (target / storage.JOURNAL).exists()
        assert (target / "checkpoints" / "last" / "note.txt").read_text() == "a run's checkpoint"

    steps = kill_at_every_step(lambda: model.save(target), check)
    assert steps > 5
    assert any(journalled), "no kill fell inside a commit"
    model.save(target)  # the next writer finishes or clears what the killed ones left
    assert_state_is_one_of(target, new)
    assert leftovers(target) == []


@pytest.fixture(scope="module")
def quick_compile(built):
    """``build_artifact`` of LeNet-5 (seed 1) with its code generation replaced by a copy of a
    real build of the same spec, so that every later file-system step is reached quickly;
    kills during the real code generation leave no more than a staging folder."""
    from cnncompiler import backends
    from cnncompiler.compiler import build_artifact

    library = (built / "new" / art.LIBRARY).read_bytes()
    layouts = cc.load(built / "new").manifest["build"].get("layouts", {})
    text = spec_path("lenet5").read_text()

    def quick_build(g, choice, lib_path, *args, **kwargs):
        Path(lib_path).write_bytes(library)
        return {"layouts": layouts}

    def compile_into(target):
        real = backends.build_library
        backends.build_library = quick_build
        try:
            build_artifact(text, "lenet5.yaml", "cpu", str(target), seed=1, tuning_cache=False)
        finally:
            backends.build_library = real

    return compile_into


def test_a_killed_compile_leaves_the_old_or_the_new_artifact(built, quick_compile, tmp_path):
    old, new = weights_of(built / "old"), weights_of(built / "new")
    target = tmp_path / "out"
    shutil.copytree(built / "old", target)
    (target / "checkpoints").mkdir()
    (target / "checkpoints" / "kept.txt").write_text("kept")

    def check(k):
        assert_state_is_one_of(target, old, new)
        assert (target / "checkpoints" / "kept.txt").read_text() == "kept"

    kill_at_every_step(lambda: quick_compile(target), check)
    cc.compile(spec_path("lenet5"), output_dir=target, seed=1)
    assert_state_is_one_of(target, new)
    assert leftovers(target) == []


def test_a_killed_first_compile_leaves_nothing_or_the_artifact(built, quick_compile, tmp_path):
    new = weights_of(built / "new")
    target = tmp_path / "fresh"

    def check(k):
        if (target / art.MANIFEST).exists() or (target / storage.JOURNAL).exists():
            assert_state_is_one_of(target, new)
        shutil.rmtree(target, ignore_errors=True)

    kill_at_every_step(lambda: quick_compile(target), check)


def test_a_killed_checkpoint_save_leaves_the_old_or_the_new_checkpoint(built, tmp_path):
    model = cc.load(built / "old")
    path = tmp_path / "ckpt"
    model.save_checkpoint(path)
    old = read_checkpoint(path)[1]
    model.load_params(cc.load(built / "new").params)
    new = model.params

    def check(k):
        weights = read_checkpoint(path)[1]
        assert any(all(np.array_equal(weights[n], s[n]) for n in s) for s in (old, new)), \
            f"kill before step {k}: the checkpoint is neither the old one nor the new one"

    kill_at_every_step(lambda: model.save_checkpoint(path), check)
    model.save_checkpoint(path)
    assert leftovers(path) == []
    assert all(np.array_equal(read_checkpoint(path)[1][n], new[n]) for n in new)


def test_a_second_writer_is_refused_while_the_first_writes(built, tmp_path):
    """Another process holds the directory (deterministic: the child signals when it holds
    it and waits to be told to go)."""
    target = tmp_path / "out"
    shutil.copytree(built / "old", target)
    before = tree_bytes(target)
    held, release = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        with storage.DirectoryWriter(target):
            os.write(held[1], b"x")
            os.read(release[0], 1)
        os._exit(0)
    try:
        assert os.read(held[0], 1) == b"x"
        with pytest.raises(BusyError, match=f"being written by another cnnc process \\(process "
                                            f"{pid}\\)"):
            cc.compile(spec_path("lenet5"), output_dir=target, seed=1)
        with pytest.raises(BusyError):
            cc.load(built / "new").save(target)
    finally:
        os.write(release[1], b"x")
        os.waitpid(pid, 0)
    assert tree_bytes(target) == before
    cc.load(built / "new").save(target)  # free again


def test_another_thread_is_refused_too(tmp_path):
    import threading

    d = tmp_path / "d"
    errors = []
    with storage.DirectoryWriter(d):
        def other():
            try:
                with storage.DirectoryWriter(d):
                    pass
            except BusyError as exc:
                errors.append(exc)
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1


def test_compile_keeps_what_else_the_directory_holds(built, tmp_path):
    target = tmp_path / "out"
    shutil.copytree(built / "old", target)
    (target / "checkpoints" / "last").mkdir(parents=True)
    (target / "checkpoints" / "last" / "checkpoint.json").write_text("{}")
    cc.load(built / "new").save(target)
    assert (target / "checkpoints" / "last" / "checkpoint.json").read_text() == "{}"
    assert_state_is_one_of(target, weights_of(built / "new"))


def test_a_loaded_model_runs_and_saves_the_bytes_that_were_checked(built, tmp_path):
    """Replacing the library on disk after load changes nothing: it was opened from the
    checked bytes, and save writes those bytes."""
    target = tmp_path / "out"
    shutil.copytree(built / "old", target)
    model = cc.load(target)
    x = np.ones((2, 1, 32, 32), np.float32)
    want = model.predict(x).copy()
    (target / art.LIBRARY).write_bytes(b"\x7fELF planted after the check")
    np.testing.assert_array_equal(model.predict(x), want)
    model.save(tmp_path / "copy")
    assert (tmp_path / "copy" / art.LIBRARY).read_bytes() == \
        (built / "old" / art.LIBRARY).read_bytes()
    with pytest.raises(ArtifactError, match="model.so"):
        cc.load(target)


def test_compile_without_an_output_directory_uses_a_private_folder(tmp_path):
    spec = tmp_path / "net.yaml"
    spec.write_text((spec_path("lenet5")).read_text().replace("name: lenet5", "name: mynet"))
    model = cc.compile(spec)
    assert model.directory.name == "model"
    assert model.directory.parent.stat().st_mode & 0o777 == 0o700
    assert "mynet" not in str(model.directory)

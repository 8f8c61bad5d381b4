"""``cnnc train`` never loses a run: a rerun into the same output is refused instead of
deleting its checkpoints, ``--epochs`` is the run's total, and a run interrupted and resumed
ends bit-identical to one that was never interrupted. ``--resume`` takes the run's folder,
its checkpoints folder or one checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm", reason="the TVM compiler is not installed")

import cnncompiler as cc  # noqa: E402
from cnncompiler.cli import main  # noqa: E402
from cnncompiler.train import callbacks  # noqa: E402
from cnncompiler.train.checkpoint import read_checkpoint  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

# batch norm, dropout, shuffling and an epoch schedule that depends on the run's length
SPEC = """\
name: resumable
input: [1, 8, 8]
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3, padding: 1, bias: false}
  - {name: bn, type: batchnorm}
  - {name: relu, type: relu}
  - {name: pool, type: maxpool2d, kernel: 2}
  - {name: flatten, type: flatten}
  - {name: drop, type: dropout, rate: 0.3}
  - {name: fc, type: dense, units: 3}
train:
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
  schedule: {type: cosine}
  epochs: 4
  batch_size: 8
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "net.yaml").write_text(SPEC)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = (rng.standard_normal((3, 1, 8, 8))[y] + 0.3 * rng.standard_normal((60, 1, 8, 8)))
    np.savez(root / "data.npz", x=x.astype(np.float32), y=y)
    return root


def train(setup, out, *extra):
    return main(["train", str(setup / "net.yaml"), "--data", str(setup / "data.npz"),
                 "-o", str(out), "--quiet", *extra])


def files_of(directory):
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".cnnc-lock"}


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    assert train(setup, out) == 0
    return out


def interrupted_after(epochs: int, monkeypatch):
    """Stop a run (as Ctrl-C does) right after the checkpoints of epoch ``epochs``."""
    real = callbacks.BestCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs):
        real(self, epoch, logs)
        if epoch + 1 == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.BestCheckpoint, "on_epoch_end", on_epoch_end)


@pytest.mark.parametrize("where", ["run", "checkpoints", "checkpoints/last"])
def test_a_resumed_run_ends_bit_identical(setup, uninterrupted, tmp_path, monkeypatch, where):
    out = tmp_path / "run"
    interrupted_after(2, monkeypatch)
    assert train(setup, out) == 130
    assert read_checkpoint(out / "checkpoints" / "last")[0]["epoch"] == 2
    assert not (out / "manifest.json").exists(), "the artifact is written when the run ends"
    monkeypatch.undo()
    resume = out if where == "run" else out / where
    assert train(setup, out, "--resume", str(resume)) == 0
    for name in ("last", "best"):
        a = read_checkpoint(uninterrupted / "checkpoints" / name)
        b = read_checkpoint(out / "checkpoints" / name)
        assert a[0]["epoch"] == b[0]["epoch"] and a[0]["step"] == b[0]["step"]
        for k in a[1]:
            np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=f"{name}: {k}")
        for k in a[2]:
            np.testing.assert_array_equal(a[2][k], b[2][k], err_msg=f"{name}: {k}")
    want, got = cc.load(uninterrupted).params, cc.load(out).params
    for k in want:
        np.testing.assert_array_equal(want[k], got[k], err_msg=k)


def test_a_rerun_into_the_same_output_is_refused_and_changes_nothing(setup, uninterrupted,
                                                                      tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = files_of(out)
    assert train(setup, out) == 1
    err = capsys.readouterr().err
    assert "holds the checkpoints of an earlier run" in err and f"--resume {out}" in err
    assert files_of(out) == before


def test_resuming_a_finished_run_trains_nothing_and_loses_nothing(setup, uninterrupted,
                                                                   tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = cc.load(out).params
    assert train(setup, out, "--resume", str(out)) == 0
    assert "(0 in this run)" in capsys.readouterr().out
    after = cc.load(out).params
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert (out / "checkpoints" / "last" / "checkpoint.json").exists()


def test_a_resumed_run_can_be_extended(setup, uninterrupted, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    assert train(setup, out, "--resume", str(out), "--epochs", "5") == 0
    assert "to epoch 5 (1 in this run)" in capsys.readouterr().out
    assert read_checkpoint(out / "checkpoints" / "last")[0]["epoch"] == 5


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "3"], "is at epoch 4, past --epochs 3"),
    (["--seed", "5"], "--seed 5 differs from the resumed run's seed 0"),
])
def test_resume_mistakes_are_refused(setup, uninterrupted, tmp_path, capsys, extra, message):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = files_of(out)
    assert train(setup, out, "--resume", str(out), *extra) == 1
    assert message in capsys.readouterr().err
    assert files_of(out) == before


def test_resume_from_nothing_is_a_message(setup, tmp_path, capsys):
    assert train(setup, tmp_path / "run", "--resume", str(tmp_path / "nowhere")) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_interrupted_resume_keeps_the_earlier_artifact(setup, uninterrupted, tmp_path,
                                                          monkeypatch):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    artifact = {k: v for k, v in files_of(out).items() if "/" not in k}
    interrupted_after(5, monkeypatch)
    assert train(setup, out, "--resume", str(out), "--epochs", "6") == 130
    assert {k: v for k, v in files_of(out).items() if "/" not in k} == artifact

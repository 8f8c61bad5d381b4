"""The training loop end to end: LeNet-5 learns the digits, a resumed run is bit-identical to an
uninterrupted one, divergence stops with the last good weights, corrupt checkpoints are
refused, and ``cnnc train`` writes an artifact that ``cnnc run`` and ``cc.load`` use.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from conftest import SPECS

pytest.importorskip("tvm", reason="the TVM compiler is not installed")

import cnncompiler as cc  # noqa: E402
from cnncompiler.cli import main  # noqa: E402
from cnncompiler.errors import ArtifactError, InputError, TrainingError  # noqa: E402
from cnncompiler.train import BestCheckpoint, EarlyStopping  # noqa: E402
from cnncompiler.train.checkpoint import read_checkpoint  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed "
                                   "(the digits dataset ships with it)")

# batch norm, dropout and shuffling: everything a resumed run has to restore
SMALL = """\
name: small
input: [1, 8, 8]
layers:
  - {name: conv, type: conv2d, filters: 6, kernel: 3, padding: 1, bias: false}
  - {name: bn, type: batchnorm}
  - {name: relu, type: relu}
  - {name: pool, type: maxpool2d, kernel: 2}
  - {name: flatten, type: flatten}
  - {name: drop, type: dropout, rate: 0.3}
  - {name: fc, type: dense, units: 10}
train:
  loss: softmax_cross_entropy
  optimizer: {type: adam, lr: 3.0e-3}
  schedule: {type: step, unit: step, step_size: 5, gamma: 0.7}
"""

# no normalisation: a huge learning rate blows the weights up within a few steps
PLAIN = """\
name: plain
input: [1, 8, 8]
layers:
  - {name: c1, type: conv2d, filters: 4, kernel: 3}
  - {type: relu}
  - {type: flatten}
  - {name: f1, type: dense, units: 16}
  - {type: relu}
  - {name: f2, type: dense, units: 3}
"""


def _compile(tmp_path_factory, name: str, text: str):
    root = tmp_path_factory.mktemp(name)
    (root / f"{name}.yaml").write_text(text)
    cc.compile(root / f"{name}.yaml", output_dir=root / "artifact")
    return root / "artifact"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The artifact directory of SMALL; cc.load it for a fresh model."""
    return _compile(tmp_path_factory, "small", SMALL)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return _compile(tmp_path_factory, "plain", PLAIN)


def small_data(n: int = 150, seed: int = 0):
    """Ten noisy class templates, so the loss has something to learn."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n)
    x = templates[y] + 0.5 * rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    return np.ascontiguousarray(x), y


def assert_identical(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"not bit-identical: {different}"


# -- LeNet-5 learns the digits ---------------------------------------------------------------------

@needs_sklearn
def test_lenet5_reaches_97_percent_on_the_digits():
    from cnncompiler.train.data import load_data

    data = load_data("digits", (1, 32, 32))
    model = cc.compile(SPECS / "lenet5.yaml")
    model.set_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.9}, schedule="cosine")
    history = model.fit(data.x_train, data.y_train, epochs=6, batch_size=32, seed=0,
                        validation_data=(data.x_test, data.y_test))
    result = model.evaluate(data.x_test, data.y_test)
    assert result["accuracy"] >= 0.97, history.history
    assert result["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    assert history["loss"][-1] < history["loss"][0]
    assert history["lr"][0] == 0.1 and history["lr"][-1] < 0.01
    assert set(history.history) >= {"loss", "accuracy", "lr", "val_loss", "val_accuracy",
                                     "samples_per_second"}


# -- checkpoints: resuming is exact ----------------------------------------------------------------

def test_resumed_training_is_bit_identical(small, tmp_path):
    x, y = small_data()
    xv, yv = small_data(40, seed=1)
    straight = cc.load(small)
    straight.fit(x, y, epochs=4, batch_size=32, seed=3)

    first = cc.load(small)
    first.fit(x, y, epochs=2, batch_size=32, seed=3, validation_data=(xv, yv))
    first.save_checkpoint(tmp_path / "ckpt")
    del first
    resumed = cc.load(small)
    meta = resumed.load_checkpoint(tmp_path / "ckpt")
    assert (meta["epoch"], meta["step"], meta["seed"]) == (2, 10, 3)
    resumed.fit(x, y, epochs=2, batch_size=32)

    assert_identical(resumed.params, straight.params)
    assert_identical(resumed.trainer.optimizer_state(), straight.trainer.optimizer_state())
    assert (resumed.trainer.step, resumed.trainer.epoch) == (20, 4)
    assert resumed.trainer.current_lr() == straight.trainer.current_lr()
    np.testing.assert_array_equal(resumed.predict(xv), straight.predict(xv))


def test_dropout_masks_and_shuffling_do_change_the_result(small):
    """The resume test above would prove little if the seed had no effect."""
    x, y = small_data()
    a, b = cc.load(small), cc.load(small)
    a.fit(x, y, epochs=1, batch_size=32, seed=3)
    b.fit(x, y, epochs=1, batch_size=32, seed=4)
    assert not np.array_equal(a.params["fc.weight"], b.params["fc.weight"])


def test_checkpoint_restores_optimizer_and_schedule(small, tmp_path):
    x, y = small_data(64)
    model = cc.load(small)
    model.set_optimizer({"type": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                        schedule={"type": "exponential", "gamma": 0.5})
    model.fit(x, y, epochs=1, batch_size=32)
    model.save_checkpoint(tmp_path / "ckpt")
    other = cc.load(small)
    other.load_checkpoint(tmp_path / "ckpt")
    assert other.trainer.optimizer == model.trainer.optimizer
    assert other.trainer.schedule == model.trainer.schedule
    assert other.trainer.current_lr() == pytest.approx(5e-4)
    assert_identical(other.params, model.params)


def test_a_checkpoint_saved_again_before_training_keeps_the_optimizer_state(small, saved,
                                                                             tmp_path):
    model = cc.load(small)
    model.load_checkpoint(saved[0])
    model.save_checkpoint(tmp_path / "again")
    _, weights, state = read_checkpoint(tmp_path / "again")
    _, _, want = read_checkpoint(saved[0])
    assert state and set(state) == set(want)
    assert_identical(state, want)
    assert_identical(weights, saved[1])


# -- divergence ------------------------------------------------------------------------------------

def test_divergence_stops_with_the_last_good_weights(plain, tmp_path):
    model = cc.load(plain)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    model.set_optimizer({"type": "sgd", "lr": 1e6})
    good = {}

    def remember(epoch, logs):  # one step per epoch: the weights after each good step
        good[epoch] = model.params

    best = BestCheckpoint(tmp_path / "ckpt", monitor="loss", mode="min")
    with pytest.raises(TrainingError) as info:
        model.fit(x, y, epochs=20, batch_size=8, callbacks=[best, remember])
    message = str(info.value)
    last = max(good)
    assert f"diverged at step {last + 2} " in message, message
    assert "first non-finite parameter: 'c1.weight'" in message
    assert "lower the learning rate" in message
    assert last >= 1

    after = model.params
    assert all(np.isfinite(v).all() for v in after.values())
    assert_identical(after, good[last])
    assert model.trainer.step == last + 1

    # the checkpoints on disk are of good epochs only
    meta, weights, _ = read_checkpoint(tmp_path / "ckpt" / "last")
    assert meta["epoch"] == last + 1
    assert_identical(weights, good[last])
    meta, weights, _ = read_checkpoint(tmp_path / "ckpt" / "best")
    assert all(np.isfinite(v).all() for v in weights.values())
    assert_identical(weights, good[meta["epoch"] - 1])

    # training goes on from the best checkpoint once the learning rate is sane
    model.load_checkpoint(tmp_path / "ckpt" / "best")
    model.set_optimizer({"type": "sgd", "lr": 1e-9})
    assert np.isfinite(model.train_step(x, y))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_an_update_that_overflows_is_not_kept(plain):
    """A finite loss and gradient whose update overflows float32 is divergence too."""
    model = cc.load(plain)
    start = model.params
    # the largest float32 learning rate times a gradient above 1 overflows; 1e39 itself is refused
    # as an optimizer field
    x = 100 * np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    model.set_optimizer({"type": "sgd", "lr": 3e38})
    with pytest.raises(TrainingError, match=r"step 1 .*'c1\.weight' \(its updated value\)"):
        model.train_step(x, np.array([0, 1, 2, 0]))
    assert_identical(model.params, start)


# -- corrupt checkpoints ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(small, tmp_path_factory):
    """A checkpoint of SMALL after a few steps, and the weights it holds."""
    model = cc.load(small)
    x, y = small_data(64)
    model.fit(x, y, epochs=1, batch_size=32)
    path = tmp_path_factory.mktemp("saved") / "ckpt"
    model.save_checkpoint(path)
    return path, model.params


def _flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "flipped byte in weights": (lambda d: _flip_byte(d / "weights.safetensors", -5),
                                "'weights.safetensors' does not match its sha256"),
    "flipped byte in optimizer state": (lambda d: _flip_byte(d / "optimizer.safetensors", 100),
                                        "'optimizer.safetensors' does not match its sha256"),
    "truncated weights": (lambda d: (d / "weights.safetensors").write_bytes(
        (d / "weights.safetensors").read_bytes()[:200]),
        "'weights.safetensors' is 200 bytes"),
    "bad json": (lambda d: (d / "checkpoint.json").write_text('{"format": "cnnc-checkpoint",'),
                 "checkpoint metadata is corrupt"),
    "json of something else": (lambda d: (d / "checkpoint.json").write_text("[1, 2]"),
                               "not a cnnc checkpoint"),
    "missing weights": (lambda d: (d / "weights.safetensors").unlink(),
                        "checkpoint file 'weights.safetensors' is missing"),
    "missing optimizer state": (lambda d: (d / "optimizer.safetensors").unlink(),
                                "checkpoint file 'optimizer.safetensors' is missing"),
    "missing metadata": (lambda d: (d / "checkpoint.json").unlink(),
                         "checkpoint.json is missing"),
    "edited step counter": (lambda d: (d / "checkpoint.json").write_text(json.dumps(
        {**json.loads((d / "checkpoint.json").read_text()),
         "step": json.loads((d / "checkpoint.json").read_text())["step"] + 1})),
        "does not match its digest"),
    "newer version": (lambda d: (d / "checkpoint.json").write_text(json.dumps(
        {**json.loads((d / "checkpoint.json").read_text()), "version": 99})),
        "checkpoint version 99 is not supported"),
}


def _forge_meta(directory, edit) -> None:
    """Edit checkpoint.json as a forger who also recomputes its digest."""
    from cnncompiler.storage import json_digest

    meta = json.loads((directory / "checkpoint.json").read_text())
    edit(meta)
    meta["digest"] = json_digest(meta)
    (directory / "checkpoint.json").write_text(json.dumps(meta))


def _forge_state(directory, edit) -> None:
    from cnncompiler.runtime.weights import read_weights, write_weights
    from cnncompiler.storage import file_entry

    state = read_weights(directory / "optimizer.safetensors")
    edit(state)
    write_weights(directory / "optimizer.safetensors", state)
    _forge_meta(directory, lambda m: m["files"].update(
        {"optimizer.safetensors": file_entry(directory / "optimizer.safetensors")}))


FORGED = {
    "step as text": (lambda d: _forge_meta(d, lambda m: m.update(step="7")),
                     "field 'step' is \"7\"; expected a non-negative integer"),
    "negative epoch": (lambda d: _forge_meta(d, lambda m: m.update(epoch=-1)), "field 'epoch'"),
    "files as a list": (lambda d: _forge_meta(d, lambda m: m.update(files=[])),
                        "'weights.safetensors' is missing from its record"),
    "learning rate infinite": (lambda d: _forge_meta(d, lambda m: m.update(base_lr=1e999)),
                               "field 'base_lr'"),
    "unknown optimizer": (lambda d: _forge_meta(d, lambda m: m.update(optimizer={"type": "lion"})),
                          "field 'optimizer' does not describe a valid optimizer"),
    "schedule of nonsense": (lambda d: _forge_meta(d, lambda m: m.update(schedule={"gamma": "x"})),
                             "field 'schedule' does not describe a valid schedule"),
    "unknown loss": (lambda d: _forge_meta(d, lambda m: m.update(loss="hinge")), "field 'loss'"),
    "state of another shape": (lambda d: _forge_state(d, lambda s: s.update(
        {k: np.zeros(3, np.float32) for k in list(s)[:1]})), "has shape (3,); its parameter has"),
    "state of no parameter": (lambda d: _forge_state(d, lambda s: s.update(
        {"ghost.weight#exp_avg": np.zeros(3, np.float32)})), "'ghost.weight#exp_avg' belongs to no"),
}
# forgers who also fix the digests: every field is checked by name
CORRUPTIONS.update(FORGED)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_is_refused(small, saved, tmp_path, corruption):
    damage, message = CORRUPTIONS[corruption]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved[0], ckpt)
    damage(ckpt)
    model = cc.load(small)
    before = model.params
    with pytest.raises(ArtifactError) as info:
        model.load_checkpoint(ckpt)
    assert message in str(info.value)
    assert_identical(model.params, before)
    assert model.trainer.step == 0


def test_checkpoint_of_another_spec_is_refused(small, plain, tmp_path):
    other = cc.load(plain)
    other.save_checkpoint(tmp_path / "plain-ckpt")
    model = cc.load(small)
    with pytest.raises(ArtifactError, match="checkpoint of spec 'plain' does not match this "
                                            "model \\('small'"):
        model.load_checkpoint(tmp_path / "plain-ckpt")


def test_an_intact_copy_loads(small, saved, tmp_path):
    shutil.copytree(saved[0], tmp_path / "ckpt")
    model = cc.load(small)
    model.load_checkpoint(tmp_path / "ckpt")
    assert_identical(model.params, saved[1])


# -- the loop's inputs and callbacks ---------------------------------------------------------------

@pytest.mark.parametrize("x_shape, y, message", [
    ((4, 1, 8, 8), [0, 1, 2, 10], "labels must be in 0..9 for 10 classes; received 0..10"),
    ((4, 1, 8, 8), [0, 1, 2], "labels must be class indices of shape (4,)"),
    ((4, 1, 8, 8), [0.5, 1, 2, 3], "labels must be integer class indices"),
    ((4, 8, 8), [0, 1, 2, 3], "received shape (4, 8, 8)"),
    ((1, 8, 8), [0], "without a batch axis"),
])
def test_train_step_refuses_bad_batches(small, x_shape, y, message):
    model = cc.load(small)
    with pytest.raises(InputError) as info:
        model.train_step(np.zeros(x_shape, np.float32), np.asarray(y))
    assert message in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": -1}, "epochs must be a non-negative integer"),
    ({"epochs": 1.5}, "epochs must be a non-negative integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_fit_refuses_bad_arguments(small, kwargs, message):
    x, y = small_data(8)
    with pytest.raises(InputError, match=message):
        cc.load(small).fit(x, y, **kwargs)


def test_fit_refuses_mismatched_lengths(small):
    x, y = small_data(8)
    with pytest.raises(InputError, match="x has 8 samples but y has 7"):
        cc.load(small).fit(x, y[:7], epochs=1)


def test_early_stopping_and_function_callbacks(small):
    x, y = small_data(64)
    seen = []
    model = cc.load(small)
    model.set_optimizer({"type": "adam", "lr": 1e-9})  # nothing improves
    history = model.fit(x, y, epochs=10, batch_size=32, validation_data=(x[:16], y[:16]),
                        callbacks=[EarlyStopping("val_accuracy", patience=2, mode="max"),
                                   lambda epoch, logs: seen.append(epoch)])
    assert history.epochs == [0, 1, 2] and seen == [0, 1, 2]
    assert model.trainer.epoch == 3


# -- progress and validation split ----------------------------------------------------------------

def test_progress_is_one_plain_line_per_epoch_when_not_on_a_terminal(small, capsys):
    x, y = small_data(64)
    model = cc.load(small)
    model.fit(x, y, epochs=2, batch_size=16, validation_data=(x[:16], y[:16]))  # verbose=1
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    for line in lines:
        assert all(k in line for k in ("loss ", "accuracy ", "val_loss ", "val_accuracy ",
                                       "lr ", "samples/s"))
    assert err.index("compiling the training step") < err.index("epoch 1/2")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert capsys.readouterr().err == ""


def test_progress_on_a_terminal_is_a_live_bar(small):
    import io

    from cnncompiler.train import ProgressBar

    x, y = small_data(64)
    stream = io.StringIO()
    cc.load(small).fit(x, y, epochs=1, batch_size=16, verbose=0,
                       callbacks=[ProgressBar(stream, live=True)])
    text = stream.getvalue()
    assert "\r" in text and "samples" in text                    # tqdm's redraws
    assert text.rstrip().splitlines()[-1].startswith("epoch 1/1: loss ")


def test_the_step_compiles_before_the_first_epoch_is_timed(small):
    x, y = small_data(32)
    model = cc.load(small)
    compiled_at_start = []
    class Probe(cc.train.Callback):
        def on_epoch_begin(self, epoch, logs):
            compiled_at_start.append(self.trainer.step_compiled())
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[Probe()])
    assert compiled_at_start == [True]


def test_labels_that_do_not_fit_the_loss_are_refused_before_compiling(small):
    x, y = small_data(32)
    model = cc.load(small)
    y = y.copy()
    y[-1] = 12
    with pytest.raises(InputError, match="labels must be in 0..9"):
        model.fit(x, y, epochs=1, verbose=0)
    assert not model.trainer.step_compiled()


def test_validation_split_holds_out_the_last_fraction(small):
    x, y = small_data(40)
    model = cc.load(small)
    history = model.fit(x, y, epochs=1, batch_size=10, validation_split=0.25, verbose=0)
    assert model.trainer.steps_per_epoch == 3                    # 30 samples trained on
    held_out = model.evaluate(x[30:], y[30:])
    assert history["val_loss"][-1] == pytest.approx(held_out["loss"])
    with pytest.raises(InputError, match="not both"):
        model.fit(x, y, validation_split=0.1, validation_data=(x, y), verbose=0)
    for bad in (1.0, -0.2, 1.5, True, 0.001):  # 0.001 of 40 samples is none
        with pytest.raises(InputError, match="validation_split"):
            model.fit(x, y, validation_split=bad, verbose=0)


def test_a_bare_train_step_takes_the_schedule_length_from_the_spec(small):
    """Outside fit a cosine schedule without t_max runs over the spec's train.epochs."""
    model = cc.load(small)
    model.set_optimizer({"type": "adam", "lr": 1e-3}, schedule="cosine")
    x, y = small_data(8)
    assert np.isfinite(model.train_step(x, y))
    assert model.trainer.current_lr() == 1e-3
    model.fit(x, y, epochs=1, batch_size=8)
    assert model.trainer.current_lr() == pytest.approx(0.0)  # the end of a 1-epoch fit


# -- cnnc train ------------------------------------------------------------------------------------

@needs_sklearn
def test_cnnc_train_then_run_and_load(tmp_path, capsys):
    out = tmp_path / "lenet"
    code = main(["train", str(SPECS / "lenet5.yaml"), "--data", "digits", "--epochs", "1",
                 "-o", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "digits: 1348 training and 449 test samples of (1, 32, 32), 10 classes" in captured.err
    assert "135 of the 1348 training samples held out" in captured.err
    assert ("trained lenet5 to epoch 1 (1 in this run); kept epoch 1 (the best val_accuracy, "
            "--keep best); validation loss") in captured.out
    assert f"artifact -> {out}" in captured.out
    meta, weights, _ = read_checkpoint(out / "checkpoints" / "best")
    assert meta["epoch"] == 1

    model = cc.load(out)
    assert_identical(model.params, weights)
    data = cc.datasets.load("digits", model.input_shape)
    x_train, y_train, x_val, y_val = data.validation_split(0.1, seed=0)
    record = model.manifest["training"]
    assert record["keep"] == "best" and record["epoch"] == 1 and record["epochs"] == 1
    assert record["selected_by"] == "val_accuracy" and record["data"] == "digits"
    # chosen on the held-out part of the training data; the test set is scored once, after
    assert record["validation"] == pytest.approx(model.evaluate(x_val, y_val))
    assert record["test"] == pytest.approx(model.evaluate(data.x_test, data.y_test))
    assert record["test"]["accuracy"] > 0.2  # chance is 0.1
    assert len(x_train) + len(x_val) == len(data.x_train)
    history = json.loads((out / "history.json").read_text())
    assert history["epochs"] == [1] and history["extra"] == {"epoch": 1, "keep": "best"}
    assert history["metrics"]["val_accuracy"] == [pytest.approx(record["validation"]["accuracy"])]
    assert "<svg" in (out / "history.svg").read_text()

    np.save(tmp_path / "x.npy", data.x_test[:5])
    code = main(["run", str(out), "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npy")])
    assert code == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict(data.x_test[:5]),
                               rtol=1e-5, atol=1e-6)

    model.fit(x_val, y_val, epochs=1, verbose=0)        # other weights: the record no longer fits
    model.save(tmp_path / "again")
    assert "training" not in cc.load(tmp_path / "again").manifest


@needs_sklearn
def test_cnnc_train_keeps_the_last_epoch_without_a_validation_split(small, tmp_path, capsys):
    spec = small.parent / "small.yaml"
    data = tmp_path / "d.npz"
    x, y = small_data(60)
    np.savez(data, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    refused = main(["train", str(spec), "--data", str(data), "--epochs", "2", "--keep", "best",
                    "--validation-fraction", "0", "-o", str(tmp_path / "r0"), "--quiet"])
    assert refused != 0 and "--keep best chooses the epoch by the validation split" in \
        capsys.readouterr().err
    code = main(["train", str(spec), "--data", str(data), "--epochs", "2",
                 "--validation-fraction", "0", "-o", str(tmp_path / "r1"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "kept epoch 2 (the last, --keep last)" in captured.out
    model = cc.load(tmp_path / "r1")
    assert model.manifest["training"]["keep"] == "last"
    assert "validation" not in model.manifest["training"]
    meta, weights, _ = read_checkpoint(tmp_path / "r1" / "checkpoints" / "last")
    assert meta["epoch"] == 2
    assert_identical(model.params, weights)


SIGMOID = """\
name: multilabel
input: [1, 8, 8]
layers:
  - {type: flatten}
  - {name: fc, type: dense, units: 10}
train:
  loss: sigmoid_cross_entropy
"""


def test_cnnc_train_refuses_labels_that_do_not_fit_the_loss_before_compiling(
        tmp_path, capsys, monkeypatch):
    import cnncompiler.compiler

    spec = tmp_path / "multilabel.yaml"
    spec.write_text(SIGMOID)
    data = tmp_path / "d.npz"
    x, y = small_data(20)
    np.savez(data, x=x, y=y)  # class labels, where the loss wants 10 targets per sample
    monkeypatch.setattr(cnncompiler.compiler, "compile",
                        lambda *a, **k: pytest.fail("compiled before the labels were checked"))
    code = main(["train", str(spec), "--data", str(data), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert f"{spec.name}:7:9: the training labels of the data do not fit the loss " \
           "sigmoid_cross_entropy" in err
    assert "class labels are for softmax_cross_entropy" in err


def test_cnnc_train_reports_a_missing_dataset(tmp_path, capsys):
    code = main(["train", str(SPECS / "lenet5.yaml"), "--data", str(tmp_path / "nowhere"),
                 "--epochs", "1", "-o", str(tmp_path / "out")])
    assert code != 0
    assert "no dataset at" in capsys.readouterr().err


# -- the examples ----------------------------------------------------------------------------------

def _example(name: str):
    import importlib.util

    path = SPECS.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet_example_asks_for_the_dataset(capsys):
    assert _example("train_resnet_cifar").main([]) == 2
    err = capsys.readouterr().err
    assert "needs the CIFAR-10 dataset, which it does not download" in err
    assert "python examples/train_resnet_cifar.py cifar-10-batches-py" in err


def test_resnet_example_augmentation_keeps_shapes_and_content():
    augment = _example("train_resnet_cifar").augment
    x = np.random.default_rng(0).random((6, 3, 32, 32)).astype(np.float32)
    out = augment(x, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.float32
    for a, b in zip(out, x):  # a crop of the padded image, maybe mirrored
        inner = a[:, 8:24, 8:24]
        found = any(np.array_equal(inner, src[:, i:i + 16, j:j + 16])
                    for src in (b, b[:, :, ::-1]) for i in range(17) for j in range(17))
        assert found


def test_resnet_example_trains_and_resumes(capsys, tmp_path):
    from test_data import write_cifar

    write_cifar(tmp_path / "cifar")
    example = _example("train_resnet_cifar")
    common = [str(tmp_path / "cifar"), "--spec", str(SPECS / "resnet_tiny.yaml"),
              "--batch-size", "4", "--checkpoints", str(tmp_path / "ckpt")]
    assert example.main(common + ["--epochs", "1"]) == 0
    assert "1 epochs in" in capsys.readouterr().out
    assert example.main(common + ["--epochs", "2", "--resume", str(tmp_path / "ckpt" / "last"),
                                  "-o", str(tmp_path / "model")]) == 0
    captured = capsys.readouterr()
    assert "resumed at epoch 1" in captured.err and "2 epochs in" in captured.out
    assert read_checkpoint(tmp_path / "ckpt" / "last")[0]["epoch"] == 2
    assert cc.load(tmp_path / "model").predict(np.zeros((2, 3, 32, 32), np.float32)).shape == \
        (2, 10)


@needs_sklearn
def test_lenet_example_runs(capsys, tmp_path):
    assert _example("train_lenet_digits").main(["--epochs", "1", "-o", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "saved the trained model" in out
    assert cc.load(tmp_path / "m").predict(np.zeros((1, 1, 32, 32), np.float32)).shape == (1, 10)

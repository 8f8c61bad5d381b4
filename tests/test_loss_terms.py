"""Several outputs trained together: a loss per output (``loss: {cls: ..., box: ...}``),
weighted (``loss_weights``), smooth_l1 with NaN targets ignored. The spec names outputs as
``outputs:`` does; fit, train_step and evaluate take labels by output name; checkpoints keep
the objective. The compiled gradients are checked by finite differences in
tests/test_train_grads.py ('two_heads', 'roi')."""

from __future__ import annotations

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.errors import InputError, SpecError
from cnncompiler.spec.losses import LOSSES, LossTerm, loss_terms

SPEC = """\
name: heads
input: [2, 6, 6]
layers:
  - {name: c, type: conv2d, filters: 4, kernel: 3, activation: relu}
  - {name: flat, type: flatten}
  - {name: cls, type: dense, units: 3}
  - {name: box, type: dense, units: 4, inputs: [flat]}
outputs: [cls, box]
train:
  loss: {cls: softmax_cross_entropy, box: {type: smooth_l1, beta: 0.5}}
  loss_weights: {box: 2.0}
  optimizer: {type: adam, lr: 0.01}
"""


def data(n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2, 6, 6)).astype(np.float32)
    box = np.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)), x[:, 0, 0, 0],
                    x[:, 1, 0, 0]], axis=1)
    box[::3] = np.nan                        # no box to regress to: ignored
    return x, {"cls": (x[:, 0, 2, 2] > 0).astype(int) + (x[:, 1, 3, 3] > 0), "box": box}


def write(tmp_path, text: str):
    path = tmp_path / "heads.yaml"
    path.write_text(text)
    return path


def test_terms_come_from_the_spec(tmp_path):
    g, _ = cc.check(write(tmp_path, SPEC))
    train = g.graph["train"]
    assert loss_terms(train.loss, g.graph["outputs"], train.loss_weights) == [
        LossTerm("cls", "softmax_cross_entropy"),
        LossTerm("box", "smooth_l1", 2.0, (("beta", 0.5),))]
    assert LossTerm("box", "smooth_l1", 1.0, (("beta", 0.5),)).kind.beta == 0.5


@pytest.mark.parametrize("change, message", [
    ("{cls: softmax_cross_entropy, bx: euclidean}", "train.loss names 'bx', which is not an "
     "output"),
    ("{cls: softmax_cross_entropy, box: {type: smooth_l1, alpha: 1}}", "smooth_l1 takes no "
     "key 'alpha'"),
    ("{cls: softmax_cross_entropy, box: {beta: 1}}", "a mapping with the loss's 'type'"),
    ("{cls: hinge}", "received 'hinge'"),
])
def test_a_wrong_loss_per_output_is_refused_at_its_line(tmp_path, change, message):
    text = SPEC.replace("{cls: softmax_cross_entropy, box: {type: smooth_l1, beta: 0.5}}",
                        change)
    with pytest.raises(SpecError) as info:
        cc.check(write(tmp_path, text))
    assert message in str(info.value) and "heads.yaml:10:" in str(info.value)


def test_an_output_named_through_its_activation_is_resolved(tmp_path):
    text = SPEC.replace("{name: box, type: dense, units: 4, inputs: [flat]}",
                        "{name: box, type: dense, units: 4, inputs: [flat], activation: tanh}")
    g, _ = cc.check(write(tmp_path, text))
    assert set(g.graph["train"].loss) == {"cls", "box.tanh"}


def test_smooth_l1_reference_ignores_nan_targets():
    loss = LOSSES["smooth_l1"]
    z = np.array([[0.0, 3.0], [0.2, 1.0]])
    y = np.array([[0.5, np.nan], [0.0, np.nan]])
    # |d| = 0.5 and 0.2, both under beta 1: 0.5 d^2
    assert loss.reference(z, y)["loss"] == pytest.approx((0.125 + 0.02) / 2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    return cc.compile(write(tmp_path_factory.mktemp("heads"), SPEC))


def test_fit_takes_labels_by_output_and_reports_each_loss(model, tmp_path):
    x, y = data()
    history = model.fit(x, y, epochs=4, batch_size=8, validation_split=0.25, verbose=0)
    assert {"loss", "accuracy", "cls_loss", "box_loss", "val_loss", "val_cls_loss",
            "val_box_loss", "val_cls_accuracy"} <= set(history.history)
    assert history["loss"][-1] < history["loss"][0]
    result = model.evaluate(x, y)
    assert result["loss"] == pytest.approx(result["cls_loss"] + 2.0 * result["box_loss"])
    assert result["accuracy"] == result["cls_accuracy"]
    model.train_step(x[:8], {"cls": y["cls"][:8], "box": y["box"][:8]})
    assert len(model.trainer.term_losses) == 2
    # the objective travels with the checkpoint
    model.save_checkpoint(tmp_path / "ckpt")
    again = cc.load(model.directory)
    again.load_checkpoint(tmp_path / "ckpt")
    assert again.trainer.terms == model.trainer.terms


@pytest.mark.parametrize("labels, message", [
    (lambda y: y["cls"], "give the labels as a dict by output name"),
    (lambda y: {"cls": y["cls"]}, "labels for 'box' are missing"),
    (lambda y: {"cls": y["cls"], "box": y["box"][:, :3]}, "labels of 'box': targets must "
     "have shape"),
])
def test_wrong_labels_are_refused_by_output(model, labels, message):
    x, y = data(8)
    with pytest.raises(InputError) as info:
        model.train_step(x, labels(y))
    assert message in str(info.value)


def test_a_model_of_two_outputs_with_one_loss_name_says_what_to_write(tmp_path):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    m = cc.compile(write(tmp_path, SPEC.replace(
        "  loss: {cls: softmax_cross_entropy, box: {type: smooth_l1, beta: 0.5}}\n"
        "  loss_weights: {box: 2.0}\n", "")))
    x, y = data(8)
    with pytest.raises(InputError, match=r"name a loss for each one to train: loss: \{cls:"):
        m.train_step(x, y)

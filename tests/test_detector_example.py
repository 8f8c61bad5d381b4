"""examples/train_detector_shapes.py in small: its shapes lie inside their boxes, its proposals'
labels and box targets agree with the shapes, and a few training steps of
specs/fast_rcnn_shapes.yaml on them lower the loss and evaluate to sensible numbers."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import cnncompiler as cc
from conftest import SPECS


def _example(name: str):
    """The example as a module; registered in sys.modules, which its dataclasses need."""
    path = SPECS.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


detector = _example("train_detector_shapes")


@pytest.fixture(scope="module")
def shapes():
    return detector.make_shapes(24, seed=5)


def test_every_shape_lies_inside_its_box(shapes):
    clean = detector.make_shapes(24, seed=5, noise=0.0)
    for image, boxes, labels in zip(clean.images, clean.boxes, clean.labels):
        assert 1 <= len(boxes) <= 3 and set(labels) <= {1, 2, 3}
        inside = np.zeros(image.shape[1:], bool)
        for x1, y1, x2, y2 in boxes.astype(int):
            inside[y1:y2, x1:x2] = True
        outside = image[:, ~inside]
        assert (outside == outside[:, :1]).all()  # nothing of a shape outside the boxes
        background = outside[:, 0]
        for x1, y1, x2, y2 in boxes.astype(int):
            shape = np.abs(image[:, y1:y2, x1:x2] - background[:, None, None]).sum(axis=0) > 0.5
            # the box is tight: the shape reaches each of its four sides
            assert shape[0].any() and shape[-1].any() and shape[:, 0].any() and shape[:, -1].any()
    assert np.abs(shapes.images - clean.images).max() > 0.05  # the noise is there


def test_proposals_labels_and_targets_agree_with_the_shapes(shapes):
    for props, boxes, labels in zip(detector.propose(shapes, seed=1), shapes.boxes,
                                    shapes.labels):
        fg = props.labels > 0
        assert fg.sum() == 4 * len(boxes) and (~fg).sum() == 4
        overlaps = detector.iou(props.boxes, boxes)
        assert (overlaps[~fg] < 0.3).all()
        assert np.isnan(props.targets[~fg]).all() and np.isnan(props.gt[~fg]).all()
        best = overlaps[fg].argmax(axis=1)
        np.testing.assert_array_equal(props.gt[fg], boxes[best])
        np.testing.assert_array_equal(props.labels[fg], labels[best])
        assert (overlaps[fg].max(axis=1) >= 0.5).all()
        decoded = detector.decode_deltas(props.boxes[fg], props.targets[fg])
        np.testing.assert_allclose(decoded, props.gt[fg], atol=1e-3)
        assert np.abs(props.targets[fg]).max() < 6  # scaled to about unit size


def test_batches_count_images_within_the_batch(shapes):
    props = detector.propose(shapes, seed=1)
    x, y = detector.batch(shapes, props, np.array([7, 3]))
    assert x["image"].shape == (2, 3, 64, 64)
    first = len(props[7].boxes)
    np.testing.assert_array_equal(x["rois"][:, 0], [0] * first + [1] * len(props[3].boxes))
    np.testing.assert_array_equal(x["rois"][first:, 1:], props[3].boxes)
    assert len(y["cls"]) == len(y["bbox"]) == len(x["rois"])


def test_the_spec_checks_clean():
    graph, warnings = cc.check(SPECS / "fast_rcnn_shapes.yaml")
    assert not warnings
    assert graph.graph["inputs"] == ["image", "rois"]
    assert graph.graph["outputs"] == ["cls", "bbox"]


@pytest.mark.tvm
@pytest.mark.slow
def test_training_lowers_the_loss_and_evaluates(shapes):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    model = cc.compile(SPECS / "fast_rcnn_shapes.yaml", seed=0)
    props = detector.propose(shapes, seed=2)
    x, y = detector.batch(shapes, props, np.arange(8))
    before = model.evaluate(x, y)["loss"]
    history = model.fit(detector.epoch_batches(shapes, 8, seed=0), epochs=2, verbose=0)
    assert {"loss", "cls_loss", "bbox_loss", "accuracy"} <= set(history.history)
    assert len(model.trainer.term_losses) == 2
    assert model.evaluate(x, y)["loss"] < before
    result = detector.evaluate(model, shapes, props, batch_size=10)
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["foreground_accuracy"] <= 1
    assert 0 < result["proposal_iou"] <= 1 and 0 <= result["refined_iou"] <= 1
    assert result["proposal_iou"] > 0.5


# -- cnnc train on the same data, by name ---------------------------------------------------

@pytest.fixture(scope="module")
def shapes_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes") / "shapes.npz"
    assert detector.main(["--save-data", str(path), "--images", "40",
                          "--test-images", "12"]) == 0
    return path


def test_named_batches_take_each_samples_boxes_and_renumber_them(shapes_npz):
    from cnncompiler.graph import load_checked
    from cnncompiler.spec.losses import loss_terms
    from cnncompiler.train.named_data import load_named_npz

    g, _ = load_checked(SPECS / "fast_rcnn_shapes.yaml")
    train = g.graph["train"]
    terms = loss_terms(train.loss, g.graph["outputs"], train.loss_weights)
    data, index, test, test_index = load_named_npz(shapes_npz, g, terms, 0.25, 0)
    assert (data.samples, test.samples, len(index), len(test_index)) == (40, 12, 40, 12)
    x, y = data.batch(np.array([7, 2]))
    owners = data.inputs["rois"][:, 0]
    assert len(x["rois"]) == np.isin(owners, [7, 2]).sum() == len(y["cls"]) == len(y["bbox"])
    assert set(x["rois"][:, 0]) == {0.0, 1.0}   # image 7 is the batch's first, 2 its second
    first = data.inputs["rois"][owners == 7]
    np.testing.assert_array_equal(x["rois"][x["rois"][:, 0] == 0][:, 1:], first[:, 1:])


def test_cnnc_train_takes_the_detector_data_by_name(shapes_npz, tmp_path, capsys):
    from cnncompiler.cli import main

    out = tmp_path / "run"
    code = main(["train", str(SPECS / "fast_rcnn_shapes.yaml"), "--data", str(shapes_npz),
                 "--epochs", "1", "-o", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "36 training, 4 validation and 12 test samples; inputs image, rois; outputs " \
        "trained cls, bbox" in captured.err
    record = cc.load(out).manifest["training"]
    assert {"loss", "cls_loss", "bbox_loss", "accuracy"} <= set(record["test"])
    assert (out / "history.json").is_file()
    broken = tmp_path / "broken.npz"
    arrays = dict(np.load(shapes_npz))
    del arrays["bbox"]
    np.savez(broken, **arrays)
    assert main(["train", str(SPECS / "fast_rcnn_shapes.yaml"), "--data", str(broken),
                 "-o", str(tmp_path / "r2")]) != 0
    assert "no array for bbox" in capsys.readouterr().err

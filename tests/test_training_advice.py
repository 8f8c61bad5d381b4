"""Advice given while checking, before anything compiles: an input that looks channels-last,
and a model that ends in the activation its loss applies itself. Each is a located warning
(never an error: the spec may mean it), and quiet where the spec is fine."""

from __future__ import annotations

import pytest

import cnncompiler as cc


def warnings_of(tmp_path, text: str) -> list:
    path = tmp_path / "net.yaml"
    path.write_text(text)
    _, warnings = cc.check(path)
    return warnings


def spec(input_shape, layers: str, train: str = "") -> str:
    return f"name: net\ninput: {input_shape}\nlayers:\n{layers}" + (
        f"train:\n  {train}\n" if train else "")


DENSE = "  - {type: flatten}\n  - {name: fc, type: dense, units: 10}\n"


@pytest.mark.parametrize("shape", ["[32, 32, 3]", "[224, 224, 3]", "[28, 28, 1]"])
def test_a_channels_last_image_input_is_pointed_out(tmp_path, shape):
    [warning] = warnings_of(tmp_path, spec(shape, DENSE))
    assert warning.severity == "warning" and warning.loc.line == 2
    assert "channels last" in warning.message
    h, w, c = (int(v) for v in shape.strip("[]").split(","))
    assert f"input: [{c}, {h}, {w}]" in warning.fix


@pytest.mark.parametrize("shape", ["[3, 32, 32]", "[1, 28, 28]", "[3, 4, 3]", "[40, 100]",
                                   "[64]"])
def test_channels_first_and_sequence_inputs_get_no_advice(tmp_path, shape):
    assert warnings_of(tmp_path, spec(shape, DENSE)) == []


@pytest.mark.parametrize("loss, activation", [("softmax_cross_entropy", "softmax"),
                                              ("sigmoid_cross_entropy", "sigmoid")])
def test_the_losss_own_activation_before_it_is_pointed_out(tmp_path, loss, activation):
    layers = DENSE + f"  - {{name: prob, type: {activation}}}\n  - {{type: dropout, rate: 0.2}}\n"
    [warning] = warnings_of(tmp_path, spec("[1, 8, 8]", layers, f"loss: {loss}"))
    assert (warning.layer, warning.loc.line) == ("prob", 6)
    assert f"applies {activation} itself" in warning.message
    assert "remove this layer" in warning.fix
    [note] = warning.notes
    assert note.startswith("the loss is set at ") and note.endswith("net.yaml:9:9")


def test_an_activation_that_the_loss_does_not_apply_is_fine(tmp_path):
    layers = DENSE + "  - {type: softmax}\n"
    assert warnings_of(tmp_path, spec("[1, 8, 8]", layers, "loss: euclidean")) == []
    # without a train section the spec is for inference: ending in softmax is what it wants
    assert warnings_of(tmp_path, spec("[1, 8, 8]", layers)) == []

"""Keras's ``activation:`` key on conv and dense layers: written out as the activation layer
``<layer>.<type>``, which later layers and ``outputs`` get in the layer's place, which computes
what the same spec with the activation written as its own layer computes, and which fuses into
the layer's kernel. What cannot be an activation is refused at its line."""

from __future__ import annotations

import numpy as np
import pytest

from cnncompiler.errors import SpecError
from cnncompiler.graph import layer_node, topo_layers
from cnncompiler.graph.check import check_spec
from cnncompiler.passes import optimize
from cnncompiler.reference import run_reference
from cnncompiler.spec import parse_spec_text

from compile_helpers import sample_input

KERAS = """\
name: net
input: [2, 8, 8]
layers:
  - {name: c1, type: conv2d, filters: 4, kernel: 3, padding: 1, activation: relu}
  - {name: c2, type: conv2d, filters: 4, kernel: 3, padding: 1,
     activation: {type: leaky_relu, alpha: 0.2}}
  - {name: add, type: add, inputs: [c2, c1]}
  - {type: flatten}
  - {name: fc, type: dense, units: 6, activation: linear}
  - {name: out, type: dense, units: 3, activation: softmax}
outputs: [out, c1]
"""

EXPLICIT = """\
name: net
input: [2, 8, 8]
layers:
  - {name: c1, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: c1.relu, type: relu}
  - {name: c2, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: c2.leaky_relu, type: leaky_relu, alpha: 0.2}
  - {name: add, type: add, inputs: [c2.leaky_relu, c1.relu]}
  - {type: flatten}
  - {name: fc, type: dense, units: 6}
  - {name: out, type: dense, units: 3}
  - {name: out.softmax, type: softmax}
outputs: [out.softmax, c1.relu]
"""


def checked(text: str, tmp_path):
    return check_spec(parse_spec_text(text, str(tmp_path / "net.yaml")))[0]


def test_the_activation_is_a_layer_that_takes_the_layers_place(tmp_path):
    g = checked(KERAS, tmp_path)
    assert list(topo_layers(g)) == ["input", "c1", "c1.relu", "c2", "c2.leaky_relu", "add", "3",
                                    "fc", "out", "out.softmax"]
    assert layer_node(g, "add").inputs == ("c2.leaky_relu", "c1.relu")
    assert layer_node(g, "c2.leaky_relu").layer.alpha == 0.2
    assert layer_node(g, "c2.leaky_relu").loc.line == 6       # where 'activation' is written
    assert g.graph["outputs"] == ["out.softmax", "c1.relu"]


def test_it_computes_what_the_explicit_spec_computes_and_fuses(tmp_path):
    keras, explicit = checked(KERAS, tmp_path), checked(EXPLICIT, tmp_path)
    rng = np.random.default_rng(0)
    params = {f"{node}.{name}": rng.standard_normal(spec.shape).astype(np.float32)
              for node in topo_layers(explicit)
              for name, spec in (layer_node(explicit, node).param_specs or {}).items()}
    x = sample_input((2, 8, 8), 3)
    want = run_reference(explicit, x, params)
    got = run_reference(keras, x, params)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    fused, _ = optimize(keras)
    assert layer_node(fused, "c1").layer.describe() == "conv2d + relu"


def test_a_block_passes_its_activation_as_a_parameter(tmp_path):
    g = checked("""\
name: net
input: [2, 8, 8]
blocks:
  unit:
    params: {act: relu}
    layers:
      - {name: conv, type: conv2d, filters: 2, kernel: 1, activation: $act}
layers:
  - {name: a, type: unit, act: silu, repeat: 2}
  - {name: b, type: unit}
""", tmp_path)
    assert [n for n in topo_layers(g) if n.endswith(("silu", "relu"))] == [
        "a.0.conv.silu", "a.1.conv.silu", "b.conv.relu"]
    assert layer_node(g, "a.1.conv").inputs == ("a.0.conv.silu",)


@pytest.mark.parametrize("layer, message", [
    ("{name: c, type: conv2d, filters: 2, kernel: 1, activation: rleu}",
     "'activation' must name an activation layer type, received 'rleu'"),
    ("{name: c, type: conv2d, filters: 2, kernel: 1, activation: flatten}",
     "must name an activation layer type, received 'flatten'"),
    ("{name: c, type: conv2d, filters: 2, kernel: 1, activation: {type: relu, name: r}}",
     "an 'activation' takes no name or inputs"),
    ("{name: c, type: conv2d, filters: 2, kernel: 1, activation: {type: leaky_relu, alpha: -1}}",
     "layer 'c.leaky_relu' (leaky_relu): key 'alpha'"),
    ("{name: p, type: maxpool2d, kernel: 2, activation: relu}",
     "unknown key 'activation'"),
])
def test_what_is_not_an_activation_is_refused_at_its_line(tmp_path, layer, message):
    with pytest.raises(SpecError) as info:
        checked(f"name: net\ninput: [2, 8, 8]\nlayers:\n  - {layer}\n", tmp_path)
    text = str(info.value)
    assert message in text and "net.yaml:4:" in text


def test_a_suggestion_for_a_misspelt_activation(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'relu'"):
        checked("name: n\ninput: [2, 8, 8]\nlayers:\n"
                "  - {name: c, type: conv2d, filters: 2, kernel: 1, activation: rleu}\n", tmp_path)


def test_an_added_activation_may_not_take_a_written_layers_name(tmp_path):
    with pytest.raises(SpecError, match="'c.relu' that 'activation: relu' adds is already"):
        checked("name: n\ninput: [2, 8, 8]\nlayers:\n"
                "  - {name: c.relu, type: relu}\n"
                "  - {name: c, type: conv2d, filters: 2, kernel: 1, activation: relu}\n", tmp_path)

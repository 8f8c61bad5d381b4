"""The spec parser: block expansion and its names, $param arithmetic, default names, the forms
of ``inputs`` and ``outputs``, the ``train:`` section, and where each layer came from."""

from __future__ import annotations

import pytest

from cnncompiler.errors import SpecError
from cnncompiler.spec import load_spec, parse_spec_text
from cnncompiler.spec.train_config import SGD, Adam, AdamW, Schedule, TrainConfig


def parse(text: str):
    return parse_spec_text(text, "net.yaml")


def names(spec) -> list[str]:
    return [d.name for d in spec.layers]


def errors_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(text)
    return info.value.format()


RESNET_TINY = """
input: [3, 8, 8]
blocks:
  basic:
    params: {filters: null, stride: 1}
    layers:
      - {name: conv1, type: conv2d, filters: $filters, kernel: 3, stride: $stride, padding: 1}
      - {name: relu1, type: relu}
      - {name: add, type: add, inputs: [relu1, input]}
layers:
  - {name: stem, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: layer1, type: basic, filters: 4, repeat: 2}
  - {name: head, type: basic, filters: 4}
"""


# -- block expansion --------------------------------------------------------------------------

def test_repeat_names_layers_as_torchvision_does():
    spec = parse(RESNET_TINY)
    assert names(spec) == [
        "stem",
        "layer1.0.conv1", "layer1.0.relu1", "layer1.0.add",
        "layer1.1.conv1", "layer1.1.relu1", "layer1.1.add",
        "head.conv1", "head.relu1", "head.add",
    ]


def test_block_input_is_the_instance_input_and_repeats_chain():
    by_name = {d.name: d for d in parse(RESNET_TINY).layers}
    assert by_name["layer1.0.conv1"].inputs == ("stem",)
    assert by_name["layer1.0.add"].inputs == ("layer1.0.relu1", "stem")
    assert by_name["layer1.1.conv1"].inputs == ("layer1.0.add",)
    assert by_name["layer1.1.add"].inputs == ("layer1.1.relu1", "layer1.0.add")
    assert by_name["head.conv1"].inputs == ("layer1.1.add",)


def test_nested_blocks_and_block_output():
    spec = parse("""
input: [3, 8, 8]
blocks:
  unit:
    params: {filters: null}
    layers:
      - {name: conv, type: conv2d, filters: $filters, kernel: 1}
      - {name: act, type: relu}
  stage:
    params: {filters: 8}
    output: first
    layers:
      - {name: first, type: unit, filters: $filters}
      - {name: extra, type: unit, filters: $filters, repeat: 2}
layers:
  - {name: s1, type: stage}
  - {name: after, type: relu}
""")
    assert names(spec) == ["s1.first.conv", "s1.first.act",
                           "s1.extra.0.conv", "s1.extra.0.act",
                           "s1.extra.1.conv", "s1.extra.1.act", "after"]
    # 'output: first' makes the stage's value that of its first unit
    assert spec.layers[-1].inputs == ("s1.first.act",)
    assert all(d.layer.filters == 8 for d in spec.layers if d.type == "conv2d")


def test_expanded_layers_remember_where_they_were_written():
    spec = parse(RESNET_TINY)
    conv = next(d for d in spec.layers if d.name == "layer1.1.conv1")
    assert (conv.loc.file, conv.loc.line) == ("net.yaml", 7)
    assert conv.notes == ("in block 'basic', expanded as 'layer1.1' at net.yaml:12:5",)


def test_inner_layers_of_an_instance_can_be_named_from_outside():
    spec = parse(RESNET_TINY + "  - {name: tap, type: relu, inputs: layer1.0.relu1}\n")
    assert spec.layers[-1].inputs == ("layer1.0.relu1",)


def test_an_instance_name_stands_for_its_output():
    spec = parse(RESNET_TINY + "  - {name: tap, type: relu, inputs: [layer1]}\n")
    assert spec.layers[-1].inputs == ("layer1.1.add",)


# -- $param substitution ----------------------------------------------------------------------

@pytest.mark.parametrize("expr,value", [
    ("$filters", 16), ("${filters}", 16), ("$filters * 4", 64), ("$filters // 3 + 1", 6),
    ("$filters * $expand", 64), ("($filters + 2) * 2", 36), ("2 ** $expand", 16),
    ("-$filters + 32", 16), ("$filters % 5", 1),
])
def test_param_arithmetic(expr, value):
    spec = parse(f"""
input: [3, 8, 8]
blocks:
  b:
    params: {{filters: null, expand: 4}}
    layers: [{{type: conv2d, filters: "{expr}", kernel: 1}}]
layers: [{{type: b, filters: 16}}]
""")
    assert spec.layers[0].layer.filters == value


def test_a_whole_param_keeps_its_type():
    spec = parse("""
input: [3, 8, 8]
blocks:
  b:
    params: {pad: same, rate: 0.25, k: [1, 3]}
    layers:
      - {type: conv2d, filters: 2, kernel: $k, padding: $pad}
      - {type: dropout, rate: $rate}
layers: [{type: b}]
""")
    conv, drop = spec.layers
    assert conv.layer.padding == "same" and conv.layer.kernel == (1, 3)
    assert drop.layer.rate == 0.25


def test_defaults_fill_params_not_given():
    spec = parse(RESNET_TINY.replace("{name: head, type: basic, filters: 4}",
                                     "{name: head, type: basic, filters: 4, stride: 2}"))
    strides = {d.name: d.layer.stride for d in spec.layers if d.type == "conv2d"}
    assert strides["layer1.0.conv1"] == (1, 1) and strides["head.conv1"] == (2, 2)


def test_a_wrong_value_from_a_param_says_where_the_param_was_given():
    output = errors_of("""
input: [3, 8, 8]
blocks:
  b:
    params: {filters: null}
    layers: [{type: conv2d, filters: $filters, kernel: 1}]
layers: [{name: x, type: b, filters: -2}]
""")
    assert "net.yaml:6:38: layer 'x.0' (conv2d): key 'filters': received -2" in output
    assert "note: 'filters' comes from $filters given at net.yaml:7:38" in output


def test_dollar_outside_a_block_is_an_error():
    assert "'$filters' names a block parameter outside any block" in errors_of(
        "input: [3, 8, 8]\nlayers: [{type: conv2d, filters: $filters, kernel: 1}]\n")


# -- names, inputs, outputs -------------------------------------------------------------------

def test_default_names_are_positions_in_their_list():
    spec = parse("""
input: [3, 8, 8]
blocks:
  b: {layers: [{type: relu}, {type: tanh}]}
layers:
  - {type: relu}
  - {name: blk, type: b}
  - {type: sigmoid}
""")
    assert names(spec) == ["0", "blk.0", "blk.1", "2"]
    assert spec.outputs == ["2"]


@pytest.mark.parametrize("inputs,expected", [
    ("a", ("a",)), ("[a]", ("a",)), ("[a, b]", ("a", "b")), ("[input, b]", ("input", "b")),
    ("[b, b]", ("b", "b")), ("0", ("0",)),
])
def test_inputs_forms(inputs, expected):
    spec = parse(f"""
input: [3, 8, 8]
layers:
  - {{type: relu}}
  - {{name: a, type: relu}}
  - {{name: b, type: relu}}
  - {{name: out, type: concat, inputs: {inputs}}}
""")
    assert spec.layers[-1].inputs == expected


def test_inputs_default_to_the_previous_layer_and_the_first_to_the_input():
    spec = parse("input: [3, 8, 8]\nlayers: [{name: a, type: relu}, {name: b, type: relu}]\n")
    assert [d.inputs for d in spec.layers] == [("input",), ("a",)]


@pytest.mark.parametrize("outputs,expected", [
    (None, ["b"]), ("a", ["a"]), ("[a, b]", ["a", "b"]), ("[blk]", ["blk.1"]),
])
def test_outputs(outputs, expected):
    text = """
input: [3, 8, 8]
blocks:
  k: {layers: [{type: relu}, {type: relu}]}
layers:
  - {name: a, type: relu}
  - {name: blk, type: k}
  - {name: b, type: relu, inputs: a}
"""
    if outputs is not None:
        text += f"outputs: {outputs}\n"
    assert parse(text).outputs == expected


@pytest.mark.parametrize("outputs,message", [
    ("[c]", "output 'c' is not a layer of this spec"),
    ("[input]", "output 'input' is the model's input, not a layer"),
    ("[a, a]", "output 'a' is listed twice"),
    ("[]", "'outputs' must be a list of layer names"),
])
def test_bad_outputs(outputs, message):
    assert message in errors_of(f"input: [3, 8]\nlayers: [{{name: a, type: relu}}]\n"
                                f"outputs: {outputs}\n")


# -- values as YAML reads them ----------------------------------------------------------------

def test_exponent_floats_and_dates_read_as_authors_expect():
    spec = parse("""
name: 2001-01-01
input: [3, 8]
layers: [{type: dropout, rate: 5e-1}]
train: {optimizer: {type: sgd, lr: 1e-3, weight_decay: 5E-4}}
""")
    assert spec.name == "2001-01-01"
    assert spec.layers[0].layer.rate == 0.5
    assert spec.train.optimizer.lr == 1e-3 and spec.train.optimizer.weight_decay == 5e-4


def test_spec_name_defaults_to_the_file_name(tmp_path):
    path = tmp_path / "lenet.yaml"
    path.write_text("input: [1, 28, 28]\nlayers: [{type: flatten}]\n")
    spec = load_spec(path)
    assert spec.name == "lenet" and spec.input_shape == (1, 28, 28)


# -- the train section ------------------------------------------------------------------------

def test_no_train_section_gives_the_defaults():
    train = parse("input: [3]\nlayers: [{type: relu}]\n").train
    assert train == TrainConfig(optimizer=SGD())
    assert (train.loss, train.epochs, train.batch_size) == ("softmax_cross_entropy", 10, 32)


def test_train_section_parses_into_a_train_config():
    train = parse("""
input: [3]
layers: [{type: relu}]
train:
  loss: sigmoid_cross_entropy
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}
  schedule: {type: multistep, milestones: [30, 60], gamma: 0.2, warmup: 2}
  epochs: 90
  batch_size: 128
  label_smoothing: 0.1
""").train
    assert train.loss == "sigmoid_cross_entropy"
    assert train.optimizer == SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    assert train.schedule == Schedule(type="multistep", milestones=(30, 60), gamma=0.2, warmup=2)
    assert (train.epochs, train.batch_size, train.label_smoothing) == (90, 128, 0.1)


@pytest.mark.parametrize("optimizer,expected", [
    ("adam", Adam()), ("{type: adam, betas: [0.8, 0.99]}", Adam(betas=(0.8, 0.99))),
    ("{type: adamw}", AdamW()), ("sgd", SGD()),
])
def test_optimizer_forms(optimizer, expected):
    spec = parse(f"input: [3]\nlayers: [{{type: relu}}]\ntrain: {{optimizer: {optimizer}}}\n")
    assert spec.train.optimizer == expected


@pytest.mark.parametrize("train,message", [
    ("{optimizer: {type: adma}}", "unknown optimizer 'adma'; expected one of: sgd, adam, adamw; "
                                  "did you mean 'adam'?"),
    ("{optimizer: {type: sgd, lr: -1}}", "train.optimizer: key 'lr': received -1"),
    ("{optimizer: {lr: 0.1}}", "train.optimizer must be a mapping with a 'type'"),
    ("{optimizer: {type: sgd, momentum: 1.5}}", "key 'momentum': received 1.5; "
                                                "expected a number in [0, 1)"),
    ("{schedule: {type: multistep}}", "multistep needs 'milestones'"),
    ("{loss: mse}", "train: key 'loss': received 'mse'"),
    ("{epochs: yes}", "train: key 'epochs': received true"),
    ("[1]", "'train' must be a mapping"),
])
def test_bad_train_sections(train, message):
    assert message in errors_of(f"input: [3]\nlayers: [{{type: relu}}]\ntrain: {train}\n")


def test_invalid_milestones_give_one_error_not_two():
    output = errors_of("input: [3]\nlayers: [{type: relu}]\n"
                       "train: {schedule: {type: multistep, milestones: [60, 30]}}\n")
    assert "expected increasing milestones" in output
    assert "needs 'milestones'" not in output


@pytest.mark.parametrize("layer, said", [
    ("{type: conv2d, filters: 4, kernel_size: 3}", "write 'kernel' (cnnc's name for kernel_size)"),
    ("{type: conv2d, num_output: 4, kernel: 3}", "write 'filters' (cnnc's name for num_output)"),
    ("{type: dense, units: 3, use_bias: false}", "write 'bias' (cnnc's name for use_bias)"),
    ("{type: maxpool2d, kernel: 2, activation: relu}",
     "write the activation as a layer of its own after this one"),
    ("{type: conv2d, filters: 4, kernl: 3}", "did you mean 'kernel'?"),
])
def test_keys_from_other_frameworks_point_to_cnncs_name(layer, said):
    text = f"name: a\ninput: [3, 8, 8]\nlayers:\n  - {layer}\n"
    message = errors_of(text)
    assert said in message and "missing required key" not in message


def test_learning_rate_points_to_lr():
    text = ("name: a\ninput: [4]\nlayers:\n  - {type: dense, units: 2}\n"
            "train:\n  optimizer: {type: sgd, learning_rate: 0.1}\n")
    assert "write 'lr' (cnnc's name for learning_rate)" in errors_of(text)

"""Models with several named inputs: ``inputs: {image: [3, 16, 16], side: [8]}``.

The spec language names them (errors at their line), the checker and the numpy reference
take them, the compiled model runs them from a dict or a list in spec order (CPU) and builds
for CUDA, training steps match PyTorch, and ``cnnc run`` feeds them by name."""

from __future__ import annotations

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.cli import main
from cnncompiler.errors import InputError, SpecError
from cnncompiler.graph import layer_node, topo_layers
from cnncompiler.reference import run_reference

from conftest import HAVE_NVCC

SPEC = """\
name: two_inputs
inputs:
  image: [3, 10, 10]
  side: {shape: [6]}
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3, activation: relu}
  - {name: pool, type: global_avgpool}
  - {name: flat, type: flatten}
  - {name: s1, type: dense, units: 5, inputs: [side], activation: tanh}
  - {name: join, type: concat, inputs: [flat, s1]}
  - {name: fc, type: dense, units: 3}
train:
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9}
"""


def batch(n: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((n, 3, 10, 10)).astype(np.float32),
            "side": rng.standard_normal((n, 6)).astype(np.float32)}


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("named") / "two.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def artifact(spec_file):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    out = spec_file.parent / "artifact"
    cc.compile(spec_file, output_dir=out)
    return out


# -- the spec -------------------------------------------------------------------------------------

def test_inputs_are_nodes_that_layers_name(spec_file):
    g, _ = cc.check(spec_file)
    assert g.graph["inputs"] == ["image", "side"]
    assert layer_node(g, "side").shape == (6,) and layer_node(g, "side").loc.line == 4
    assert layer_node(g, "conv").inputs == ("image",)          # the first input by default
    assert layer_node(g, "s1").inputs == ("side",)
    assert list(topo_layers(g))[:2] == ["image", "side"]


def check_text(tmp_path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        cc.check(path)
    return str(info.value)


LAYERS = "layers:\n  - {type: flatten}\n"


@pytest.mark.parametrize("head, line, message", [
    ("input: [3]\ninputs: {a: [3]}\n", 2, "a spec has 'input' or 'inputs', not both"),
    ("inputs: [3, 4]\n", 1, "'inputs' must map input names to shapes"),
    ("inputs: {a: [3], b/c: [2]}\n", 1, "the input name contains '/'"),
    ("inputs: {input: [3]}\n", 1, "the input name is 'input'"),
    ("inputs: {a: [0, 2]}\n", 1, "'inputs.a': received 0"),
    ("inputs: {a: {shape: [null, 5], batched: false}}\n", 1,
     "every input is without the batch axis"),
    ("inputs: {a: [3], b: {shape: [5], batched: false}}\n", 1,
     "an input without the batch axis starts with null"),
    ("inputs: {a: [3], b: {shape: [null, 5], batched: 0}}\n", 1, "'batched' is true or false"),
    ("inputs: {a: [null, 5]}\n", 1, "received null for a size"),
    ("inputs: {a: {size: [3]}}\n", 1, "a mapping takes 'shape'"),
])
def test_bad_inputs_are_refused_at_their_line(tmp_path, head, line, message):
    text = check_text(tmp_path, "name: n\n" + head + LAYERS)
    assert message in text and f"bad.yaml:{line + 1}:" in text


def test_input_names_are_names_of_the_spec(tmp_path):
    two = "name: n\ninputs: {a: [4], b: [4]}\nlayers:\n"
    assert "'input' is ambiguous: this spec has inputs a, b" in check_text(
        tmp_path, two + "  - {name: d, type: dense, units: 2, inputs: [input]}\n")
    assert "duplicate layer name 'b'" in check_text(
        tmp_path, two + "  - {name: b, type: dense, units: 2}\n")
    assert "output 'a' is the model's input" in check_text(
        tmp_path, two + "  - {name: d, type: dense, units: 2}\noutputs: [d, a]\n")
    assert "unknown input 'c'" in check_text(
        tmp_path, two + "  - {name: d, type: add, inputs: [a, c]}\n")


def test_a_channels_last_named_input_is_pointed_out(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text("name: n\ninputs: {photo: [64, 64, 3]}\n" + LAYERS)
    [warning] = cc.check(path)[1]
    assert "channels last" in warning.message and warning.loc.line == 2


def test_the_reference_takes_a_dict_or_a_list(spec_file):
    g, _ = cc.check(spec_file)
    from cnncompiler.compiler import init_params

    params = init_params(g, 0)
    x = batch()
    by_name = run_reference(g, x, params)
    by_order = run_reference(g, [x["image"], x["side"]], params)
    np.testing.assert_array_equal(by_name["fc"], by_order["fc"])


# -- compiled --------------------------------------------------------------------------------------

def test_predict_takes_a_dict_or_a_list_and_equals_the_reference(artifact):
    model = cc.load(artifact)
    assert model.input_names == ["image", "side"]
    assert "predict(image: float32[N, 3, 10, 10], side: float32[N, 6])" in repr(model)
    x = batch()
    want = run_reference(model.graph, x, model.params)["fc"]
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict([x["image"], x["side"]]), model.predict(x))
    assert [i["name"] for i in model.manifest["inputs"]] == ["image", "side"]


@pytest.mark.parametrize("given, message", [
    (lambda x: x["image"], "this model takes 2 inputs: a dict by name or a list"),
    (lambda x: {"image": x["image"]}, "missing ['side']"),
    (lambda x: {**x, "extra": x["side"]}, "unknown ['extra']"),
    (lambda x: {"image": x["image"], "side": x["side"][:2]}, "different batch sizes"),
    (lambda x: {"image": x["image"], "side": x["side"][:, :4]},
     "input 'side': received shape (6, 4)"),
])
def test_wrong_inputs_are_refused_by_name(artifact, given, message):
    model = cc.load(artifact)
    with pytest.raises(InputError) as info:
        model.predict(given(batch()))
    assert message in str(info.value)
    assert "expected image: float32[N, 3, 10, 10], side: float32[N, 6]" in str(info.value)


def test_a_non_finite_named_input_is_named(artifact):
    x = batch()
    x["side"][2, 1] = np.nan
    with pytest.raises(InputError, match="input 'side': 1 of 36 values non-finite"):
        cc.load(artifact).predict(x, check_finite=True)


def test_cnnc_run_feeds_inputs_by_name(artifact, tmp_path, capsys):
    x = batch(4)
    for name, value in x.items():
        np.save(tmp_path / f"{name}.npy", value)
    out = tmp_path / "y.npy"
    assert main(["run", str(artifact), "--input", f"side={tmp_path / 'side.npy'}",
                 "--input", f"image={tmp_path / 'image.npy'}", "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), cc.load(artifact).predict(x), rtol=1e-6)
    assert main(["run", str(artifact), "--input", str(tmp_path / "image.npy"),
                 "-o", str(out)]) != 0
    assert "this model's inputs are image, side" in capsys.readouterr().err


def test_cnnc_train_explains_that_data_feeds_one_input(spec_file, tmp_path, capsys):
    assert main(["train", str(spec_file), "--data", "digits", "-o", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "trains on an .npz holding each input and each trained output by name " \
        "(image, side, fc), or from Python" in err


def test_training_steps_match_pytorch(artifact):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.s1 = nn.Linear(6, 5)
            self.fc = nn.Linear(9, 3)

        def forward(self, image, side):
            a = torch.relu(self.conv(image)).mean(dim=(2, 3))
            return self.fc(torch.cat([a, torch.tanh(self.s1(side))], dim=1))

    torch.manual_seed(0)
    net = Twin()
    model = cc.load(artifact)
    model.load_params(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        x = batch(8, seed=step)
        y = np.arange(8) % 3
        model.train_step(x, y)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x["image"]),
                                               torch.from_numpy(x["side"])),
                                           torch.from_numpy(y))
        loss.backward()
        opt.step()
    for name, value in net.state_dict().items():
        np.testing.assert_allclose(model.params[name], value.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    history = model.fit(batch(12), np.arange(12) % 3, epochs=1, batch_size=4,
                        validation_split=0.25, verbose=0)
    assert set(history.history) >= {"loss", "val_loss", "val_accuracy"}


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc (the CUDA toolkit) is not installed")
def test_a_model_of_two_inputs_compiles_for_cuda(spec_file, tmp_path):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    manifest = cc.compile(spec_file, target="cuda", output_dir=tmp_path / "cuda").manifest
    assert [i["name"] for i in manifest["inputs"]] == ["image", "side"]


# -- inputs without the batch axis -------------------------------------------------------------

ROWS = """\
name: rows
inputs:
  image: [3, 8, 8]
  boxes: {shape: [null, 4], batched: false}
layers:
  - {name: conv, type: conv2d, filters: 2, kernel: 3}
  - {name: pool, type: global_avgpool}
  - {name: flat, type: flatten}
  - {name: per_image, type: dense, units: 2}
  - {name: b1, type: dense, units: 6, inputs: [boxes], activation: relu}
  - {name: bn, type: batchnorm}
  - {name: drop, type: dropout, rate: 0.3}
  - {name: per_box, type: dense, units: 3}
outputs: [per_box, per_image]
"""


@pytest.fixture(scope="module")
def rows_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "rows.yaml"
    path.write_text(ROWS)
    return path


def test_an_unbatched_input_carries_its_own_leading_axis(rows_spec, tmp_path):
    g, _ = cc.check(rows_spec)
    assert [layer_node(g, n).lead for n in ("image", "boxes", "flat", "b1", "per_box")] == \
        ["N", "boxes", "N", "boxes", "boxes"]
    text = check_text(tmp_path, ROWS.replace("outputs: [per_box, per_image]",
                                             "  - {name: mix, type: concat, inputs: [flat, b1]}"))
    assert "layer 'mix' (concat): its inputs count different things along their first axis " \
        "(the batch's samples, the rows of 'boxes')" in text
    from cnncompiler.graph.summary import format_table, summarize

    assert "boxes x (3,)" in format_table(summarize(g))


def test_rows_of_any_number_run_and_equal_the_reference(rows_spec):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    model = cc.compile(rows_spec, batch_sizes=(2,))
    assert "boxes: float32[R_boxes, 4]" in model.signature()
    assert "'per_box': float32[R_boxes, 3]" in model.signature()
    rng = np.random.default_rng(0)
    for boxes in (7, 1, 30):
        x = {"image": rng.standard_normal((2, 3, 8, 8)).astype(np.float32),
             "boxes": rng.standard_normal((boxes, 4)).astype(np.float32)}
        got = model.predict(x)
        want = run_reference(model.graph, x, model.params)
        assert got["per_box"].shape == (boxes, 3) and got["per_image"].shape == (2, 2)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="input 'boxes': received no rows"):
        model.predict({"image": x["image"], "boxes": np.zeros((0, 4), np.float32)})
    assert model.manifest["inputs"][1]["shape"] == ["R_boxes", 4]


def test_training_steps_take_one_label_per_row(rows_spec, tmp_path):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    spec = tmp_path / "one_output.yaml"
    spec.write_text(ROWS.replace("outputs: [per_box, per_image]\n", "") +
                    "train:\n  optimizer: {type: sgd, lr: 0.2}\n")
    model = cc.compile(spec)
    rng = np.random.default_rng(1)
    x = {"image": rng.standard_normal((3, 3, 8, 8)).astype(np.float32),
         "boxes": rng.standard_normal((10, 4)).astype(np.float32)}
    y = np.arange(10) % 3
    losses = [model.train_step(x, y) for _ in range(8)]
    assert losses[-1] < losses[0]
    assert set(model.evaluate(x, y)) == {"loss", "accuracy"}
    with pytest.raises(InputError, match=r"labels must be class indices of shape \(10,\)"):
        model.train_step(x, y[:3])
    with pytest.raises(InputError, match=r"give the batches, fit\(\[\(x, y\), ...\]\)"):
        model.fit(x, y)
    # batches formed by the caller: the rows of each point at its own samples
    given = [(x, y), ({"image": x["image"][:1], "boxes": x["boxes"][:4]}, y[:4])]
    history = model.fit(given, epochs=2, validation_data=given[:1], verbose=0)
    assert len(history["loss"]) == 2 and "val_accuracy" in history.history
    assert model.trainer.steps_per_epoch == 2
    by_epoch = model.fit(lambda epoch: iter(given[epoch % 2:]), epochs=2, verbose=0)
    assert len(by_epoch["loss"]) == 2
    with pytest.raises(InputError, match="a batch is a pair"):
        model.fit([x], epochs=1, verbose=0)


def test_cnnc_train_feeds_a_datasets_samples_to_the_one_named_input(tmp_path, capsys):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (the digits)")
    spec = tmp_path / "named.yaml"
    spec.write_text("name: named\ninputs: {digit: [1, 16, 16]}\nlayers:\n"
                    "  - {type: flatten}\n  - {name: fc, type: dense, units: 10}\n")
    code = main(["train", str(spec), "--data", "digits", "--epochs", "1", "-o",
                 str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert cc.load(tmp_path / "run").input_names == ["digit"]

"""ONNX import: specs exported and read back compute what they computed; small ResNet-, VGG- and
MobileNet-like PyTorch networks exported by torch.onnx, imported, compiled and compared with
ONNX Runtime; readable layer names; refusals that name the node; ``cnnc import``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import SPECS, needs_torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import cnncompiler  # noqa: E402
from cnncompiler.cli import main  # noqa: E402
from cnncompiler.interop import read_model  # noqa: E402
from cnncompiler.interop.onnx_export import onnx_model_bytes  # noqa: E402
from cnncompiler.interop.onnx_import import import_onnx  # noqa: E402
from cnncompiler.reference import run_reference  # noqa: E402
from cnncompiler.runtime.weights import write_weights  # noqa: E402
from test_onnx_export import (CASES, assert_matches, calibrated_run, checked,  # noqa: E402
                              onnx_outputs, sample, spec_text)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def round_trip(tmp_path, graph, params, opset: int = 17):
    """Export, import: the imported graph and its weights."""
    path = tmp_path / f"{graph.graph['name']}.onnx"
    path.write_bytes(onnx_model_bytes(graph, params, opset))
    text, imported = import_onnx(path)
    return checked(text), imported, text


# -- cnnc's own exports, read back ---------------------------------------------------------------------

ROUND_TRIP_SPECS = ["lenet5", "resnet_tiny", "resnet18_cifar", "mobilenet_v1_cifar", "tdnn",
                    "googlenet", "alexnet"]


@pytest.mark.parametrize("stem", ROUND_TRIP_SPECS)
def test_classic_spec_round_trip(tmp_path, stem):
    graph, _ = cnncompiler.check(SPECS / f"{stem}.yaml")
    x = sample(graph, 1)
    params, want = calibrated_run(graph, x)
    imported, imported_params, _ = round_trip(tmp_path, graph, params)
    assert list(imported.nodes) == list(graph.nodes)  # the same names, in the same order
    assert imported_params.keys() == params.keys()
    got = run_reference(imported, x, imported_params)
    for name, value in want.items():
        assert_matches(got[name], value, what=name)


# the layer cases that export as operators cnnc reads back, and those that do not: the node
# and operator the import refuses
NOT_READ_BACK = {
    "adaptive_avgpool2d_uneven": "ReduceMean", "adaptive_avgpool2d_mixed": "ReduceMean",
    "adaptive_maxpool2d_uneven": "ReduceMax", "stats_pool": "Sub",
    "blurpool2d_reflect": "Pad", "blurpool2d_k5_stride1": "Pad", "gelu_tanh": "Mul", "lppool2d_ceil_overhang": "Abs",
    "lppool2d_fractional_p": "Abs", "lrn_even": "Mul", "lrn_1d": "Mul",
    "locally_connected2d": "Unsqueeze", "locally_connected2d_strided": "Pad",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_round_trip(tmp_path, case):
    graph = checked(spec_text(*CASES[case]))
    x = sample(graph, 2)
    params, want = calibrated_run(graph, x)
    if case in NOT_READ_BACK:
        with pytest.raises(cnncompiler.CnncError, match=rf"node '/[^']+' \({NOT_READ_BACK[case]}, "
                                                        r"opset 17\): "):
            round_trip(tmp_path, graph, params)
        return
    imported, imported_params, _ = round_trip(tmp_path, graph, params)
    got = run_reference(imported, x, imported_params)
    for (name, value), imported_name in zip(want.items(), imported.graph["outputs"]):
        assert_matches(got[imported_name], value, what=name)


@pytest.mark.parametrize("case, opset", [("gelu", 20), ("gelu_tanh", 20), ("hardswish", 13),
                                         ("dropout", 13), ("softmax_axis2", 13)])
def test_opset_dependent_forms_read_back(tmp_path, case, opset):
    """Gelu as an operator (opset 20), HardSwish as x * HardSigmoid(x) (before opset 14)."""
    graph = checked(spec_text(*CASES[case]))
    x = sample(graph, 2)
    params, want = calibrated_run(graph, x)
    imported, imported_params, text = round_trip(tmp_path, graph, params, opset)
    assert f"type: {case.split('_')[0]}" in text
    got = run_reference(imported, x, imported_params)
    for name, value in want.items():
        assert_matches(got[name], value, what=name)


def test_spec_text_is_plain(tmp_path):
    graph = checked(spec_text([3, 8, 8], [
        "{name: conv1, type: conv2d, filters: 4, kernel: 3, stride: 2, padding: [[0, 1], [1, 0]]}",
        "{name: '0', type: batchnorm, eps: 0.001}", "{name: relu, type: leaky_relu, alpha: 0.2}",
        "{name: pool, type: maxpool2d, kernel: 3, stride: 1, padding: 1, inputs: [conv1]}",
        "{name: sum, type: add, inputs: [relu, pool]}", "{name: drop, type: dropout, rate: 0.3}"]))
    params, _ = calibrated_run(graph, sample(graph, 2))
    _, _, text = round_trip(tmp_path, graph, params)
    assert text.splitlines()[1:] == [
        "name: case",
        "input: [3, 8, 8]",
        "layers:",
        "  - {name: conv1, type: conv2d, filters: 4, kernel: 3, stride: 2, "
        "padding: [[0, 1], [1, 0]]}",
        "  - {name: '0', type: batchnorm, eps: 0.001}",
        "  - {name: relu, type: leaky_relu, alpha: 0.2}",
        "  - {name: pool, type: maxpool2d, kernel: 3, stride: 1, padding: 1, inputs: [conv1]}",
        "  - {name: sum, type: add, inputs: [relu, pool]}",
        "  - {name: drop, type: dropout, rate: 0.3}"]
    assert text.startswith("# Imported from case.onnx (ONNX opset 17, written by cnnc ")


# -- PyTorch's networks --------------------------------------------------------------------------------

def torch_networks():
    """Small networks of the three families, built here (torchvision is not needed)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        """torchvision's BasicBlock: one ReLU module called twice."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout)) if stride != 1 else None

        def forward(self, x):
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(self.avgpool(self.layer1(x)), 1))

    class VGGish(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.PReLU(16),
                nn.AvgPool2d(3, 1, 1, count_include_pad=False))
            self.avgpool = nn.AdaptiveAvgPool2d(2)
            self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5),
                                            nn.Linear(32, 10), nn.Softmax(dim=1))

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(x.view(x.size(0), -1))

    class MobileNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU6())
            self.block = nn.Sequential(
                nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                nn.Hardswish(), nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.SiLU())
            self.left = nn.Sequential(nn.Conv2d(24, 8, 1), nn.GELU())
            self.right = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.Hardsigmoid(),
                                       nn.Tanh())
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.block(self.stem(x))
            x = torch.cat([self.left(x), self.right(x), ], dim=1)
            return torch.sigmoid(self.fc(x.mean((2, 3))))

    return {"resnetish": (ResNetish, (3, 16, 16)), "vggish": (VGGish, (3, 15, 15)),
            "mobilenetish": (MobileNetish, (3, 16, 16))}


def randomise_batchnorm(net, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.2 * torch.randn(c, generator=generator))


def torch_export(net, shape, path, keep_batchnorm: bool = True) -> None:
    """torch.onnx's TorchScript exporter (the default one needs onnxscript), batch axis free;
    PRESERVE keeps batch norms as nodes, EVAL folds them into the convolutions."""
    import torch

    mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, *shape), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}},
                          opset_version=17, training=mode)


@pytest.fixture(scope="module")
def torch_imports(tmp_path_factory):
    """Each network exported, imported and written as spec + weights, and compiled."""
    pytest.importorskip("torch")
    import torch

    out = {}
    for index, (name, (build, shape)) in enumerate(torch_networks().items()):
        torch.manual_seed(index)
        net = build().eval()
        randomise_batchnorm(net, index)
        folder = tmp_path_factory.mktemp(name)
        path = folder / f"{name}.onnx"
        torch_export(net, shape, path)
        text, params = import_onnx(path)
        (folder / "spec.yaml").write_text(text)
        write_weights(folder / "weights.safetensors", params)
        model = cnncompiler.compile(folder / "spec.yaml", weights=folder / "weights.safetensors",
                                    output_dir=folder / "build")
        out[name] = {"net": net, "shape": shape, "onnx": path, "text": text, "params": params,
                     "model": model, "folder": folder}
    return out


@needs_torch
@pytest.mark.parametrize("name", ["resnetish", "vggish", "mobilenetish"])
def test_torch_network_imports_and_compiles_as_onnx_runtime_computes(torch_imports, name):
    entry = torch_imports[name]
    x = np.random.default_rng(5).standard_normal((3, *entry["shape"])).astype(np.float32)
    want = onnx_outputs(entry["onnx"].read_bytes(), x)
    (expected,) = want.values()
    assert_matches(entry["model"].predict(x), expected, rel=1e-4, what=f"{name} compiled")
    graph = checked(entry["text"])
    (got,) = run_reference(graph, x, entry["params"]).values()
    assert_matches(got, expected, rel=1e-4, what=f"{name} reference")


@needs_torch
def test_torch_names_are_module_paths_and_weights_load_as_state_dict(torch_imports):
    entry = torch_imports["resnetish"]
    names = list(checked(entry["text"]).nodes)
    assert names == [
        "input", "conv1", "bn1", "relu", "maxpool",
        "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu", "layer1.0.conv2", "layer1.0.bn2",
        "layer1.0.add", "layer1.0.relu_1",
        "layer1.1.conv1", "layer1.1.bn1", "layer1.1.relu", "layer1.1.conv2", "layer1.1.bn2",
        "layer1.1.downsample.0", "layer1.1.downsample.1", "layer1.1.add", "layer1.1.relu_1",
        "avgpool", "flatten", "fc"]
    state = {k: v.numpy() for k, v in entry["net"].state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert entry["params"].keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(entry["params"][key], value, err_msg=key)


@needs_torch
def test_torch_patterns_become_one_layer_each(torch_imports):
    lines = {line.split("name: ")[1].split(",")[0]: line
             for line in torch_imports["mobilenetish"]["text"].splitlines() if "name: " in line}
    assert "type: relu6" in lines["stem.2"] and "type: hardswish" in lines["block.2"]
    assert "type: silu" in lines["block.5"] and "type: gelu" in lines["left.1"]
    assert "type: hardsigmoid" in lines["right.1"]
    assert "type: global_avgpool" in lines["reducemean"]
    assert "type: flatten" in lines["reducemean.flatten"]
    vgg = torch_imports["vggish"]["text"]
    assert "{name: reshape, type: flatten}" in vgg
    assert "{name: features.3, type: maxpool2d, kernel: 2, ceil_mode: true}" in vgg
    assert "{name: features.9, type: prelu, num_parameters: 16}" in vgg


@needs_torch
def test_folded_batchnorm_exports_import_too(tmp_path):
    import torch

    build, shape = torch_networks()["resnetish"]
    torch.manual_seed(7)
    net = build().eval()
    randomise_batchnorm(net, 7)
    path = tmp_path / "folded.onnx"
    torch_export(net, shape, path, keep_batchnorm=False)
    text, params = import_onnx(path)
    assert "batchnorm" not in text and "layer1.0.conv1.bias" in params
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    (got,) = run_reference(checked(text), x, params).values()
    (want,) = onnx_outputs(path.read_bytes(), x).values()
    assert_matches(got, want, rel=1e-4)


@needs_torch
def test_one_dimensional_torch_network(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv1d(4, 8, 3, dilation=2, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
                        nn.MaxPool1d(3, 2, ceil_mode=True), nn.AvgPool1d(2),
                        nn.Conv1d(8, 6, 1), nn.AdaptiveMaxPool1d(1), nn.Flatten(),
                        nn.Linear(6, 5), nn.BatchNorm1d(5)).eval()
    randomise_batchnorm(net, 3)
    path = tmp_path / "tdnnish.onnx"
    torch_export(net, (4, 21), path)
    text, params = import_onnx(path)
    x = np.random.default_rng(2).standard_normal((3, 4, 21)).astype(np.float32)
    (got,) = run_reference(checked(text), x, params).values()
    (want,) = onnx_outputs(path.read_bytes(), x).values()
    assert_matches(got, want, rel=1e-4)


# -- models of several inputs ------------------------------------------------------------------------------

def two_input_net():
    """An image branch and a side-vector branch, added and joined before the classifier."""
    import torch
    from torch import nn

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.side = nn.Linear(6, 8)
            self.fc = nn.Linear(16, 5)

        def forward(self, image, side):
            x = torch.relu(self.bn(self.conv(image))).mean((2, 3))
            s = torch.tanh(self.side(side))
            return self.fc(torch.cat([x + s, s], 1))

    return TwoInputs()


@needs_torch
def test_torch_model_of_two_inputs_imports_as_named_inputs(tmp_path):
    import torch

    torch.manual_seed(4)
    net = two_input_net().eval()
    randomise_batchnorm(net, 4)
    path = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 12, 12), torch.zeros(1, 6)), str(path),
                          dynamo=False, input_names=["image", "side"],
                          dynamic_axes={"image": {0: "batch"}, "side": {0: "batch"}},
                          opset_version=17)
    text, params = import_onnx(path)
    assert "inputs:\n  image: [3, 12, 12]\n  side: [6]\nlayers:\n" in text
    assert "- {name: side, type: dense" not in text  # a layer never takes an input's name
    assert "inputs: [side_1]" not in text and "type: dense, units: 8, inputs: [side]}" in text
    (tmp_path / "two.yaml").write_text(text)
    write_weights(tmp_path / "two.safetensors", params)
    model = cnncompiler.compile(tmp_path / "two.yaml", weights=tmp_path / "two.safetensors",
                                output_dir=tmp_path / "build")
    rng = np.random.default_rng(3)
    x = {"image": rng.standard_normal((3, 3, 12, 12)).astype(np.float32),
         "side": rng.standard_normal((3, 6)).astype(np.float32)}
    (want,) = onnx_outputs(path.read_bytes(), x).values()
    assert_matches(model.predict(x), want, rel=1e-4, what="compiled")
    (got,) = run_reference(checked(text), x, params).values()
    assert_matches(got, want, rel=1e-4, what="reference")


def test_spec_of_two_inputs_round_trips(tmp_path):
    graph = checked("""\
name: two_inputs
inputs:
  image: [3, 8, 8]
  side: [4]
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3, padding: 1, activation: relu}
  - {name: pool, type: global_avgpool}
  - {name: flat, type: flatten}
  - {name: meta, type: dense, units: 4, inputs: [side], activation: relu}
  - {name: join, type: concat, inputs: [flat, meta]}
  - {name: fc, type: dense, units: 3}
""")
    x = sample(graph, 2)
    params, want = calibrated_run(graph, x)
    imported, imported_params, text = round_trip(tmp_path, graph, params)
    assert imported.graph["inputs"] == ["image", "side"]
    assert list(imported.nodes) == list(graph.nodes)
    got = run_reference(imported, x, imported_params)
    for (name, value), imported_name in zip(want.items(), imported.graph["outputs"]):
        assert_matches(got[imported_name], value, what=name)


def test_hand_written_model_of_two_inputs(tmp_path):
    two = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")]
    path = onnx_file(tmp_path / "sum.onnx", [helper.make_node("Add", ["a", "b"], ["y"])], (),
                     inputs=two)
    text, _ = import_onnx(path)
    assert "inputs:\n  a: [3]\n  b: [3]\n" in text
    assert "- {name: add, type: add, inputs: [a, b]}" in text
    x = {"a": np.ones((2, 3), np.float32), "b": np.arange(6, dtype=np.float32).reshape(2, 3)}
    (got,) = run_reference(checked(text), x, {}).values()
    np.testing.assert_array_equal(got, x["a"] + x["b"])


# -- hand-written ONNX -----------------------------------------------------------------------------------

def onnx_file(path, nodes, input_shape, initializers=(), opset: int = 17, inputs=None,
              domains=()):
    """A model of ``nodes`` reading 'x' (batch axis 'N') and writing 'y'."""
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      ["N", *input_shape])]
    graph = helper.make_graph(nodes, "hand", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v), k)
                               for k, v in dict(initializers).items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def test_matmul_add_sum_and_constant_nodes(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["two"], name="two",
                              value=numpy_helper.from_array(np.float32(2.0))),
             helper.make_node("Mul", ["b", "two"], ["b2"], name="double_bias"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="/fc/MatMul"),
             helper.make_node("Add", ["h", "b2"], ["z"], name="/fc/Add"),
             helper.make_node("Relu", ["z"], ["r"], name="/act/Relu"),
             helper.make_node("Sum", ["r", "z", "r"], ["y"], name="total")]
    path = onnx_file(tmp_path / "dense.onnx", nodes, [6], {"w": w, "b": b})
    text, params = import_onnx(path)
    assert "{name: fc, type: dense, units: 4}" in text
    assert "{name: total, type: add, inputs: [act, fc, act]}" in text
    np.testing.assert_array_equal(params["fc.weight"], w.T)
    np.testing.assert_array_equal(params["fc.bias"], 2 * b)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    (got,) = run_reference(checked(text), x, params).values()
    assert_matches(got, onnx_outputs(path.read_bytes(), x)["y"])


def refusal(tmp_path, nodes, input_shape=(3, 4, 4), initializers=(), **kw) -> str:
    path = onnx_file(tmp_path / "refused.onnx", nodes, input_shape, initializers, **kw)
    with pytest.raises(cnncompiler.CnncError) as caught:
        import_onnx(path)
    return str(caught.value)


def test_unsupported_operators_are_refused_with_node_and_opset(tmp_path):
    message = refusal(tmp_path, [helper.make_node("Relu", ["x"], ["r"], name="/a/Relu"),
                                 helper.make_node("Exp", ["r"], ["y"], name="/b/Exp")])
    assert "refused.onnx: node '/b/Exp' (Exp, opset 17): cnnc has no layer for this " \
           "operator; it reads Add, AveragePool, BatchNormalization" in message
    message = refusal(tmp_path, [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="c")],
                      initializers={"lo": np.float32(-1), "hi": np.float32(1)}, opset=13)
    assert "node 'c' (Clip, opset 13): Clip(min=-1.0, max=1.0); cnnc expresses Clip(0, 6)" \
           in message
    message = refusal(tmp_path, [helper.make_node("LRN", ["x"], ["y"], name="n", size=4)])
    assert "node 'n' (LRN, opset 17): size 4 is even" in message
    message = refusal(tmp_path, [helper.make_node("Foo", ["x"], ["y"], name="f",
                                                  domain="com.example")],
                      domains=["com.example"])
    assert "node 'f' (Foo, opset 17): an operator of the domain 'com.example'" in message
    message = refusal(tmp_path, [helper.make_node("Add", ["x", "c"], ["y"], name="shift")],
                      initializers={"c": np.ones((3, 1, 1), np.float32)})
    assert "node 'shift' (Add, opset 17): input 1 ('c') is a constant" in message
    message = refusal(tmp_path, [helper.make_node("MatMul", ["x", "w"], ["h"], name="/fc/MatMul"),
                                 helper.make_node("Add", ["h", "b"], ["y"], name="/fc/Add")],
                      initializers={"w": np.ones((4, 2), np.float32),
                                    "b": np.ones(2, np.float32)})
    assert "node '/fc/Gemm' (Gemm, from MatMul + Add, opset 17): its input is not a batch of " \
           "vectors (N, F)" in message


@pytest.mark.parametrize("coords,rounding", [("half_pixel", "round_prefer_floor"),
                                              ("pytorch_half_pixel", "round_prefer_ceil"),
                                              ("asymmetric", "floor")])
def test_nearest_resize_by_integers_is_an_upsample(tmp_path, coords, rounding):
    """Output i reads input floor(i / s) in each of these forms, as ONNX Runtime computes."""
    import onnxruntime

    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="/up/Resize",
                            mode="nearest", coordinate_transformation_mode=coords,
                            nearest_mode=rounding)
    path = onnx_file(tmp_path / "resize.onnx", [node], (2, 3, 4),
                     {"scales": np.array([1, 1, 3, 2], np.float32)})
    text, _ = import_onnx(path)
    assert "type: upsample, scale: [3, 2]}" in text
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 4)).astype(np.float32)
    want = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})[0]
    (got,) = run_reference(checked(text), x, {}).values()
    np.testing.assert_array_equal(got, want)


def test_other_resizes_are_refused(tmp_path):
    scales = {"scales": np.array([1, 1, 2, 2], np.float32)}
    message = refusal(tmp_path, [helper.make_node("Resize", ["x", "", "scales"], ["y"],
                                                  name="r", mode="linear")], initializers=scales)
    assert "node 'r' (Resize, opset 17): Resize in linear mode with half_pixel coordinates" \
        in message
    message = refusal(tmp_path, [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="r",
                                                  coordinate_transformation_mode="asymmetric")],
                      initializers=scales)
    assert "asymmetric coordinates and round_prefer_floor rounding" in message
    message = refusal(tmp_path, [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="r")],
                      initializers={"scales": np.array([1, 1, 1.5, 2], np.float32)})
    assert "resizes (3, 4, 4) to (3, 6, 8); cnnc's upsample multiplies" in message


SLICES = [  # (starts, ends, axes, steps) of a Slice over (N, 6, 5, 7), and the layers it is
    ([1], [5], [1], [2], ["{name: s, type: slice, start: 1, stop: 4, step: 2}"]),
    ([0, -3], [2**63 - 1, 2**63 - 1], [0, 3], [1, 1], ["{name: s, type: slice, axis: cols, "
                                                          "start: 4}"]),
    ([2, 0], [-1, 99], [-2, 1], [1, 3], ["{name: s, type: slice, axis: rows, start: 2, stop: 4}",
                                         "{name: s.slice, type: slice, stop: 4, step: 3}"]),
    ([0], [99], [2], [1], ["{name: s, type: identity}"]),
]


@pytest.mark.parametrize("starts, ends, axes, steps, lines", SLICES)
def test_slices_become_one_slice_per_axis(tmp_path, starts, ends, axes, steps, lines):
    import onnxruntime

    bounds = {k: np.array(v, np.int64) for k, v in zip(("starts", "ends", "axes", "steps"),
                                                         (starts, ends, axes, steps))}
    node = helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"], name="s")
    path = onnx_file(tmp_path / "slice.onnx", [node], (6, 5, 7), bounds)
    text, _ = import_onnx(path)
    assert [line[4:] for line in text.splitlines() if line.startswith("  - {name: s")] == lines
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 7)).astype(np.float32)
    want = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})[0]
    (got,) = run_reference(checked(text), x, {}).values()
    np.testing.assert_array_equal(got, want)


def test_slice_of_opset_9_reads_its_attributes(tmp_path):
    node = helper.make_node("Slice", ["x"], ["y"], name="s", starts=[1], ends=[3], axes=[2])
    path = onnx_file(tmp_path / "slice9.onnx", [node], (3, 4, 4), opset=9)
    text, _ = import_onnx(path)
    assert "- {name: s, type: slice, axis: rows, start: 1, stop: 3}" in text



@needs_torch
@pytest.mark.parametrize("opset", [11, 17])
def test_torch_split_imports_as_a_slice_per_part(tmp_path, opset):
    """torch.split as a Split node (sizes as an attribute before opset 13, an input from it):
    a slice per part that is read, compared with ONNX Runtime."""
    import torch
    from torch import nn

    class Parts(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            y = self.conv(x)
            first, middle, last = torch.split(y, [3, 4, 1], dim=1)
            _, bottom = torch.split(y, 4, dim=2)
            return torch.cat([first, last], 1), middle, bottom

    torch.manual_seed(0)
    path = tmp_path / "split.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Parts().eval(), torch.zeros(1, 3, 7, 6), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}},
                          opset_version=opset)
    text, params = import_onnx(path)
    assert "{name: split_0, type: slice, stop: 3}" in text
    assert "{name: split_1_1, type: slice, axis: rows, start: 4, inputs: [conv]}" in text
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 6)).astype(np.float32)
    got = run_reference(checked(text), x, params)
    want = onnx_outputs(path.read_bytes(), x)
    for g, w in zip(got.values(), want.values()):
        assert_matches(g, w, rel=1e-5)


def test_split_into_equal_parts_rounds_as_onnx_does(tmp_path):
    """Opset 18's num_outputs: parts of ceil(size / n), the last one smaller (7 into 3, 3, 1)."""
    import onnxruntime

    node = helper.make_node("Split", ["x"], ["a", "b", "y"], name="parts", axis=3,
                            num_outputs=3)
    path = onnx_file(tmp_path / "split18.onnx", [node], (6, 5, 7), opset=18)
    text, _ = import_onnx(path)
    assert "- {name: parts_2, type: slice, axis: cols, start: 6}" in text
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 7)).astype(np.float32)
    want = onnxruntime.InferenceSession(str(path)).run(["y"], {"x": x})[0]
    (got,) = run_reference(checked(text), x, {}).values()
    np.testing.assert_array_equal(got, want)

def test_slices_cnnc_cannot_take_are_refused(tmp_path):
    def bounds(starts, ends, axes, steps):
        return {k: np.array(v, np.int64) for k, v in zip(("starts", "ends", "axes", "steps"),
                                                          (starts, ends, axes, steps))}

    node = helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"], name="s")
    message = refusal(tmp_path, [node], initializers=bounds([3], [0], [2], [-1]))
    assert "node 's' (Slice, opset 17): a slice with step -1; cnnc's slice steps forward" \
        in message
    message = refusal(tmp_path, [node], initializers=bounds([1], [2], [0], [1]))
    assert "a slice of the batch axis; cnnc's slice cuts a sample's axes" in message
    message = refusal(tmp_path, [node], initializers=bounds([3], [1], [1], [1]))
    assert "takes nothing from axis 1 of size 3 (starts 3, ends 1, steps 1)" in message


@needs_torch
def test_torch_indexing_imports_as_slices(tmp_path):
    """x[:, a:b] and x[:, :, a:b:s] as torch.onnx writes them (a Slice node each), compared
    with ONNX Runtime."""
    import torch
    from torch import nn

    class Parts(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            half = y[:, 4:] + y[:, :4]
            return torch.cat([half[:, :, 1::2, 1::2], y[:, -2:, 1:-1:2, :-1:2]], 1)

    torch.manual_seed(0)
    path = tmp_path / "parts.onnx"
    torch_export(Parts().eval(), (3, 9, 8), path)
    text, params = import_onnx(path)
    assert text.count("type: slice") == 7
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8)).astype(np.float32)
    (got,) = run_reference(checked(text), x, params).values()
    (want,) = onnx_outputs(path.read_bytes(), x).values()
    assert_matches(got, want, rel=1e-5)


def test_models_cnnc_cannot_take_are_refused(tmp_path):
    two = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
           helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 3])]
    message = refusal(tmp_path, [helper.make_node("Add", ["a", "b"], ["y"])], inputs=two)
    assert "its input 'b' is not float32" in message
    message = refusal(tmp_path, [helper.make_node("Identity", ["x"], ["y"])], input_shape=())
    assert "its input 'x' has shape ('N',)" not in message and "has shape" in message
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(cnncompiler.CnncError, match="junk.onnx: not a readable ONNX model"):
        import_onnx(tmp_path / "junk.onnx")
    with pytest.raises(cnncompiler.CnncError, match="no ONNX model at"):
        import_onnx(tmp_path / "none.onnx")


def test_unknown_suffix_lists_the_formats(tmp_path):
    with pytest.raises(cnncompiler.CnncError, match=r"'net.pb': no model format with the "
                                                    r"suffix '.pb'; cnnc reads ONNX "
                                                    r"\(.onnx\)"):
        read_model("net.pb")


# -- cnnc import and cnnc export --artifact --------------------------------------------------------------

def cnnc(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_import_writes_spec_and_weights_and_refuses_to_overwrite(tmp_path, capsys):
    graph, _ = cnncompiler.check(SPECS / "lenet5.yaml")
    params, _ = calibrated_run(graph, sample(graph, 2))
    (tmp_path / "lenet.onnx").write_bytes(onnx_model_bytes(graph, params))
    spec = tmp_path / "out" / "lenet.yaml"
    code, out, err = cnnc(capsys, "import", tmp_path / "lenet.onnx", "-o", spec)
    assert code == 0, err
    assert out.splitlines()[0] == (f"wrote {spec} and {spec.with_suffix('.safetensors')} "
                                   "(10 tensors, 61,706 weights)")
    imported, _ = cnncompiler.check(spec)
    assert list(imported.nodes) == list(graph.nodes)

    code, _, err = cnnc(capsys, "import", tmp_path / "lenet.onnx", "-o", spec)
    assert code == 1 and "already exist; refusing to overwrite (give --force" in err
    weights = tmp_path / "w.safetensors"
    code, _, err = cnnc(capsys, "import", tmp_path / "lenet.onnx", "-o", spec, "--force",
                        "--weights", weights)
    assert code == 0, err
    from cnncompiler.runtime.weights import read_weights
    assert read_weights(weights).keys() == params.keys()
    code, _, err = cnnc(capsys, "import", tmp_path / "lenet.caffemodel", "-o", spec)
    assert code == 1 and "cnnc reads ONNX (.onnx)" in err


@needs_torch
def test_cli_export_of_an_artifact(torch_imports, tmp_path, capsys):
    entry = torch_imports["resnetish"]
    out = tmp_path / "again.onnx"
    code, stdout, err = cnnc(capsys, "export", "--artifact", entry["folder"] / "build", "-o", out)
    assert code == 0, err
    assert "weights from the artifact" in stdout
    x = np.random.default_rng(8).standard_normal((2, *entry["shape"])).astype(np.float32)
    (want,) = onnx_outputs(entry["onnx"].read_bytes(), x).values()
    (got,) = onnx_outputs(out.read_bytes(), x).values()
    assert_matches(got, want, rel=1e-4)

"""ONNX export: every layer type, with each of its options, and every classic network of specs/,
run in ONNX Runtime and compared with cnnc's numpy reference (within 1e-5 of the output's
scale); the names, batch axis and checks of the written model; refusals; ``cnnc export``."""

from __future__ import annotations

import numpy as np
import pytest

from compile_helpers import spec_inputs
from conftest import SPECS, classic_specs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cnncompiler  # noqa: E402
from cnncompiler.cli import main  # noqa: E402
from cnncompiler.graph import by_input_name, check_spec, layer_node, topo_layers  # noqa: E402
from cnncompiler.interop import onnx_export  # noqa: E402
from cnncompiler.interop.onnx_export import (ExportError, export_onnx, find_export,  # noqa: E402
                                             no_exact_mapping, onnx_model_bytes)
from cnncompiler.layers import LAYER_TYPES  # noqa: E402
from cnncompiler.layers.norm import BatchNorm  # noqa: E402
from cnncompiler.reference import init_params, layer_params, run_reference  # noqa: E402
from cnncompiler.spec import parse_spec_text  # noqa: E402

REL = 1e-5


# -- helpers shared with test_onnx_import.py ------------------------------------------------------

def spec_text(input_shape, layers, name: str = "case") -> str:
    lines = [f"name: {name}", f"input: {list(input_shape)}", "layers:"]
    return "\n".join(lines + [f"  - {layer}" for layer in layers]) + "\n"


def checked(text: str):
    graph, _ = check_spec(parse_spec_text(text, "<case>"))
    return graph


def sample(graph, batch: int, seed: int = 0):
    """A batch for the graph's input; for several inputs, a dict of them by name (boxes for an
    input without the batch axis)."""
    if graph.graph["inputs"] != ["input"]:
        return spec_inputs(graph, seed)
    shape = (batch, *graph.graph["input_shape"])
    return (2 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def calibrated_run(graph, x: np.ndarray, seed: int = 0):
    """Weights that keep the signal at about unit scale through a deep net, and the numpy
    reference's outputs with them, from one pass over the layers.

    Each batch norm divides by about the mean square of what reaches it from ``x`` (one scale
    per layer: normalising channel by channel over a batch of two would amplify rounding
    layer after layer), with random weights, biases and small means; PReLU slopes differ per
    channel; everything else is as initialised for training."""
    rng = np.random.default_rng(seed + 1)
    params = init_params(graph, seed)
    values = dict(by_input_name(graph, x))
    dtype = next(iter(values.values())).dtype
    for name in topo_layers(graph):
        node = layer_node(graph, name)
        if name in values:
            continue
        xs = [values[src] for src in node.inputs]
        if isinstance(node.layer, BatchNorm):
            params.update(batchnorm_statistics(name, xs[0], rng))
        elif node.layer.type_name == "prelu":
            params[f"{name}.weight"] = rng.uniform(0.05, 0.5, node.layer.num_parameters
                                                   ).astype(np.float32)
        values[name] = node.layer.reference(xs, layer_params(graph, name, params, dtype))
    return params, {out: values[out] for out in graph.graph["outputs"]}


def batchnorm_statistics(name: str, x: np.ndarray, rng) -> dict[str, np.ndarray]:
    channels, mean_square = x.shape[1], float(np.mean(x * x)) + 1e-6
    draw = {"running_mean": rng.normal(0, 0.1 * np.sqrt(mean_square), channels),
            "running_var": mean_square * rng.uniform(0.8, 1.2, channels),
            "weight": rng.uniform(0.5, 1.5, channels), "bias": rng.normal(0, 0.2, channels)}
    return {f"{name}.{key}": value.astype(np.float32) for key, value in draw.items()}


def onnx_outputs(data: bytes, x) -> dict[str, np.ndarray]:
    """The model run by ONNX Runtime on ``x`` (an array for its one input, or a dict)."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = x if isinstance(x, dict) else {session.get_inputs()[0].name: x}
    return dict(zip(names, session.run(None, feeds)))


def assert_matches(got: np.ndarray, want: np.ndarray, rel: float = REL, what: str = "") -> None:
    """Equal within ``rel`` of the larger of the output's largest magnitude and 1e-3."""
    assert got.shape == want.shape, what
    scale = max(float(np.abs(want).max()), 1e-3)
    error = float(np.abs(got.astype(np.float64) - want).max())
    assert error <= rel * scale, f"{what}: max error {error:.3g} at scale {scale:.3g}"


def assert_export_matches(text: str, batch: int = 2, opset: int = 17, seed: int = 0):
    graph = checked(text)
    x = sample(graph, batch, seed)
    params, want = calibrated_run(graph, x, seed)
    data = onnx_model_bytes(graph, params, opset)
    got = onnx_outputs(data, x)
    for name, value in want.items():
        assert_matches(got[name], value, what=name)
    return graph, data


# -- one small spec per layer type and option ------------------------------------------------------

CONV = "{type: conv2d, filters: 4, kernel: 3"
CASES = {
    "conv2d": ([3, 9, 8], [CONV + "}"]),
    "conv2d_same_stride2": ([3, 9, 8], [CONV + ", stride: 2, padding: same}"]),
    "conv2d_pairs": ([3, 9, 8], ["{type: conv2d, filters: 4, kernel: [3, 2], stride: [1, 2], "
                                 "padding: [[0, 1], [2, 0]], bias: false}"]),
    "conv2d_dilated_valid": ([3, 9, 8], [CONV + ", dilation: 2, padding: valid}"]),
    "conv2d_groups": ([4, 7, 7], ["{type: conv2d, filters: 6, kernel: 3, groups: 2, padding: 1}"]),
    "conv2d_depthwise": ([4, 7, 7], ["{type: conv2d, filters: 8, kernel: 3, groups: 4}"]),
    "conv1d": ([3, 20], ["{type: conv1d, filters: 5, kernel: 3, dilation: 2, padding: same}"]),
    "conv1d_strided_groups": ([4, 21], ["{type: conv1d, filters: 6, kernel: 4, stride: 3, "
                                        "groups: 2, bias: false}"]),
    "dense": ([3, 4, 4], ["{type: flatten}", "{type: dense, units: 5}"]),
    "dense_no_bias": ([6], ["{type: dense, units: 5, bias: false}"]),
    "maxpool2d": ([3, 9, 8], ["{type: maxpool2d, kernel: 2}"]),
    "maxpool2d_padded_ceil": ([3, 9, 8], ["{type: maxpool2d, kernel: 3, stride: 2, padding: 1, "
                                          "ceil_mode: true}"]),
    "maxpool2d_wide_padding": ([3, 7, 6], ["{type: maxpool2d, kernel: 3, stride: 2, "
                                           "padding: [[2, 0], [0, 2]], ceil_mode: true}"]),
    "maxpool2d_same": ([3, 9, 8], ["{type: maxpool2d, kernel: 3, stride: 2, padding: same}"]),
    "avgpool2d": ([3, 9, 8], ["{type: avgpool2d, kernel: 2}"]),
    "avgpool2d_with_pad": ([3, 9, 8], ["{type: avgpool2d, kernel: 3, stride: 2, padding: 1}"]),
    "avgpool2d_without_pad_ceil": ([3, 9, 8], ["{type: avgpool2d, kernel: 3, stride: 2, "
                                               "padding: 1, ceil_mode: true, "
                                               "count_include_pad: false}"]),
    "avgpool2d_with_pad_ceil": ([3, 10, 9], ["{type: avgpool2d, kernel: 3, stride: 2, padding: "
                                             "[[1, 2], [0, 1]], ceil_mode: true}"]),
    "lppool2d": ([3, 8, 8], ["{type: lppool2d, p: 2, kernel: 2}"]),
    "lppool2d_padded": ([3, 8, 8], ["{type: lppool2d, p: 3, kernel: 3, stride: 2, padding: 1}"]),
    "lppool2d_ceil_overhang": ([3, 8, 8], ["{type: lppool2d, p: 2, kernel: 3, stride: 2, "
                                           "ceil_mode: true}"]),
    "lppool2d_fractional_p": ([3, 8, 8], ["{type: lppool2d, p: 1.5, kernel: 2}"]),
    "maxpool1d": ([3, 17], ["{type: maxpool1d, kernel: 3, stride: 2, ceil_mode: true}"]),
    "avgpool1d": ([3, 17], ["{type: avgpool1d, kernel: 4, stride: 3, padding: 2, "
                            "count_include_pad: false}"]),
    "lppool1d": ([3, 17], ["{type: lppool1d, p: 2, kernel: 3, stride: 2, ceil_mode: true}"]),
    "global_avgpool": ([3, 5, 6], ["{type: global_avgpool}"]),
    "global_avgpool_1d": ([3, 11], ["{type: global_avgpool}"]),
    "global_maxpool": ([3, 5, 6], ["{type: global_maxpool}"]),
    "global_maxpool_1d": ([3, 11], ["{type: global_maxpool}"]),
    "adaptive_avgpool2d_even": ([3, 8, 6], ["{type: adaptive_avgpool2d, output_size: [2, 3]}"]),
    "adaptive_avgpool2d_uneven": ([3, 7, 9], ["{type: adaptive_avgpool2d, output_size: [3, 5]}"]),
    "adaptive_avgpool2d_mixed": ([3, 8, 7], ["{type: adaptive_avgpool2d, output_size: 4}"]),
    "adaptive_avgpool2d_regular_uneven": ([3, 8, 7], ["{type: adaptive_avgpool2d, "
                                                      "output_size: [4, 3]}"]),
    "adaptive_maxpool2d_even": ([3, 6, 6], ["{type: adaptive_maxpool2d, output_size: 1}"]),
    "adaptive_maxpool2d_uneven": ([3, 5, 7], ["{type: adaptive_maxpool2d, output_size: [4, 4]}"]),
    "stats_pool": ([4, 13], ["{type: stats_pool}", "{type: dense, units: 3}"]),
    "blurpool2d_reflect": ([3, 9, 8], ["{type: blurpool2d}"]),
    "blurpool2d_zero_even": ([3, 9, 8], ["{type: blurpool2d, kernel: 4, pad_mode: zero}"]),
    "blurpool2d_k1": ([3, 9, 8], ["{type: blurpool2d, kernel: 1}"]),
    "blurpool2d_k5_stride1": ([3, 9, 8], ["{type: blurpool2d, kernel: 5, stride: 1}"]),
    "upsample": ([3, 4, 5], ["{type: upsample}"]),
    "upsample_rect": ([2, 3, 4], ["{type: upsample, scale: [3, 1]}"]),
    "slice_channels": ([6, 4, 5], ["{type: slice, axis: channels, start: 1, stop: 5, step: 2}"]),
    "slice_rows_from_end": ([3, 7, 5], ["{type: slice, axis: rows, start: -4}"]),
    "slice_cols_past_end": ([3, 4, 6], ["{type: slice, axis: -1, start: 1, stop: 99, step: 3}"]),
    "slice_1d": ([4, 11], ["{type: slice, axis: 2, stop: -2, step: 2}"]),
    "slice_vector": ([9], ["{type: slice, start: 3}"]),
    "relu": ([3, 4, 4], ["{type: relu}"]),
    "relu6": ([3, 4, 4], ["{type: relu6}"]),
    "leaky_relu": ([3, 4, 4], ["{type: leaky_relu, alpha: 0.2}"]),
    "prelu_one": ([3, 4, 4], ["{type: prelu}"]),
    "prelu_channels": ([3, 4, 4], ["{type: prelu, num_parameters: 3}"]),
    "prelu_channels_1d": ([3, 7], ["{type: prelu, num_parameters: 3}"]),
    "prelu_vector": ([5], ["{type: prelu, num_parameters: 5}"]),
    "sigmoid": ([3, 4, 4], ["{type: sigmoid}"]),
    "tanh": ([3, 4, 4], ["{type: tanh}"]),
    "silu": ([3, 4, 4], ["{type: silu}"]),
    "mish": ([3, 4, 4], ["{type: mish}"]),
    "hardsigmoid": ([3, 4, 4], ["{type: hardsigmoid}"]),
    "hardswish": ([3, 4, 4], ["{type: hardswish}"]),
    "gelu": ([3, 4, 4], ["{type: gelu}"]),
    "gelu_tanh": ([3, 4, 4], ["{type: gelu, approximate: tanh}"]),
    "softmax": ([5], ["{type: softmax}"]),
    "softmax_last_axis": ([3, 4, 5], ["{type: softmax, axis: -1}"]),
    "softmax_axis2": ([3, 4, 5], ["{type: softmax, axis: 2}"]),
    "dropout": ([3, 4, 4], ["{type: dropout, rate: 0.3}"]),
    "identity": ([3, 4, 4], ["{type: identity}"]),
    "batchnorm": ([3, 4, 4], ["{type: batchnorm, eps: 0.001}"]),
    "batchnorm_1d": ([3, 7], ["{type: batchnorm}"]),
    "batchnorm_vector": ([6], ["{type: batchnorm}"]),
    "lrn": ([7, 4, 4], ["{type: lrn, size: 5, alpha: 0.01, beta: 0.75, k: 2.0}"]),
    "lrn_even": ([7, 4, 4], ["{type: lrn, size: 4, alpha: 0.01, beta: 0.6, k: 1.0}"]),
    "lrn_1d": ([7, 9], ["{type: lrn, size: 3, alpha: 0.01}"]),
    "flatten": ([3, 4, 5], ["{type: flatten}"]),
    "add": ([3, 4, 4], ["{name: a, type: conv2d, filters: 3, kernel: 1}",
                        "{name: sum, type: add, inputs: [a, input]}"]),
    "add_three": ([3, 4, 4], ["{name: a, type: relu}", "{name: b, type: tanh, inputs: [input]}",
                              "{name: sum, type: add, inputs: [a, b, input]}"]),
    "concat": ([3, 4, 4], ["{name: a, type: conv2d, filters: 2, kernel: 1}",
                           "{name: cat, type: concat, inputs: [a, input, a]}"]),
    "concat_last_axis": ([3, 4, 4], ["{name: a, type: relu}",
                                     "{name: cat, type: concat, axis: -1, inputs: [a, input]}"]),
    "locally_connected2d": ([3, 6, 5], ["{type: locally_connected2d, filters: 4, kernel: 3}"]),
    "locally_connected2d_strided": ([2, 7, 6], ["{type: locally_connected2d, filters: 3, "
                                                "kernel: [2, 3], stride: 2, padding: 1, "
                                                "bias: false}"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_exports_as_its_reference_computes(case):
    input_shape, layers = CASES[case]
    assert_export_matches(spec_text(input_shape, layers))


@pytest.mark.parametrize("opset", [13, 18, 20])
@pytest.mark.parametrize("case", ["hardswish", "gelu", "gelu_tanh", "mish", "stats_pool",
                                  "lrn_even", "adaptive_maxpool2d_uneven",
                                  "lppool2d_ceil_overhang"])
def test_opset_dependent_forms(case, opset):
    """Reductions take their axes as an input from opset 18, Gelu is an operator from 20,
    HardSwish from 14, Mish from 18: each form computes the same."""
    input_shape, layers = CASES[case]
    assert_export_matches(spec_text(input_shape, layers), opset=opset)


def own_layer_types() -> dict[str, type]:
    """cnnc's own layer types a spec may write (custom ones other tests load are not)."""
    return {name: cls for name, cls in LAYER_TYPES.items()
            if not cls.internal and cls.__module__.startswith("cnncompiler.")}


def test_every_layer_type_has_an_export_entry():
    missing = [name for name, cls in own_layer_types().items() if find_export(cls) is None]
    assert not missing, (f"layer types without an entry in onnx_export.ONNX_EXPORT: {missing}; "
                         "add one, or no_exact_mapping(reason) where ONNX has no exact form")


def test_every_layer_type_is_exported_by_a_case():
    graphs = [checked(spec_text(*case)) for case in CASES.values()] + [checked(ROI_SPEC)]
    used = {layer_node(graph, name).layer.type_name for graph in graphs for name in graph.nodes}
    missing = sorted(set(own_layer_types()) - used)
    assert not missing, f"no export case for: {missing}"


# -- region-of-interest pooling: a second input, of boxes -----------------------------------------

ROI_SPEC = """\
name: rois
inputs:
  image: [2, 10, 10]
  rois: {shape: [null, 5], batched: false}
layers:
  - {name: c, type: conv2d, filters: 3, kernel: 3, padding: 1}
  - {name: align, type: roi_align, inputs: [c, rois], output_size: [2, 3], spatial_scale: 0.5,
     sampling_ratio: 2, aligned: true}
  - {name: adaptive, type: roi_align, inputs: [c, rois], output_size: 2, spatial_scale: 0.5}
  - {name: negative_ratio, type: roi_align, inputs: [c, rois], output_size: 2, sampling_ratio: -1}
  - {name: pool, type: roi_pool, inputs: [c, rois], output_size: [3, 2], spatial_scale: 0.5}
  - {name: flat, type: flatten}
  - {name: fc, type: dense, units: 4}
outputs: [align, adaptive, negative_ratio, fc]
"""
# boxes of both images, one crossing the border, one smaller than a bin, one whose index
# truncates to 0, and two that name no image of the batch (they pool zeros)
BOXES = np.array([[0, 1, 1, 12, 9], [1, -3, 2, 25, 17], [0.7, 4, 4, 5, 5], [-0.4, 0, 0, 19, 19],
                  [2, 1, 1, 8, 8], [-1.5, 1, 1, 8, 8]], np.float32)


def test_roi_layers_export_with_boxes_outside_the_batch():
    graph = checked(ROI_SPEC)
    image = 2 * np.random.default_rng(0).standard_normal((2, 2, 10, 10))
    feeds = {"image": image.astype(np.float32), "rois": BOXES}
    params, want = calibrated_run(graph, feeds)
    data = onnx_model_bytes(graph, params)
    model = onnx.load_from_string(data)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*model.graph.input, *model.graph.output)}
    assert dims["image"] == ["N", 2, 10, 10] and dims["rois"] == ["R_rois", 5]
    assert dims["align"] == ["R_rois", 3, 2, 3] and dims["fc"] == ["R_rois", 4]
    got = onnx_outputs(data, feeds)
    assert not want["align"][4:].any()
    for name, value in want.items():
        assert_matches(got[name], value, what=name)
    with pytest.raises(ExportError, match=r"layer 'align' \(roi_align\): no exact ONNX mapping "
                                          r"because aligned: true is RoiAlign's half_pixel mode, "
                                          r"from opset 16"):
        onnx_model_bytes(graph, params, opset=15)


# -- the classic networks ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", classic_specs(), ids=lambda p: p.stem)
def test_classic_spec_exports_as_its_reference_computes(path):
    graph, _ = cnncompiler.check(path)
    batch = 2 if np.prod(graph.graph["input_shape"]) < 50_000 else 1
    x = sample(graph, batch)
    params, outputs = calibrated_run(graph, x)
    got = onnx_outputs(onnx_model_bytes(graph, params), x)
    for name, want in outputs.items():
        assert_matches(got[name], want, what=f"{path.stem}: {name}")


# -- the written model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    graph, _ = cnncompiler.check(SPECS / "resnet_tiny.yaml")
    params = init_params(graph, 3)
    return graph, params, onnx.load_from_string(onnx_model_bytes(graph, params))


def test_names_batch_axis_and_checks(tiny):
    graph, params, model = tiny
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, value in params.items():
        np.testing.assert_array_equal(inits[name], value, err_msg=name)
    (x,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim]
    assert dims == ["N", 3, 32, 32]
    assert [o.name for o in model.graph.output] == ["fc"]
    assert "/layer1.0.conv1/Conv" in {n.name for n in model.graph.node}
    onnx.checker.check_model(model, full_check=True)
    for batch in (1, 3):
        x = sample(graph, batch)
        got = onnx_outputs(model.SerializeToString(), x)["fc"]
        assert_matches(got, run_reference(graph, x.astype(np.float64), params)["fc"])


def test_several_outputs_are_graph_outputs():
    text = spec_text([3, 6, 6], ["{name: a, type: conv2d, filters: 2, kernel: 3}",
                                 "{name: b, type: global_avgpool}"]) + "outputs: [a, b]\n"
    graph, data = assert_export_matches(text)
    assert [o.name for o in onnx.load_from_string(data).graph.output] == ["a", "b"]


def test_missing_or_misshapen_weights_are_refused(tiny):
    graph, params, _ = tiny
    with pytest.raises(cnncompiler.CnncError, match="missing weights: conv1.weight"):
        onnx_model_bytes(graph, {k: v for k, v in params.items() if k != "conv1.weight"})
    with pytest.raises(cnncompiler.CnncError, match="weight 'fc.bias' has shape"):
        onnx_model_bytes(graph, {**params, "fc.bias": np.zeros(3, np.float32)})


def test_unsupported_opset_is_refused(tiny):
    graph, params, _ = tiny
    with pytest.raises(ExportError, match="ONNX opset 11 is not supported; expected an integer "
                                          "from 13"):
        onnx_model_bytes(graph, params, opset=11)


def test_a_type_without_an_exact_mapping_refuses_naming_the_layer(monkeypatch):
    from cnncompiler.layers.activation import Tanh

    monkeypatch.setitem(onnx_export.ONNX_EXPORT, Tanh, no_exact_mapping("of a reason"))
    graph = checked(spec_text([3], ["{name: squash, type: tanh}"]))
    with pytest.raises(ExportError, match=r"layer 'squash' \(tanh\): no exact ONNX mapping "
                                          "because of a reason"):
        onnx_model_bytes(graph, init_params(graph))


def test_custom_and_fused_layers_are_refused_by_name():
    from cnncompiler.layers import Pointwise, register
    from cnncompiler.passes import optimize

    @register("onnx_test_softsign")
    class Softsign(Pointwise):
        def forward(self, x, m, arg):
            return x / (1 + m.where(x < 0, -x, x))

    try:
        graph = checked(spec_text([4], ["{name: soft, type: onnx_test_softsign}"]))
        with pytest.raises(ExportError, match=r"layer 'soft' \(onnx_test_softsign\): no ONNX "
                                              "mapping for this layer type"):
            onnx_model_bytes(graph, {})
    finally:
        del LAYER_TYPES["onnx_test_softsign"]
    graph = checked(spec_text([3, 6, 6], ["{name: c, type: conv2d, filters: 2, kernel: 3}",
                                          "{name: r, type: relu}"]))
    fused, _ = optimize(graph)
    with pytest.raises(ExportError, match=r"\(fused\): no ONNX mapping"):
        onnx_model_bytes(fused, init_params(graph))


# -- cnnc export --------------------------------------------------------------------------------------

def cnnc(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_export_with_new_and_given_weights(tmp_path, capsys):
    from cnncompiler.runtime.weights import write_weights

    spec = SPECS / "lenet5.yaml"
    code, out, err = cnnc(capsys, "export", spec, "-o", tmp_path / "new.onnx", "--seed", "4")
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'new.onnx'}: lenet5, 12 layers, ONNX opset 17")
    graph, _ = cnncompiler.check(spec)
    model = onnx.load(tmp_path / "new.onnx")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(inits["c1.weight"], init_params(graph, 4)["c1.weight"])

    params = init_params(graph, 9)
    write_weights(tmp_path / "w.safetensors", params)
    code, _, err = cnnc(capsys, "export", spec, "--weights", tmp_path / "w.safetensors",
                        "-o", tmp_path / "given.onnx", "--opset", "18")
    assert code == 0, err
    model = onnx.load(tmp_path / "given.onnx")
    assert model.opset_import[0].version == 18
    x = sample(graph, 2)
    assert_matches(onnx_outputs(model.SerializeToString(), x)["output"],
                   run_reference(graph, x.astype(np.float64), params)["output"])


def test_cli_export_errors(tmp_path, capsys):
    spec = SPECS / "lenet5.yaml"
    code, _, err = cnnc(capsys, "export", spec, "-o", tmp_path / "net.caffemodel")
    assert code == 1 and "no model format with the suffix '.caffemodel'; cnnc writes ONNX " \
                         "(.onnx)" in err
    code, _, err = cnnc(capsys, "export", "-o", tmp_path / "net.onnx")
    assert code == 1 and "give the spec to export" in err
    code, _, err = cnnc(capsys, "export", spec, "-o", tmp_path / "net.onnx", "--opset", "99")
    assert code == 1 and "ONNX opset 99 is not supported" in err
    code, _, err = cnnc(capsys, "export", spec, "-o", tmp_path / "net.onnx",
                        "--weights", tmp_path / "none.safetensors")
    assert code == 1 and "no weights file at" in err
    assert not (tmp_path / "net.onnx").exists()


def test_export_writes_atomically(tmp_path, tiny):
    graph, params, _ = tiny
    path = export_onnx(graph, params, tmp_path / "tiny.onnx")
    assert path == tmp_path / "tiny.onnx" and onnx.load(path).graph.name == "resnet_tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]

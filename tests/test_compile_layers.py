"""Every layer type, compiled for the CPU over a grid of its parameters, against the numpy
reference and, where PyTorch has the layer, against PyTorch with the same weights.

A family's variants are parallel branches of ONE spec, each reading ``input`` and listed in
``outputs``, so a family costs one compile. The specs are compiled at -O0, so that every layer is
lowered as itself (at -O2 a dropout or a 1x1 pool is removed, a relu fused).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.graph import param_names, topo_layers
from cnncompiler.layers import LAYER_TYPES
from cnncompiler.layers.window import resolve_padding
from cnncompiler.reference import init_params, run_reference

from compile_helpers import as_dict, assert_close, random_boxes, write_spec
from conftest import HAVE_TORCH

if HAVE_TORCH:
    import torch
    import torch.nn.functional as F

pytestmark = pytest.mark.tvm

BATCH = 3


def conv(name, **keys):
    return {"name": name, "type": "conv2d", "filters": 5, "kernel": 3, **keys}


def roi(name, type_name, **keys):
    return {"name": name, "type": type_name, "inputs": ["features", "rois"], **keys}


# family -> (per-sample input shape, or the spec's inputs: mapping, {branch: [layer, ...]}); a
# branch's last layer is its output
FAMILIES = {
    "conv2d": ([4, 11, 10], {
        "k1": [conv("k1", kernel=1)],
        "k3_pad1": [conv("k3_pad1", padding=1)],
        "k3_stride2": [conv("k3_stride2", stride=2)],
        "k5_same": [conv("k5_same", kernel=5, padding="same")],
        "stride2_same": [conv("stride2_same", stride=2, padding="same")],
        "stride_2x1": [conv("stride_2x1", filters=20, stride=[2, 1], padding=1)],
        "rect_kernel": [conv("rect_kernel", kernel=[1, 3], padding=[0, 1])],
        "asym_pad": [conv("asym_pad", padding=[[0, 1], [2, 0]])],
        "valid": [conv("valid", kernel=[2, 4], padding="valid")],
        "dilation2": [conv("dilation2", dilation=2, padding=2)],
        "dilation_2x3_same": [conv("dilation_2x3_same", dilation=[2, 3], padding="same")],
        "groups2": [conv("groups2", filters=6, groups=2)],
        "depthwise": [conv("depthwise", filters=4, groups=4, padding=1)],
        "depthwise_x2_stride2": [conv("depthwise_x2_stride2", filters=8, groups=4, stride=2)],
        "no_bias": [conv("no_bias", bias=False, padding=1)],
        "wide": [conv("wide", filters=33, kernel=1, bias=False)],
        "k1_pad2": [conv("k1_pad2", kernel=1, padding=2)],
        "k1_stride3": [conv("k1_stride3", kernel=1, stride=3)],
        "k2_stride2_same": [conv("k2_stride2_same", filters=16, kernel=2, stride=2,
                                 padding="same")],
    }),
    "conv1d": ([5, 23], {
        "k1": [{"name": "k1", "type": "conv1d", "filters": 4, "kernel": 1}],
        "k3": [{"name": "k3", "type": "conv1d", "filters": 7, "kernel": 3}],
        "k5_dilation2": [{"name": "k5_dilation2", "type": "conv1d", "filters": 4, "kernel": 5,
                          "dilation": 2}],
        "stride2_same": [{"name": "stride2_same", "type": "conv1d", "filters": 4, "kernel": 4,
                          "stride": 2, "padding": "same"}],
        "asym_pad": [{"name": "asym_pad", "type": "conv1d", "filters": 3, "kernel": 3,
                      "padding": [[2, 1]]}],
        "depthwise": [{"name": "depthwise", "type": "conv1d", "filters": 5, "kernel": 3,
                       "groups": 5, "padding": 1, "bias": False}],
        "batchnorm": [{"name": "batchnorm", "type": "batchnorm", "eps": 1e-3}],
    }),
    "dense": ([12], {
        "units5": [{"name": "units5", "type": "dense", "units": 5}],
        "units17_no_bias": [{"name": "units17_no_bias", "type": "dense", "units": 17,
                             "bias": False}],
        "chain": [{"name": "chain_a", "type": "dense", "units": 8},
                  {"name": "chain", "type": "dense", "units": 3}],
        "relu": [{"name": "relu", "type": "relu"}],
        "batchnorm": [{"name": "batchnorm", "type": "batchnorm"}],
        "softmax": [{"name": "softmax", "type": "softmax"}],
        "softmax_last": [{"name": "softmax_last", "type": "softmax", "axis": -1}],
        "flatten_flat": [{"name": "flatten_flat", "type": "flatten"}],
    }),
    "locally_connected2d": ([3, 7, 6], {
        "k3": [{"name": "k3", "type": "locally_connected2d", "filters": 4, "kernel": 3}],
        "k2_stride2": [{"name": "k2_stride2", "type": "locally_connected2d", "filters": 2,
                        "kernel": 2, "stride": 2}],
        "pad1_no_bias": [{"name": "pad1_no_bias", "type": "locally_connected2d", "filters": 3,
                          "kernel": 3, "padding": 1, "bias": False}],
        "rect": [{"name": "rect", "type": "locally_connected2d", "filters": 2,
                  "kernel": [3, 2], "stride": [1, 2]}],
    }),
    "pool2d": ([3, 9, 8], {
        "max_k2": [{"name": "max_k2", "type": "maxpool2d", "kernel": 2}],
        "max_k3_s2": [{"name": "max_k3_s2", "type": "maxpool2d", "kernel": 3, "stride": 2}],
        "max_k3_s2_p1": [{"name": "max_k3_s2_p1", "type": "maxpool2d", "kernel": 3, "stride": 2,
                          "padding": 1}],
        "max_ceil": [{"name": "max_ceil", "type": "maxpool2d", "kernel": 3, "stride": 2,
                      "ceil_mode": True}],
        "max_s1_p1_ceil": [{"name": "max_s1_p1_ceil", "type": "maxpool2d", "kernel": 3,
                            "stride": 1, "padding": 1, "ceil_mode": True}],
        "max_rect": [{"name": "max_rect", "type": "maxpool2d", "kernel": [2, 3],
                      "stride": [1, 2]}],
        "max_k1_s2": [{"name": "max_k1_s2", "type": "maxpool2d", "kernel": 1, "stride": 2}],
        "max_same": [{"name": "max_same", "type": "maxpool2d", "kernel": 3, "stride": 2,
                      "padding": "same"}],
        "avg_k2": [{"name": "avg_k2", "type": "avgpool2d", "kernel": 2}],
        "avg_p1_incl": [{"name": "avg_p1_incl", "type": "avgpool2d", "kernel": 3, "stride": 2,
                         "padding": 1}],
        "avg_p1_excl": [{"name": "avg_p1_excl", "type": "avgpool2d", "kernel": 3, "stride": 2,
                         "padding": 1, "count_include_pad": False}],
        "avg_ceil": [{"name": "avg_ceil", "type": "avgpool2d", "kernel": 3, "stride": 2,
                      "ceil_mode": True}],
        "avg_ceil_p1_excl": [{"name": "avg_ceil_p1_excl", "type": "avgpool2d", "kernel": 3,
                              "stride": 2, "padding": 1, "ceil_mode": True,
                              "count_include_pad": False}],
        "avg_rect": [{"name": "avg_rect", "type": "avgpool2d", "kernel": [3, 2]}],
        "avg_same_excl": [{"name": "avg_same_excl", "type": "avgpool2d", "kernel": 3,
                           "stride": 2, "padding": "same", "count_include_pad": False}],
        "lp2_k2": [{"name": "lp2_k2", "type": "lppool2d", "p": 2, "kernel": 2}],
        "lp2_pad1": [{"name": "lp2_pad1", "type": "lppool2d", "p": 2, "kernel": 3, "stride": 2,
                      "padding": 1}],
        "lp2_ceil": [{"name": "lp2_ceil", "type": "lppool2d", "p": 2, "kernel": 3, "stride": 2,
                      "ceil_mode": True}],
        # p = 3 of a negative mean has no real root (NaN in PyTorch too): pool positive values
        "lp3_positive": [{"name": "lp3_pos_in", "type": "sigmoid"},
                         {"name": "lp3_positive", "type": "lppool2d", "p": 3, "kernel": 3,
                          "stride": 2}],
        # padding past half the kernel (as ONNX): windows that see one input, or two
        "max_k3_p2": [{"name": "max_k3_p2", "type": "maxpool2d", "kernel": 3, "stride": 2,
                       "padding": 2}],
        "avg_k4_p3_ceil": [{"name": "avg_k4_p3_ceil", "type": "avgpool2d", "kernel": 4,
                            "stride": 3, "padding": [[3, 1], [2, 3]], "ceil_mode": True}],
        "avg_k3_p2_excl": [{"name": "avg_k3_p2_excl", "type": "avgpool2d", "kernel": 3,
                            "stride": 1, "padding": [2, 1], "count_include_pad": False}],
        # odd p of signed values: the norm, |x|
        "lp1_p2": [{"name": "lp1_p2", "type": "lppool2d", "p": 1, "kernel": 3, "padding": 2}],
        "lp3_signed": [{"name": "lp3_signed", "type": "lppool2d", "p": 3, "kernel": 2}],
        "global_avg": [{"name": "global_avg", "type": "global_avgpool"}],
        "global_max": [{"name": "global_max", "type": "global_maxpool"}],
        "adaptive_avg_4x3": [{"name": "adaptive_avg_4x3", "type": "adaptive_avgpool2d",
                              "output_size": [4, 3]}],
        "adaptive_avg_up": [{"name": "adaptive_avg_up", "type": "adaptive_avgpool2d",
                             "output_size": [12, 10]}],
        "adaptive_avg_same": [{"name": "adaptive_avg_same", "type": "adaptive_avgpool2d",
                               "output_size": [9, 8]}],
        "adaptive_max_5": [{"name": "adaptive_max_5", "type": "adaptive_maxpool2d",
                            "output_size": 5}],
        "adaptive_max_up": [{"name": "adaptive_max_up", "type": "adaptive_maxpool2d",
                             "output_size": [11, 3]}],
        "blur_k3_reflect": [{"name": "blur_k3_reflect", "type": "blurpool2d"}],
        "blur_k5_zero": [{"name": "blur_k5_zero", "type": "blurpool2d", "kernel": 5,
                          "pad_mode": "zero"}],
        "blur_k4_s1": [{"name": "blur_k4_s1", "type": "blurpool2d", "kernel": 4, "stride": 1}],
        "blur_k1_s3": [{"name": "blur_k1_s3", "type": "blurpool2d", "kernel": 1, "stride": 3}],
        "blur_k2_zero": [{"name": "blur_k2_zero", "type": "blurpool2d", "kernel": 2,
                          "pad_mode": "zero"}],
        "blur_k7": [{"name": "blur_k7", "type": "blurpool2d", "kernel": 7}],
        "upsample2": [{"name": "upsample2", "type": "upsample"}],
        "upsample_3x1": [{"name": "upsample_3x1", "type": "upsample", "scale": [3, 1]}],
        "upsample_then_max": [{"name": "upsample_then_max_a", "type": "upsample", "scale": 2},
                              {"name": "upsample_then_max", "type": "maxpool2d", "kernel": 3,
                               "stride": 2}],
        "slice_channels": [{"name": "slice_channels", "type": "slice", "start": 1, "stop": 4}],
        "slice_rows_step": [{"name": "slice_rows_step", "type": "slice", "axis": "rows",
                             "start": -6, "step": 2}],
        "slice_cols_then_add": [{"name": "slice_cols_a", "type": "slice", "axis": "cols",
                                 "start": 1, "stop": 5},
                                {"name": "slice_cols_b", "type": "slice", "axis": "cols",
                                 "stop": 4, "inputs": ["input"]},
                                {"name": "slice_cols_then_add", "type": "add",
                                 "inputs": ["slice_cols_a", "slice_cols_b"]}],
    }),
    "pool1d": ([3, 17], {
        "max_k3_s2": [{"name": "max_k3_s2", "type": "maxpool1d", "kernel": 3, "stride": 2}],
        "max_p1_ceil": [{"name": "max_p1_ceil", "type": "maxpool1d", "kernel": 4, "stride": 3,
                         "padding": 1, "ceil_mode": True}],
        "avg_k3": [{"name": "avg_k3", "type": "avgpool1d", "kernel": 3}],
        "avg_p1_excl": [{"name": "avg_p1_excl", "type": "avgpool1d", "kernel": 3, "stride": 2,
                         "padding": 1, "count_include_pad": False}],
        "avg_ceil": [{"name": "avg_ceil", "type": "avgpool1d", "kernel": 2, "stride": 3,
                      "ceil_mode": True}],
        "lp2": [{"name": "lp2", "type": "lppool1d", "p": 2, "kernel": 3}],
        "lp2_ceil": [{"name": "lp2_ceil", "type": "lppool1d", "p": 2, "kernel": 4, "stride": 3,
                      "ceil_mode": True}],
        "max_k4_p3": [{"name": "max_k4_p3", "type": "maxpool1d", "kernel": 4, "stride": 3,
                       "padding": [[3, 2]], "ceil_mode": True}],
        "avg_k3_p2": [{"name": "avg_k3_p2", "type": "avgpool1d", "kernel": 3, "stride": 2,
                       "padding": 2}],
        "lp3_p2_signed": [{"name": "lp3_p2_signed", "type": "lppool1d", "p": 3, "kernel": 3,
                           "stride": 2, "padding": 2}],
        "global_avg": [{"name": "global_avg", "type": "global_avgpool"}],
        "global_max": [{"name": "global_max", "type": "global_maxpool"}],
        "stats": [{"name": "stats", "type": "stats_pool"}],
        "stats_eps": [{"name": "stats_eps", "type": "stats_pool", "eps": 0.5}],
        "lrn": [{"name": "lrn", "type": "lrn", "size": 3, "alpha": 0.5}],
    }),
    "elementwise": ([6, 5, 4], {
        "relu": [{"name": "relu", "type": "relu"}],
        "leaky_relu": [{"name": "leaky_relu", "type": "leaky_relu", "alpha": 0.2}],
        "leaky_relu_default": [{"name": "leaky_relu_default", "type": "leaky_relu"}],
        "sigmoid": [{"name": "sigmoid", "type": "sigmoid"}],
        "tanh": [{"name": "tanh", "type": "tanh"}],
        "relu6": [{"name": "relu6", "type": "relu6"}],
        "hardsigmoid": [{"name": "hardsigmoid", "type": "hardsigmoid"}],
        "hardswish": [{"name": "hardswish", "type": "hardswish"}],
        "silu": [{"name": "silu", "type": "silu"}],
        "mish": [{"name": "mish", "type": "mish"}],
        "gelu": [{"name": "gelu", "type": "gelu"}],
        "gelu_tanh": [{"name": "gelu_tanh", "type": "gelu", "approximate": "tanh"}],
        "prelu": [{"name": "prelu", "type": "prelu"}],
        "prelu_channels": [{"name": "prelu_channels", "type": "prelu", "num_parameters": 6,
                            "init": -0.5}],
        "softmax": [{"name": "softmax", "type": "softmax"}],
        "softmax_last": [{"name": "softmax_last", "type": "softmax", "axis": -1}],
        "softmax_rows": [{"name": "softmax_rows", "type": "softmax", "axis": 2}],
        "batchnorm": [{"name": "batchnorm", "type": "batchnorm", "eps": 1e-3}],
        "lrn5": [{"name": "lrn5", "type": "lrn", "size": 5, "alpha": 0.5, "beta": 0.75,
                  "k": 2.0}],
        "lrn2": [{"name": "lrn2", "type": "lrn", "size": 2, "alpha": 1.0, "k": 1.0}],
        "lrn_wide": [{"name": "lrn_wide", "type": "lrn", "size": 9, "alpha": 0.3}],
        "dropout": [{"name": "dropout", "type": "dropout", "rate": 0.5}],
        "identity": [{"name": "identity", "type": "identity"}],
        "flatten": [{"name": "flatten", "type": "flatten"}],
        "add2": [{"name": "add2_a", "type": "tanh"},
                 {"name": "add2", "type": "add", "inputs": ["input", "add2_a"]}],
        "add3": [{"name": "add3_a", "type": "relu"}, {"name": "add3_b", "type": "sigmoid",
                                                      "inputs": ["input"]},
                 {"name": "add3", "type": "add", "inputs": ["input", "add3_a", "add3_b"]}],
        "add_self": [{"name": "add_self", "type": "add", "inputs": ["input", "input"]}],
        "concat_channels": [{"name": "concat_a", "type": "relu"},
                            {"name": "concat_channels", "type": "concat",
                             "inputs": ["input", "concat_a", "input"]}],
        "concat_rows": [{"name": "concat_rows", "type": "concat", "axis": 2,
                         "inputs": ["input", "input"]}],
        "concat_last": [{"name": "concat_last_a", "type": "maxpool2d", "kernel": [1, 2]},
                        {"name": "concat_last", "type": "concat", "axis": -1,
                         "inputs": ["input", "concat_last_a"]}],
        "concat_one": [{"name": "concat_one", "type": "concat", "inputs": ["input"]}],
    }),
    # feature maps at a quarter of the image's size, boxes in image coordinates
    "roi": ({"features": [3, 9, 11], "rois": {"shape": [None, 5], "batched": False}}, {
        "pool": [roi("pool", "roi_pool", output_size=3, spatial_scale=0.25)],
        "pool_rect": [roi("pool_rect", "roi_pool", output_size=[2, 4], spatial_scale=1.0)],
        "align": [roi("align", "roi_align", output_size=2, spatial_scale=0.25)],
        "align_aligned": [roi("align_aligned", "roi_align", output_size=[3, 2],
                              spatial_scale=0.25, sampling_ratio=2, aligned=True)],
        "align_one_sample": [roi("align_one_sample", "roi_align", output_size=2,
                                 spatial_scale=0.0625, sampling_ratio=1, aligned=True)],
        "align_then_dense": [roi("pooled", "roi_align", output_size=2, spatial_scale=0.25),
                             {"name": "flat", "type": "flatten"},
                             {"name": "align_then_dense", "type": "dense", "units": 4}],
    }),
}
BOXES = 7

CASES = [(family, branch) for family, (_, branches) in FAMILIES.items() for branch in branches]


def family_spec(family: str) -> str:
    shape, branches = FAMILIES[family]
    inputs = f"inputs: {json.dumps(shape)}" if isinstance(shape, dict) else \
        f"input: {json.dumps(shape)}"
    lines = [f"name: {family}_family", inputs, "layers:"]
    first = next(iter(shape)) if isinstance(shape, dict) else "input"
    for layers in branches.values():
        for i, layer in enumerate(layers):
            layer = dict(layer)
            if i == 0:
                layer.setdefault("inputs", [first])
            lines.append(f"  - {json.dumps(layer)}")
    lines.append(f"outputs: {json.dumps([layers[-1]['name'] for layers in branches.values()])}")
    return "\n".join(lines) + "\n"


def test_every_layer_type_is_compiled():
    used = {layer["type"] for _, branches in FAMILIES.values()
            for layers in branches.values() for layer in layers}
    spec_types = {name for name, cls in LAYER_TYPES.items()
                  if not cls.internal and cls.__module__.startswith("cnncompiler.")}
    assert spec_types - used == set(), "add the new layer types to FAMILIES"


def random_params(g, seed: int) -> dict:
    """Default weights, with batch-norm statistics and affine terms drawn at random."""
    params = init_params(g, seed)
    rng = np.random.default_rng(seed)
    ranges = {"weight": (0.5, 1.5), "bias": (-0.5, 0.5), "running_mean": (-0.5, 0.5),
              "running_var": (0.5, 2.0)}
    for name in topo_layers(g):
        if g.nodes[name]["layer"].type_name == "batchnorm":
            for local, glob in param_names(g, name).items():
                params[glob] = rng.uniform(*ranges[local], params[glob].shape).astype(np.float32)
    return params


class Family:
    """A family's spec compiled once, run on one batch; its reference and torch outputs."""

    def __init__(self, family: str, directory):
        self.model = cc.compile(write_spec(directory, family, family_spec(family)),
                                opt_level=0)
        g = self.model.graph
        self.params = random_params(g, seed=len(family))
        self.model.load_params(self.params)
        rng = np.random.default_rng(1)
        xs = {name: family_input(g, name, rng) for name in g.graph["inputs"]}
        self.x = xs["input"] if list(xs) == ["input"] else xs
        self.got = as_dict(self.model.predict(self.x), self.model.output_names)
        self.want = run_reference(g, {k: v.astype(np.float64) for k, v in xs.items()},
                                  self.params)
        # PyTorch's RoI layers are torchvision's, which does not load with the CPU torch
        self.torch = torch_outputs(g, self.x, self.params) if HAVE_TORCH and \
            list(xs) == ["input"] else {}


def family_input(g, name: str, rng) -> np.ndarray:
    """A batch for a batched input; boxes for the RoI family: in image coordinates, four
    times the feature maps', some crossing the border, some smaller than a bin."""
    node = g.nodes[name]
    if node["layer"].batched:
        return rng.standard_normal((BATCH, *node["shape"])).astype(np.float32)
    return random_boxes(rng, BOXES, BATCH, (-6.0, 40.0), (0.5, 30.0)).astype(np.float32)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    made = {}

    def get(family: str) -> Family:
        if family not in made:
            made[family] = Family(family, tmp_path_factory.mktemp(family))
        return made[family]

    return get


@pytest.mark.parametrize("family,branch", CASES, ids=[f"{f}-{b}" for f, b in CASES])
def test_compiled_layer_matches_reference(families, family, branch):
    fam = families(family)
    assert_close(fam.got[branch], fam.want[branch], what=f"{family}/{branch} vs numpy")


@pytest.mark.torch
@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("family,branch", CASES, ids=[f"{f}-{b}" for f, b in CASES])
def test_compiled_layer_matches_torch(families, family, branch):
    fam = families(family)
    want = fam.torch.get(branch)
    if want is None:
        pytest.skip(f"PyTorch has no layer for {family}/{branch}")
    assert_close(fam.got[branch], want, what=f"{family}/{branch} vs torch")


@pytest.mark.parametrize("family", ["conv2d", "pool1d"])
def test_any_batch_size_runs(families, family):
    """``main`` has a symbolic batch axis: one sample and five give the same per-sample
    results as the batch of three."""
    fam = families(family)
    for n in (1, 5):
        x = np.ascontiguousarray(np.resize(fam.x, (n, *fam.x.shape[1:])))
        got = as_dict(fam.model.predict(x), fam.model.output_names)
        for name, y in got.items():
            assert y.shape[0] == n
            assert_close(y[: min(n, BATCH)], fam.got[name][: min(n, BATCH)], rtol=1e-5,
                         what=f"{family}/{name} batch {n}")


EDGE_OUTPUTS = """
name: edge
input: [2, 4, 4]
layers:
  - {name: c, type: conv2d, filters: 2, kernel: 1}
  - {name: d, type: dropout}
  - {name: i, type: identity, inputs: [input]}
outputs: [c, d, i]
"""


@pytest.mark.parametrize("level", [0, 2])
def test_outputs_that_passes_merge_still_come_back_by_name(tmp_path, level):
    """At -O2 the dropout and the identity go: 'd' is 'c' and 'i' is the input itself."""
    model = cc.compile(write_spec(tmp_path, "edge", EDGE_OUTPUTS), opt_level=level)
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    y = model.predict(x)
    assert list(y) == ["c", "d", "i"]
    want = run_reference(model.graph, x, model.params)
    assert_close(y["c"], want["c"])
    np.testing.assert_array_equal(y["d"], y["c"])
    np.testing.assert_array_equal(y["i"], x)
    assert not np.shares_memory(y["i"], x)


# -- PyTorch, layer by layer ----------------------------------------------------------------------

def _same_pads(sizes, kernel, stride, dilation):
    """TensorFlow's 'same' (odd total padding at the end), written out independently."""
    pads = []
    for w, k, s, d in zip(sizes, kernel, stride, dilation):
        total = max((math.ceil(w / s) - 1) * s + d * (k - 1) + 1 - w, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _explicit_pads(layer, x, dilation=None):
    sizes = list(x.shape[2:])
    dilation = dilation or (1,) * len(sizes)
    if layer.padding == "same":
        return _same_pads(sizes, layer.kernel, layer.stride, dilation)
    return resolve_padding(layer.padding, sizes, layer.kernel, layer.stride, dilation)


def _torch_pad(pads):
    flat = []
    for before, after in reversed(list(pads)):
        flat += [before, after]
    return flat


def _symmetric(pads):
    return all(b == a for b, a in pads)


def torch_layer(layer, xs, p):
    """The layer in PyTorch (float64), or None where PyTorch has no such layer."""
    t = layer.type_name
    x = xs[0]
    if t in ("conv2d", "conv1d"):
        fn = F.conv2d if t == "conv2d" else F.conv1d
        x = F.pad(x, _torch_pad(_explicit_pads(layer, x, layer.dilation)))
        return fn(x, p["weight"], p.get("bias"), layer.stride, 0, layer.dilation, layer.groups)
    if t == "dense":
        return F.linear(x, p["weight"], p.get("bias"))
    if t == "locally_connected2d":
        x = F.pad(x, _torch_pad(_explicit_pads(layer, x)))
        cols = F.unfold(x, layer.kernel, stride=layer.stride)  # N, C*kh*kw, L
        oh, ow, f = p["weight"].shape[:3]
        w = p["weight"].reshape(oh * ow, f, -1)
        y = torch.einsum("nkl,lfk->nfl", cols, w).reshape(x.shape[0], f, oh, ow)
        return y + p["bias"][None] if "bias" in p else y
    if t in ("maxpool2d", "maxpool1d", "avgpool2d", "avgpool1d"):
        pads = _explicit_pads(layer, x)
        if not _symmetric(pads) or any(2 * b > k for (b, _), k in zip(pads, layer.kernel)):
            return None  # PyTorch's padding is symmetric, at most half the kernel
        nd = 2 if t.endswith("2d") else 1
        padding = tuple(b for b, _ in pads)
        if t.startswith("max"):
            fn = F.max_pool2d if nd == 2 else F.max_pool1d
            return fn(x, layer.kernel, layer.stride, padding, ceil_mode=layer.ceil_mode)
        fn = F.avg_pool2d if nd == 2 else F.avg_pool1d
        return fn(x, layer.kernel, layer.stride, padding, ceil_mode=layer.ceil_mode,
                  count_include_pad=layer.count_include_pad)
    if t in ("lppool2d", "lppool1d"):
        if any(p != (0, 0) for p in _explicit_pads(layer, x)):
            return None  # PyTorch's LPPool has no padding
        fn = F.lp_pool2d if t == "lppool2d" else F.lp_pool1d
        kernel = layer.kernel if t == "lppool2d" else layer.kernel[0]
        stride = layer.stride if t == "lppool2d" else layer.stride[0]
        # the norm: PyTorch's LPPool of |x| (its own leaves the sign, for odd p)
        return fn(x.abs(), layer.p, kernel, stride, ceil_mode=layer.ceil_mode)
    if t == "adaptive_avgpool2d":
        return F.adaptive_avg_pool2d(x, layer.output_size)
    if t == "adaptive_maxpool2d":
        return F.adaptive_max_pool2d(x, layer.output_size)
    if t == "stats_pool":
        return torch.cat([x.mean(2), torch.sqrt(x.var(2, unbiased=False) + layer.eps)], 1)
    if t == "global_avgpool":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    if t == "global_maxpool":
        return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)
    simple = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
              "dropout": lambda v: v, "identity": lambda v: v,
              "flatten": lambda v: torch.flatten(v, 1)}
    if t in simple:
        return simple[t](x)
    if t == "leaky_relu":
        return F.leaky_relu(x, layer.alpha)
    newer = {"relu6": F.relu6, "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish,
             "silu": F.silu, "mish": F.mish}
    if t in newer:
        return newer[t](x)
    if t == "gelu":
        return F.gelu(x, approximate=layer.approximate)
    if t == "prelu":
        return F.prelu(x, p["weight"])
    if t == "softmax":
        return torch.softmax(x, dim=layer.axis)
    if t == "batchnorm":
        return F.batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"],
                            training=False, eps=layer.eps)
    if t == "lrn":
        return F.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)
    if t == "add":
        return sum(xs[1:], xs[0])
    if t == "concat":
        return torch.cat(xs, dim=layer.axis)
    if t == "upsample":
        return F.interpolate(x, scale_factor=layer.scale, mode="nearest")
    if t == "slice":  # torch's own indexing, x[:, start:stop:step] on the layer's axis
        index = [slice(None)] * x.ndim
        index[layer.sample_axis(x.ndim - 1) + 1] = slice(layer.start, layer.stop, layer.step)
        return x[tuple(index)]
    if t == "blurpool2d":  # a depthwise conv with the binomial filter, after padding
        k = layer.kernel
        row = torch.tensor([math.comb(k - 1, i) for i in range(k)], dtype=x.dtype)
        w = torch.outer(row, row) / row.sum() ** 2
        pad = [(k - 1) // 2, k // 2] * 2
        x = F.pad(x, pad, mode="reflect") if layer.pad_mode == "reflect" else F.pad(x, pad)
        c = x.shape[1]
        return F.conv2d(x, w.expand(c, 1, k, k), stride=layer.stride, groups=c)
    return None


def torch_outputs(g, x, params) -> dict:
    """The graph run layer by layer in PyTorch; an output is None if a layer on its way has no
    PyTorch equivalent."""
    values = {"input": torch.from_numpy(x.astype(np.float64))}
    for name in topo_layers(g):
        if name == "input":
            continue
        node = g.nodes[name]
        xs = [values[s] for s in node["inputs"]]
        if any(v is None for v in xs):
            values[name] = None
            continue
        p = {local: torch.from_numpy(np.asarray(params[glob], np.float64))
             for local, glob in param_names(g, name).items()}
        values[name] = torch_layer(node["layer"], xs, p)
    return {o: None if values[o] is None else values[o].numpy() for o in g.graph["outputs"]}

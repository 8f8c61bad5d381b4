"""cnnc's own CPU schedules (backends/cpu) against the numpy reference.

Every kernel kind the CPU plan chooses (blocked conv 1-D and 2-D, strided, dilated, grouped,
depthwise; dense; pools; element-wise; the layout conversions at the boundaries) is compiled
over a grid of parameters, channel counts that the vector block does not divide among them,
and run through ``main`` (symbolic batch) and ``main_b<N>``. A family's cases are branches of
one spec, so a family costs one compile; each case also checks the plan picked the kernel kind
it is meant to exercise (a silent fall back to the generic schedule would still be correct,
and slow). The scheduled kernels are checked to be scheduled: parallel and vector loops.
No timing here: that is benchmarks/run.py's job.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from cnncompiler.graph.layouts import apply_layout, layout_shape

from compile_helpers import assert_close

tvm = pytest.importorskip("tvm")

pytestmark = pytest.mark.tvm

LANES = 16  # AVX-512's float32 vector: the layouts below do not depend on the host having it


def conv(name, filters, **keys):
    return {"name": name, "type": "conv2d", "filters": filters, "kernel": 3, **keys}


def conv1d(name, filters, **keys):
    return {"name": name, "type": "conv1d", "filters": filters, "kernel": 3, **keys}


def bn(name):
    return {"name": name, "type": "batchnorm"}


def act(name, kind="relu", **keys):
    return {"name": name, "type": kind, **keys}


# family -> (input shape, stem layers or [], {case: (layers, expected kernel kind of the last)})
# Each case's layers read the stem's last layer (or the input); the case's last layer is an
# output. 'kind' is the plan's kernel kind for that layer.
FAMILIES = {
    "conv2d_plain_input": ([3, 11, 10], [], {
        "k3_pad1": ([conv("k3_pad1", 16, padding=1)], "conv"),
        # fewer filters than lanes on a 10-wide map: the output columns fill the lanes
        "k1_odd": ([conv("k1_odd", 5, kernel=1)], "plain_conv"),
        "k5_stride2": ([conv("k5_stride2", 20, kernel=5, stride=2, padding=2)], "conv"),
        "dilation2": ([conv("dilation2", 24, dilation=2, padding=2)], "conv"),
        "rect_stride_2x1": ([conv("rect_stride_2x1", 17, kernel=[1, 3], stride=[2, 1],
                                  padding=[0, 1])], "conv"),
        "asym_pad_no_bias": ([conv("asym_pad_no_bias", 33, padding=[[0, 1], [2, 0]],
                                   bias=False)], "conv"),
        "same": ([conv("same", 16, kernel=4, padding="same")], "conv"),
    }),
    # fewer filters than lanes on a plain input: vectorized along the output rows, plain output
    "plain_conv": ([2, 13, 12], [], {
        "lenet_tanh": ([conv("lenet_conv", 6, kernel=5), act("lenet_tanh", "tanh")],
                       "plain_conv"),
        "pad_dilation": ([conv("pad_dilation", 5, dilation=2, padding=[[1, 2], [0, 3]])],
                         "plain_conv"),
        "rows_stride2_bn": ([conv("rows_conv", 7, stride=[2, 1], padding=1, bias=False),
                             bn("rows_bn"), act("rows_stride2_bn")], "plain_conv"),
        "residual": ([conv("res_conv", 2, padding=1),
                      {"name": "residual", "type": "add", "inputs": ["res_conv", "input"]}],
                     "plain_conv"),
        # its columns are not contiguous in the input: the blocked kernel
        "columns_stride2": ([conv("columns_stride2", 6, stride=2, padding=1)], "conv"),
        # the next conv reads the plain output (through a pool) as it reads a model's input
        "then_conv": ([conv("first", 4, padding=1), act("first_relu"),
                       {"name": "first_pool", "type": "maxpool2d", "kernel": 2},
                       conv("then_conv", 16, padding=1)], "conv"),
    }),
    "plain_conv1d": ([3, 70], [], {
        # 68 output columns are 5 vectors, more than one register tile: the blocked kernel
        "wide": ([conv1d("wide", 4)], "conv"),
        "k7_dilation2": ([conv1d("k7_dilation2", 4, kernel=7, dilation=2)], "plain_conv"),
    }),
    # weights per output position: on the blocked stem (20 channels, a padded block) and on
    # the plain input; with padding, strides, no bias
    "locally_connected": ([3, 9, 8], [conv("stem", 20, padding=1)], {
        "k3": ([{"name": "k3", "type": "locally_connected2d", "filters": 24, "kernel": 3}],
               "locally_connected"),
        "pad1_stride2_no_bias": ([{"name": "pad1_stride2_no_bias",
                                   "type": "locally_connected2d", "filters": 16, "kernel": 3,
                                   "stride": 2, "padding": 1, "bias": False}],
                                 "locally_connected"),
        "rect": ([{"name": "rect", "type": "locally_connected2d", "filters": 5,
                   "kernel": [2, 3], "stride": [1, 2]}], "locally_connected"),
        "plain_input": ([{"name": "plain_input", "type": "locally_connected2d", "filters": 7,
                          "kernel": 3, "inputs": ["input"]}], "locally_connected"),
    }),
    # the stem writes 20 channels blocked by 16: two blocks, the second half padding
    "conv2d_blocked_input": ([3, 12, 9], [conv("stem", 20, padding=1)], {
        "k3": ([conv("k3", 16, padding=1)], "conv"),
        "k1_stride2": ([conv("k1_stride2", 40, kernel=1, stride=2)], "conv"),
        "k3_stride2_valid": ([conv("k3_stride2_valid", 7)], "conv"),
        "dilation_2x3": ([conv("dilation_2x3", 32, dilation=[2, 3], padding="same")], "conv"),
        "k5": ([conv("k5", 48, kernel=5, padding=2, bias=False)], "conv"),
        "chain": ([conv("chain_a", 24, padding=1), conv("chain", 16, kernel=1)], "conv"),
    }),
    "conv2d_groups": ([3, 10, 10], [conv("stem", 32, padding=1)], {
        "groups2": ([conv("groups2", 32, groups=2, padding=1)], "conv"),
        "groups2_wide": ([conv("groups2_wide", 64, groups=2, stride=2)], "conv"),
        "depthwise": ([conv("depthwise", 32, groups=32, padding=1, bias=False)], "depthwise"),
        "depthwise_s2_dil2": ([conv("depthwise_s2_dil2", 32, groups=32, stride=2, dilation=2,
                                    padding=2)], "depthwise"),
        "depthwise_k5_bn_relu": ([conv("depthwise_k5", 32, groups=32, kernel=5, padding=2,
                                       bias=False), bn("dw_bn"), act("depthwise_k5_bn_relu")],
                                 "depthwise"),
        # 8 input channels per group is less than a block: the input is read plain
        "groups4": ([conv("groups4", 32, groups=4, padding=1)], "conv"),
        "groups8_stride2": ([conv("groups8_stride2", 32, groups=8, stride=2)], "conv"),
        # a channel multiplier: the input's channels repeated, then the depthwise kernel
        "depthwise_x2": ([conv("depthwise_x2", 64, groups=32, padding=1)],
                         "depthwise_multiplier"),
        "depthwise_x3_s2_relu": ([conv("dw_x3", 96, groups=32, kernel=5, stride=2,
                                       padding=2), act("depthwise_x3_s2_relu")],
                                 "depthwise_multiplier"),
    }),
    "conv2d_odd_depthwise": ([3, 9, 9], [conv("stem", 20, padding=1)], {
        "depthwise_20": ([conv("depthwise_20", 20, groups=20, padding=1)], "depthwise"),
        # 20 channels (a padded block) each repeated twice: 40 channels in three blocks
        "depthwise_20_x2": ([conv("depthwise_20_x2", 40, groups=20, padding=1)],
                            "depthwise_multiplier"),
        "then_conv": ([conv("dw", 20, groups=20, padding=1), act("dw_relu"),
                       conv("then_conv", 8, kernel=1)], "conv"),
    }),
    "conv1d": ([6, 29], [conv1d("stem", 24, padding=1)], {
        "k3": ([conv1d("k3", 16)], "conv"),
        "k5_dilation3": ([conv1d("k5_dilation3", 32, kernel=5, dilation=3, padding=6)], "conv"),
        "stride2_same": ([conv1d("stride2_same", 20, kernel=4, stride=2, padding="same")],
                         "conv"),
        "k1": ([conv1d("k1", 48, kernel=1, bias=False)], "conv"),
        "depthwise": ([conv1d("depthwise", 24, groups=24, padding=1)], "depthwise"),
        "plain_input": ([], None),
        "bn_relu_pool": ([bn("c_bn"), act("c_relu"),
                          {"name": "bn_relu_pool", "type": "maxpool1d", "kernel": 3,
                           "stride": 2}], "pool"),
        "avgpool1d": ([{"name": "avgpool1d", "type": "avgpool1d", "kernel": 2}], "pool"),
        "lppool1d": ([{"name": "lppool1d", "type": "lppool1d", "p": 2, "kernel": 3,
                       "stride": 2, "ceil_mode": True}], "pool"),
        "global": ([{"name": "global", "type": "global_avgpool"}], "global_pool"),
    }),
    "epilogues": ([5, 8, 8], [conv("stem", 24, padding=1)], {
        "bn_relu": ([conv("c_bn_relu", 32, padding=1, bias=False), bn("bn1"),
                     act("bn_relu")], "conv"),
        "residual": ([conv("res_conv", 24, padding=1, bias=False), bn("res_bn"),
                      {"name": "res_add", "type": "add", "inputs": ["res_bn", "stem"]},
                      act("residual")], "conv"),
        "tanh": ([conv("tanh_conv", 16, padding=1), act("tanh", "tanh")], "conv"),
        "sigmoid": ([conv("sig_conv", 20, padding=1), act("sigmoid", "sigmoid")], "conv"),
        "leaky": ([conv("leaky_conv", 16), act("leaky", "leaky_relu", alpha=0.2)], "conv"),
        "relu_then_bn": ([conv("rb_conv", 16, padding=1), act("rb_relu"), bn("relu_then_bn")],
                         "conv"),
    }),
    # a pool that alone reads a conv is computed by the conv's kernel (the pool: 'absorbed');
    # bands of pool rows whose windows overlap, or not, padded or not
    "conv_pool": ([3, 29, 26], [], {
        "stem_max": ([conv("stem", 24, kernel=7, stride=2, padding=3, bias=False),
                      bn("stem_bn"), act("stem_relu"),
                      {"name": "stem_max", "type": "maxpool2d", "kernel": 3, "stride": 2,
                       "padding": 1}], "absorbed"),
        "avg_ceil": ([conv("avg_conv", 16, padding=1),
                      {"name": "avg_ceil", "type": "avgpool2d", "kernel": 2, "stride": 2,
                       "ceil_mode": True}], "absorbed"),
        "max_s1_tanh": ([conv("max_s1_conv", 20, kernel=5, padding=2),
                         act("max_s1_act", "tanh"),
                         {"name": "max_s1_tanh", "type": "maxpool2d", "kernel": 3, "stride": 1,
                          "padding": 1}], "absorbed"),
        "lp_rect": ([conv("lp_conv", 18, kernel=[3, 1], padding=[1, 0]),
                     {"name": "lp_rect", "type": "lppool2d", "p": 2, "kernel": [3, 2],
                      "stride": [2, 2]}], "absorbed"),
        # the conv's output is read by the add too: it is written out, the pool its own kernel
        "read_twice": ([conv("twice", 16, padding=1),
                        {"name": "twice_pool", "type": "maxpool2d", "kernel": 3, "stride": 1,
                         "padding": 1},
                        {"name": "read_twice", "type": "add", "inputs": ["twice_pool", "twice"]}],
                       "elementwise"),
    }),
    # a 2 x 2 stride-2 pool of a Winograd conv's output (F(4x4) at 24 x 20, F(2x2) at 22 x 18)
    "winograd_pool": ([3, 24, 20], [conv("stem", 32, padding=1)], {
        "f4_max": ([conv("f4_conv", 40, padding=1, bias=False), bn("f4_bn"), act("f4_relu"),
                    {"name": "f4_max", "type": "maxpool2d", "kernel": 2}], "absorbed"),
        "f2_avg": ([conv("f2_conv", 32), {"name": "f2_avg", "type": "avgpool2d", "kernel": 2}],
                   "absorbed"),
        # windows that overlap: the Winograd kernel writes its output, the pool reads it
        "f4_k3": ([conv("f4_k3_conv", 32, padding=1),
                   {"name": "f4_k3", "type": "maxpool2d", "kernel": 3, "stride": 2}], "pool"),
    }),
    "pools": ([3, 15, 14], [conv("stem", 20, padding=1), act("stem_relu")], {
        "max_k3_s2_p1": ([{"name": "max_k3_s2_p1", "type": "maxpool2d", "kernel": 3,
                           "stride": 2, "padding": 1}], "pool"),
        "max_ceil": ([{"name": "max_ceil", "type": "maxpool2d", "kernel": 3, "stride": 2,
                       "ceil_mode": True}], "pool"),
        # GoogLeNet's branch pool: two passes, the padding read through bounds tests
        "max_k3_s1_p1": ([{"name": "max_k3_s1_p1", "type": "maxpool2d", "kernel": 3,
                           "stride": 1, "padding": 1}], "pool"),
        "max_rect": ([{"name": "max_rect", "type": "maxpool2d", "kernel": [2, 3],
                       "stride": [1, 2]}], "pool"),
        "avg_k2": ([{"name": "avg_k2", "type": "avgpool2d", "kernel": 2}], "pool"),
        "avg_excl": ([{"name": "avg_excl", "type": "avgpool2d", "kernel": 3, "stride": 2,
                       "padding": 1, "count_include_pad": False}], "pool"),
        "avg_ceil_excl": ([{"name": "avg_ceil_excl", "type": "avgpool2d", "kernel": 3,
                            "stride": 2, "padding": 1, "ceil_mode": True,
                            "count_include_pad": False}], "pool"),
        # padding past half the kernel, up to kernel - 1 (ONNX's rule)
        "max_k3_p2": ([{"name": "max_k3_p2", "type": "maxpool2d", "kernel": 3, "stride": 2,
                        "padding": 2}], "pool"),
        "avg_k4_p3_ceil": ([{"name": "avg_k4_p3_ceil", "type": "avgpool2d", "kernel": 4,
                             "stride": 3, "padding": [[3, 1], [2, 3]], "ceil_mode": True}],
                           "pool"),
        "avg_k3_p2_excl": ([{"name": "avg_k3_p2_excl", "type": "avgpool2d", "kernel": 3,
                             "padding": 2, "stride": 1, "count_include_pad": False}], "pool"),
        "global_avg": ([{"name": "global_avg", "type": "global_avgpool"}], "global_pool"),
        "global_max": ([{"name": "global_max", "type": "global_maxpool"}], "global_pool"),
        "lppool": ([{"name": "lppool", "type": "lppool2d", "p": 2, "kernel": 2}], "pool"),
        "lp3_p1_ceil": ([{"name": "lp3_p1_ceil", "type": "lppool2d", "p": 3, "kernel": 3,
                          "stride": 2, "padding": 1, "ceil_mode": True}], "pool"),
        "lp1_k3": ([{"name": "lp1_k3", "type": "lppool2d", "p": 1, "kernel": 3,
                     "stride": 1}], "pool"),
        "adaptive_avg": ([{"name": "adaptive_avg", "type": "adaptive_avgpool2d",
                           "output_size": [4, 5]}], "generic"),
        # the binomial filter in two passes; reflected or zero padding, odd and even sizes
        "blur_reflect": ([{"name": "blur_reflect", "type": "blurpool2d"}], "blur_pool"),
        "blur_zero_k4": ([{"name": "blur_zero_k4", "type": "blurpool2d", "kernel": 4,
                           "pad_mode": "zero"}], "blur_pool"),
        "blur_k5_s1": ([{"name": "blur_k5_s1", "type": "blurpool2d", "kernel": 5,
                         "stride": 1}], "blur_pool"),
        "blur_k7_s3": ([{"name": "blur_k7_s3", "type": "blurpool2d", "kernel": 7,
                         "stride": 3}], "blur_pool"),
    }),
    "elementwise": ([6, 7, 9], [conv("stem", 20, padding=1)], {
        "relu": ([act("relu")], "elementwise"),
        "tanh": ([act("tanh", "tanh")], "elementwise"),
        "sigmoid": ([act("sigmoid", "sigmoid")], "elementwise"),
        "leaky": ([act("leaky", "leaky_relu", alpha=0.1)], "elementwise"),
        "batchnorm": ([bn("batchnorm")], "elementwise"),
        # the stem has other readers, so the add stays a kernel of its own
        "add": ([{"name": "add", "type": "add", "inputs": ["stem", "stem"]}], "elementwise"),
        # fused into the conv as its residual: the plain input converted to the conv's blocks
        "add_plain_residual": ([conv("wide", 6, kernel=1),
                                {"name": "add_plain_residual", "type": "add",
                                 "inputs": ["wide", "input"]}], "conv"),
        "plain_relu_bn": ([], None),
    }),
    # boundaries: layers that need the plain layout read blocked values through views
    "boundaries": ([4, 8, 8], [conv("stem", 20, padding=1), act("stem_relu")], {
        "flatten_dense": ([{"name": "flat", "type": "flatten"},
                           {"name": "flatten_dense", "type": "dense", "units": 7}], "dense"),
        # 20 + 12 channels: not whole blocks, so the concat is generic and plain
        "concat_odd": ([conv("side", 12, kernel=1),
                        {"name": "concat_odd", "type": "concat",
                         "inputs": ["stem_relu", "side"]}], "generic"),
        "concat_conv": ([conv("side_a", 16, kernel=1), conv("side_b", 32, kernel=3, padding=1),
                         {"name": "cat", "type": "concat", "inputs": ["side_a", "side_b"]},
                         conv("concat_conv", 16, kernel=1)], "conv"),
        "concat_blocks": ([conv("side_c", 16, kernel=1), conv("side_d", 16, kernel=1),
                           {"name": "concat_blocks", "type": "concat",
                            "inputs": ["side_c", "side_d", "side_c"]}], "concat"),
        # branches read by the concat alone write their blocks of its output: no copy
        "concat_assembled": ([conv("br_a", 16, kernel=1, inputs=["stem_relu"]),
                              conv("br_b", 32, kernel=3, padding=1, inputs=["stem_relu"]),
                              conv("br_c", 16, kernel=1, inputs=["stem_relu"]),
                              {"name": "br_pool", "type": "maxpool2d", "kernel": 3, "stride": 1,
                               "padding": 1},
                              {"name": "concat_assembled", "type": "concat",
                               "inputs": ["br_a", "br_b", "br_pool"]}], "assembled"),
        # over the channels of a map, over its last axis, and of a dense layer's outputs
        "softmax": ([{"name": "softmax", "type": "softmax"}], "softmax"),
        "softmax_last_axis": ([{"name": "softmax_last_axis", "type": "softmax", "axis": -1}],
                              "softmax"),
        "softmax_dense": ([{"name": "sm_flat", "type": "flatten", "inputs": ["stem_relu"]},
                           {"name": "sm_logits", "type": "dense", "units": 7},
                           {"name": "softmax_dense", "type": "softmax"}], "softmax"),
        "lrn": ([{"name": "lrn", "type": "lrn", "size": 3}], "channel_window"),
        "conv_output": ([conv("conv_output", 9, kernel=1)], "conv"),
    }),
    # residual blocks whose shortcut nothing else reads: the add writes over the shortcut
    "inplace_residual": ([3, 10, 10], [conv("stem", 32, padding=1), act("stem_relu")], {
        "block": ([conv("b1_conv1", 32, padding=1, bias=False), bn("b1_bn1"), act("b1_relu1"),
                   conv("b1_conv2", 32, padding=1, bias=False), bn("b1_bn2"),
                   {"name": "b1_add", "type": "add", "inputs": ["b1_bn2", "stem_relu"]},
                   act("b1_relu2"),
                   conv("b2_conv1", 32, padding=1), act("b2_relu1"), conv("b2_conv2", 32, kernel=1),
                   {"name": "b2_add", "type": "add", "inputs": ["b2_conv2", "b1_relu2"]},
                   act("block")], "conv"),
    }),
    "inplace_dense": ([37], [{"name": "d0", "type": "dense", "units": 24}, act("d0_relu")], {
        "residual": ([{"name": "d1", "type": "dense", "units": 30}, act("d1_relu"),
                      {"name": "d2", "type": "dense", "units": 24},
                      {"name": "d2_add", "type": "add", "inputs": ["d2", "d0_relu"]},
                      act("residual", "tanh")], "dense"),
    }),
    "dense": ([37], [], {
        "units10": ([{"name": "units10", "type": "dense", "units": 10}], "dense"),
        "units40_bn_relu": ([{"name": "d40", "type": "dense", "units": 40, "bias": False},
                             bn("d40_bn"), act("units40_bn_relu")], "dense"),
        "residual_tanh": ([{"name": "d37", "type": "dense", "units": 37},
                           {"name": "d_add", "type": "add", "inputs": ["d37", "input"]},
                           act("residual_tanh", "tanh")], "dense"),
        "units1": ([{"name": "units1", "type": "dense", "units": 1}], "dense"),
    }),
}
# cases that read the input instead of the stem
FROM_INPUT = {("conv1d", "plain_input"): [conv1d("plain_input", 16, kernel=3, padding=1)],
              ("elementwise", "plain_relu_bn"): [act("p_relu"), bn("p_bn"),
                                                 conv("plain_relu_bn", 16, kernel=1)]}
PLAIN_FROM_INPUT_KIND = {("conv1d", "plain_input"): "conv",
                         ("elementwise", "plain_relu_bn"): "conv"}


def family_spec(family: str) -> str:
    shape, stem, cases = FAMILIES[family]
    layers, outputs = list(stem), []
    for case, (case_layers, _) in cases.items():
        chain = FROM_INPUT.get((family, case), case_layers)
        source = "input" if (family, case) in FROM_INPUT or not stem else stem[-1]["name"]
        for i, layer in enumerate(chain):
            layer = dict(layer)
            if i == 0 and "inputs" not in layer:
                layer["inputs"] = [source]
            layers.append(layer)
        outputs.append(chain[-1]["name"])
    return yaml.safe_dump({"name": f"cpu_{family}", "input": shape, "layers": layers,
                           "outputs": outputs}, sort_keys=False)


def case_kind(family: str, case: str):
    if (family, case) in PLAIN_FROM_INPUT_KIND:
        return PLAIN_FROM_INPUT_KIND[(family, case)]
    return FAMILIES[family][2][case][1]


def case_output(family: str, case: str) -> str:
    chain = FROM_INPUT.get((family, case), FAMILIES[family][2][case][0])
    return chain[-1]["name"]


def lively(g, seed: int) -> dict:
    """Weights with batch-norm statistics far from the identity, so folding them matters."""
    from cnncompiler.reference import init_params

    params = init_params(g, seed)
    rng = np.random.default_rng(seed + 1)
    for name, value in params.items():
        if name.endswith("running_var"):
            params[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif name.endswith("running_mean") or (name.endswith(".bias") and value.ndim == 1):
            params[name] = rng.normal(0, 0.3, value.shape).astype(np.float32)
        elif name.endswith(".weight") and value.ndim == 1:
            params[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    return params


class Compiled:
    """A spec lowered with the CPU plan and compiled in memory (no artifact)."""

    def __init__(self, text: str, batch_sizes=(2,), lanes: int = LANES):
        from tvm.runtime import vm as tvm_vm

        from cnncompiler.backends.cpu import relax_pipeline
        from cnncompiler.backends.cpu.emit import build_cpu_module, kernel_layouts
        from cnncompiler.backends.targets import parse_target
        from cnncompiler.compiler import _front_end
        from cnncompiler.runtime.signature import kernel_arguments

        self.graph, self.optimized, *_ = _front_end(text, "test.yaml", 2, None)
        self.unscheduled = []
        self.module, self.plan = build_cpu_module(self.optimized, lanes, batch_sizes,
                                                  self.unscheduled)
        target = tvm.target.Target(parse_target("cpu").config)
        with target:
            executable = tvm.compile(self.module, target=target, relax_pipeline=relax_pipeline())
        self.vm = tvm_vm.VirtualMachine(executable, tvm.cpu())
        self.params = lively(self.graph, seed=3)
        self.args = [tvm.runtime.tensor(a) for a in kernel_arguments(
            self.optimized, self.params, kernel_layouts(self.plan))]

    def run(self, function: str, x: np.ndarray) -> dict:
        result = self.vm[function](tvm.runtime.tensor(x), *self.args)
        names = self.graph.graph["outputs"]
        if len(names) == 1:
            return {names[0]: result.numpy()}
        return {n: r.numpy() for n, r in zip(names, result)}


@pytest.fixture(scope="module")
def compiled():
    cache = {}

    def get(family: str) -> Compiled:
        if family not in cache:
            cache[family] = Compiled(family_spec(family), batch_sizes=(2,))
        return cache[family]
    return get


CASES = [(f, c) for f, (_, _, cases) in FAMILIES.items() for c in cases]


@pytest.mark.parametrize("family,case", CASES, ids=[f"{f}/{c}" for f, c in CASES])
def test_kernel_matches_reference(compiled, family, case):
    from cnncompiler.reference import run_reference

    model = compiled(family)
    name = case_output(family, case)
    shape = model.graph.graph["input_shape"]
    for function, batch in (("main_b2", 2), ("main", 3)):
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        want = run_reference(model.graph, x, model.params, dtype=np.float64)
        got = model.run(function, x)
        assert_close(got[name], want[name], what=f"{family}/{case} through {function}")


@pytest.mark.parametrize("family,case", CASES, ids=[f"{f}/{c}" for f, c in CASES])
def test_plan_picks_the_kernel(compiled, family, case):
    model = compiled(family)
    name = case_output(family, case)
    node = next(n for n in model.optimized.nodes if n == name or
                name in model.optimized.nodes[n].get("merged", ()))
    kind = case_kind(family, case)
    if kind is not None:
        assert model.plan[node].kind == kind, (family, case, model.plan[node])


SCHEDULED_KINDS = ("conv", "conv_pool", "winograd_pool", "plain_conv", "locally_connected",
                   "depthwise", "depthwise_multiplier", "pool", "blur_pool", "global_pool",
                   "dense", "elementwise", "softmax", "concat", "channel_window")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kernels_are_scheduled(compiled, family):
    """Every kernel of a scheduled kind is marked scheduled and has vector loops; the big ones
    (a static batch of 2 here is small: the convs) have parallel loops too."""
    from cnncompiler.graph.signature import kernel_name

    model = compiled(family)
    assert not model.unscheduled
    names = {kernel_name(n): c for n, c in model.plan.items()}
    checked = 0
    for gv, func in model.module.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        choice = names.get(gv.name_hint.rstrip("0123456789")) or names.get(gv.name_hint)
        if choice is None or choice.kind not in SCHEDULED_KINDS:
            continue
        assert func.attrs.get("tirx.is_scheduled"), (gv.name_hint, model.unscheduled)
        text = func.script()
        assert "T.vectorized" in text, f"{gv.name_hint} ({choice.kind}) has no vector loop"
        checked += 1
    assert checked


def test_conv_computes_the_pool_that_alone_reads_it(compiled):
    """The conv before an absorbed pool is a ``conv_pool`` kernel and its own output is no
    tensor of the Relax function: only the pooled one is written. A conv whose output another
    layer reads too keeps its kernel, the pool its own."""
    model = compiled("conv_pool")
    kinds = {n: c.kind for n, c in model.plan.items()}
    assert [kinds[n] for n in ("stem", "avg_conv", "max_s1_conv", "lp_conv")] == \
        ["conv_pool"] * 4, kinds
    assert (kinds["twice"], kinds["twice_pool"]) == ("conv", "pool")
    from cnncompiler.graph import layer_node

    channels, height, width = layer_node(model.optimized, "stem").shape
    conv_output = f"R.Tensor((2, {-(-channels // LANES)}, {height}, {width}, {LANES})"
    assert conv_output not in model.module["main_b2"].script()
    winograd = compiled("winograd_pool").plan
    assert [(winograd[n].kind, winograd[n].tile) for n in ("f4_conv", "f2_conv", "f4_k3_conv")] \
        == [("winograd_pool", 4), ("winograd_pool", 2), ("winograd", 4)]


@pytest.mark.parametrize("family", ["conv_pool", "winograd_pool"])
def test_conv_pool_at_batch_1_matches_reference(family):
    """At batch 1 the bands of one image are the parallel tasks (at 2 and any, the images)."""
    from cnncompiler.reference import run_reference

    model = Compiled(family_spec(family), batch_sizes=(1,))
    assert not model.unscheduled
    shape = model.graph.graph["input_shape"]
    x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    want = run_reference(model.graph, x, model.params, dtype=np.float64)
    got = model.run("main_b1", x)
    for name in model.graph.graph["outputs"]:
        assert_close(got[name], want[name], what=f"{family}/{name} through main_b1")


def test_a_band_pads_only_the_input_rows_it_reads():
    """A ceil-mode pool reads a row past its conv's last, and so would the last band's share of
    the conv's padded input: still each task pads its own rows, not the whole input."""
    from cnncompiler.backends.cpu.memory import kernel_scratch
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.reference import run_reference

    text = yaml.safe_dump({"name": "ceil_stem", "input": [3, 56, 20], "layers": [
        conv("stem", 16, kernel=7, stride=2, padding=3),
        {"name": "pool", "type": "maxpool2d", "kernel": 3, "stride": 2, "ceil_mode": True}]})
    model = Compiled(text, batch_sizes=(1,))
    assert model.plan["stem"].kind == "conv_pool" and not model.unscheduled
    x = np.random.default_rng(0).standard_normal((1, 3, 56, 20)).astype(np.float32)
    want = run_reference(model.graph, x, model.params, dtype=np.float64)
    assert_close(model.run("main_b1", x)["pool"], want["pool"], what="ceil_stem")
    target = tvm.target.Target(parse_target("cpu").config)
    scratch = kernel_scratch(model.module["stem"], target, threads=1)
    # two bands of 7 pool rows: each reads 15 conv rows, which read 35 padded input rows
    padded_rows, conv_rows, rows_pass = 3 * 35 * 26 * 4, 15 * 10 * 16 * 4, 15 * 5 * 16 * 4
    registers = 16 * 16 * 4
    assert scratch <= padded_rows + conv_rows + rows_pass + registers, scratch


@pytest.mark.parametrize("family", ["inplace_residual", "inplace_dense"])
def test_residual_add_writes_over_its_shortcut(compiled, family):
    """A shortcut nothing reads after the add is overwritten by the add's kernel
    (call_tir_inplace); one that others still read (the epilogues family) is not."""
    assert "call_tir_inplace" in compiled(family).module["main"].script()
    assert "call_tir_inplace" not in compiled("epilogues").module["main"].script()


def test_big_conv_runs_in_parallel():
    text = yaml.safe_dump({"name": "big", "input": [32, 16, 16], "layers": [
        conv("c", 64, padding=1)]})
    model = Compiled(text, batch_sizes=(4,))
    scripts = [f.script() for _, f in model.module.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("T.parallel" in s and "T.vectorized" in s and "T.unroll" in s for s in scripts)


# -- the conv kernel's tilings, directly --------------------------------------------------------

def _conv_kernel_case(geo, tile, batch=2, seed=0):
    from tvm import te

    from cnncompiler.backends.cpu.conv import conv_blocked, schedule_conv
    from cnncompiler.layers.conv import conv_reference

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, geo.cin, *geo.in_spatial)).astype(np.float32)
    w = rng.standard_normal((geo.cout, geo.cin // geo.groups, *geo.kernel)).astype(np.float32)
    pad = geo.in_blocks * geo.ib - geo.cin
    xb = np.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * len(geo.in_spatial))
    xb = xb.reshape(batch, geo.in_blocks, geo.ib, *geo.in_spatial)
    xb = np.ascontiguousarray(np.moveaxis(xb, 2, -1))
    wb = np.ascontiguousarray(apply_layout(f"blocked_oihw:{geo.ib}:{geo.ob}", w))
    xt = te.placeholder(xb.shape, name="x")
    wt = te.placeholder(wb.shape, name="w")
    y = conv_blocked(xt, wt, None, geo)
    func = schedule_conv(te.create_prim_func([xt, wt, y]), geo, tile)
    lib = tvm.tirx.build(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.empty([int(d) for d in y.shape], "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(xb), tvm.runtime.tensor(wb), out)
    got = np.moveaxis(out.numpy(), -1, 2).reshape(batch, -1, *geo.out_spatial)[:, :geo.cout]
    want = conv_reference(x.astype(np.float64), w.astype(np.float64), None, geo.stride,
                          geo.pads, geo.dilation, geo.groups)
    assert_close(got, want, what=f"{geo} {tile}")
    return func


TILES = [(1, 1, 1, None), (2, 4, 1, None), (2, 4, 3, 1), (1, 2, 6, 2), (4, 1, 2, 1)]


@pytest.mark.parametrize("tile", TILES, ids=[str(t) for t in TILES])
def test_conv_tilings(tile):
    """The register tile and the chunked reduction (rows per task, input blocks per chunk)."""
    from cnncompiler.backends.cpu.conv import ConvGeometry, ConvTile

    geo = ConvGeometry(cin=40, cout=64, groups=1, kernel=(3, 3), stride=(1, 1),
                       dilation=(1, 1), pads=((1, 1), (1, 1)), in_spatial=(6, 8),
                       out_spatial=(6, 8), ib=16, ob=16)
    func = _conv_kernel_case(geo, ConvTile(*tile))
    assert "T.parallel" in func.script()


@pytest.mark.parametrize("lanes", [16, 8])
def test_chosen_tiles_divide_and_fit(lanes):
    """Tiles divide their axes, and accumulators, weight vectors and a broadcast fit in the
    target's registers (32 with AVX-512, 16 with AVX2)."""
    from cnncompiler.backends.cpu.conv import ConvGeometry, choose_tile, vector_registers

    registers = vector_registers(lanes)
    for cin, cout, width, kernel in [(64, 64, 32, 3), (512, 512, 7, 3), (256, 256, 14, 3),
                                     (3, 64, 112, 7), (16, 120, 1, 5), (1024, 1024, 2, 1),
                                     (40, 48, 13, 3), (6, 16, 10, 5)]:
        ib = lanes if cin % lanes == 0 else 1
        geo = ConvGeometry(cin, cout, 1, (kernel, kernel), (1, 1), (1, 1), ((0, 0), (0, 0)),
                           (width, width), (width, width), ib, lanes, in_plain=ib == 1)
        tile = choose_tile(geo, registers)
        assert width % tile.rw == 0 and geo.out_blocks % tile.ro == 0
        assert tile.ro * tile.rw + tile.ro + 1 <= registers
        if tile.ci is not None:
            assert geo.group_in_blocks % tile.ci == 0
            assert geo.out_spatial[0] % tile.rh == 0


def test_a_task_whose_weights_outgrow_an_l1_chunk_reads_them_in_chunks():
    """Blocked inputs chunk the reduction from one L1 chunk of task weights (1x1 512->512 at
    14: 64 KiB for 2 output blocks), plain-layout inputs from the L2 budget (ResNet's stem)."""
    from cnncompiler.backends.cpu.conv import CHUNK_BYTES, ConvGeometry, choose_tile

    def tile(cin, cout, width, kernel, stride, ib):
        out = (width + 2 * (kernel // 2) - kernel) // stride + 1
        return choose_tile(ConvGeometry(cin, cout, 1, (kernel, kernel), (stride, stride),
                                        (1, 1), ((kernel // 2,) * 2,) * 2, (width, width),
                                        (out, out), ib, 16, in_plain=ib == 1))

    pointwise = tile(512, 512, 14, 1, 1, 16)
    assert pointwise.ci < 32 and pointwise.ro * 64 * pointwise.ci * 16 <= CHUNK_BYTES
    assert pointwise.rh > 1
    assert not tile(128, 128, 56, 1, 1, 16).ci  # 4 blocks x 128 channels: 32 KiB, one chunk
    assert not tile(3, 64, 224, 7, 2, 1).ci     # 37 KiB of a plain input's weights


def test_a_small_map_at_batch_1_takes_two_input_blocks_a_chunk():
    """ResNet's layer4 (3x3 512->512 at 7 x 7): 18 KiB of weights per input block for 2
    output blocks; one block a chunk in general, two at batch 1 where the map is small."""
    from cnncompiler.backends.cpu.conv import ConvGeometry, choose_tile, default_tile

    def geo(size):
        return ConvGeometry(512, 512, 1, (3, 3), (1, 1), (1, 1), ((1, 1),) * 2, (size, size),
                            (size, size), 16, 16)

    assert choose_tile(geo(7)).ci == 1
    assert default_tile(geo(7), 32, 1).ci == 2
    assert default_tile(geo(7), 32, 8).ci == 1
    assert default_tile(geo(14), 32, 1).ci == 1


def test_conv_tasks_split_by_image_where_the_weights_are_the_smaller_read():
    from cnncompiler.backends.cpu.conv import ConvGeometry, images_outer

    def geo(cin, cout, size, kernel):
        pad = kernel // 2
        return ConvGeometry(cin, cout, 1, (kernel, kernel), (1, 1), (1, 1), ((pad, pad),) * 2,
                            (size, size), (size, size), 16, 16)

    assert images_outer(geo(512, 512, 14, 1), 8)       # MobileNet: 1 MB of weights, 3.2 of input
    assert not images_outer(geo(512, 512, 4, 3), 64)   # ResNet CIFAR's last stage: 9.4 vs 2.1
    assert not images_outer(geo(512, 512, 14, 1), None)  # any batch: one image, 0.4 MB


def test_one_image_is_split_by_rows_between_threads():
    """A task sweeping all of one image's rows per weight chunk would leave the parallel split
    to the output channels at batch 1; the default tile halves its rows there."""
    from cnncompiler.backends.cpu.conv import ConvGeometry, choose_tile, default_tile

    geo = ConvGeometry(512, 128, 1, (1, 1), (1, 1), (1, 1), ((0, 0),) * 2, (14, 14), (14, 14),
                       16, 16)  # GoogLeNet's inception 4c branch 1
    assert choose_tile(geo).rh == 14
    assert default_tile(geo, 32, 1).rh == 7
    assert default_tile(geo, 32, 8).rh == 14      # eight images: split by image already
    assert default_tile(geo, 32, None).rh == 14   # any batch: channel blocks first


def test_an_odd_number_of_row_groups_takes_fewer_rows_a_task():
    """Two threads take 7 tasks in the time of 8: GoogLeNet's 1x1 convs at 28 x 28 (chunks of
    4 rows) sweep 2 rows a chunk at batch 1 instead, 14 tasks (the kernel checked against the
    reference), and batches whose tasks are even keep the tile."""
    from cnncompiler.backends.cpu.conv import (ConvGeometry, choose_tile, default_tile,
                                               parallel_tasks)

    geo = ConvGeometry(192, 64, 1, (1, 1), (1, 1), (1, 1), ((0, 0),) * 2, (28, 28), (28, 28),
                       16, 16)  # GoogLeNet's inception 3a branch 1
    chosen = choose_tile(geo)
    assert chosen.rh == 4 and parallel_tasks(chosen, geo, 1) == 7
    tile = default_tile(geo, 32, 1)
    assert tile.rh == 2 and parallel_tasks(tile, geo, 1) == 14
    assert default_tile(geo, 32, 2) == chosen and default_tile(geo, 32, None) == chosen
    func = _conv_kernel_case(geo, None, batch=1)   # the kernel's own choice, checked
    assert _parallel_extents(func) == [14]


def _parallel_extents(func) -> list[int]:
    """The extents of a PrimFunc's parallel loops, in the order they appear."""
    return [int(e) for e in re.findall(r"T\.parallel\((?:T\.int\d+\()?(\d+)\)?\)",
                                       func.script())]


def test_a_window_kernel_splits_its_tasks_as_the_conv_before_it():
    """A depthwise conv after a conv that split its tasks by output channels (its weights
    outweigh two small images) splits by channels too; after one split by image (64 images),
    by image and row."""
    from cnncompiler.backends.cpu.emit import build_cpu_module
    from cnncompiler.compiler import _front_end

    text = ("name: t\ninput: [64, 6, 6]\nlayers:\n"
            "  - {name: wide, type: conv2d, filters: 256, kernel: 1}\n"
            "  - {name: dw, type: conv2d, filters: 256, kernel: 3, padding: 1, groups: 256}\n")
    _, optimized, *_ = _front_end(text, "t.yaml", 2, None)
    module, plan = build_cpu_module(optimized, LANES, (2, 64))
    assert plan["dw"].kind == "depthwise"
    orders = {gv.name_hint: _loop_order(f, "window")[0] for gv, f in module.functions.items()
              if gv.name_hint.rstrip("0123456789") == "dw"}
    # the fused parallel loop's name lists its loops, outermost first: c (channel blocks), n
    assert sorted(o.split("_")[0] for o in orders.values()) == ["c", "c", "n"], orders


def test_max_pool_code_is_vector_code():
    """The NaN-keeping max is a vector compare: TVM widens ``isnan`` (te_ops registers it as
    vectorizable), so the lane loop is not scalarized and LLVM need not gather across
    columns. NaN and infinities come out as numpy's max gives them."""
    from tvm import te

    from cnncompiler.backends.cpu.pool import pool_blocked, schedule_pool
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.layers.pool import MaxPool2d

    assert tvm.ir.Op.get("tirx.isnan").get_attr("TVectorizable")
    layer = MaxPool2d(kernel=(3, 3), stride=(1, 1), padding=((0, 0), (0, 0)))
    x = te.placeholder((1, 2, 9, 9, 16), name="x")
    y = pool_blocked(layer, x, (7, 7))
    func = schedule_pool(layer, 7)(te.create_prim_func([x, y]))
    with tvm.target.Target(parse_target("cpu").config) as target:
        lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target)
    assert "gather" not in lib.inspect_source("asm")
    data = np.random.default_rng(0).standard_normal((1, 2, 9, 9, 16)).astype(np.float32)
    data[0, 0, 4, 4, 3], data[0, 1, 0, 0, 5], data[0, 1, 8, 8, 7] = np.nan, np.inf, -np.inf
    out = tvm.runtime.empty((1, 2, 7, 7, 16), "float32")
    lib["main"](tvm.runtime.tensor(data), out)
    windows = np.lib.stride_tricks.sliding_window_view(data, (3, 3), axis=(2, 3))
    want = np.max(windows, axis=(-2, -1))   # numpy's max keeps NaN
    np.testing.assert_array_equal(out.numpy(), want)


def test_lrn_reads_plain_rows_as_vectors():
    """LRN runs on its input converted to the plain layout (the plan says so), where each
    output row is a contiguous vector per channel of the window. Its kernel sums each row's
    window in a row of its own (one row of scratch), in whole vectors and a tail (21 = 16 + 5:
    a vector of 21 lanes compiles to element code). Through a plain view of a blocked input
    (training's generic kernel) the row stays scalar: its reads would be a gather."""
    from tvm import te

    from cnncompiler.backends.cpu.memory import kernel_scratch
    from cnncompiler.backends.cpu.schedules import schedule_channel_window, schedule_loops
    from cnncompiler.backends.te_ops import lower_lrn
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.layers.norm import LRN

    layer = LRN(size=5, alpha=0.5, beta=0.75, k=2.0)
    shape = (2, 7, 5, 21)
    x = te.placeholder(shape, name="x")
    y = lower_lrn(layer, [x], {}, shape[1:])
    func = te.create_prim_func([x, y])

    def sum_row(script):  # the loop right around the window sum's update
        lines = script.splitlines()
        return lines[[i for i, t in enumerate(lines) if '"lrn_sum_update"' in t][0] - 1]

    assert "T.vectorized" not in sum_row(schedule_loops(func, 16).script())
    kernel = schedule_channel_window(func, 16)
    vectors = re.findall(r"T\.vectorized\(([\d, ]+)\)", kernel.script())
    # the sums' zeroing and update and the output: a vector, then the tail's 5 lanes
    assert vectors == ["16", "16", "16, 21", "16, 21", "16", "16, 21"], vectors
    with tvm.target.Target(parse_target("cpu").config) as target:
        assert kernel_scratch(kernel, target, threads=1) == shape[-1] * 4
        lib = tvm.tirx.build(tvm.IRModule({"main": kernel}), target=target)
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = tvm.runtime.empty(shape, "float32")
    lib["main"](tvm.runtime.tensor(data), out)
    np.testing.assert_allclose(out.numpy(), layer.reference([data], {}), rtol=1e-5, atol=1e-6)

    from cnncompiler.backends.cpu.blocking import PLAIN
    from cnncompiler.backends.cpu.plan import plan_kernels
    from cnncompiler.compiler import _front_end

    _, optimized, *_ = _front_end(family_spec("boundaries"), "test.yaml", 2, None)
    plan = plan_kernels(optimized, 16)
    assert plan["stem"].out_block == 16
    assert plan["lrn"].in_blocks == (PLAIN,), "LRN after a conv reads its input plain"


def test_a_plain_pool_row_is_vectorized_in_parts():
    """A pool on a plain input (AlexNet's after its LRNs: rows of 27) moves its row inside the
    window's taps and vectorizes it as a vector and the 11 lanes left, not one vector of 27."""
    from tvm import te

    from cnncompiler.backends.cpu.schedules import schedule_loops
    from cnncompiler.backends.te_ops import lower_maxpool
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.layers.pool import MaxPool2d

    layer = MaxPool2d(kernel=(3, 3), stride=(2, 2))
    x = te.placeholder((2, 5, 55, 55), name="x")
    y = lower_maxpool(layer, [x], {}, (5, 27, 27))
    kernel = schedule_loops(te.create_prim_func([x, y]), 16, plain_rows=True)
    vectors = re.findall(r"T\.vectorized\(([\d, ]+)\)", kernel.script())
    assert vectors == ["16", "16", "16, 27", "16, 27"], vectors   # zeroing and update, in parts
    with tvm.target.Target(parse_target("cpu").config) as target:
        lib = tvm.tirx.build(tvm.IRModule({"main": kernel}), target=target)
    data = np.random.default_rng(0).standard_normal((2, 5, 55, 55)).astype(np.float32)
    out = tvm.runtime.empty((2, 5, 27, 27), "float32")
    lib["main"](tvm.runtime.tensor(data), out)
    np.testing.assert_array_equal(out.numpy(), layer.reference([data], {}))


@pytest.mark.parametrize("family", ["conv2d_blocked_input", "conv2d_groups", "pools", "dense"])
def test_avx2_blocks_match_reference(family):
    """The same kernels with AVX2's 8-lane blocks (the layouts and tiles change; the code
    still runs on this host)."""
    from cnncompiler.reference import run_reference

    model = Compiled(family_spec(family), batch_sizes=(2,), lanes=8)
    assert not model.unscheduled
    x = np.random.default_rng(5).standard_normal(
        (2, *model.graph.graph["input_shape"])).astype(np.float32)
    want = run_reference(model.graph, x, model.params, dtype=np.float64)
    got = model.run("main_b2", x)
    for name in model.graph.graph["outputs"]:
        assert_close(got[name], want[name], what=f"{family}/{name} with 8 lanes")


# -- the activations' polynomial forms -----------------------------------------------------------

def test_fast_activations_match_numpy():
    from tvm import te

    from cnncompiler.backends.cpu.vector_math import fast_exp, fast_sigmoid, fast_tanh

    xs = np.concatenate([np.linspace(-30, 30, 4001), [0.0, 1e-7, -1e-7, 88.0, -88.0, 1e-3]])
    xs = xs.astype(np.float32)
    x = te.placeholder(xs.shape, name="x")
    def elementwise(f, name):
        return te.compute(xs.shape, lambda i: f(x[i]), name=name)

    outs = [elementwise(f, n) for f, n in
            ((fast_tanh, "tanh"), (fast_sigmoid, "sigmoid"), (fast_exp, "exp"))]
    lib = tvm.tirx.build(tvm.IRModule({"main": te.create_prim_func([x, *outs])}), target="llvm")
    bufs = [tvm.runtime.tensor(xs)] + [tvm.runtime.empty(xs.shape, "float32") for _ in outs]
    lib["main"](*bufs)
    x64 = xs.astype(np.float64)
    np.testing.assert_allclose(bufs[1].numpy(), np.tanh(x64), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bufs[2].numpy(), 1 / (1 + np.exp(-x64)), rtol=1e-5, atol=1e-7)
    small = np.abs(x64) < 80
    np.testing.assert_allclose(bufs[3].numpy()[small], np.exp(x64)[small], rtol=2e-6)


# -- the packed weight layouts (numpy only) ------------------------------------------------------

def test_blocked_oihw_pads_with_zeros_and_keeps_values():
    w = np.random.default_rng(0).standard_normal((20, 6, 3, 3)).astype(np.float32)
    packed = apply_layout("blocked_oihw:4:16", w)
    assert packed.shape == layout_shape("blocked_oihw:4:16", w.shape) == (2, 2, 3, 3, 4, 16)
    for o in range(32):
        for i in range(8):
            want = w[o, i] if o < 20 and i < 6 else np.zeros((3, 3), np.float32)
            np.testing.assert_array_equal(packed[o // 16, i // 4, :, :, i % 4, o % 16], want)


def test_blocked_local_pads_with_zeros_and_keeps_values():
    w = np.random.default_rng(0).standard_normal((3, 2, 20, 6, 2, 3)).astype(np.float32)
    packed = apply_layout("blocked_local:4:16", w)
    assert packed.shape == layout_shape("blocked_local:4:16", w.shape) == \
        (3, 2, 2, 2, 2, 3, 4, 16)
    for f in range(32):
        for c in range(8):
            want = w[:, :, f, c] if f < 20 and c < 6 else np.zeros((3, 2, 2, 3), np.float32)
            np.testing.assert_array_equal(packed[:, :, f // 16, c // 4, :, :, c % 4, f % 16],
                                          want)


def test_blocked_rows_and_vector():
    w = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    rows = apply_layout("blocked_rows:4", w)
    assert rows.shape == layout_shape("blocked_rows:4", w.shape) == (3, 3, 4)
    np.testing.assert_array_equal(rows[1, 2], w[4:8, 2])
    np.testing.assert_array_equal(rows[2, :, 2:], 0)
    v = apply_layout("blocked_vector:8", np.arange(10, dtype=np.float32))
    assert v.shape == (2, 8) and v[1, 1] == 9 and not v[1, 2:].any()


def _loop_order(func, block_name: str) -> list[str]:
    """The loop variables around ``block_name``'s update, outermost first."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    names = {}
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        names[sch.get(rv).name_hint] = rv
    block = names.get(f"{block_name}_update", names.get(block_name))
    return [str(sch.get(lp).loop_var) for lp in sch.get_loops(block)]


def test_fallback_schedule_puts_a_small_window_outside_the_row():
    """A reduction over a small, static window (LRN's 5 channels) runs the row inside the
    window, once per row; one over the batch (a gradient's sum over n, symbolic) keeps the
    reduction innermost, where the row would be read with the stride of a sample."""
    from tvm import te, tirx

    from cnncompiler.backends.cpu.schedules import schedule_loops

    x = te.placeholder((2, 16, 9, 40), name="x")
    r = te.reduce_axis((0, 5), name="r")
    window = te.compute((2, 16, 9, 40), lambda n, c, h, w: te.sum(
        x[n, tirx.min(c + r, 15), h, w], axis=r), name="sums")
    order = _loop_order(schedule_loops(te.create_prim_func([x, window]), 16), "sums")
    assert order[-2:] == ["r", "w"], order

    n = tirx.Var("n", "int64")
    y = te.placeholder((n, 4, 40), name="y")
    k = te.reduce_axis((0, n), name="k")
    batch = te.compute((4, 40), lambda a, o: te.sum(y[k, a, o], axis=k), name="sums")
    order = _loop_order(schedule_loops(te.create_prim_func([y, batch]), 16), "sums")
    assert order[-1] == "k", order

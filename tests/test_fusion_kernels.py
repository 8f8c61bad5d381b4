"""A fused layer is one kernel: the lowered module is inspected, and the compiled code checked.

``fuse-epilogue`` turns ``conv -> batchnorm -> add -> relu`` into one ``fused`` layer. Here the
Relax module that layer lowers to must call ONE PrimFunc for it, reading every weight of the
layers it absorbed (and the residual) and nothing else calling for them; in the CPU backend's
scheduled module that PrimFunc must be one loop nest, the epilogue computed in the conv's
loops. A zoo of fusion patterns, compiled at -O2, must compute what -O0 and the reference do.
(That the CUDA build makes one device kernel per PrimFunc is checked in test_cuda_compile.py.)
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.graph import load_checked, topo_layers
from cnncompiler.layers.fused import Fused
from cnncompiler.passes import optimize
from cnncompiler.graph.signature import kernel_name, kernel_signature

from compile_helpers import as_dict, assert_close, lively_params, spec_path, write_spec

pytestmark = pytest.mark.tvm



def conv(name, inputs, **keys):
    return {"name": name, "type": "conv2d", "filters": 4, "kernel": 3, "padding": 1,
            "inputs": inputs, **keys}


def dense(name, inputs, **keys):
    return {"name": name, "type": "dense", "units": 6, "inputs": inputs, **keys}


# One branch per fusion pattern, all reading the input (4, 8, 8); each ends in an output.
ZOO_2D = [
    [conv("a_conv", ["input"], bias=False), {"name": "a_bn", "type": "batchnorm"},
     {"name": "a", "type": "relu"}],                                     # fold + relu
    [conv("b_conv", ["input"]), {"name": "b_relu", "type": "relu"},
     {"name": "b", "type": "batchnorm"}],                                # relu + scale-shift
    [conv("c_conv", ["input"], bias=False), {"name": "c_bn", "type": "batchnorm"},
     {"name": "c_add", "type": "add", "inputs": ["c_bn", "input"]},
     {"name": "c", "type": "relu"}],                                     # fold + residual + relu
    [conv("d_conv", ["input"]), {"name": "d_bn1", "type": "batchnorm"},
     {"name": "d_bn2", "type": "batchnorm", "eps": 1e-3},
     {"name": "d", "type": "tanh"}],                                     # two folds + tanh
    [conv("e_conv", ["input"]), {"name": "e_leaky", "type": "leaky_relu", "alpha": 0.1},
     {"name": "e", "type": "sigmoid"}],                                  # two activations
    [conv("f_conv", ["input"], bias=False),
     {"name": "f_add", "type": "add", "inputs": ["input", "f_conv"]},
     {"name": "f_bn", "type": "batchnorm"}, {"name": "f", "type": "relu"}],  # add, then bn
    [conv("g_conv", ["input"], kernel=1, stride=2, padding=0, bias=False),
     {"name": "g", "type": "batchnorm"}],                                # a 1x1 stride-2 shortcut
    [conv("h_conv", ["input"], groups=4), {"name": "h_bn", "type": "batchnorm"},
     {"name": "h", "type": "relu"}],                                     # depthwise
    [{"name": "i_flat", "type": "flatten", "inputs": ["input"]}, dense("i_fc", ["i_flat"]),
     {"name": "i_bn", "type": "batchnorm"}, {"name": "i", "type": "sigmoid"}],  # dense
    [dense("j_fc1", ["i_flat"]), dense("j_fc2", ["j_fc1"]),
     {"name": "j_add", "type": "add", "inputs": ["j_fc2", "j_fc1"]},     # j_fc1 has 2 readers
     {"name": "j", "type": "relu"}],
    [conv("k_conv", ["input"], filters=20, bias=False), {"name": "k_bn", "type": "batchnorm"},
     {"name": "k_prelu", "type": "prelu", "num_parameters": 20},
     {"name": "k_bn2", "type": "batchnorm"},
     {"name": "k", "type": "silu"}],                       # per-channel slope, partial block
    [conv("l_conv", ["input"]), {"name": "l_prelu", "type": "prelu"},
     {"name": "l_gelu", "type": "gelu"}, {"name": "l", "type": "hardswish"}],  # one slope
    [dense("m_fc", ["i_flat"]), {"name": "m_gelu", "type": "gelu", "approximate": "tanh"},
     {"name": "m_relu6", "type": "relu6"}, {"name": "m", "type": "hardsigmoid"}],
]
ZOO_1D = [
    [{"name": "a_conv", "type": "conv1d", "filters": 5, "kernel": 3, "padding": 1,
      "inputs": ["input"]}, {"name": "a_relu", "type": "relu"},
     {"name": "a", "type": "batchnorm"}],                                # the TDNN pattern
    [{"name": "b_conv", "type": "conv1d", "filters": 5, "kernel": 3, "padding": 1,
      "dilation": 1, "bias": False, "inputs": ["input"]}, {"name": "b_bn", "type": "batchnorm"},
     {"name": "b_add", "type": "add", "inputs": ["b_bn", "input"]},
     {"name": "b", "type": "leaky_relu"}],
]
ZOOS = {"zoo2d": ([4, 8, 8], ZOO_2D), "zoo1d": ([5, 9], ZOO_1D)}


def zoo_text(name: str) -> str:
    shape, branches = ZOOS[name]
    lines = [f"name: {name}", f"input: {json.dumps(shape)}", "layers:"]
    lines += [f"  - {json.dumps(layer)}" for branch in branches for layer in branch]
    lines.append(f"outputs: {json.dumps([branch[-1]['name'] for branch in branches])}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", params=list(ZOOS))
def zoo(request, tmp_path_factory):
    path = write_spec(tmp_path_factory.mktemp("zoo"), request.param, zoo_text(request.param))
    g, _ = load_checked(path)
    x = np.random.default_rng(3).standard_normal((3, *g.graph["input_shape"])).astype(np.float32)
    params, want = lively_params(g, x)
    return path, g, x, params, want


def test_zoo_fuses_every_pattern(zoo):
    _, g, _, _, _ = zoo
    optimized, _ = optimize(g, level=2)
    fused = {n: optimized.nodes[n]["layer"].describe() for n in optimized
             if optimized.nodes[n]["layer"].type_name == "fused"}
    # every branch's first weighted layer absorbed at least one layer after it
    assert len(fused) >= len(ZOOS[g.graph["name"]][1]) - 1, fused
    if g.graph["name"] == "zoo2d":
        assert fused["c_conv"] == "conv2d + batchnorm(folded) + add + relu"
        assert fused["b_conv"] == "conv2d + relu + batchnorm(scale-shift)"
        assert fused["d_conv"] == "conv2d + batchnorm(folded) + batchnorm(folded) + tanh"
        assert fused["f_conv"] == "conv2d + add + batchnorm(scale-shift) + relu"
        assert "j_fc1" not in fused, "j_fc1 has two readers: nothing may be fused into it"
        assert fused["k_conv"] == ("conv2d + batchnorm(folded) + prelu + "
                                   "batchnorm(scale-shift) + silu")
        assert fused["l_conv"] == "conv2d + prelu + gelu + hardswish"
        assert fused["m_fc"] == "dense + gelu + relu6 + hardsigmoid"


@pytest.mark.parametrize("level", [0, 2])
def test_zoo_compiles_to_the_reference(zoo, level):
    path, g, x, params, want = zoo
    model = cc.compile(path, opt_level=level)
    model.load_params(params)
    got = as_dict(model.predict(x), model.output_names)
    for name in g.graph["outputs"]:
        assert_close(got[name], want[name], what=f"{g.graph['name']} -O{level}: '{name}'")


# -- the lowered module -------------------------------------------------------------------------

def call_tirs(func) -> list[tuple[str, list[str]]]:
    """(callee, argument names) of every call_tir (or call_tir_inplace) in a Relax function,
    in order."""
    calls = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            op = getattr(value, "op", None)
            # the CPU backend writes a residual add over its dead shortcut: call_tir_inplace
            if getattr(op, "name", None) in ("relax.call_tir", "relax.call_tir_inplace"):
                calls.append((value.args[0].name_hint, [a.name for a in value.args[1].fields]))
    return calls


def optimized_graph(name, zoo_path=None):
    g, _ = load_checked(zoo_path or spec_path(name))
    return optimize(g, level=2)[0]


def check_one_call_per_fused_layer(g, func, plan=None) -> None:
    """Every fused layer's kernel arguments are read by one call_tir, which reads all of them
    (and its residual input); no other call reads them. A layer the CPU ``plan`` has write
    into a concat's output (``into``) may also take that output as its branches so far wrote
    it: at most one more activation."""
    arg_node = {kernel_name(a.name): a.node for a in kernel_signature(g)}
    calls = call_tirs(func)
    for node in topo_layers(g):
        layer = g.nodes[node]["layer"]
        if layer.type_name != "fused":
            continue
        mine = {kernel_name(a.name) for a in kernel_signature(g) if a.node == node}
        readers = [(callee, args) for callee, args in calls if mine & set(args)]
        assert len(readers) == 1, f"'{node}' ({layer.describe()}) is split over {readers}"
        callee, args = readers[0]
        assert mine <= set(args), f"'{node}': {callee} lacks {mine - set(args)}"
        others = [a for a in args if a in arg_node and arg_node[a] != node]
        assert not others, f"'{node}': {callee} also reads {others}"
        activations = [a for a in args if a not in arg_node]
        into = plan is not None and plan[node].into is not None
        assert len(activations) - 1 - layer.has_residual in ((0, 1) if into else (0,)), \
            (node, args)


ZOO_AND_SPECS = ["zoo2d", "zoo1d", "resnet_tiny", "resnet18_cifar", "googlenet", "tdnn",
                 "mobilenet_v1_cifar"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    made = {}
    directory = tmp_path_factory.mktemp("zoo-graphs")

    def get(name):
        if name not in made:
            path = write_spec(directory, name, zoo_text(name)) if name in ZOOS else None
            made[name] = optimized_graph(name, path)
        return made[name]

    return get


@pytest.mark.parametrize("name", ZOO_AND_SPECS)
def test_generic_lowering_calls_one_kernel_per_layer(graphs, name):
    from cnncompiler.backends.lower import build_module

    g = graphs(name)
    mod = build_module(g)
    func = mod["main"]
    kernels = [n for n in topo_layers(g)
               if n != "input" and not g.nodes[n]["layer"].passthrough]
    calls = call_tirs(func)
    assert len(calls) == len(kernels), "one call_tir per layer of the optimised graph"
    for node, (callee, _) in zip(kernels, calls):
        layer = g.nodes[node]["layer"]
        if isinstance(layer, Fused) and layer.epilogue_steps():
            blocks = block_names(mod[callee])
            assert "epilogue" in blocks, f"'{node}': {callee} has no epilogue: {blocks}"
    check_one_call_per_fused_layer(g, func)


def cpu_module(g):
    emit = pytest.importorskip("cnncompiler.backends.cpu.emit",
                               reason="the CPU backend has no scheduled emitter")
    from cnncompiler.backends.targets import parse_target

    return emit.build_cpu_module(g, parse_target("cpu").vector_lanes)


@pytest.mark.parametrize("name", ZOO_AND_SPECS)
def test_cpu_lowering_calls_one_kernel_per_fused_layer(graphs, name):
    g = graphs(name)
    mod, plan = cpu_module(g)
    check_one_call_per_fused_layer(g, mod["main"], plan)


def block_names(prim_func) -> list[str]:
    return re.findall(r'T\.sblock\("(\w+)"\)', prim_func.script())


def top_level_loops(prim_func) -> int:
    """How many loop nests the kernel's root block runs one after the other."""
    body = prim_func.body
    if hasattr(body, "block"):  # the root block
        body = body.block.body
    stmts = list(body.seq) if hasattr(body, "seq") else [body]
    return sum(type(s).__name__ == "For" for s in stmts)


@pytest.mark.parametrize("name", ["zoo2d", "resnet_tiny", "mobilenet_v1_cifar"])
def test_cpu_fused_conv_is_one_loop_nest(graphs, name):
    """In the scheduled CPU kernel the epilogue runs inside the conv's loops, on each tile
    while it is in registers or cache, not in a second pass over memory."""
    g = graphs(name)
    mod, plan = cpu_module(g)
    arg_node = {kernel_name(a.name): a.node for a in kernel_signature(g)}
    checked = 0
    for callee, args in call_tirs(mod["main"]):
        nodes = {arg_node[a] for a in args if a in arg_node}
        if len(nodes) != 1:
            continue
        (node,) = nodes
        layer = g.nodes[node]["layer"]
        if layer.type_name != "fused" or layer.base.type_name != "conv2d":
            continue
        if getattr(plan.get(node), "kind", "conv") not in ("conv", "depthwise"):
            continue
        assert top_level_loops(mod[callee]) == 1, \
            f"'{node}' ({layer.describe()}): {callee} runs several loop nests\n{mod[callee]}"
        checked += 1
    assert checked, "no fused conv was scheduled by the CPU backend"

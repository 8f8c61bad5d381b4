"""A pass never changes what the graph computes.

For every pass on its own, and for -O1 and -O2, on every spec in specs/: the optimised graph,
run by the numpy reference, gives the outputs of the spec's own graph. Then hypothesis builds
random small chains of conv2d, conv1d or dense layers, batch norms, activations, dropout,
identities and residual adds (with extra readers and extra outputs that make the passes
decline) and checks the same for random orders of the passes. Last, what each pass reports,
and where it must decline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncompiler.errors import CnncError
from cnncompiler.graph import load_checked, topo_layers
from cnncompiler.graph.check import check_spec
from cnncompiler.passes import LEVELS, PASSES, format_reports, optimize
from cnncompiler.reference import run_reference
from cnncompiler.spec import parse_spec_text

from compile_helpers import (assert_close, batch_for, lively_params, sample_input, spec_inputs,
                             spec_path)
from conftest import classic_specs

STEMS = [p.stem for p in classic_specs()]
PIPELINES = {**{name: [name] for name in PASSES},
             **{f"O{level}": LEVELS[level] for level in (1, 2)}}


def structure(g) -> tuple:
    """What a graph computes, as a value: its layers, their inputs and weights, its outputs."""
    return (tuple((n, g.nodes[n]["layer"], tuple(g.nodes[n]["inputs"]),
                   tuple(sorted((g.nodes[n].get("param_names") or {}).items())))
                  for n in topo_layers(g)),
            tuple(g.graph["outputs"]))


def assert_computes_the_same(g, optimized, x, params, want, rtol=1e-4, what=""):
    """``optimized``'s outputs, in order, against ``want`` (the original's, by name)."""
    got = run_reference(optimized, x, params)
    for original, new in zip(g.graph["outputs"], optimized.graph["outputs"]):
        assert_close(got[new], want[original], rtol=rtol, what=f"{what}: output '{original}'")


class SpecCase:
    def __init__(self, stem: str):
        self.graph, _ = load_checked(spec_path(stem))
        self.x = spec_inputs(self.graph)
        self.params, self.want = lively_params(self.graph, self.x)


@pytest.fixture(scope="module", params=STEMS)
def case(request):
    return SpecCase(request.param)


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_pass_keeps_what_the_spec_computes(case, pipeline):
    before = structure(case.graph)
    optimized, reports = optimize(case.graph, passes=PIPELINES[pipeline])
    assert structure(case.graph) == before, "a pass edited the graph it was given"
    if not any(r.applied for r in reports):
        assert structure(optimized) == before, "a pass changed the graph without a report"
        return
    assert_computes_the_same(case.graph, optimized, case.x, case.params, case.want,
                             what=f"{case.graph.graph['name']} after {pipeline}")


# -- random small chains ---------------------------------------------------------------------------

ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh"]
STEP = st.sampled_from(["conv", "conv", "conv1x1_nobias", "bn", "bn", "act", "add", "dropout",
                        "identity", "pool1"])


MODES = {  # the weighted layer of a chain, its per-sample input, and its 1-wide pool
    "conv2d": ("conv2d", ", 5, 5]", "maxpool2d"),
    "conv1d": ("conv1d", ", 7]", "maxpool1d"),
    "dense": ("dense", "]", None),
}


@st.composite
def chains(draw):
    """A spec text: a chain of conv2d, conv1d or dense layers with batch norms, activations,
    dropout, identities and adds that read earlier layers of the same width; some layers are
    also listed as outputs (so they have two readers)."""
    weighted, shape_tail, pool = MODES[draw(st.sampled_from(list(MODES)))]
    channels = draw(st.integers(1, 4))
    steps = draw(st.lists(STEP, min_size=1, max_size=9))
    widths = {"input": channels}
    layers, prev, width = [], "input", channels
    for i, step in enumerate(steps):
        name = f"l{i}"
        layer = {"name": name, "inputs": [prev]}
        if step in ("conv", "conv1x1_nobias"):
            width = draw(st.integers(1, 4))
            if weighted == "dense":
                layer |= {"type": "dense", "units": width}
            else:
                layer |= {"type": weighted, "filters": width,
                          "kernel": 3 if step == "conv" else 1, "padding": "same"}
            if step == "conv1x1_nobias":
                layer["bias"] = False
        elif step == "bn":
            layer |= {"type": "batchnorm", "eps": draw(st.sampled_from([1e-5, 1e-3]))}
        elif step == "act":
            kind = draw(st.sampled_from(ACTIVATIONS))
            layer |= {"type": kind}
            if kind == "leaky_relu":
                layer["alpha"] = draw(st.sampled_from([0.0, 0.1, 0.3]))
        elif step == "add":
            same = [n for n, w in widths.items() if w == width]
            other = draw(st.sampled_from(same))
            layer |= {"type": "add", "inputs": draw(st.permutations([prev, other]))}
        elif step == "pool1" and pool:
            layer |= {"type": pool, "kernel": 1, "stride": 1}
        else:
            layer |= {"type": "identity" if step == "pool1" else step}
        layers.append(layer)
        widths[name] = width
        prev = name
    names = [layer["name"] for layer in layers]
    extra = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    outputs = [n for n in names if n in extra and n != prev] + [prev]
    lines = ["name: chain", f"input: [{channels}{shape_tail}", "layers:"]
    lines += [f"  - {json.dumps(layer)}" for layer in layers]
    lines.append(f"outputs: {json.dumps(outputs)}")
    return "\n".join(lines) + "\n"


def random_weights(g, seed: int) -> dict:
    """Every weight random, batch-norm variances positive."""
    rng = np.random.default_rng(seed)
    params = {}
    for name in topo_layers(g):
        for local, spec in g.nodes[name].get("param_specs", {}).items():
            if local == "running_var":
                params[f"{name}.{local}"] = rng.uniform(0.2, 2.0, spec.shape)
            else:
                params[f"{name}.{local}"] = rng.uniform(-1.0, 1.0, spec.shape)
    return params


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=chains(), order=st.permutations(list(PASSES)), seed=st.integers(0, 2**16),
       level=st.sampled_from([1, 2]))
def test_passes_keep_random_chains(text, order, seed, level):
    g, _ = check_spec(parse_spec_text(text, "chain.yaml"))
    params = random_weights(g, seed)
    x = np.random.default_rng(seed).standard_normal((2, *g.graph["input_shape"]))
    want = run_reference(g, x, params)
    for passes in (LEVELS[level], order, order + order):
        optimized, _ = optimize(g, passes=passes)
        assert_computes_the_same(g, optimized, x, params, want, rtol=1e-9,
                                 what=f"passes {passes} on\n{text}")


# -- what the passes report, and where they decline ---------------------------------------------

def optimized_spec(tmp_path, text, passes=None, level=2):
    g, _ = check_spec(parse_spec_text(text, str(tmp_path / "t.yaml")))
    optimized, reports = optimize(g, level=level, passes=passes)
    return g, optimized, {r.name: r for r in reports}


HEAD = "name: t\ninput: [3, 6, 6]\nlayers:\n"


def test_fold_and_fuse_report_what_they_did(tmp_path):
    g, o, reports = optimized_spec(tmp_path, HEAD + """
  - {name: conv, type: conv2d, filters: 4, kernel: 3, padding: 1, bias: false}
  - {name: bn, type: batchnorm}
  - {name: relu, type: relu}
""")
    assert reports["fold-batchnorm"].applied == [
        "folded batchnorm 'bn' into conv2d 'conv' weights"]
    assert reports["fuse-epilogue"].applied == [
        "fused relu 'relu' into 'conv' (conv2d + batchnorm(folded) + relu)"]
    assert list(topo_layers(o)) == ["input", "conv"]
    assert o.nodes["conv"]["merged"] == ("conv", "bn", "relu")
    assert o.graph["outputs"] == ["conv"]


def test_batchnorm_not_folded_into_a_conv_with_two_readers(tmp_path):
    _, o, reports = optimized_spec(tmp_path, HEAD + """
  - {name: conv, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: bn, type: batchnorm}
  - {name: side, type: relu, inputs: [conv]}
outputs: [bn, side]
""")
    (declined,) = reports["fold-batchnorm"].declined
    assert "'bn' not folded into 'conv'" in declined and "2 readers" in declined
    assert not reports["fold-batchnorm"].applied
    assert {"conv", "bn", "side"} <= set(o)


def test_batchnorm_after_an_activation_is_a_scale_and_shift(tmp_path):
    _, o, reports = optimized_spec(tmp_path, HEAD + """
  - {name: conv, type: conv2d, filters: 4, kernel: 3}
  - {name: relu, type: relu}
  - {name: bn, type: batchnorm}
""")
    assert any("cannot change the weights" in d for d in reports["fold-batchnorm"].declined) \
        or not reports["fold-batchnorm"].applied
    assert o.nodes["conv"]["layer"].describe() == "conv2d + relu + batchnorm(scale-shift)"


def test_only_one_residual_add_per_kernel(tmp_path):
    _, o, reports = optimized_spec(tmp_path, HEAD + """
  - {name: conv, type: conv2d, filters: 3, kernel: 3, padding: 1}
  - {name: add1, type: add, inputs: [conv, input]}
  - {name: add2, type: add, inputs: [add1, input]}
""")
    assert o.nodes["conv"]["layer"].describe() == "conv2d + add"
    assert "add2" in o
    assert any("already fuses a residual add" in d for d in reports["fuse-epilogue"].declined)


def test_output_layer_is_not_fused_away(tmp_path):
    _, o, reports = optimized_spec(tmp_path, HEAD + """
  - {name: conv, type: conv2d, filters: 3, kernel: 1}
  - {name: relu, type: relu}
outputs: [conv, relu]
""")
    assert {"conv", "relu"} <= set(o)
    (declined,) = reports["fuse-epilogue"].declined
    assert "'relu' not fused into 'conv'" in declined and "the model output" in declined


def test_cleanups_report_what_they_removed(tmp_path):
    _, o, reports = optimized_spec(tmp_path, HEAD + """
  - {name: drop, type: dropout, rate: 0.3}
  - {name: same, type: identity}
  - {name: pool, type: maxpool2d, kernel: 1, stride: 1}
  - {name: one, type: concat, inputs: [pool]}
  - {name: dead, type: relu, inputs: [input]}
  - {name: flat, type: flatten, inputs: [one]}
  - {name: flat2, type: flatten}
""", level=1)
    assert reports["drop-dropout"].applied == ["removed dropout 'drop'"]
    assert reports["eliminate-dead"].applied == ["removed 'dead' (reaches no output)"]
    removed = " ".join(reports["drop-identity"].applied)
    for name in ("same", "pool", "one", "flat2"):
        assert f"'{name}'" in removed
    assert list(topo_layers(o)) == ["input", "flat"]
    assert o.graph["outputs"] == ["flat"]


def test_every_pass_says_something(tmp_path):
    _, _, reports = optimized_spec(tmp_path, HEAD + "  - {type: relu}\n")
    text = format_reports(list(reports.values()))
    for name in LEVELS[2]:
        assert f"{name}: nothing to do" in text


def test_unknown_pass_is_refused_with_a_suggestion():
    g, _ = load_checked(spec_path("lenet5"))
    with pytest.raises(CnncError, match="unknown pass 'fold-batchnrom'.*fold-batchnorm"):
        optimize(g, passes=["fold-batchnrom"])
    with pytest.raises(CnncError, match="-O3"):
        optimize(g, level=3)


def test_an_adaptive_pool_to_its_input_size_is_removed():
    """VGG's and AlexNet's avgpool at their own input size is the identity: no kernel."""
    text = """\
name: adaptive_identity
input: [3, 7, 7]
layers:
  - {name: c, type: conv2d, filters: 4, kernel: 1}
  - {name: ap, type: adaptive_avgpool2d, output_size: 7}
  - {name: mp, type: adaptive_maxpool2d, output_size: [7, 7]}
  - {name: small, type: adaptive_avgpool2d, output_size: [3, 7]}
"""
    g, _ = check_spec(parse_spec_text(text, "<adaptive>"))
    optimized, reports = optimize(g, level=2)
    assert "ap" not in optimized and "mp" not in optimized and "small" in optimized
    removed = [line for r in reports for line in r.applied if line.startswith("removed")]
    assert "removed 'ap' (adaptive pooling to its input's size)" in removed
    x = sample_input(g.graph["input_shape"], 2)
    params, want = lively_params(g, x)
    got = run_reference(optimized, x, params)
    assert_close(got["small"], want["small"])

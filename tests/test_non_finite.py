"""NaN and infinities in, NaN and infinities out, as in PyTorch: a compiled model must not hide bad
data. Every kernel family is compiled at -O0 (each layer its own kernel) and -O2 (fused
epilogues) and run on inputs holding NaN, +inf and -inf; its outputs must have NaN and
infinities exactly where the numpy reference and PyTorch have them, and agree elsewhere. Then
``check_finite``, which names the first layer whose output is non-finite.
"""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np
import pytest

import cnncompiler as cc
from cnncompiler.errors import InputError, NonFiniteError
from cnncompiler.graph import param_names, topo_layers
from cnncompiler.reference import init_params, run_reference
from cnncompiler.runtime.finite import check_finite

from compile_helpers import as_dict, lively_params, spec_path, write_spec
from conftest import HAVE_TORCH

# weights near the float32 limit overflow when batch norms are folded into them, as meant
pytestmark = [pytest.mark.tvm,
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]

NAN, INF = float("nan"), float("inf")
INPUT = [5, 9, 8]


def layer(name, type_, inputs, **keys):
    return {"name": name, "type": type_, "inputs": inputs, **keys}


def conv(name, inputs, **keys):
    return layer(name, "conv2d", inputs, **{"filters": 6, "kernel": 3, "padding": 1, **keys})


ACTIVATIONS = {"relu": {}, "leaky_relu": {"alpha": 0.2}, "sigmoid": {}, "tanh": {}}
WINDOWS = {"max": ("maxpool2d", {"kernel": 3, "stride": 2, "padding": 1}),
           "max_ceil": ("maxpool2d", {"kernel": 3, "stride": 2, "ceil_mode": True}),
           "max_k2": ("maxpool2d", {"kernel": 2}),
           "max_s1": ("maxpool2d", {"kernel": 3, "stride": 1, "padding": 1}),
           "avg": ("avgpool2d", {"kernel": 3, "stride": 2, "padding": 1}),
           "avg_excl": ("avgpool2d", {"kernel": 3, "stride": 1, "padding": 1,
                                      "count_include_pad": False}),
           "gmax": ("global_maxpool", {}), "gavg": ("global_avgpool", {}),
           "lp": ("lppool2d", {"p": 2, "kernel": 2}), "blur": ("blurpool2d", {}),
           "lp3": ("lppool2d", {"p": 3, "kernel": 2}),
           "max_wide": ("maxpool2d", {"kernel": 3, "stride": 2, "padding": 2}),
           "amax": ("adaptive_maxpool2d", {"output_size": [4, 3]}),
           "aavg": ("adaptive_avgpool2d", {"output_size": [4, 5]}),
           "lrn": ("lrn", {"size": 3, "alpha": 0.5}), "softmax": ("softmax", {})}


def branches() -> list[list[dict]]:
    """Each kernel family on the plain input (the generic and plain kernels) and on ``stem``, a
    depthwise 1x1 conv of positive weights: the input scaled, in the blocked layout, so the
    blocked pool and element-wise kernels see the very NaN and infinities."""
    out = [[layer("stem", "conv2d", ["input"], filters=5, kernel=1, groups=5, bias=False)]]
    for source, tag in (("input", "in"), ("stem", "b")):
        out += [[layer(f"{kind}_{tag}", kind, [source], **keys)]
                for kind, keys in ACTIVATIONS.items()]
        out += [[layer(f"{name}_{tag}", kind, [source], **keys)]
                for name, (kind, keys) in WINDOWS.items()]
    out += [
        [layer("bn_in", "batchnorm", ["input"])],
        [layer("add_in", "add", ["input", "relu_in"])],
        [layer("cat", "concat", ["stem", "input", "tanh_b"])],
        # fused epilogues at -O2: conv + bn + relu; conv + bn + residual + relu; two activations
        [conv("a_conv", ["input"], bias=False), layer("a_bn", "batchnorm", ["a_conv"]),
         layer("a", "relu", ["a_bn"])],
        [conv("r_conv", ["input"], filters=5, kernel=1, padding=0, bias=False),
         layer("r_bn", "batchnorm", ["r_conv"]), layer("r_add", "add", ["r_bn", "stem"]),
         layer("r", "relu", ["r_add"])],
        [conv("e_conv", ["input"]), layer("e_leaky", "leaky_relu", ["e_conv"], alpha=0.1),
         layer("e", "sigmoid", ["e_leaky"])],
        [conv("t_conv", ["input"], filters=20), layer("t", "tanh", ["t_conv"])],
        # a conv reading a conv whose one channel only partly fills its channel block
        [conv("p1", ["input"], filters=1, kernel=1, padding=0),
         conv("p2", ["p1"], filters=4, kernel=1, padding=0)],
        [layer("flat", "flatten", ["input"]), layer("fc_a", "dense", ["flat"], units=7),
         layer("fc", "relu", ["fc_a"])],
        [layer("fc_b", "dense", ["flat"], units=6), layer("fc_soft", "softmax", ["fc_b"])],
    ]
    return out


OUTPUTS = [b[-1]["name"] for b in branches() if b[-1]["name"] != "stem"]


def family_text() -> str:
    lines = ["name: non_finite", f"input: {json.dumps(INPUT)}", "layers:"]
    lines += [f"  - {json.dumps(spec)}" for b in branches() for spec in b]
    return "\n".join(lines + [f"outputs: {json.dumps(OUTPUTS)}"]) + "\n"


def bad_input() -> np.ndarray:
    """Four samples: NaN; +inf and -inf apart; two -inf in one pooling window among finite
    values; a channel of nothing but -inf."""
    x = np.random.default_rng(3).standard_normal((4, *INPUT)).astype(np.float32)
    x[0, 1, 2, 3] = x[0, 3, 7, 7] = NAN
    x[1, 2, 4, 4], x[1, 0, 0, 0] = INF, -INF
    x[2, 4, 1, 1] = x[2, 4, 1, 2] = -INF
    x[3, 3] = -INF
    return x


def family_params(g) -> dict:
    """Default weights; the stem's positive, so it keeps each value's sign; batch norms with
    drawn statistics."""
    params = init_params(g, seed=5)
    rng = np.random.default_rng(5)
    for name in topo_layers(g):
        names = param_names(g, name)
        if name == "stem":
            params[names["weight"]] = rng.uniform(0.5, 1.5, (5, 1, 1, 1)).astype(np.float32)
        elif g.nodes[name]["layer"].type_name == "batchnorm":
            for local, (lo, hi) in {"weight": (0.5, 1.5), "bias": (-0.5, 0.5),
                                    "running_mean": (-0.5, 0.5),
                                    "running_var": (0.5, 2.0)}.items():
                params[names[local]] = rng.uniform(lo, hi, params[names[local]].shape) \
                    .astype(np.float32)
    return params


def assert_same_non_finite(got, want, what: str) -> None:
    """NaN, +inf and -inf at the same places; the finite values equal within 1e-4 of the
    output's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    for kind, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        wrong = test(got) != test(want)
        assert not wrong.any(), (f"{what}: {kind} at {np.argwhere(wrong)[:5].tolist()} "
                                 f"differs (got {got[wrong][:5]}, expected {want[wrong][:5]})")
    finite = np.isfinite(want)
    if finite.any():
        scale = max(float(np.abs(want[finite]).max()), 1e-6)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=what)


class Family:
    def __init__(self, level: int, directory):
        self.model = cc.compile(write_spec(directory, "non_finite", family_text()),
                                opt_level=level)
        g = self.model.graph
        self.model.load_params(family_params(g))
        self.x = bad_input()
        self.got = as_dict(self.model.predict(self.x), self.model.output_names)
        with np.errstate(invalid="ignore", over="ignore"):
            self.want = run_reference(g, self.x.astype(np.float64), self.model.params)
        self.torch = {}
        if HAVE_TORCH:
            from test_compile_layers import torch_outputs

            self.torch = torch_outputs(g, self.x, self.model.params)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    made = {}

    def get(level: int) -> Family:
        if level not in made:
            made[level] = Family(level, tmp_path_factory.mktemp(f"o{level}"))
        return made[level]

    return get


def test_the_input_holds_each_kind_of_bad_value():
    x = bad_input()
    assert np.isnan(x).sum() == 2 and np.isposinf(x).sum() == 1
    assert np.isneginf(x[3, 3]).all()


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("output", OUTPUTS)
def test_non_finite_values_match_the_reference(families, level, output):
    fam = families(level)
    assert_same_non_finite(fam.got[output], fam.want[output], f"-O{level} {output} vs numpy")


@pytest.mark.torch
@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("output", OUTPUTS)
def test_non_finite_values_match_torch(families, level, output):
    fam = families(level)
    if fam.torch.get(output) is None:
        pytest.skip(f"PyTorch has no layer on the way to {output}")
    assert_same_non_finite(fam.got[output], fam.torch[output], f"-O{level} {output} vs torch")


def test_the_reference_itself_keeps_non_finite_values(families):
    """The oracle must not hide them either: the checks above would then pass vacuously."""
    want = families(0).want
    assert np.isnan(want["relu_in"][0, 1, 2, 3]) and np.isposinf(want["relu_in"][1, 2, 4, 4])
    assert want["relu_in"][1, 0, 0, 0] == 0.0
    assert np.isnan(want["max_in"][0]).any() and np.isfinite(want["max_in"][2]).all()
    assert np.isneginf(want["gmax_in"][3, 3]).all()
    assert np.isposinf(want["p2"][1]).any() or np.isneginf(want["p2"][1]).any()


# -- whole networks -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """LeNet-5 and a small ResNet at the default -O2, with batch norms that keep activations
    alive."""
    made = {}
    for stem in ("lenet5", "resnet_tiny"):
        model = cc.compile(spec_path(stem), output_dir=tmp_path_factory.mktemp(stem) / stem)
        x = np.random.default_rng(0).standard_normal((3, *model.input_shape)) \
            .astype(np.float32)
        params, _ = lively_params(model.graph, x)
        model.load_params(params)
        made[stem] = model
    return made


@pytest.mark.parametrize("stem", ["lenet5", "resnet_tiny"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_an_all_bad_input_gives_what_the_reference_gives(networks, stem, value):
    model = networks[stem]
    x = np.full((2, *model.input_shape), value, np.float32)
    got = model.predict(x)
    with np.errstate(invalid="ignore", over="ignore"):
        want = run_reference(model.graph, x, model.params)[model.output_names[0]]
    assert not np.isfinite(want).all()
    assert_same_non_finite(got, want, f"{stem} on {value}")


@pytest.mark.parametrize("stem", ["lenet5", "resnet_tiny"])
def test_one_bad_pixel_spoils_its_sample_only(networks, stem):
    model = networks[stem]
    x = np.random.default_rng(1).standard_normal((3, *model.input_shape)).astype(np.float32)
    x[1, 0, 5, 7] = NAN
    got = model.predict(x)
    assert np.isnan(got[1]).all()
    assert np.isfinite(got[[0, 2]]).all()


# -- check_finite: which layer ------------------------------------------------------------------

@contextlib.contextmanager
def changed_weights(model, **changes):
    """The model with some weights replaced (by a function of the old ones), then restored."""
    old = model.params
    model.load_params({**old, **{k.replace("__", "."): f(old[k.replace("__", ".")])
                                 for k, f in changes.items()}})
    try:
        yield model
    finally:
        model.load_params(old)


def finite_input(model, batch: int = 3) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((batch, *model.input_shape)) \
        .astype(np.float32)


def non_finite_error(model, x) -> str:
    with pytest.raises(NonFiniteError) as info:
        check_finite(model, x, model.predict(x))
    return str(info.value)


def test_finite_input_and_output_pass(networks):
    model = networks["resnet_tiny"]
    x = finite_input(model)
    assert check_finite(model, x, model.predict(x)) is None


def test_a_non_finite_input_names_its_samples(networks):
    model = networks["resnet_tiny"]
    x = finite_input(model, batch=4)
    x[1, 0, 3, 3], x[3, 2, 0, 0], x[3, 2, 0, 1] = NAN, INF, -INF
    with pytest.raises(InputError, match=r"input: 3 of 12288 values non-finite \(1 NaN, "
                                         r"1 \+inf, 1 -inf\) in samples 1, 3 of the batch of 4"):
        check_finite(model, x, model.predict(x))


def test_the_layer_inside_a_fused_kernel_is_named(networks):
    """At -O2 bn1 is folded into its conv's kernel: the kernel is found in the compiled code,
    the layer inside it by the reference on that kernel's inputs."""
    model = networks["resnet_tiny"]
    x = finite_input(model)
    with changed_weights(model, layer1__1__bn1__weight=lambda w: np.full_like(w, 3e38)):
        message = non_finite_error(model, x)
    assert "output 'fc' has 30 of 30 values non-finite" in message
    assert "spec.yaml:" in message
    assert "layer 'layer1.1.bn1' (batchnorm) is the first whose output is not finite: " \
           "49152 of 49152 values non-finite" in message
    assert "running those samples again through the compiled kernels" in message
    assert "kernel 'layer1.1.conv1', which computes 'layer1.1.conv1' (conv2d), " \
           "'layer1.1.bn1' (batchnorm), 'layer1.1.relu1' (relu)" in message
    assert "places it at 'layer1.1.bn1'" in message


def test_predict_checks_when_asked_and_propagates_otherwise(networks):
    model = networks["resnet_tiny"]
    x = finite_input(model, batch=2)
    x[1, 0, 0, 0] = NAN
    y = model.predict(x)
    assert np.isfinite(y[0]).all() and np.isnan(y[1]).all()
    with pytest.raises(InputError, match="in sample 1 of the batch of 2"):
        model.predict(x, check_finite=True)
    with changed_weights(model, layer1__1__bn1__weight=lambda w: np.full_like(w, 3e38)):
        with pytest.raises(NonFiniteError, match="layer 'layer1.1.bn1' \\(batchnorm\\) is the "
                                                 "first whose output is not finite"):
            model.predict(finite_input(model), check_finite=True)


def test_a_kernel_without_weights_after_a_reshape_is_named(networks):
    """The global average sums values that are each finite; the flatten after it is no kernel
    at all (a reshape), and the dense after that is matched by its weights."""
    model = networks["resnet_tiny"]
    x = finite_input(model)
    with changed_weights(model, layer1__1__bn2__weight=lambda w: np.full_like(w, 3e36)):
        message = non_finite_error(model, x)
    assert "layer '3' (global_avgpool) is the first whose output is not finite" in message
    assert "through the compiled kernels" in message and "reference" not in message


def test_the_reference_is_the_fallback(networks, monkeypatch):
    from cnncompiler.runtime import finite

    def refuse(self, x):
        raise finite.Mismatch("for this test")

    monkeypatch.setattr(finite.KernelTrace, "run", refuse)
    model = networks["resnet_tiny"]
    with changed_weights(model, layer1__1__bn1__weight=lambda w: np.full_like(w, 3e38)):
        message = non_finite_error(model, finite_input(model))
    assert "layer 'layer1.1.bn1' (batchnorm) is the first" in message
    assert "running the float32 numpy reference (cnncompiler.reference) layer by layer on " \
           "those samples and the same weights, since the compiled kernel calls could not " \
           "be matched to the layers (for this test)" in message


def test_an_output_that_is_finite_when_run_again_is_reported_as_such(networks):
    model = networks["lenet5"]
    x = finite_input(model)
    y = model.predict(x).copy()
    y[2, 4] = NAN
    with pytest.raises(NonFiniteError, match="output 'output' has 1 of 30 values non-finite "
                                             r"\(1 NaN\) in sample 2 of the batch of 3, but no "
                                             "layer's output is non-finite"):
        check_finite(model, x, y)


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("broken,change,kind", [
    ("p2", {"p2__weight": lambda w: np.sign(w) * 3e38, "p1__bias": lambda b: b + 10},
     "conv2d"),
    ("fc_a", {"fc_a__weight": lambda w: np.sign(w) * 3e38}, "dense"),
    ("a_bn", {"a_bn__weight": lambda w: np.full_like(w, 3e38)}, "batchnorm"),
])
def test_every_kernel_before_the_layer_is_matched(families, level, broken, change, kind):
    """The family runs plain, blocked and generic kernels, layout conversions and fused ones
    before the broken layer: each must be matched to its layer. Outputs come as the list
    ``predict`` computes and as a dict."""
    model = families(level).model
    x = finite_input(model)
    with changed_weights(model, **change):
        y = model.predict(x)
        for output in (list(y.values()), y):
            with pytest.raises(NonFiniteError) as info:
                check_finite(model, x, output)
            message = str(info.value)
            assert f"layer '{broken}' ({kind}) is the first whose output" in message
            assert "through the compiled kernels" in message


@pytest.mark.parametrize("level", [0, 2])
def test_a_pool_summing_huge_finite_values_is_named(families, level):
    model = families(level).model
    x = np.full((2, *INPUT), 3e38, np.float32)
    with changed_weights(model, stem__weight=lambda w: np.full_like(w, 0.5)):
        message = non_finite_error(model, x)
    assert "layer 'avg_in' (avgpool2d) is the first whose output is not finite" in message
    assert "through the compiled kernels" in message


# -- gradients where the forward keeps NaN ------------------------------------------------------

GRAD_LAYERS = {"relu": "{type: relu}", "maxpool2d": "{type: maxpool2d, kernel: 2}",
               "global_maxpool": "{type: global_maxpool}"}


def compiled_input_gradient(kind: str, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx of one layer from te_ops' forward and te_grad's backward, compiled as one kernel."""
    import tvm
    from tvm import te

    from cnncompiler.backends.rules import rules_for
    from cnncompiler.graph import check_spec
    from cnncompiler.spec import parse_spec_text

    text = f"name: g\ninput: {list(x.shape[1:])}\nlayers:\n  - {{name: l, {GRAD_LAYERS[kind][1:]}\n"
    g, _ = check_spec(parse_spec_text(text, "<grad>"))
    layer, out_shape = g.nodes["l"]["layer"], g.nodes["l"]["shape"]
    xt = te.placeholder(x.shape, "float32", name="x")
    rules = rules_for(layer)
    y = rules.compute(layer, [xt], {}, out_shape)
    dyt = te.placeholder(dy.shape, "float32", name="dy")
    (dx,), _ = rules.gradient(layer, [xt], y, dyt, {}, out_shape)
    func = tvm.tirx.build(te.create_prim_func([xt, dyt, dx]),
                          target=tvm.target.Target({"kind": "llvm"}))
    out = tvm.runtime.empty(x.shape, "float32")
    func(tvm.runtime.tensor(x), tvm.runtime.tensor(dy), out)
    return out.numpy()


@pytest.mark.torch
@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("kind", sorted(GRAD_LAYERS))
def test_gradients_go_where_torch_sends_them(kind):
    """relu passes the gradient at a NaN (PyTorch: none where x <= 0); a max pool sends it to
    the NaN of its window, the maximum of a window that holds one."""
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    x[0, 0, 0, 1], x[0, 2, 3, 3], x[1, 1, 5, 4] = NAN, INF, -INF
    x[1, 0, 2, 2] = 0.0
    forward = {"relu": torch.relu, "maxpool2d": lambda t: F.max_pool2d(t, 2),
               "global_maxpool": lambda t: F.adaptive_max_pool2d(t, 1)}[kind]
    xt = torch.from_numpy(x).requires_grad_()
    yt = forward(xt)
    dy = np.random.default_rng(3).uniform(0.5, 1.5, tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(compiled_input_gradient(kind, x, dy), xt.grad.numpy())


INCEPTION = """name: branches
input: [3, 8, 8]
layers:
  - {name: stem, type: conv2d, filters: 16, kernel: 3, padding: 1}
  - {name: b1, type: conv2d, filters: 16, kernel: 1, inputs: [stem]}
  - {name: b2, type: conv2d, filters: 32, kernel: 3, padding: 1, inputs: [stem]}
  - {name: b3_pool, type: maxpool2d, kernel: 3, stride: 1, padding: 1, inputs: [stem]}
  - {name: b3, type: conv2d, filters: 16, kernel: 1}
  - {name: joined, type: concat, inputs: [b1, b2, b3]}
  - {name: head, type: conv2d, filters: 16, kernel: 1}
"""


@pytest.mark.parametrize("broken", ["b2", "b3", "head"])
def test_a_layer_writing_into_its_concat_is_matched(tmp_path, broken):
    """The branches write their blocks of the concat's output, which runs no kernel of its
    own: each branch's own blocks of it (the count of bad values is the reference's, but for
    the few sums that overflow in one summation order and not in another), and the concat as
    the join of them, are still matched."""
    model = cc.compile(write_spec(tmp_path, "branches", INCEPTION), output_dir=tmp_path / "m")
    assert model.manifest["build"]["assembled"] == ["joined"]
    rows = json.loads((tmp_path / "m" / "report.json").read_text())["kernels"]
    assert [r["what"] for r in rows if r["kernel"] == "joined"] == \
        ["concat, no kernel: its inputs' kernels write it"]
    x = finite_input(model)
    model.load_params(lively_params(model.graph, x)[0])
    with changed_weights(model, **{f"{broken}__weight": lambda w: np.sign(w) * 3e38}):
        message = non_finite_error(model, x)
        with np.errstate(all="ignore"):
            want = run_reference(model.graph, x, model.params, dtype=np.float32,
                                 keep=True)[broken]
    found = re.search(f"layer '{broken}' \\(conv2d\\) is the first whose output is not "
                      r"finite: (\d+) of (\d+) values non-finite", message)
    assert found, message
    count, size = int(found[1]), int(found[2])
    assert size == want.size and abs(count - (~np.isfinite(want)).sum()) <= want.size // 100
    assert "through the compiled kernels" in message and "reference" not in message


CONV_POOL = """name: stem_pool
input: [3, 12, 12]
layers:
  - {name: c1, type: conv2d, filters: 16, kernel: 3, padding: 1}
  - {name: r1, type: relu}
  - {name: p1, type: maxpool2d, kernel: 2}
  - {name: c2, type: conv2d, filters: 16, kernel: 3, padding: 1}
"""


@pytest.mark.parametrize("broken,change", [
    ("c1", {"c1__weight": lambda w: np.sign(w) * 3e38}),
    ("c2", {"c2__weight": lambda w: np.sign(w) * 3e38, "c1__bias": lambda b: b + 10}),
])
def test_a_conv_computing_its_pool_is_matched(tmp_path, broken, change):
    """A conv whose kernel computes the pool that alone reads it writes the pool's value: the
    trace takes it for the pool's and opens the kernel up where it is the first non-finite
    one (its layers the conv's and the pool's), or goes on to the layers after it."""
    model = cc.compile(write_spec(tmp_path, "stem_pool", CONV_POOL), output_dir=tmp_path / "m")
    assert model.manifest["build"]["absorbed"] == {"p1": "c1"}
    rows = json.loads((tmp_path / "m" / "report.json").read_text())["kernels"]
    assert [r["what"] for r in rows if r["kernel"] == "p1"] == \
        ["maxpool2d, no kernel: the kernel of 'c1' computes it"]
    x = finite_input(model)
    with changed_weights(model, **change):
        message = non_finite_error(model, x)
    assert f"layer '{broken}' (conv2d) is the first whose output is not finite" in message
    assert "through the compiled kernels" in message
    if broken == "c1":
        assert "kernel 'c1', which computes 'c1' (conv2d), 'r1' (relu), 'p1' (maxpool2d)" \
            in message

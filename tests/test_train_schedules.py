"""The CPU training step's scheduled kernels (backends/cpu/train_*) against the plain computes.

Each family below is a spec whose branches exercise one kernel family of the training step
(convs strided, dilated, padded unevenly, grouped, depthwise, 1-D, with odd channel counts;
batch norm, pools, activations, adds, dropout; the layers that fall back to the plain
computes), all feeding one loss. Each is compiled twice: with the scheduled float32 CPU
kernels in blocked layouts, and with the plain float64 computes that tests/test_train_grads.py
checks against finite differences. One SGD step at lr = 1 from the same weights must give the
same loss, gradients (p - p_new), running statistics and squared norms, within float32's
rounding. Each case also checks the lowering picked the kernel it is meant to exercise, and
the kernels are checked to be scheduled: parallel and vector loops. No timing here: that is
benchmarks/train_step.py's job.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cnncompiler.graph import check_spec
from cnncompiler.reference import init_params
from cnncompiler.graph.signature import kernel_name
from cnncompiler.spec import parse_spec_text

from conftest import SPECS

tvm = pytest.importorskip("tvm", reason="the TVM compiler is not installed")

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

LANES = 16  # AVX-512's float32 vector: the layouts do not depend on the host having it
BATCH = 3   # odd, so nothing divides it
RTOL = 1e-4
# A gradient is measured against the largest gradient entry of its layer: a bias's sums over
# batch and space cancel, so float32 keeps fewer of their digits than the weight's (2e-4 of
# the bias's own largest entry seen); a wrong index or padding is off by far more.
GRAD_RTOL = 1e-3


def conv(name, filters, **keys):
    return {"name": name, "type": "conv2d", "filters": filters, "kernel": 3, **keys}


def conv1d(name, filters, **keys):
    return {"name": name, "type": "conv1d", "filters": filters, "kernel": 3, **keys}


def layer(name, kind, **keys):
    return {"name": name, "type": kind, **keys}


# family -> (input shape, stem layers, {case: (layers, {layer: expected kind[/input grad]})})
# Each case's first layer reads the stem's last layer; each case ends in a flatten, and the
# flattened cases are concatenated into one dense layer and the loss. 'conv/columns' names the
# kernel kind and how the conv's input gradient is computed.
FAMILIES = {
    "conv2d": ([3, 11, 10], [conv("stem", 20, padding=1), layer("stem_t", "tanh")], {
        "k3": ([conv("k3", 16, padding=1)], {"k3": "conv/transposed"}),
        "k5_s2": ([conv("k5_s2", 24, kernel=5, stride=2, padding=2)], {"k5_s2": "conv/columns"}),
        "dil2": ([conv("dil2", 16, dilation=2, padding=2)], {"dil2": "conv/transposed"}),
        "rect": ([conv("rect", 17, kernel=[1, 3], stride=[2, 1], padding=[0, 1])],
                 {"rect": "conv/transposed"}),
        "asym": ([conv("asym", 33, padding=[[0, 1], [2, 0]], bias=False)],
                 {"asym": "conv/transposed"}),
        "same4": ([conv("same4", 16, kernel=4, padding="same")], {"same4": "conv/transposed"}),
        "valid5": ([conv("valid5", 12, kernel=5)], {"valid5": "conv/columns"}),
        "k1_s2": ([conv("k1_s2", 32, kernel=1, stride=2)], {"k1_s2": "conv/columns"}),
        "s3_d2": ([conv("s3_d2", 8, stride=3, dilation=2, padding=1)], {"s3_d2": "conv/columns"}),
        "whole": ([conv("whole", 10, kernel=[11, 10])], {"whole": "conv/columns"}),
        "chain": ([conv("chain_a", 24, padding=1), layer("chain_r", "relu"),
                   conv("chain", 16, kernel=1)], {"chain_a": "conv/transposed",
                                                  "chain": "conv/transposed"}),
    }),
    "groups": ([3, 10, 10], [conv("stem", 32, padding=1), layer("stem_t", "tanh")], {
        "g2": ([conv("g2", 32, groups=2, padding=1)], {"g2": "conv/transposed"}),
        "g2_wide_s2": ([conv("g2_wide_s2", 64, groups=2, stride=2)],
                       {"g2_wide_s2": "conv/transposed"}),
        "dw": ([conv("dw", 32, groups=32, padding=1, bias=False)], {"dw": "depthwise"}),
        "dw_s2_d2": ([conv("dw_s2_d2", 32, groups=32, stride=2, dilation=2, padding=2)],
                     {"dw_s2_d2": "depthwise"}),
        "dw_k5_bn": ([conv("dw_k5", 32, groups=32, kernel=5, padding=2, bias=False),
                      layer("dw_bn", "batchnorm"), layer("dw_relu", "relu")],
                     {"dw_k5": "depthwise", "dw_bn": "batchnorm"}),
        # 8 input channels per group is less than a block: the input is read plain, and the
        # input gradient written in blocks of 8
        "g4": ([conv("g4", 32, groups=4, padding=1)], {"g4": "conv/transposed"}),
        "g8_s2": ([conv("g8_s2", 32, groups=8, stride=2)], {"g8_s2": "conv/transposed"}),
        # 2 outputs per group is less than the smallest block: the plain computes
        "dw_x2": ([conv("dw_x2", 64, groups=32, padding=1)], {"dw_x2": "generic"}),
    }),
    "odd": ([5, 9, 9], [conv("stem", 20, padding=1), layer("stem_s", "sigmoid")], {
        "dw20": ([conv("dw20", 20, groups=20, padding=1)], {"dw20": "depthwise"}),
        "six": ([conv("six", 6, kernel=1), layer("six_t", "tanh"), conv("after_six", 7)],
                {"six": "conv/transposed", "after_six": "conv/transposed"}),
    }),
    "conv1d": ([6, 29], [conv1d("stem", 24, padding=1), layer("stem_t", "tanh")], {
        "k3": ([conv1d("k3", 16)], {"k3": "conv/transposed"}),
        "k5_d3": ([conv1d("k5_d3", 32, kernel=5, dilation=3, padding=6)],
                  {"k5_d3": "conv/transposed"}),
        "s2_same": ([conv1d("s2_same", 20, kernel=4, stride=2, padding="same")],
                    {"s2_same": "conv/transposed"}),
        "dw": ([conv1d("dw", 24, groups=24, padding=1)], {"dw": "depthwise"}),
        "bn_pool": ([layer("bn", "batchnorm"), layer("relu", "relu"),
                     layer("mp", "maxpool1d", kernel=3, stride=2, padding=1)],
                    {"bn": "batchnorm", "mp": "pool"}),
        "avg": ([layer("avg", "avgpool1d", kernel=2)], {"avg": "pool"}),
        # padding past half the kernel, up to kernel - 1 (ONNX's rule)
        "wide": ([layer("wide_mp", "maxpool1d", kernel=3, stride=2, padding=2),
                  layer("wide_ap", "avgpool1d", kernel=4, stride=3, padding=[[3, 1]],
                        ceil_mode=True, count_include_pad=False)],
                 {"wide_mp": "pool", "wide_ap": "pool"}),
        "gap": ([layer("gap", "global_avgpool")], {"gap": "global_pool"}),
        "stats": ([layer("stats", "stats_pool")], {"stats": "generic"}),
    }),
    # 3x3 stride-1 convs with 32+ channels and enough tiles: Winograd forward and input
    # gradient, F(4x4) at 16x16 (16 tiles), F(2x2) at 12x12 (9 tiles of 4, 36 of 2), 40
    # channels filling two and a half blocks
    "winograd": ([3, 16, 16], [conv("stem", 32, padding=1), layer("stem_t", "tanh")], {
        "w4": ([conv("w4", 32, padding=1)], {"w4": "winograd/winograd"}),
        "w2": ([layer("w2_pool", "avgpool2d", kernel=5, stride=1),
                conv("w2", 40, padding=1, bias=False), layer("w2_bn", "batchnorm"),
                layer("w2_r", "relu")], {"w2_pool": "pool", "w2": "winograd/winograd",
                                         "w2_bn": "batchnorm"}),
    }),
    # a residual block, pools, dropout and the layers without blocked kernels
    "blocks": ([3, 12, 12], [conv("stem", 16, padding=1, bias=False),
                             layer("stem_bn", "batchnorm"), layer("stem_r", "relu")], {
        "residual": ([conv("b_c1", 16, padding=1, bias=False), layer("b_bn1", "batchnorm"),
                      layer("b_r1", "leaky_relu", alpha=0.1),
                      conv("b_c2", 16, padding=1, bias=False), layer("b_bn2", "batchnorm"),
                      {"name": "b_add", "type": "add", "inputs": ["b_bn2", "stem_r"]},
                      layer("b_r2", "relu"), layer("b_drop", "dropout", rate=0.25),
                      layer("b_mp", "maxpool2d", kernel=3, stride=2, padding=1),
                      layer("b_ap", "avgpool2d", kernel=3, stride=2, padding=1, ceil_mode=True,
                            count_include_pad=False)],
                     {"b_c1": "conv/transposed", "b_bn1": "batchnorm", "b_r1": "elementwise",
                      "b_add": "elementwise", "b_drop": "elementwise", "b_mp": "pool",
                      "b_ap": "pool"}),
        "gmax": ([layer("gmax", "global_maxpool")], {"gmax": "global_pool"}),
        # Lp norms in the blocked layout: of ReLU outputs, and with p = 3 of a conv's signed
        # ones (|x| has its kink at 0)
        "lp": ([layer("lp2", "lppool2d", p=2, kernel=2, ceil_mode=True),
                conv("lp_c", 16, padding=1),
                layer("lp3", "lppool2d", p=3, kernel=3, stride=2, padding=1)],
               {"lp2": "pool", "lp3": "pool"}),
        "plain": ([layer("sig", "sigmoid"), layer("lrn", "lrn", size=3),
                   layer("lp", "lppool2d", p=2, kernel=2),
                   layer("blur", "blurpool2d", kernel=3, stride=2)],
                  {"lrn": "generic", "lp": "generic", "blur": "generic"}),
        "adaptive": ([layer("a_sig", "sigmoid"),
                      layer("a_max", "adaptive_maxpool2d", output_size=[5, 4]),
                      layer("a_avg", "adaptive_avgpool2d", output_size=3)],
                     {"a_max": "generic", "a_avg": "generic"}),
    }),
}


def family_spec(family: str) -> str:
    shape, stem, cases = FAMILIES[family]
    layers, flats = list(stem), []
    for case, (chain, _) in cases.items():
        for i, item in enumerate(chain):
            item = dict(item)
            if i == 0 and "inputs" not in item:
                item["inputs"] = [stem[-1]["name"]]
            layers.append(item)
        flats.append(f"{case}_flat")
        layers.append({"name": flats[-1], "type": "flatten", "inputs": [chain[-1]["name"]]})
    layers += [{"name": "features", "type": "concat", "inputs": flats},
               {"name": "fc", "type": "dense", "units": 12, "bias": False},
               {"name": "fc_t", "type": "tanh"},
               {"name": "fc_bn", "type": "batchnorm"},
               {"name": "logits", "type": "dense", "units": 5}]
    return yaml.safe_dump({"name": f"train_{family}", "input": shape, "layers": layers,
                           "train": {"loss": "softmax_cross_entropy"}}, sort_keys=False)


def expected_kinds(family: str) -> dict:
    return {node: kind for _, kinds in FAMILIES[family][2].values()
            for node, kind in kinds.items()}


# -- one step of each lowering -------------------------------------------------------------------

def lively(g, seed: int) -> dict:
    """PyTorch's initial weights, with batch-norm terms away from the identity."""
    params = init_params(g, seed)
    rng = np.random.default_rng(seed + 1)
    for name, value in params.items():
        if value.ndim == 1 and name.endswith(("running_var", "weight")):
            params[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif value.ndim == 1 and name.endswith(("running_mean", "bias")):
            params[name] = rng.uniform(-0.3, 0.3, value.shape).astype(np.float32)
    return params


class Step:
    """One training step of a spec, compiled with a lowering, run at a fixed point: SGD at
    lr = 1, no momentum, so each gradient is p - p_new."""

    def __init__(self, g, scheduled: bool, lanes: int = LANES, seed: int = 0):
        from tvm.runtime import vm as tvm_vm

        from cnncompiler.backends.cpu import relax_pipeline
        from cnncompiler.backends.cpu.train_emit import CpuTrainLowering
        from cnncompiler.backends.targets import parse_target
        from cnncompiler.backends.train_lower import build_train_module

        self.graph = g
        self.unscheduled: list = []
        self.lowering = None
        dtype = "float32" if scheduled else "float64"

        def make(*args):
            self.lowering = CpuTrainLowering(*args, lanes=lanes, unscheduled=self.unscheduled)
            return self.lowering

        mod, self.sig = build_train_module(g, "softmax_cross_entropy", "sgd", dtype=dtype,
                                           lowering=make if scheduled else None)
        self.module = mod
        if scheduled:
            target = tvm.target.Target(parse_target("cpu").config)
            with target:
                executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline())
        else:
            executable = tvm.compile(mod, target=tvm.target.Target("llvm"))
        vm = tvm_vm.VirtualMachine(executable, tvm.cpu())
        rng = np.random.default_rng(seed)
        params = lively(g, seed)
        x = rng.standard_normal((BATCH, *g.graph["input_shape"]))
        classes = g.nodes[g.graph["outputs"][0]]["shape"][0]
        y = rng.integers(0, classes, BATCH).astype(np.int32)
        masks = [(rng.random((BATCH, *shape)) >= 0.25) / 0.75 for _, shape in self.sig.masks]
        hyper = np.zeros(12)
        hyper[0], hyper[11] = 1.0, 1.0
        sig = self.sig
        np_dtype = np.dtype(dtype)
        args = [x.astype(np_dtype), y, hyper.astype(np_dtype)] + \
            [params[k].astype(np_dtype) for k in sig.params + sig.buffers] + \
            [np.zeros(sig.shapes[s], np_dtype) for s in sig.state] + \
            [m.astype(np_dtype) for m in masks]
        out = vm["train_step"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args])
        self.loss = float(out[0].numpy()[0])
        self.correct = float(out[1].numpy()[0])
        self.norms = out[2].numpy()
        n = len(sig.params)
        self.grads = {k: params[k].astype(np.float64) - out[3 + i].numpy()
                      for i, k in enumerate(sig.params)}
        self.buffers = {k: out[3 + n + i].numpy() for i, k in enumerate(sig.buffers)}


def graph_of(text: str):
    from cnncompiler.passes import optimize

    g, _ = check_spec(parse_spec_text(text, "<test>"))
    return optimize(g, passes=["eliminate-dead"])[0]


_STEPS: dict = {}


def steps(family: str, lanes: int = LANES) -> tuple[Step, Step]:
    """(scheduled float32 step, plain float64 step) of a family, compiled once."""
    key = (family, lanes)
    if key not in _STEPS:
        text = family_spec(family) if family in FAMILIES else \
            (SPECS / f"{family}.yaml").read_text()
        g = graph_of(text)
        _STEPS[key] = (Step(g, True, lanes), Step(g, False))
    return _STEPS[key]


def assert_same_step(fast: Step, ref: Step, what: str) -> None:
    assert fast.loss == pytest.approx(ref.loss, rel=RTOL), what
    assert fast.correct == ref.correct, what
    bad = []
    layer_scale: dict = {}
    for name, want in ref.grads.items():
        layer = name.rsplit(".", 1)[0]
        layer_scale[layer] = max(layer_scale.get(layer, 0.0), float(np.abs(want).max()))
    for name, want in ref.grads.items():
        got = fast.grads[name]
        scale = max(layer_scale[name.rsplit(".", 1)[0]], 1e-6)
        err = float(np.abs(got - want).max())
        if not np.isfinite(got).all() or err > GRAD_RTOL * scale:
            bad.append(f"{name}: max difference {err:.3g}, {err / scale:.3g} of its layer's "
                       "largest gradient entry")
    for name, want in ref.buffers.items():
        np.testing.assert_allclose(fast.buffers[name], want, rtol=RTOL, atol=RTOL * float(
            np.abs(want).max()), err_msg=f"{what}: {name}")
    for row in range(2):
        np.testing.assert_allclose(fast.norms[row], ref.norms[row], rtol=10 * RTOL,
                                   atol=RTOL * float(ref.norms[row].max()), err_msg=what)
    assert not bad, f"{what}:\n" + "\n".join(bad)


# -- the checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_scheduled_step_matches_the_plain_computes(family):
    fast, ref = steps(family)
    assert not fast.unscheduled
    assert_same_step(fast, ref, family)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lowering_picks_the_kernels(family):
    fast, _ = steps(family)
    low = fast.lowering
    for node, want in expected_kinds(family).items():
        kind, _, dx = want.partition("/")
        assert low.kinds[node].kind == kind, (node, low.kinds[node])
        if dx:
            assert low.input_grads[node] == dx, (node, low.input_grads.get(node))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kernels_are_scheduled(family):
    """Every kernel is marked scheduled. The weight gradients of convs and dense layers, the
    transposed convs and columns of the input gradients and the batch norms' sums run parallel
    vector loops (their batch is symbolic: always enough work to share); the other kernels
    of the blocked families, vector loops."""
    fast, _ = steps(family)
    low = fast.lowering
    kinds = {kernel_name(n): k.kind for n, k in low.kinds.items()}
    transposed = {kernel_name(n) for n, how in low.input_grads.items()
                  if how in ("transposed", "winograd") and low.kinds[n].kind != "depthwise"}
    parallel = vector = 0
    for gv, func in fast.module.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name = gv.name_hint.rstrip("0123456789")
        assert func.attrs.get("tirx.is_scheduled"), name
        role = next((r for r in ROLES if name.endswith(r)), "")
        layer = name[:len(name) - len(role)]
        kind = kinds.get(layer)
        if kind in (None, "generic", "elementwise"):
            continue
        text = func.script()
        if role in ("_grad_dw", "_grad_columns", "_grad_sums", "_stats") or \
                (role == "_grad_dx" and layer in transposed):
            assert "T.parallel" in text and "T.vectorized" in text, name
            parallel += 1
        elif role != "_grad_db":  # a bias gradient of 5 outputs has no vector
            assert "T.vectorized" in text, name
            vector += 1
    assert parallel and vector


# kernel name suffixes (after the layer's kernel name) and what they compute
ROLES = ("_grad_dw", "_grad_dx", "_grad_columns", "_grad_sums", "_grad_db", "_grad_pack",
         "_pack_bias", "_pack", "_stats", "_grad", "")


def test_lenet5_step_matches_the_plain_computes():
    fast, ref = steps("lenet5")
    assert not fast.unscheduled
    assert_same_step(fast, ref, "lenet5")
    assert fast.lowering.input_grads == {"c3": "transposed", "c5": "columns"}


@pytest.mark.parametrize("family", ["conv2d", "groups"])
def test_avx2_blocks_match_the_plain_computes(family):
    """The same kernels with AVX2's 8-lane blocks (the layouts and tiles change; the code
    still runs on this host)."""
    fast, ref = steps(family, lanes=8)
    assert not fast.unscheduled
    assert_same_step(fast, ref, f"{family} with 8 lanes")


def test_adam_step_matches_the_plain_computes():
    """The update kernels of Adam on flat views, with weight decay and bias corrections."""
    from tvm.runtime import vm as tvm_vm

    from cnncompiler.backends.cpu import relax_pipeline
    from cnncompiler.backends.cpu.train_emit import cpu_lowering
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.train_lower import build_train_module

    g = graph_of(family_spec("odd"))
    results = []
    for scheduled in (True, False):
        dtype = "float32" if scheduled else "float64"
        mod, sig = build_train_module(g, "softmax_cross_entropy", "adam", dtype=dtype,
                                      lowering=cpu_lowering(LANES) if scheduled else None)
        target = tvm.target.Target(parse_target("cpu").config)
        with target:
            ex = tvm.compile(mod, target=target,
                             relax_pipeline=relax_pipeline() if scheduled else "default")
        vm = tvm_vm.VirtualMachine(ex, tvm.cpu())
        rng = np.random.default_rng(4)
        params = lively(g, 4)
        hyper = np.array([1e-2, 0, 0, 0, 1e-3, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.001, 0])
        args = [rng.standard_normal((BATCH, *g.graph["input_shape"])),
                rng.integers(0, 5, BATCH).astype(np.int32), hyper] + \
            [params[k] for k in sig.params + sig.buffers] + \
            [rng.uniform(0, 1e-2, sig.shapes[s]) for s in sig.state]
        args = [a if a.dtype == np.int32 else a.astype(dtype) for a in args]
        out = vm["train_step"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args])
        results.append([out[i].numpy() for i in range(3, 3 + len(sig.params) + len(sig.buffers)
                                                      + len(sig.state))])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max()))


# -- the kernels, directly -----------------------------------------------------------------------

def _blocked(a: np.ndarray, block: int) -> np.ndarray:
    c = a.shape[1]
    blocks = -(-c // block)
    a = np.pad(a, [(0, 0), (0, blocks * block - c)] + [(0, 0)] * (a.ndim - 2))
    return np.ascontiguousarray(np.moveaxis(a.reshape(a.shape[0], blocks, block,
                                                      *a.shape[2:]), 2, -1))


def _unblocked(a: np.ndarray, channels: int) -> np.ndarray:
    a = np.moveaxis(a, -1, 2)
    return a.reshape(a.shape[0], -1, *a.shape[3:])[:, :channels]


def _build(tensors, schedule):
    func = schedule(tvm.te.create_prim_func(tensors))
    return tvm.tirx.build(tvm.IRModule({"main": func.with_attr("tirx.noalias", True)}),
                          target="llvm"), func


GEO = dict(cin=32, cout=48, groups=1, kernel=(3, 3), stride=(2, 1), dilation=(1, 2),
           pads=((1, 0), (2, 2)), in_spatial=(9, 8), out_spatial=(4, 8), ib=16, ob=16)
TILES = [(1, 1, 1, 16, 1, False), (3, 4, 3, 16, 4, False), (1, 16, 1, 16, 1, True),
         (3, 2, 1, 8, 2, True)]


def _torch_grads(geo, x, w, dy):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    (hb, ha), (wb, wa) = geo.pads
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (wb, wa, hb, ha)), wt,
                                   stride=geo.stride, dilation=geo.dilation, groups=geo.groups)
    y.backward(torch.from_numpy(dy))
    return xt.grad.numpy(), wt.grad.numpy()


@pytest.mark.parametrize("tile", TILES, ids=[str(t) for t in TILES])
def test_weight_grad_tilings(tile):
    """The weight gradient's register tiles, input channel chunks, rows per sweep and split
    kernel rows, against PyTorch's."""
    from tvm import te

    from cnncompiler.backends.cpu.conv import ConvGeometry
    from cnncompiler.backends.cpu.train_conv import WeightGradTile, schedule_weight_grad, \
        weight_grad

    from compile_helpers import assert_close

    geo = ConvGeometry(**GEO)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, geo.cin, *geo.in_spatial))
    w = rng.standard_normal((geo.cout, geo.cin, *geo.kernel))
    dy = rng.standard_normal((2, geo.cout, *geo.out_spatial))
    n = tvm.tirx.Var("n", "int64")
    xt = te.placeholder((n, 2, *geo.in_spatial, 16), name="x")
    dyt = te.placeholder((n, 3, *geo.out_spatial, 16), name="dy")
    lib, func = _build([xt, dyt, weight_grad(xt, dyt, geo)],
                       lambda f: schedule_weight_grad(f, geo, WeightGradTile(*tile)))
    assert "T.parallel" in func.script()
    out = tvm.runtime.empty(w.shape, "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(_blocked(x, 16).astype(np.float32)),
                tvm.runtime.tensor(_blocked(dy, 16).astype(np.float32)), out)
    assert_close(out.numpy(), _torch_grads(geo, x, w, dy)[1], what=str(tile))


@pytest.mark.parametrize("method", ["transposed", "columns"])
def test_input_grad_methods(method):
    """The input gradient as a transposed conv of the spread dy, and as columns gathered back,
    against PyTorch's."""
    from tvm import te

    from cnncompiler.backends.cpu import train_conv as tc
    from cnncompiler.backends.cpu.conv import ConvGeometry, conv_blocked, schedule_conv
    from cnncompiler.backends.cpu.pool import schedule_window

    from compile_helpers import assert_close

    geo = ConvGeometry(**GEO)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, geo.cin, *geo.in_spatial))
    w = rng.standard_normal((geo.cout, geo.cin, *geo.kernel))
    dy = rng.standard_normal((2, geo.cout, *geo.out_spatial))
    wt = te.placeholder(w.shape, name="w")
    n = tvm.tirx.Var("n", "int64")
    dyt = te.placeholder((n, 3, *geo.out_spatial, 16), name="dy")
    if method == "transposed":
        grad = tc.input_grad(geo, 16)
        packed = tc.pack_weight(tc.flipped_weight(wt, geo), grad.geo)
        inner = grad.geo
    else:
        inner = tc.columns_geometry(geo, 16)
        packed = tc.pack_weight(tc.column_weight(wt, geo, inner), inner)
    pack_lib, _ = _build([wt, packed], lambda f: f)
    wp = tvm.runtime.empty([int(d) for d in packed.shape], "float32", tvm.cpu())
    pack_lib["main"](tvm.runtime.tensor(w.astype(np.float32)), wp)
    pt = te.placeholder(packed.shape, name="wp")
    if method == "transposed":
        dx = conv_blocked(tc.spread_output_grad(dyt, geo, grad), pt, None, inner)
        lib, _ = _build([dyt, pt, dx], lambda f: schedule_conv(f, inner))
        outs = [tvm.runtime.empty((2, *[int(d) for d in dx.shape[1:]]), "float32", tvm.cpu())]
        lib["main"](tvm.runtime.tensor(_blocked(dy, 16).astype(np.float32)), wp, outs[0])
    else:
        cols = conv_blocked(dyt, pt, None, inner)
        lib, _ = _build([dyt, pt, cols], lambda f: schedule_conv(f, inner))
        mid = tvm.runtime.empty((2, *[int(d) for d in cols.shape[1:]]), "float32", tvm.cpu())
        lib["main"](tvm.runtime.tensor(_blocked(dy, 16).astype(np.float32)), wp, mid)
        ct = te.placeholder((n, *cols.shape[1:]), name="cols")
        dx = tc.columns_to_input(ct, geo, 16)
        lib, _ = _build([ct, dx], lambda f: schedule_window(f, geo.in_spatial[-1]))
        outs = [tvm.runtime.empty((2, *[int(d) for d in dx.shape[1:]]), "float32", tvm.cpu())]
        lib["main"](mid, outs[0])
    assert_close(_unblocked(outs[0].numpy(), geo.cin), _torch_grads(geo, x, w, dy)[0],
                 what=method)


def test_float64_and_cuda_builds_keep_the_plain_computes():
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.train_build import scheduled_on_cpu

    cpu = parse_target("cpu")
    assert scheduled_on_cpu(cpu, "float32")
    assert not scheduled_on_cpu(cpu, "float64")
    assert not scheduled_on_cpu(parse_target("cuda"), "float32")

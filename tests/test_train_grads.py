"""The compiled training step's gradients against finite differences, in float64.

Each net below is compiled into a float64 ``train_step`` with plain SGD at lr = 1 (no momentum,
no decay), so the gradient of every parameter is ``p - p_new``. The loss it differentiates is
recomputed by the numpy reference executor in training mode (batch statistics, the same fixed
dropout masks), and each parameter's gradient is checked along random directions and at random
single entries by central differences. Together the nets cover every layer type a spec can
write (``test_every_layer_type_is_covered`` fails when a new one is not), and the three losses.

The nets avoid kinks, where a finite difference is meaningless: activations that are smooth or
whose kink sits away from the data (relu on batch-normalised values), tanh or sigmoid before max
pooling so no two window entries tie.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnncompiler.graph import check_spec
from cnncompiler.layers import LAYER_TYPES
from cnncompiler.reference import init_params, run_reference
from cnncompiler.spec import parse_spec_text
from cnncompiler.spec.losses import loss_terms

from compile_helpers import random_boxes

tvm = pytest.importorskip("tvm", reason="the TVM compiler is not installed")

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

BATCH = 3
BOXES = 5            # rows of an input without the batch axis (the RoI nets' boxes)
STEP = 1e-5          # central-difference step
ATOL, RTOL = 1e-8, 1e-6


# Each net: (spec, loss, label smoothing). Layer options chosen to reach the awkward code paths:
# asymmetric and 'same' padding, stride with dilation, grouped and depthwise convs, ceil_mode
# windows that hang over the edge, averages that do and do not count padding.
NETS = {
    "conv2d": ("""
name: fd_conv2d
input: [4, 9, 9]
layers:
  - {name: c1, type: conv2d, filters: 6, kernel: 3, stride: 2, padding: [[1, 0], [0, 2]], bias: false}
  - {name: bn, type: batchnorm, momentum: 0.3}
  - {name: r, type: relu}
  - {name: dw, type: conv2d, filters: 6, kernel: 3, groups: 6, padding: same}
  - {name: g, type: conv2d, filters: 4, kernel: 3, dilation: 2, groups: 2, padding: same}
  - {name: sd, type: conv2d, filters: 4, kernel: 2, stride: 2, dilation: 2, padding: 1, bias: false}
  - {name: t, type: tanh}
  - {name: mp, type: maxpool2d, kernel: 2, stride: 1, padding: 1, ceil_mode: true}
  - {name: lrn, type: lrn, size: 3, alpha: 0.5, beta: 0.75, k: 1.5}
  - {name: flat, type: flatten}
  - {name: drop, type: dropout, rate: 0.25}
  - {name: fc, type: dense, units: 5}
""", "softmax_cross_entropy", 0.1),
    "pools2d": ("""
name: fd_pools2d
input: [2, 11, 11]
layers:
  - {name: c, type: conv2d, filters: 4, kernel: 2}
  - {name: t, type: tanh}
  - {name: a1, type: avgpool2d, kernel: 3, stride: 2, padding: 1, ceil_mode: true, count_include_pad: false}
  - {name: a2, type: avgpool2d, kernel: 2, stride: 1, padding: 1, count_include_pad: true, inputs: [t]}
  - {name: l, type: leaky_relu, alpha: 0.1, inputs: [a1]}
  - {name: c2, type: conv2d, filters: 4, kernel: 1}
  - {name: s, type: sigmoid}
  - {name: lp, type: lppool2d, p: 2, kernel: 2, ceil_mode: true}
  - {name: lp3, type: lppool2d, p: 3, kernel: 3, stride: 2, padding: 1}
  - {name: mp, type: maxpool2d, kernel: 2, stride: 1, padding: 1}
  - {name: gmax, type: global_maxpool}
  - {name: ta2, type: tanh, inputs: [a2]}
  - {name: gavg, type: global_avgpool}
  - {name: cat, type: concat, inputs: [gmax, gavg]}
  - {name: flat, type: flatten}
  - {name: fc, type: dense, units: 3}
""", "sigmoid_cross_entropy", 0.0),
    "merge1d": ("""
name: fd_merge1d
input: [3, 20]
layers:
  - {name: c, type: conv1d, filters: 4, kernel: 3, dilation: 2, padding: same}
  - {name: b1, type: conv1d, filters: 2, kernel: 1, inputs: [c]}
  - {name: b2, type: conv1d, filters: 4, kernel: 3, padding: [[2, 0]], inputs: [c]}
  - {name: cat, type: concat, inputs: [b1, b2]}
  - {name: bn, type: batchnorm}
  - {name: t, type: tanh}
  - {name: c3, type: conv1d, filters: 6, kernel: 3, stride: 2, padding: 1, groups: 2, inputs: [cat]}
  - {name: up, type: conv1d, filters: 6, kernel: 2, stride: 2, inputs: [t]}
  - {name: add, type: add, inputs: [c3, up]}
  - {name: id, type: identity}
  - {name: s, type: sigmoid}
  - {name: mp, type: maxpool1d, kernel: 3, stride: 2, padding: 1, ceil_mode: true}
  - {name: lp, type: lppool1d, p: 2, kernel: 2, ceil_mode: true}
  - {name: ap, type: avgpool1d, kernel: 3, stride: 1, padding: 1, count_include_pad: false, inputs: [s]}
  - {name: gap, type: global_avgpool}
  - {name: f1, type: flatten, inputs: [lp]}
  - {name: f2, type: flatten, inputs: [gap]}
  - {name: both, type: concat, inputs: [f1, f2]}
  - {name: d, type: dropout, rate: 0.3}
  - {name: fc, type: dense, units: 6, bias: false}
  - {name: bnf, type: batchnorm}
  - {name: r, type: relu}
  - {name: sm, type: softmax}
  - {name: fc2, type: dense, units: 3}
""", "softmax_cross_entropy", 0.0),
    "activations": ("""
name: fd_activations
input: [3, 7, 7]
layers:
  - {name: c, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: p1, type: prelu}
  - {name: c2, type: conv2d, filters: 4, kernel: 1}
  - {name: p2, type: prelu, num_parameters: 4, init: -0.3}
  - {name: s, type: silu}
  - {name: mi, type: mish}
  - {name: g, type: gelu}
  - {name: gt, type: gelu, approximate: tanh}
  - {name: hs, type: hardswish}
  - {name: hsig, type: hardsigmoid}
  - {name: r6, type: relu6}
  - {name: flat, type: flatten}
  - {name: fc, type: dense, units: 3}
""", "softmax_cross_entropy", 0.0),
    "local_blur": ("""
name: fd_local_blur
input: [2, 9, 9]
layers:
  - {name: c, type: conv2d, filters: 3, kernel: 3, padding: 1}
  - {name: bp, type: blurpool2d, kernel: 3, stride: 2}
  - {name: lc, type: locally_connected2d, filters: 2, kernel: 2, stride: 1, padding: 1}
  - {name: t, type: tanh}
  - {name: bp2, type: blurpool2d, kernel: 4, stride: 2, pad_mode: zero}
  - {name: lc2, type: locally_connected2d, filters: 2, kernel: [2, 1], stride: [1, 2], bias: false, inputs: [t]}
  - {name: bp3, type: blurpool2d, kernel: 2, stride: 1, inputs: [lc2]}
  - {name: sm, type: softmax, axis: 2, inputs: [bp3]}
""", "euclidean", 0.0),
    # adaptive pools with overlapping bins and with bins that repeat inputs (output larger than
    # input); pools with padding past half the kernel; Lp norms of signed values with p = 3
    # (|x| has its kink at 0, where some of the values sit: p = 1 reads positive ones)
    "adaptive2d": ("""
name: fd_adaptive2d
input: [2, 9, 10]
layers:
  - {name: c, type: conv2d, filters: 3, kernel: 3}
  - {name: t, type: tanh}
  - {name: aa, type: adaptive_avgpool2d, output_size: [3, 5]}
  - {name: up, type: adaptive_avgpool2d, output_size: [5, 7]}
  - {name: am, type: adaptive_maxpool2d, output_size: [4, 3], inputs: [t]}
  - {name: amu, type: adaptive_maxpool2d, output_size: [5, 6], inputs: [aa]}
  - {name: wm, type: maxpool2d, kernel: 3, stride: 2, padding: 2, inputs: [t]}
  - {name: wa, type: avgpool2d, kernel: 3, stride: 1, padding: [[2, 0], [1, 2]], inputs: [am]}
  - {name: lp3, type: lppool2d, p: 3, kernel: 2, stride: 2, padding: 1, inputs: [c]}
  - {name: s, type: sigmoid, inputs: [c]}
  - {name: lp1, type: lppool2d, p: 1, kernel: 3, stride: 2, padding: 2, ceil_mode: true}
  - {name: f1, type: flatten, inputs: [up]}
  - {name: f2, type: flatten, inputs: [amu]}
  - {name: f3, type: flatten, inputs: [wm]}
  - {name: f4, type: flatten, inputs: [wa]}
  - {name: f5, type: flatten, inputs: [lp3]}
  - {name: f6, type: flatten, inputs: [lp1]}
  - {name: cat, type: concat, inputs: [f1, f2, f3, f4, f5, f6]}
  - {name: fc, type: dense, units: 4}
""", "softmax_cross_entropy", 0.0),
    # YOLOv3's neck: a coarse map upsampled and joined to a finer one; a 3x1 factor too
    "upsample": ("""
name: fd_upsample
input: [2, 6, 6]
layers:
  - {name: c, type: conv2d, filters: 3, kernel: 3, padding: 1}
  - {name: t, type: tanh}
  - {name: mp, type: maxpool2d, kernel: 2}
  - {name: c2, type: conv2d, filters: 2, kernel: 1}
  - {name: up, type: upsample, scale: 2}
  - {name: cat, type: concat, inputs: [up, t]}
  - {name: c3, type: conv2d, filters: 2, kernel: 3, stride: 2}
  - {name: up3, type: upsample, scale: [3, 1]}
  - {name: flat, type: flatten}
  - {name: fc, type: dense, units: 3}
""", "softmax_cross_entropy", 0.0),
    # Darknet's route groups (a channel half) and a shortcut from a larger map (rows and
    # columns sampled with a stride, channels cut to the smaller map's)
    "slice": ("""
name: fd_slice
input: [2, 7, 6]
layers:
  - {name: c, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: t, type: tanh}
  - {name: half, type: slice, axis: channels, start: 2}
  - {name: c2, type: conv2d, filters: 3, kernel: 3, stride: 2, padding: 1}
  - {name: rows, type: slice, axis: rows, step: 2, inputs: [t]}
  - {name: cols, type: slice, axis: cols, step: 2}
  - {name: part, type: slice, axis: channels, stop: 3}
  - {name: join, type: add, inputs: [c2, part]}
  - {name: tail, type: slice, axis: -1, start: -2, inputs: [join]}
  - {name: flat, type: flatten}
  - {name: fc, type: dense, units: 3}
""", "softmax_cross_entropy", 0.0),
    # boxes crossing the border, boxes smaller than a bin; tanh keeps the pooled maxima apart
    "roi": ("""
name: fd_roi
inputs:
  image: [2, 10, 10]
  rois: {shape: [null, 5], batched: false}
layers:
  - {name: c, type: conv2d, filters: 3, kernel: 3, padding: 1}
  - {name: t, type: tanh}
  - {name: align, type: roi_align, inputs: [t, rois], output_size: [2, 3], spatial_scale: 0.5,
     sampling_ratio: 2, aligned: true}
  - {name: adapt, type: roi_align, inputs: [t, rois], output_size: 2, spatial_scale: 0.5}
  - {name: rpool, type: roi_pool, inputs: [t, rois], output_size: 2, spatial_scale: 0.5}
  - {name: f1, type: flatten, inputs: [align]}
  - {name: f2, type: flatten, inputs: [adapt]}
  - {name: f3, type: flatten, inputs: [rpool]}
  - {name: join, type: concat, inputs: [f1, f2, f3]}
  - {name: drop, type: dropout, rate: 0.2}
  - {name: fc, type: dense, units: 4}
""", "softmax_cross_entropy", 0.0),
    # two heads, two losses, weighted; smooth_l1 ignores its NaN targets
    "two_heads": ("""
name: fd_two_heads
input: [3, 6, 6]
layers:
  - {name: c, type: conv2d, filters: 4, kernel: 3}
  - {name: t, type: tanh}
  - {name: flat, type: flatten}
  - {name: cls, type: dense, units: 3}
  - {name: box, type: dense, units: 4, inputs: [flat]}
outputs: [cls, box]
""", [{"output": "cls", "loss": "softmax_cross_entropy", "weight": 1.0},
      {"output": "box", "loss": "smooth_l1", "weight": 2.5, "options": {"beta": 0.5}}], 0.0),
    "stats1d": ("""
name: fd_stats1d
input: [3, 12]
layers:
  - {name: c, type: conv1d, filters: 4, kernel: 3}
  - {name: sp, type: stats_pool}
  - {name: lp, type: lppool1d, p: 3, kernel: 3, stride: 2, padding: 2, inputs: [c]}
  - {name: sp2, type: stats_pool, eps: 0.01}
  - {name: wm, type: maxpool1d, kernel: 4, stride: 3, padding: [[3, 1]], ceil_mode: true, inputs: [c]}
  - {name: wa, type: avgpool1d, kernel: 3, stride: 2, padding: 2, count_include_pad: false, inputs: [c]}
  - {name: f1, type: flatten, inputs: [wm]}
  - {name: f2, type: flatten, inputs: [wa]}
  - {name: cat, type: concat, inputs: [sp, sp2, f1, f2]}
  - {name: fc, type: dense, units: 3}
""", "euclidean", 0.0),
}


# -- the reference loss ----------------------------------------------------------------------------

def reference_loss(g, x, y, params, masks, loss, smoothing: float):
    """The objective: one loss of the one output, or the weighted sum of the terms'."""
    state = {node: {"mask": mask != 0} for node, mask in masks.items()}
    out = run_reference(g, x, params, dtype=np.float64, training=True, state=state)
    total = sum(term.weight * _loss_of_outputs(out[term.output], y[term.output], term.loss,
                                               smoothing, **dict(term.options))
                for term in loss_terms(loss, g.graph["outputs"]))
    return total, state


def _loss_of_outputs(z, y, loss: str, smoothing: float, beta: float = 1.0) -> float:
    if loss == "smooth_l1":   # NaN targets are ignored
        keep = ~np.isnan(y)
        d = np.abs(z - np.where(keep, y, 0.0))[keep]
        return float(np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum() / keep.sum())
    if loss == "softmax_cross_entropy":
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        k = z.shape[1]
        target = np.full(z.shape, smoothing / k)
        target[np.arange(len(y)), y] += 1 - smoothing
        return float(-(target * logp).sum(axis=1).mean())
    if loss == "sigmoid_cross_entropy":
        per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        return float(per.mean())
    return float(((z - y) ** 2).mean())


# -- one compiled float64 step per net -------------------------------------------------------------

def labels(g, term, rows: dict, rng) -> np.ndarray:
    """One label per row of the term's output (per sample, or per box after a RoI layer);
    smooth_l1's targets have NaN entries, which the loss ignores."""
    out = g.nodes[term.output]
    count = rows[out["lead"]]
    if term.loss == "softmax_cross_entropy":
        return rng.integers(0, out["shape"][0], count).astype(np.int32)
    y = rng.uniform(0, 1, (count, *out["shape"]))
    if term.loss == "smooth_l1":
        y = y * 4 - 2                     # both sides of beta
        y[rng.random(y.shape) < 0.3] = np.nan
    return y


def model_input(g, name: str, rng) -> np.ndarray:
    """A batch for a batched input; for boxes (an input without the batch axis), boxes of the
    batch's images in image coordinates, some crossing the border and some tiny."""
    node = g.nodes[name]
    if node["layer"].batched:
        return rng.standard_normal((BATCH, *node["shape"]))
    return random_boxes(rng, BOXES, BATCH, (-4.0, 20.0), (0.5, 14.0))

class Case:
    """A compiled float64 train step of one net, run once at a fixed point."""

    def __init__(self, name: str, net: tuple | None = None):
        from tvm.runtime import vm as tvm_vm
        from cnncompiler.backends.train_lower import build_train_module

        text, self.loss, self.smoothing = net or NETS[name]
        self.graph, _ = check_spec(parse_spec_text(text, f"<{name}>"))
        mod, self.sig = build_train_module(self.graph, self.loss, "sgd", dtype="float64",
                                           label_smoothing=self.smoothing)
        vm = tvm_vm.VirtualMachine(tvm.compile(mod, target=tvm.target.Target("llvm")),
                                   tvm.cpu())
        rng = np.random.default_rng(7)
        g = self.graph
        self.params = {k: v.astype(np.float64) for k, v in init_params(g, 3).items()}
        for k in self.params:  # away from the defaults, so every term of batch norm counts
            if k.endswith(("running_var", "weight")) and self.params[k].ndim == 1:
                self.params[k] = rng.uniform(0.5, 2.0, self.params[k].shape)
            elif k.endswith(("running_mean", "bias")) and self.params[k].ndim == 1:
                self.params[k] = rng.uniform(-0.5, 0.5, self.params[k].shape)
        self.x = {name: model_input(g, name, rng) for name in g.graph["inputs"]}
        rows = {"N": BATCH, **{name: len(v) for name, v in self.x.items()}}
        self.terms = loss_terms(self.loss, g.graph["outputs"])
        self.y = {term.output: labels(g, term, rows, rng) for term in self.terms}
        self.masks = {}
        for node, shape in self.sig.masks:
            rate = g.nodes[node]["layer"].rate
            self.masks[node] = (rng.random((rows[g.nodes[node]["lead"]], *shape)) >= rate) / \
                (1.0 - rate)
        hyper = np.zeros(12)
        hyper[0], hyper[11] = 1.0, 1.0     # lr 1, first step: p_new = p - grad
        hyper[6:11] = (0.9, 0.999, 1e-8, 1.0, 1.0)
        sig = self.sig
        args = [*self.x.values(), *self.y.values(), hyper] + \
            [self.params[k] for k in sig.params + sig.buffers] + \
            [np.zeros(sig.shapes[s]) for s in sig.state] + [self.masks[m] for m, _ in sig.masks]
        out = vm["train_step"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args])
        self.loss_value = float(out[0].numpy()[0])
        self.correct = float(out[1].numpy()[0])
        self.grad_sq, self.new_sq = out[2].numpy()
        n = len(sig.params)
        self.grads = {k: self.params[k] - out[3 + i].numpy() for i, k in enumerate(sig.params)}
        self.new_buffers = {k: out[3 + n + i].numpy() for i, k in enumerate(sig.buffers)}

    def loss_at(self, params) -> float:
        return reference_loss(self.graph, self.x, self.y, params, self.masks, self.loss,
                              self.smoothing)[0]

    def directional(self, name: str, direction: np.ndarray) -> float:
        """(L(p + h v) - L(p - h v)) / 2h with v = direction on parameter ``name`` only."""
        plus, minus = dict(self.params), dict(self.params)
        plus[name] = self.params[name] + STEP * direction
        minus[name] = self.params[name] - STEP * direction
        return (self.loss_at(plus) - self.loss_at(minus)) / (2 * STEP)


_CASES: dict[str, Case | Exception] = {}


@pytest.fixture(scope="module", params=sorted(NETS))
def case(request) -> Case:
    # a net that fails to compile fails each test once, not by compiling again
    if request.param not in _CASES:
        try:
            _CASES[request.param] = Case(request.param)
        except Exception as exc:  # noqa: BLE001
            _CASES[request.param] = exc
    if isinstance(_CASES[request.param], Exception):
        raise _CASES[request.param]
    return _CASES[request.param]


def _close(fd: float, analytic: float) -> bool:
    return abs(fd - analytic) <= ATOL + RTOL * max(abs(fd), abs(analytic))


# -- the checks ------------------------------------------------------------------------------------

def test_every_layer_type_is_covered():
    covered = set()
    for text, _, _ in NETS.values():
        g, _ = check_spec(parse_spec_text(text))
        covered |= {g.nodes[n]["layer"].type_name for n in g.nodes if n != "input"}
    wanted = {name for name, cls in LAYER_TYPES.items()
              if not cls.internal and cls.__module__.startswith("cnncompiler.")}
    assert wanted - covered == set(), "layer types without a finite-difference check"


def test_every_loss_is_covered():
    from cnncompiler.backends.te_grad import LOSS_FORMS
    from cnncompiler.spec.losses import LOSSES

    named = {t.loss for text, loss, _ in NETS.values()
             for t in loss_terms(loss, check_spec(parse_spec_text(text))[0].graph["outputs"])}
    assert named == set(LOSSES)
    assert {type(loss) for loss in LOSSES.values()} == set(LOSS_FORMS), "a loss without a TE form"
    assert any(s > 0 for _, loss, s in NETS.values() if loss == "softmax_cross_entropy")
    assert any(isinstance(loss, list) for _, loss, _ in NETS.values()), "no net of two losses"


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_each_loss_reference_matches_the_one_written_here(smoothing):
    """The losses' own numpy references (what evaluate reports) against this file's."""
    from cnncompiler.spec.losses import LOSSES

    rng = np.random.default_rng(5)
    z = rng.standard_normal((6, 4)) * 3
    for name, loss in LOSSES.items():
        y = rng.integers(0, 4, 6) if loss.integer_labels else rng.uniform(0, 1, z.shape)
        got = loss.reference(z, y, smoothing if name == "softmax_cross_entropy" else 0.0)
        want = _loss_of_outputs(z, y, name, smoothing if name == "softmax_cross_entropy" else 0.0)
        assert got["loss"] == pytest.approx(want, rel=1e-12), name


def test_loss_matches_the_reference(case):
    assert case.loss_value == pytest.approx(case.loss_at(case.params), rel=1e-12, abs=1e-12)


def test_gradients_match_finite_differences_along_random_directions(case):
    rng = np.random.default_rng(11)
    bad = []
    for name, grad in case.grads.items():
        for direction in (rng.standard_normal(grad.shape),
                          rng.choice([-1.0, 1.0], grad.shape)):
            fd, analytic = case.directional(name, direction), float((grad * direction).sum())
            if not _close(fd, analytic):
                bad.append(f"{name}: finite difference {fd:.10g}, compiled {analytic:.10g}")
    assert not bad, "\n".join(bad)


def test_gradients_match_finite_differences_entrywise(case):
    rng = np.random.default_rng(12)
    bad = []
    for name, grad in case.grads.items():
        for flat in rng.choice(grad.size, size=min(3, grad.size), replace=False):
            idx = np.unravel_index(flat, grad.shape)
            e = np.zeros(grad.shape)
            e[idx] = 1.0
            fd = case.directional(name, e)
            if not _close(fd, grad[idx]):
                bad.append(f"{name}{list(idx)}: finite difference {fd:.10g}, "
                           f"compiled {grad[idx]:.10g}")
    assert not bad, "\n".join(bad)


def test_every_parameter_gets_a_gradient(case):
    assert set(case.grads) == {k for k in case.params if not k.endswith(("running_mean",
                                                                              "running_var"))}
    for name, grad in case.grads.items():
        assert np.any(grad != 0), f"{name}: the gradient is all zeros"


def test_squared_norms_of_gradients_and_new_values_are_reported(case):
    """What the trainer checks for divergence: row 0 |grad|^2, row 1 |p_new|^2."""
    grads = [float((case.grads[k] ** 2).sum()) for k in case.sig.params]
    news = [float(((case.params[k] - case.grads[k]) ** 2).sum()) for k in case.sig.params]
    np.testing.assert_allclose(case.grad_sq, grads, rtol=1e-9, atol=1e-30)
    np.testing.assert_allclose(case.new_sq, news, rtol=1e-9, atol=1e-30)


def test_running_statistics_move_as_the_reference(case):
    _, state = reference_loss(case.graph, case.x, case.y, case.params, case.masks, case.loss,
                              case.smoothing)
    from cnncompiler.graph import param_names

    checked = 0
    for node in case.graph.nodes:
        if node != "input" and case.graph.nodes[node]["layer"].type_name == "batchnorm":
            names = param_names(case.graph, node)
            for stat in ("running_mean", "running_var"):
                np.testing.assert_allclose(case.new_buffers[names[stat]], state[node][stat],
                                           rtol=1e-12, atol=1e-14, err_msg=names[stat])
                checked += 1
    assert checked == 2 * sum(1 for n in case.graph.nodes if n != "input" and
                              case.graph.nodes[n]["layer"].type_name == "batchnorm")


def test_correct_count_matches_the_reference(case):
    out = run_reference(case.graph, case.x, case.params, dtype=np.float64, training=True,
                        state={n: {"mask": m != 0} for n, m in case.masks.items()})
    # the first classification term's count (the first term's when none classifies)
    term = next((t for t in case.terms if t.kind.metric), case.terms[0])
    z, y = out[term.output], case.y[term.output]
    if term.loss == "softmax_cross_entropy":
        want = float((z.argmax(axis=1) == y).sum())
    elif term.loss == "sigmoid_cross_entropy":  # per sample, the fraction of labels right
        want = float(((z > 0) == (y > 0.5)).mean(axis=tuple(range(1, z.ndim))).sum())
    else:
        want = 0.0
    assert case.correct == pytest.approx(want, abs=1e-12)

"""RoI max pooling and RoI align (torchvision.ops' semantics) as building blocks: the numpy
references (cnncompiler.layers.roi) against an oracle written here as a plain loop over boxes,
bins and samples, transcribing torchvision's kernels, and against ONNX Runtime's kernels; the
references' gradients against finite differences; and the TE kernels (backends/te_roi.py),
compiled for the CPU, against the references, forward and backward. The same computes build
for CUDA (sm_90) in a worker.

torchvision itself does not import on this machine (its C++ ops are built for another torch),
hence the oracles.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cnncompiler.layers.roi import (FLT_MAX, output_pair, roi_align_gradient,
                                    roi_align_reference, roi_pool_gradient, roi_pool_reference,
                                    round_half_away)

from conftest import HAVE_NVCC, ROOT

SCALES = [1.0, 0.25, 0.0625]
RATIOS = [-1, 0, 1, 2]  # 0 and below: adaptive
OUTPUT = (3, 2)
SHAPE = (3, 2, 7, 9)  # N, C, H, W

# Boxes in feature-map coordinates (x1, y1, x2, y2) with their batch index; each test divides
# them by the spatial scale, so that every scale sees the same geometry.
BOXES = [
    (0, 1.3, 0.7, 6.2, 5.9),      # inside
    (1, -2.7, -1.6, 3.1, 2.4),    # across the top-left border
    (2, 5.2, 4.4, 11.3, 9.7),     # across the bottom-right border
    (0, 3.1, 2.2, 3.4, 2.5),      # smaller than a bin
    (1, 12.5, 9.3, 15.1, 13.2),   # entirely outside, past the end
    (2, -6.3, -5.2, -2.4, -1.8),  # entirely outside, before the start
    (1, 4.6, 3.3, 2.1, 1.2),      # inverted (x2 < x1, y2 < y1)
    (0, 2.5, -0.5, 6.5, 4.5),     # halves: RoI pooling rounds them away from zero
    (2, -0.5, -0.5, 8.5, 6.5),    # the whole map and half a position more
    (1, 0.9, 1.1, 8.7, 2.3),      # wide and flat
    (0, 7.6, 0.2, 8.9, 6.8),      # thin and tall, at the right edge
    (3, 1.0, 1.0, 4.0, 4.0),      # names no image of the batch (N = 3)
    (-1, 1.0, 1.0, 4.0, 4.0),     # nor does this
]


def boxes(scale: float, rows=BOXES, dtype=np.float32) -> np.ndarray:
    out = np.array(rows, np.float64)
    out[:, 1:] /= scale
    return out.astype(dtype)


def features(shape=SHAPE, seed=0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def output_grad(x, rois, seed=1) -> np.ndarray:
    ph, pw = OUTPUT
    return np.random.default_rng(seed).standard_normal(
        (len(rois), x.shape[1], ph, pw)).astype(x.dtype)


def assert_close(got, want, what="", tol=1e-5):
    """Within ``tol``; equal infinities are equal, and a NaN on either side is an error."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    with np.errstate(invalid="ignore"):
        diff = np.where(got == want, 0.0, np.abs(got.astype(np.float64) - want))
    err = np.max(diff, initial=0.0)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol}"


# -- the oracle: torchvision's CPU kernels, transcribed loop by loop ---------------------------
# Coordinates in the features' float type (numpy scalars of that type), as torchvision's T.

def c_round(v) -> int:
    """C's round(): half away from zero (exact here: float32 values plus 0.5 fit a float64)."""
    return int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))


def oracle_roi_pool(x, rois, output_size, spatial_scale):
    """Output and argmax of torchvision's roi_pool_forward_kernel_impl."""
    t = x.dtype.type
    ph_n, pw_n = output_pair(output_size)
    n, c_n, height, width = x.shape
    out = np.zeros((len(rois), c_n, ph_n, pw_n))
    argmax = np.full(out.shape, -1)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        if not 0 <= b < n:
            continue
        start_w, start_h, end_w, end_h = (c_round(t(v) * t(spatial_scale)) for v in roi[1:])
        roi_w, roi_h = max(end_w - start_w + 1, 1), max(end_h - start_h + 1, 1)
        bin_h, bin_w = t(roi_h) / t(ph_n), t(roi_w) / t(pw_n)
        for ph in range(ph_n):
            for pw in range(pw_n):
                hstart = min(max(math.floor(t(ph) * bin_h) + start_h, 0), height)
                hend = min(max(math.ceil(t(ph + 1) * bin_h) + start_h, 0), height)
                wstart = min(max(math.floor(t(pw) * bin_w) + start_w, 0), width)
                wend = min(max(math.ceil(t(pw + 1) * bin_w) + start_w, 0), width)
                empty = hend <= hstart or wend <= wstart
                for c in range(c_n):
                    best, at = (0.0 if empty else -FLT_MAX), -1
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            if x[b, c, h, w] > best:
                                best, at = x[b, c, h, w], h * width + w
                    out[r, c, ph, pw], argmax[r, c, ph, pw] = best, at
    return out, argmax


def oracle_roi_pool_grad(x, rois, dy, output_size, spatial_scale):
    _, argmax = oracle_roi_pool(x, rois, output_size, spatial_scale)
    n, c_n, height, width = x.shape
    dx = np.zeros((n, c_n, height * width))
    for r, c, ph, pw in np.ndindex(*argmax.shape):
        if argmax[r, c, ph, pw] >= 0:
            dx[int(rois[r, 0]), c, argmax[r, c, ph, pw]] += dy[r, c, ph, pw]
    return dx.reshape(x.shape)


def bilinear_taps(height, width, y, x, t):
    """torchvision's bilinear_interpolate_gradient: [(h, w, weight)], empty outside."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y, x = max(y, t(0)), max(x, t(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = t(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = t(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - t(y_low), x - t(x_low)
    hy, hx = t(1) - ly, t(1) - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
            (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


def align_samples(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """For each (box, image, bin): its samples' taps and count, as torchvision's kernels."""
    t = x.dtype.type
    ph_n, pw_n = output_pair(output_size)
    n, _, height, width = x.shape
    offset = t(0.5) if aligned else t(0)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        if not 0 <= b < n:
            continue
        start_w, start_h, end_w, end_h = (t(v) * t(spatial_scale) - offset for v in roi[1:])
        roi_w, roi_h = end_w - start_w, end_h - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, t(1)), max(roi_h, t(1))
        bin_h, bin_w = roi_h / t(ph_n), roi_w / t(pw_n)
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / t(ph_n))
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / t(pw_n))
        count = max(grid_h * grid_w, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                taps = []
                for iy in range(grid_h):
                    y = start_h + t(ph) * bin_h + t(iy + 0.5) * bin_h / t(grid_h)
                    for ix in range(grid_w):
                        xx = start_w + t(pw) * bin_w + t(ix + 0.5) * bin_w / t(grid_w)
                        taps += bilinear_taps(height, width, y, xx, t)
                yield r, b, ph, pw, taps, count


def oracle_roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    ph_n, pw_n = output_pair(output_size)
    out = np.zeros((len(rois), x.shape[1], ph_n, pw_n))
    for r, b, ph, pw, taps, count in align_samples(x, rois, output_size, spatial_scale,
                                                  sampling_ratio, aligned):
        for c in range(x.shape[1]):
            out[r, c, ph, pw] = sum(float(w) * x[b, c, h, ww] for h, ww, w in taps) / count
    return out


def oracle_roi_align_grad(x, rois, dy, output_size, spatial_scale, sampling_ratio, aligned):
    dx = np.zeros(x.shape)
    for r, b, ph, pw, taps, count in align_samples(x, rois, output_size, spatial_scale,
                                                  sampling_ratio, aligned):
        for h, w, weight in taps:
            dx[b, :, h, w] += float(weight) * dy[r, :, ph, pw] / count
    return dx


# -- the references against the oracle ---------------------------------------------------------

ALIGN_GRID = [(aligned, ratio, scale) for aligned in (True, False) for ratio in RATIOS
              for scale in SCALES]


def _random_boxes(scale, seed, count=6, images=3):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(-3.0, 12.0, (count, 4))
    corners[:, 2:] = corners[:, :2] + rng.uniform(-1.0, 8.0, (count, 2))
    rows = [(int(i), *c) for i, c in zip(rng.integers(0, images, count), corners)]
    return boxes(scale, rows)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("output_size", [OUTPUT, 2, (1, 4)])
def test_roi_pool_reference_matches_the_oracle(scale, output_size):
    x = features()
    for rois in (boxes(scale), _random_boxes(scale, seed=int(1 / scale))):
        want, _ = oracle_roi_pool(x, rois, output_size, scale)
        assert_close(roi_pool_reference(x, rois, output_size, scale), want, "roi_pool")
        dy = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
        assert_close(roi_pool_gradient(x, rois, dy, output_size, scale),
                     oracle_roi_pool_grad(x, rois, dy, output_size, scale), "roi_pool dx")


@pytest.mark.parametrize("aligned, ratio, scale", ALIGN_GRID)
def test_roi_align_reference_matches_the_oracle(aligned, ratio, scale):
    x = features()
    for rois in (boxes(scale), _random_boxes(scale, seed=ratio + 7)):
        args = (OUTPUT, scale, ratio, aligned)
        want = oracle_roi_align(x, rois, *args)
        assert_close(roi_align_reference(x, rois, *args), want, "roi_align")
        dy = output_grad(x, rois)
        assert_close(roi_align_gradient(x, rois, dy, *args),
                     oracle_roi_align_grad(x, rois, dy, *args), "roi_align dx")


def test_adaptive_sampling_has_two_spellings():
    x, rois = features(), boxes(0.25)
    assert np.array_equal(roi_align_reference(x, rois, OUTPUT, 0.25, 0, True),
                          roi_align_reference(x, rois, OUTPUT, 0.25, -1, True))


def _onnx_runtime(node, inputs: dict) -> np.ndarray:
    """One ONNX node run by ONNX Runtime's CPU kernels."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    helper = onnx.helper
    kinds = {np.dtype(np.float32): onnx.TensorProto.FLOAT,
             np.dtype(np.int64): onnx.TensorProto.INT64}
    graph = helper.make_graph(
        [node], "roi", [helper.make_tensor_value_info(k, kinds[v.dtype], v.shape)
                        for k, v in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


@pytest.mark.parametrize("scale", SCALES)
def test_references_match_onnx_runtime(scale):
    """ONNX Runtime's MaxRoiPool and RoiAlign (C++ kernels of the same Caffe2 lineage as
    torchvision's; half_pixel is aligned=True): a second oracle, for boxes of the batch."""
    helper = pytest.importorskip("onnx").helper
    x = features()
    rois = boxes(scale, [b for b in BOXES if 0 <= b[0] < SHAPE[0]])
    pool = helper.make_node("MaxRoiPool", ["x", "rois"], ["y"], pooled_shape=list(OUTPUT),
                            spatial_scale=scale)
    assert_close(_onnx_runtime(pool, {"x": x, "rois": rois}),
                 roi_pool_reference(x, rois, OUTPUT, scale), "MaxRoiPool")
    inputs = {"x": x, "boxes": np.ascontiguousarray(rois[:, 1:]),
              "batch": rois[:, 0].astype(np.int64)}
    for aligned in (True, False):
        for ratio in (0, 1, 2):
            align = helper.make_node(
                "RoiAlign", ["x", "boxes", "batch"], ["y"], output_height=OUTPUT[0],
                output_width=OUTPUT[1], spatial_scale=scale, sampling_ratio=ratio, mode="avg",
                coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")
            assert_close(_onnx_runtime(align, inputs),
                         roi_align_reference(x, rois, OUTPUT, scale, ratio, aligned),
                         f"RoiAlign aligned={aligned} sampling_ratio={ratio}")


# -- the references against hand-computed values -----------------------------------------------

def test_roi_pool_by_hand():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    # the whole map in 2x2 bins, each bin's bottom-right value; a box that rounds to the
    # single position (1, 2): 1.5 -> 2 (away from zero), 0.5 -> 1
    rois = np.array([[0, 0, 0, 3, 3], [0, 1.5, 0.5, 1.5, 0.5]], np.float32)
    out = roi_pool_reference(x, rois, 2, 1.0)
    assert out[0, 0].tolist() == [[5, 7], [13, 15]]
    assert out[1, 0].tolist() == [[6, 6], [6, 6]]
    dx = roi_pool_gradient(x, rois, np.ones_like(out), 2, 1.0)
    assert dx[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 4, 1], [0, 0, 0, 0], [0, 1, 0, 1]]


def test_roi_pool_ties_go_to_the_first_and_empty_bins_to_zero():
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = x[0, 0, 2, 0] = 1.0
    rois = np.array([[0, 0, 0, 2, 2], [0, 5, 5, 9, 9]], np.float32)  # the second is outside
    dx = roi_pool_gradient(x, rois, np.ones((2, 1, 1, 1), np.float32), 1, 1.0)
    assert dx[0, 0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]  # (1, 1) comes first
    assert roi_pool_reference(x, rois, 1, 1.0)[1].item() == 0.0


def test_roi_pool_skips_nan_and_starts_from_minus_flt_max():
    x = np.full((1, 1, 2, 2), -np.inf, np.float64)
    x[0, 0, 0, 0] = np.nan
    out = roi_pool_reference(x, np.array([[0, 0, 0, 1, 1]], np.float64), 1, 1.0)
    assert out.item() == -FLT_MAX


def test_roi_align_by_hand():
    # bilinear sampling reproduces a linear map exactly: f(y, x) = 4y + x
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    rois = np.array([[0, 0, 0, 3, 3]], np.float64)
    assert roi_align_reference(x, rois, 1, 1.0, 1, False).item() == 7.5  # one sample at (1.5, 1.5)
    # aligned: the box starts at -0.5; samples at 0 and 1 (bin 0), 2 and 3 (bin 1), the last
    # row and column read alone
    out = roi_align_reference(x, np.array([[0, 0, 0, 4, 4]], np.float64), 2, 1.0, 2, True)
    assert out[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_round_half_away_from_zero():
    v = np.array([0.5, -0.5, 1.5, -2.5, 2.4999998, 0.49999997, -0.49999997], np.float32)
    assert round_half_away(v).tolist() == [1, -1, 2, -3, 2, 0, -0]


# -- gradients against finite differences --------------------------------------------------------

SMALL = (2, 1, 5, 6)


def _finite_differences(f, x, dy, eps):
    """d<dy, f(x)>/dx by central differences, one element at a time."""
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = np.sum(dy * (f(x + step) - f(x - step))) / (2 * eps)
    return grad


@pytest.mark.parametrize("aligned, ratio, scale", [(True, 0, 0.25), (False, 2, 1.0),
                                                   (True, 1, 0.0625), (False, -1, 0.25)])
def test_roi_align_gradient_is_the_derivative(aligned, ratio, scale):
    """RoI align is linear in the features: central differences are exact up to rounding."""
    x = features(SMALL, dtype=np.float64)
    rois = boxes(scale, [(0, 0.6, 1.3, 4.2, 3.9), (1, -1.2, 2.1, 3.3, 6.4),
                         (1, 2.2, 0.4, 2.6, 0.9), (0, 3.5, -2.0, 7.5, 5.5)], np.float64)
    args = (OUTPUT, scale, ratio, aligned)
    dy = output_grad(x, rois)
    want = _finite_differences(lambda v: roi_align_reference(v, rois, *args), x, dy, 1.0)
    assert_close(roi_align_gradient(x, rois, dy, *args), want, "roi_align dx", tol=1e-10)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_pool_gradient_is_the_derivative(scale):
    """Away from ties RoI pooling is linear near x: distinct values 1/size apart, steps of a
    tenth of that."""
    size = math.prod(SMALL)
    x = np.random.default_rng(3).permutation(size).reshape(SMALL).astype(np.float64) / size
    rois = boxes(scale, [(0, 0.6, 1.3, 4.2, 3.9), (1, -1.2, 2.1, 3.3, 6.4),
                         (1, 2.2, 0.4, 2.6, 0.9), (1, 0, 0, 5, 4)], np.float64)
    dy = output_grad(x, rois)
    want = _finite_differences(lambda v: roi_pool_reference(v, rois, OUTPUT, scale), x, dy,
                               0.1 / size)
    assert_close(roi_pool_gradient(x, rois, dy, OUTPUT, scale), want, "roi_pool dx", tol=1e-9)


# -- the TE kernels, compiled for the CPU ---------------------------------------------------------

POOL_CASES = [(scale,) for scale in SCALES]
ALIGN_CASES = [(aligned, ratio, scale) for aligned in (True, False) for ratio in (0, 1, 2)
               for scale in SCALES] + [(True, -1, 0.25)]


def _placeholders(x_shape, rois_count, dtype="float32"):
    from tvm import te

    ph, pw = OUTPUT
    x = te.placeholder(x_shape, dtype, name="x")
    rois = te.placeholder((rois_count, 5), dtype, name="rois")
    dy = te.placeholder((rois_count, x_shape[1], ph, pw), dtype, name="dy")
    return x, rois, dy


def _kernels(cases, forward, backward):
    """One library holding, per case, the forward (x, rois) -> y and the backward
    (x, rois, dy) -> dx, under the CPU schedule; built once."""
    import tvm
    from tvm import te

    from cnncompiler.backends.te_roi import schedule_cpu

    x, rois, dy = _placeholders(SHAPE, len(BOXES))
    funcs = {}
    for i, case in enumerate(cases):
        y = forward(x, rois, *case)
        dx = backward(x, rois, dy, *case)
        funcs[f"forward{i}"] = schedule_cpu(te.create_prim_func([x, rois, y]))
        funcs[f"backward{i}"] = schedule_cpu(te.create_prim_func([x, rois, dy, dx]))
    funcs = {name: f.with_attr("global_symbol", name) for name, f in funcs.items()}
    lib = tvm.tirx.build(tvm.IRModule(funcs), target="llvm")
    return {case: (lib[f"forward{i}"], lib[f"backward{i}"]) for i, case in enumerate(cases)}


def _run(func, out_shape, *arrays):
    import tvm

    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32))
    func(*(tvm.runtime.tensor(a) for a in arrays), out)
    return out.numpy()


@pytest.fixture(scope="module")
def pool_kernels():
    from cnncompiler.backends.te_roi import roi_pool, roi_pool_backward

    return _kernels(POOL_CASES, lambda x, r, s: roi_pool(x, r, OUTPUT, s),
                    lambda x, r, dy, s: roi_pool_backward(x, r, dy, OUTPUT, s))


@pytest.fixture(scope="module")
def align_kernels():
    from cnncompiler.backends.te_roi import roi_align, roi_align_backward

    return _kernels(ALIGN_CASES, lambda x, r, a, k, s: roi_align(x, r, OUTPUT, s, k, a),
                    lambda x, r, dy, a, k, s: roi_align_backward(x, r, dy, OUTPUT, s, k, a))


@pytest.mark.tvm
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"scale{c[0]}")
def test_roi_pool_kernels_match_the_reference(pool_kernels, case):
    (scale,) = case
    forward, backward = pool_kernels[case]
    x, rois = features(), boxes(scale)
    x[0, 0, 2, 3], x[1, 1, 0, 0], x[2, 0, 6, 8] = np.nan, -np.inf, np.inf  # NaN never wins
    y = roi_pool_reference(x, rois, OUTPUT, scale)
    assert_close(_run(forward, y.shape, x, rois), y, "roi_pool")
    dy = output_grad(x, rois)
    assert_close(_run(backward, x.shape, x, rois, dy),
                 roi_pool_gradient(x, rois, dy, OUTPUT, scale), "roi_pool dx")


@pytest.mark.tvm
@pytest.mark.parametrize("case", ALIGN_CASES, ids=lambda c: "aligned{}-ratio{}-scale{}".format(*c))
def test_roi_align_kernels_match_the_reference(align_kernels, case):
    aligned, ratio, scale = case
    forward, backward = align_kernels[case]
    x, rois = features(), boxes(scale)
    args = (OUTPUT, scale, ratio, aligned)
    y = roi_align_reference(x, rois, *args)
    assert_close(_run(forward, y.shape, x, rois), y, "roi_align")
    dy = output_grad(x, rois)
    assert_close(_run(backward, x.shape, x, rois, dy), roi_align_gradient(x, rois, dy, *args),
                 "roi_align dx")


@pytest.fixture(scope="module")
def symbolic_kernels():
    """The four kernels over a symbolic batch N and a symbolic box count R."""
    import tvm
    from tvm import te, tirx

    from cnncompiler.backends import te_roi

    n, r = tirx.Var("n", "int64"), tirx.Var("r", "int64")
    x, rois, dy = _placeholders((n, *SHAPE[1:]), r)
    outs = {"pool": te_roi.roi_pool(x, rois, OUTPUT, 0.25),
            "pool_dx": te_roi.roi_pool_backward(x, rois, dy, OUTPUT, 0.25),
            "align": te_roi.roi_align(x, rois, OUTPUT, 0.25, 2, True),
            "align_dx": te_roi.roi_align_backward(x, rois, dy, OUTPUT, 0.25, 2, True),
            "align_adaptive": te_roi.roi_align(x, rois, OUTPUT, 0.25, 0, False)}
    funcs = {name: te_roi.schedule_cpu(te.create_prim_func(
        [x, rois, *([dy] if name.endswith("_dx") else []), out])).with_attr("global_symbol", name)
        for name, out in outs.items()}
    lib = tvm.tirx.build(tvm.IRModule(funcs), target="llvm")
    return {name: lib[name] for name in funcs}


@pytest.mark.tvm
@pytest.mark.parametrize("images, count", [(3, 13), (1, 0), (2, 1)])
def test_kernels_take_any_batch_and_box_count(symbolic_kernels, images, count):
    """No boxes at all: empty outputs, and a gradient of zeros (written, not left over)."""
    x = features((images, *SHAPE[1:]))
    rois = boxes(0.25)[:count]
    rois[:, 0] = np.minimum(rois[:, 0], images - 1)
    dy = output_grad(x, rois)
    checks = {"pool": (roi_pool_reference(x, rois, OUTPUT, 0.25), (x, rois)),
              "pool_dx": (roi_pool_gradient(x, rois, dy, OUTPUT, 0.25), (x, rois, dy)),
              "align": (roi_align_reference(x, rois, OUTPUT, 0.25, 2, True), (x, rois)),
              "align_dx": (roi_align_gradient(x, rois, dy, OUTPUT, 0.25, 2, True), (x, rois, dy))}
    for name, (want, arrays) in checks.items():
        assert_close(_run(symbolic_kernels[name], want.shape, *arrays), want, name)


@pytest.mark.tvm
def test_wild_boxes_read_nothing_outside_the_features(symbolic_kernels):
    """Non-finite and huge coordinates: the kernels finish, without reading out of bounds
    (their outputs for those boxes are unspecified), and the other boxes are right."""
    x, rois = features(), boxes(0.25)
    wild = np.array([[0, np.nan, 1, 2, 3], [1, -np.inf, np.inf, np.inf, 2],
                     [2, 1e30, -1e30, 1e30, 1e30], [np.nan, 1, 1, 2, 2]], np.float32)
    both = np.concatenate([rois, wild])
    dy = output_grad(x, both)
    tame = slice(0, len(rois))
    got = _run(symbolic_kernels["pool"], (len(both), 2, *OUTPUT), x, both)
    assert_close(got[tame], roi_pool_reference(x, rois, OUTPUT, 0.25), "roi_pool")
    got = _run(symbolic_kernels["align"], (len(both), 2, *OUTPUT), x, both)
    assert_close(got[tame], roi_align_reference(x, rois, OUTPUT, 0.25, 2, True), "roi_align")
    got = _run(symbolic_kernels["align_adaptive"], (len(both), 2, *OUTPUT), x, both)
    assert_close(got[tame], roi_align_reference(x, rois, OUTPUT, 0.25, 0, False), "roi_align")
    for name in ("pool_dx", "align_dx"):
        _run(symbolic_kernels[name], x.shape, x, both, dy)


@pytest.mark.tvm
def test_kernels_in_float64():
    """The computes follow their inputs' dtype (float64 for finite-difference checks of a
    whole model): the same answers as the references to rounding."""
    import tvm
    from tvm import te

    from cnncompiler.backends import te_roi

    x, rois, dy = _placeholders(SHAPE, len(BOXES), "float64")
    kernels = {"pool": ([x, rois], te_roi.roi_pool(x, rois, OUTPUT, 0.25)),
               "pool_dx": ([x, rois, dy], te_roi.roi_pool_backward(x, rois, dy, OUTPUT, 0.25)),
               "align": ([x, rois], te_roi.roi_align(x, rois, OUTPUT, 0.25, 0, True)),
               "align_dx": ([x, rois, dy],
                            te_roi.roi_align_backward(x, rois, dy, OUTPUT, 0.25, 0, True))}
    lib = tvm.tirx.build(tvm.IRModule({
        name: te_roi.schedule_cpu(te.create_prim_func([*ins, out])).with_attr(
            "global_symbol", name) for name, (ins, out) in kernels.items()}), target="llvm")
    xs, boxes64 = features(dtype=np.float64), boxes(0.25, dtype=np.float64)
    dys = output_grad(xs, boxes64)
    wants = {"pool": roi_pool_reference(xs, boxes64, OUTPUT, 0.25),
             "pool_dx": roi_pool_gradient(xs, boxes64, dys, OUTPUT, 0.25),
             "align": roi_align_reference(xs, boxes64, OUTPUT, 0.25, 0, True),
             "align_dx": roi_align_gradient(xs, boxes64, dys, OUTPUT, 0.25, 0, True)}
    for name, want in wants.items():
        out = tvm.runtime.tensor(np.full(want.shape, np.nan))
        args = (xs, boxes64, dys) if name.endswith("_dx") else (xs, boxes64)
        lib[name](*(tvm.runtime.tensor(a) for a in args), out)
        assert_close(out.numpy(), want, name, tol=1e-12)


@pytest.mark.tvm
def test_cpu_schedule_runs_stages_in_parallel():
    from tvm import te

    from cnncompiler.backends.te_roi import roi_align_backward, schedule_cpu

    x, rois, dy = _placeholders(SHAPE, 4)
    func = schedule_cpu(te.create_prim_func(
        [x, rois, dy, roi_align_backward(x, rois, dy, OUTPUT, 0.25, 0, True)]))
    script = func.script()
    assert script.count("T.parallel") >= 10  # the tables, the weights, the runs, the gather
    # zeroed before the loop over the boxes, which may have none
    assert 'T.sblock("roi_align_dx_l1_init")' in script


# -- CUDA ------------------------------------------------------------------------------------------

CUDA_WORKER = textwrap.dedent("""
    import json, os, re, sys
    from pathlib import Path
    from cnncompiler.backends.cuda import FATBIN_MAGIC, find_nvcc, prepare_process
    prepare_process()
    import tvm
    from tvm import s_tir, te, tirx
    from cnncompiler.backends import te_roi

    os.environ["PATH"] = str(Path(find_nvcc()).parent) + os.pathsep + os.environ["PATH"]
    n, r = tirx.Var("n", "int64"), tirx.Var("r", "int64")
    x = te.placeholder((n, 256, 14, 14), name="x")
    rois = te.placeholder((r, 5), name="rois")
    dy = te.placeholder((r, 256, 7, 7), name="dy")
    tensors = {"roi_pool": [x, rois, te_roi.roi_pool(x, rois, 7, 0.0625)],
               "roi_pool_dx": [x, rois, dy, te_roi.roi_pool_backward(x, rois, dy, 7, 0.0625)],
               "roi_align": [x, rois, te_roi.roi_align(x, rois, 7, 0.0625, 0, True)],
               "roi_align_dx": [x, rois, dy, te_roi.roi_align_backward(x, rois, dy, 7,
                                                                      0.0625, 2, False)]}
    def stage_count(func):
        sch = s_tir.Schedule(func)
        return len(sch.get_child_blocks(sch.get_sblock("root")))

    funcs = {name: te.create_prim_func(args) for name, args in tensors.items()}
    stages = {name: stage_count(f) for name, f in funcs.items()}
    mod = tvm.IRModule({name: te_roi.schedule_cuda(f).with_attr("global_symbol", name)
                        for name, f in funcs.items()})
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    with target:
        lib = tvm.tirx.build(mod, target=target)
    path = Path(sys.argv[1]) / "roi.so"
    lib.export_library(str(path))
    data = path.read_bytes()
    kernels = sorted({m.decode() for m in re.findall(rb"\\.text\\.([A-Za-z_]\\w*)", data)})
    print(json.dumps({"fatbin": FATBIN_MAGIC in data, "kernels": kernels, "stages": stages}))
""")


@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc (the CUDA toolkit) is not installed")
def test_kernels_build_for_cuda(tmp_path):
    """The same computes under the CUDA schedule, compiled by nvcc for sm_90 in a worker (TVM
    emits device code only where its CUDA runtime loaded when it was imported): every stage
    of every kernel is a device function of the library's fatbin."""
    proc = subprocess.run([sys.executable, "-c", CUDA_WORKER, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fatbin"], "no fatbin in the library: no device code"
    for name, stages in result["stages"].items():
        mine = [k for k in result["kernels"] if re.fullmatch(rf"{name}_kernel(_\d+)?", k)]
        assert len(mine) == stages, f"{name}: {stages} stages, device kernels {mine}"

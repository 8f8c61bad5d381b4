"""The numpy reference of every layer type, checked two ways: against small arrays worked out by
hand, and against PyTorch (or, where PyTorch has no such layer, a plain loop written here) over
a grid of parameters, in float32 and float64.

Every registered layer type must have both kinds of test: ``test_every_layer_type_is_tested``
fails for a new type until it has them.
"""

from __future__ import annotations

import importlib.util
import math
from itertools import product

import numpy as np
import pytest

from cnncompiler.layers import LAYER_TYPES, ShapeNotes
from cnncompiler.layers.fields import parse_fields
from cnncompiler.layers.pool import blur_filter

from conftest import HAVE_TORCH, needs_torch

if HAVE_TORCH:
    import torch
    import torch.nn.functional as F

HAND: set[str] = set()  # layer types checked against hand-computed arrays
GRID: set[str] = set()  # layer types checked against PyTorch or a loop over a parameter grid

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-10}


def hand(*types):
    HAND.update(types)
    return lambda fn: fn


def grid(*types):
    GRID.update(types)
    return lambda fn: fn


def make(type_name: str, **keys):
    """A layer built as the spec parser builds it, so keys go through the same parsers."""
    cls = LAYER_TYPES[type_name]
    kwargs, problems = parse_fields(cls, keys)
    assert not problems, [str(p) for _, p in problems]
    return cls(**kwargs)


def run(layer, *xs, params=None, train_state=None):
    """The layer's reference output, after checking its shape rule agrees with it."""
    xs = [np.asarray(x) for x in xs]
    if train_state is None:
        y = layer.reference(xs, params or {})
    else:
        y = layer.reference_train(xs, params or {}, train_state)
    assert layer.infer_shape([x.shape[1:] for x in xs], ShapeNotes()) == y.shape[1:]
    assert y.dtype == xs[0].dtype, f"{layer.type_name} returned {y.dtype} for {xs[0].dtype}"
    return y


def assert_close(actual, expected, dtype, what=""):
    """rtol by dtype; atol scaled to the output so sums that cancel near zero still compare."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}"
    rtol = RTOL[dtype]
    finite = expected[np.isfinite(expected)]
    scale = max(float(np.abs(finite).max()) if finite.size else 1.0, 1.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def rand(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def tf_same(size, kernel, stride, dilation=1):
    """TensorFlow's 'same' padding: ceil(W/S) outputs, the odd pad at the end."""
    total = max((-(-size // stride) - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def pad_pairs(padding, sizes, kernel, stride, dilation):
    """The (before, after) pair per axis of a padding key, worked out independently of cnnc."""
    nd = len(sizes)
    kernel, stride, dilation = (v if isinstance(v, (list, tuple)) else (v,) * nd
                                for v in (kernel, stride, dilation))
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":
        return [tf_same(*a) for a in zip(sizes, kernel, stride, dilation)]
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [tuple(p) if isinstance(p, (list, tuple)) else (p, p) for p in padding]


def torch_pad(pairs):
    """F.pad's argument: the last axis first."""
    return tuple(v for pair in reversed(pairs) for v in pair)



@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are tiny: waking a pool of threads costs more than it saves, and on a
    busy machine the spinning threads slow the whole run several times over."""
    if not HAVE_TORCH:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

def test_every_layer_type_is_tested():
    public = {name for name, cls in LAYER_TYPES.items()
              if not cls.internal and cls.__module__.startswith("cnncompiler.")}
    assert public - HAND == set(), "layer types with no hand-computed reference test"
    assert public - GRID == set(), "layer types with no reference test over a parameter grid"


# -- hand-computed arrays ------------------------------------------------------------------

X33 = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


@hand("conv2d")
def test_conv2d_by_hand():
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    # cross-correlation, not flipped: 1*1 + 2*2 + 3*4 + 4*5 = 37
    y = run(make("conv2d", filters=1, kernel=2, bias=False), X33, params={"weight": w})
    np.testing.assert_array_equal(y[0, 0], [[37, 47], [67, 77]])
    y = run(make("conv2d", filters=1, kernel=2), X33,
            params={"weight": w, "bias": np.array([0.5])})
    np.testing.assert_array_equal(y[0, 0], [[37.5, 47.5], [67.5, 77.5]])
    ones = np.ones((1, 1, 3, 3))
    y = run(make("conv2d", filters=1, kernel=3, padding=1, bias=False), X33,
            params={"weight": ones})
    np.testing.assert_array_equal(y[0, 0], [[12, 21, 16], [27, 45, 33], [24, 39, 28]])
    y = run(make("conv2d", filters=1, kernel=3, padding=1, stride=2, bias=False), X33,
            params={"weight": ones})
    np.testing.assert_array_equal(y[0, 0], [[12, 16], [24, 28]])
    # dilation 2 reads the four corners: 1*1 + 2*3 + 3*7 + 4*9
    y = run(make("conv2d", filters=1, kernel=2, dilation=2, bias=False), X33,
            params={"weight": w})
    np.testing.assert_array_equal(y[0, 0], [[64]])
    # 'same', stride 1, even kernel: pad 0 before, 1 after
    y = run(make("conv2d", filters=1, kernel=[1, 2], padding="same", bias=False), X33,
            params={"weight": np.array([[[[1.0, 10.0]]]])})
    np.testing.assert_array_equal(y[0, 0], [[21, 32, 3], [54, 65, 6], [87, 98, 9]])


@hand("conv2d")
def test_grouped_and_depthwise_conv2d_by_hand():
    x = np.stack([X33[0, 0], -X33[0, 0]])[None]  # two channels: x and -x
    # depthwise 1x1: channel 0 times 2, channel 1 times 3
    y = run(make("conv2d", filters=2, kernel=1, groups=2, bias=False), x,
            params={"weight": np.array([2.0, 3.0]).reshape(2, 1, 1, 1)})
    np.testing.assert_array_equal(y[0], [2 * X33[0, 0], -3 * X33[0, 0]])
    # groups=1 sums the channels instead: 2x - 3x = -x
    y = run(make("conv2d", filters=1, kernel=1, bias=False), x,
            params={"weight": np.array([2.0, 3.0]).reshape(1, 2, 1, 1)})
    np.testing.assert_array_equal(y[0, 0], -X33[0, 0])
    # depthwise with multiplier 2: filters 0, 1 see channel 0; filters 2, 3 see channel 1
    y = run(make("conv2d", filters=4, kernel=1, groups=2, bias=False), x,
            params={"weight": np.array([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1)})
    np.testing.assert_array_equal(y[0, :, 0, 0], [1, 2, -3, -4])


@hand("conv1d")
def test_conv1d_by_hand():
    x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    w = {"weight": np.array([[[1.0, 2.0, 3.0]]])}
    y = run(make("conv1d", filters=1, kernel=3, bias=False), x, params=w)
    np.testing.assert_array_equal(y[0, 0], [14, 20, 26])
    y = run(make("conv1d", filters=1, kernel=3, padding=[[2, 0]], bias=False), x, params=w)
    np.testing.assert_array_equal(y[0, 0], [3, 8, 14, 20, 26])  # causal
    # 'same' with stride 2 follows TensorFlow: W=5 pads (1, 1) ...
    y = run(make("conv1d", filters=1, kernel=3, stride=2, padding="same", bias=False), x,
            params=w)
    np.testing.assert_array_equal(y[0, 0], [8, 20, 14])
    # ... and W=6 pads (0, 1): the odd pad goes at the end
    x6 = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]])
    y = run(make("conv1d", filters=1, kernel=3, stride=2, padding="same", bias=False), x6,
            params=w)
    np.testing.assert_array_equal(y[0, 0], [14, 26, 17])
    y = run(make("conv1d", filters=1, kernel=2, dilation=3, bias=False), x,
            params={"weight": np.array([[[1.0, -1.0]]])})
    np.testing.assert_array_equal(y[0, 0], [-3, -3])


@hand("dense")
def test_dense_by_hand():
    x = np.array([[1.0, 2.0], [-1.0, 0.5]])
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = run(make("dense", units=3), x, params={"weight": w, "bias": np.array([0.0, 0.0, 1.0])})
    np.testing.assert_array_equal(y, [[1, 2, 4], [-1, 0.5, 0.5]])
    y = run(make("dense", units=3, bias=False), x, params={"weight": w})
    np.testing.assert_array_equal(y, [[1, 2, 3], [-1, 0.5, -0.5]])


@hand("maxpool2d")
def test_maxpool2d_by_hand():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(run(make("maxpool2d", kernel=2), x)[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(run(make("maxpool2d", kernel=3, stride=1), x)[0, 0],
                                  [[10, 11], [14, 15]])
    # padding is never picked: every value is negative, yet no output is 0
    y = run(make("maxpool2d", kernel=2, stride=2, padding=1), -X33)
    np.testing.assert_array_equal(y[0, 0], [[-1, -2], [-4, -5]])
    # ceil_mode keeps the last, partial window
    y = run(make("maxpool2d", kernel=2, ceil_mode=True), -X33)
    np.testing.assert_array_equal(y[0, 0], [[-1, -3], [-7, -9]])


@hand("maxpool1d")
def test_maxpool1d_by_hand():
    x = np.array([[[1.0, 5.0, 2.0, 4.0, 3.0]]])
    np.testing.assert_array_equal(run(make("maxpool1d", kernel=2), x)[0, 0], [5, 4])
    np.testing.assert_array_equal(run(make("maxpool1d", kernel=2, ceil_mode=True), x)[0, 0],
                                  [5, 4, 3])
    np.testing.assert_array_equal(run(make("maxpool1d", kernel=3, stride=1), x)[0, 0],
                                  [5, 5, 4])


@hand("avgpool2d")
def test_avgpool2d_by_hand():
    np.testing.assert_array_equal(run(make("avgpool2d", kernel=3), X33)[0, 0], [[5]])
    y = run(make("avgpool2d", kernel=2, stride=2, padding=1), X33)
    np.testing.assert_array_equal(y[0, 0], [[1 / 4, 5 / 4], [11 / 4, 28 / 4]])
    y = run(make("avgpool2d", kernel=2, stride=2, padding=1, count_include_pad=False), X33)
    np.testing.assert_array_equal(y[0, 0], [[1, 5 / 2], [11 / 2, 7]])
    # ceil_mode: the partial window divides by what it covers
    y = run(make("avgpool2d", kernel=2, ceil_mode=True), X33)
    np.testing.assert_array_equal(y[0, 0], [[3, 4.5], [7.5, 9]])


@hand("avgpool1d")
def test_avgpool1d_by_hand():
    x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]])
    np.testing.assert_array_equal(run(make("avgpool1d", kernel=2), x)[0, 0], [1.5, 3.5, 5.5])
    # padded [0, 1..6, 0]: windows [0 1 2] [2 3 4] [4 5 6] [6 0 |overhang]
    y = run(make("avgpool1d", kernel=3, stride=2, padding=1, ceil_mode=True), x)
    np.testing.assert_array_equal(y[0, 0], [1, 3, 5, 3])  # the pad counts, the overhang not
    y = run(make("avgpool1d", kernel=3, stride=2, padding=1, ceil_mode=True,
                 count_include_pad=False), x)
    np.testing.assert_array_equal(y[0, 0], [1.5, 3, 5, 6])
    y = run(make("avgpool1d", kernel=2, ceil_mode=True), x[..., :5])
    np.testing.assert_array_equal(y[0, 0], [1.5, 3.5, 5])


@hand("lppool2d")
def test_lppool2d_by_hand():
    x = np.array([[[[1.0, 2.0], [2.0, 4.0]]]])
    np.testing.assert_allclose(run(make("lppool2d", kernel=2), x)[0, 0], [[5]])
    np.testing.assert_allclose(run(make("lppool2d", kernel=2, p=1), x)[0, 0], [[9]])
    np.testing.assert_allclose(run(make("lppool2d", kernel=[1, 2], p=3), x)[0, 0],
                               [[9 ** (1 / 3)], [72 ** (1 / 3)]])


@hand("lppool1d")
def test_lppool1d_by_hand():
    x = np.array([[[3.0, 4.0, 6.0, 8.0, 5.0]]])
    np.testing.assert_allclose(run(make("lppool1d", kernel=2), x)[0, 0], [5, 10])
    np.testing.assert_allclose(run(make("lppool1d", kernel=2, stride=3), x)[0, 0],
                               [5, math.sqrt(89)])
    # ceil_mode: the partial window [5] is averaged, then scaled by the full kernel: sqrt(2*25)
    np.testing.assert_allclose(run(make("lppool1d", kernel=2, ceil_mode=True), x)[0, 0],
                               [5, 10, math.sqrt(50)])
    # the norm of signed values: |x| (PyTorch's LPPool would give -3 + 4 and NaN)
    x = np.array([[[-3.0, 4.0, -1.0, -2.0]]])
    np.testing.assert_allclose(run(make("lppool1d", kernel=2, p=1), x)[0, 0], [7, 3])
    np.testing.assert_allclose(run(make("lppool1d", kernel=2, p=3), x)[0, 0],
                               [91 ** (1 / 3), 9 ** (1 / 3)])
    # padding past half the kernel (as ONNX): [0 0 -3], [0 -3 4], ..., [-2 0 0]
    np.testing.assert_allclose(run(make("lppool1d", kernel=3, stride=1, padding=2, p=1), x)
                               [0, 0], [3, 7, 8, 7, 3, 2])


@hand("global_avgpool", "global_maxpool")
def test_global_pools_by_hand():
    np.testing.assert_array_equal(run(make("global_avgpool"), X33), [[[[5]]]])
    np.testing.assert_array_equal(run(make("global_maxpool"), X33), [[[[9]]]])
    x = np.array([[[1.0, -2.0, 4.0], [-1.0, -3.0, -2.0]]])
    np.testing.assert_array_equal(run(make("global_avgpool"), x), [[[1], [-2]]])
    np.testing.assert_array_equal(run(make("global_maxpool"), x), [[[4], [-1]]])


@hand("maxpool2d", "avgpool2d")
def test_pools_with_padding_past_half_the_kernel_by_hand():
    # kernel 3, padding 2: the corner window sees one input; a count that includes the padding
    # divides by the whole window, one that excludes it by the inputs seen
    y = run(make("maxpool2d", kernel=3, stride=2, padding=2), -X33)
    np.testing.assert_array_equal(y[0, 0], [[-1, -1, -3], [-1, -1, -3], [-7, -7, -9]])
    y = run(make("avgpool2d", kernel=3, stride=3, padding=2), X33)
    np.testing.assert_array_equal(y[0, 0], [[1 / 9, 5 / 9], [11 / 9, 28 / 9]])
    y = run(make("avgpool2d", kernel=3, stride=3, padding=2, count_include_pad=False), X33)
    np.testing.assert_array_equal(y[0, 0], [[1, 2.5], [5.5, 7]])


@hand("adaptive_avgpool2d", "adaptive_maxpool2d")
def test_adaptive_pools_by_hand():
    # 3 -> 2: the bins [0, 2) and [1, 3) share the middle row and column
    np.testing.assert_array_equal(run(make("adaptive_avgpool2d", output_size=2), X33)[0, 0],
                                  [[3, 4], [6, 7]])
    np.testing.assert_array_equal(run(make("adaptive_maxpool2d", output_size=2), X33)[0, 0],
                                  [[5, 6], [8, 9]])
    np.testing.assert_array_equal(run(make("adaptive_avgpool2d", output_size=[3, 1]), X33)
                                  [0, 0], [[2], [5], [8]])
    np.testing.assert_array_equal(run(make("adaptive_maxpool2d", output_size=1), X33), [[[[9]]]])
    np.testing.assert_array_equal(run(make("adaptive_avgpool2d", output_size=3), X33), X33)
    # 2 -> 3: bins [0, 1), [0, 2), [1, 2)
    x = np.array([[[[1.0, 2.0]]]])
    np.testing.assert_array_equal(run(make("adaptive_avgpool2d", output_size=[1, 3]), x)
                                  [0, 0], [[1, 1.5, 2]])
    np.testing.assert_array_equal(run(make("adaptive_maxpool2d", output_size=[2, 3]), x)
                                  [0, 0], [[1, 2, 2], [1, 2, 2]])


@hand("stats_pool")
def test_stats_pool_by_hand():
    x = np.array([[[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]])
    np.testing.assert_allclose(run(make("stats_pool"), x),
                               [[2.5, 2, math.sqrt(1.25 + 1e-5), math.sqrt(1e-5)]])
    np.testing.assert_allclose(run(make("stats_pool", eps=0.75), x), [[2.5, 2, 1.4142135623730951,
                                                                       math.sqrt(0.75)]])


@hand("relu", "leaky_relu", "sigmoid", "tanh", "identity")
def test_activations_by_hand():
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(run(make("relu"), x), [[0, 0, 3]])
    np.testing.assert_allclose(run(make("leaky_relu", alpha=0.1), x), [[-0.2, 0, 3]])
    np.testing.assert_array_equal(run(make("leaky_relu"), x), [[-0.02, 0, 3]])
    np.testing.assert_array_equal(run(make("identity"), x), x)
    z = np.array([[0.0, math.log(3), -math.log(3), 1000.0, -1000.0]])
    np.testing.assert_allclose(run(make("sigmoid"), z), [[0.5, 0.75, 0.25, 1, 0]], atol=1e-15)
    np.testing.assert_allclose(run(make("tanh"), np.array([[math.log(2), 0.0]])), [[0.6, 0]])


@hand("relu6", "hardsigmoid", "hardswish", "silu", "gelu", "prelu", "mish")
def test_newer_activations_by_hand():
    x = np.array([[-4.0, -3.0, 0.0, 1.5, 3.0, 7.0]])
    np.testing.assert_array_equal(run(make("relu6"), x), [[0, 0, 0, 1.5, 3, 6]])
    np.testing.assert_allclose(run(make("hardsigmoid"), x), [[0, 0, 0.5, 0.75, 1, 1]])
    np.testing.assert_allclose(run(make("hardswish"), x), [[0, 0, 0, 1.125, 3, 7]])
    z = np.array([[0.0, math.log(3)]])
    np.testing.assert_allclose(run(make("silu"), z), [[0.0, 0.75 * math.log(3)]])
    # Phi(1) = 0.8413447460685429
    np.testing.assert_allclose(run(make("gelu"), np.array([[1.0, 0.0, -1.0]])),
                               [[0.8413447460685429, 0, -0.15865525393145707]], rtol=1e-12)
    # x tanh(log(1 + e^x)): log(1 + e) = 1.3132616875182228, log(1 + 1/e) = 0.313261687518223
    np.testing.assert_allclose(run(make("mish"), np.array([[1.0, 0.0, -1.0, 30.0]])),
                               [[math.tanh(1.3132616875182228), 0, -math.tanh(0.313261687518223),
                                 30.0]], rtol=1e-12)
    slope = {"weight": np.array([0.25])}
    np.testing.assert_array_equal(run(make("prelu"), np.array([[[-4.0], [2.0]]]),
                                      params=slope), [[[-1.0], [2.0]]])
    per_channel = {"weight": np.array([0.5, 2.0])}
    np.testing.assert_array_equal(run(make("prelu", num_parameters=2),
                                      np.array([[[-4.0], [-2.0]]]), params=per_channel),
                                  [[[-2.0], [-4.0]]])


NEWER = {"relu6": lambda x: F.relu6(x), "hardsigmoid": lambda x: F.hardsigmoid(x),
         "hardswish": lambda x: F.hardswish(x), "silu": lambda x: F.silu(x),
         "gelu": lambda x: F.gelu(x), "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
         "mish": lambda x: F.mish(x)}


def _newer(name: str):
    return make("gelu", approximate="tanh") if name == "gelu_tanh" else make(name)


@grid("relu6", "hardsigmoid", "hardswish", "silu", "gelu", "mish")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(NEWER))
def test_newer_activations_and_their_gradients_match_torch(name, dtype):
    """Forward and backward (the ``backward`` the compiled gradient is built from) against
    PyTorch's autograd, with NaN, infinities and the edges of each piece in the data."""
    x = rand((2, 3, 4, 5), dtype) * 5
    x.flat[:12] = [0.0, -0.0, 3.0, -3.0, 6.0, 100.0, -100.0, np.nan, np.inf, -np.inf, 2.999, 6.5]
    tx = t(x).requires_grad_()
    ty = NEWER[name](tx)
    dy = rand(x.shape, dtype, seed=1)
    ty.backward(t(dy))
    layer = _newer(name)
    y = run(layer, x)
    dx = layer.reference_backward(x, y, dy, {})
    # PyTorch's erf GELU returns NaN at +-inf (its vectorized erf); cnnc gives the limits.
    # The gradient at a NaN input is not compared: PyTorch's own differs between its scalar
    # and vectorized paths (relu6: 1 and 0).
    keep = ~np.isinf(x) if name == "gelu" else np.ones(x.shape, bool)
    # PyTorch's hard* backward multiplies by 1/6 rounded to float32, in float64 too
    tolerance = np.float32 if name.startswith("hard") else dtype
    for got, want, what, mask in ((y, ty.detach().numpy(), name, keep),
                                  (dx, tx.grad.numpy(), f"{name} backward",
                                   keep & ~np.isnan(x))):
        got, want = got[mask], want[mask]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
        np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want),
                                   rtol=RTOL[tolerance], atol=RTOL[tolerance], err_msg=what)


@grid("prelu")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [1, 3])
def test_prelu_and_its_gradients_match_torch(count, dtype):
    x = rand((2, 3, 4, 5), dtype) * 3
    x.flat[:3] = [0.0, np.inf, -np.inf]
    w = np.linspace(-0.5, 0.75, count).astype(dtype)
    tx, tw = t(x).requires_grad_(), t(w).requires_grad_()
    ty = F.prelu(tx, tw)
    dy = rand(x.shape, dtype, seed=1)
    ty.backward(t(dy))
    layer = make("prelu", num_parameters=count)
    params = {"weight": w}
    y = run(layer, x, params=params)
    assert_close(y, ty.detach().numpy(), dtype, "prelu")
    dx = layer.reference_backward(x, y, dy, params)
    assert_close(dx, tx.grad.numpy(), dtype, "prelu dx")
    assert_close(layer.reference_weight_gradient(x, dy), tw.grad.numpy(), dtype, "prelu dw")


@hand("softmax")
def test_softmax_by_hand():
    x = np.array([[0.0, math.log(3)]])
    np.testing.assert_allclose(run(make("softmax"), x), [[0.25, 0.75]])
    # large logits do not overflow
    np.testing.assert_allclose(run(make("softmax"), x + 1000), [[0.25, 0.75]])
    x = np.log(np.array([[[1.0, 3.0], [1.0, 1.0]]]))  # (N, C=2, T=2)
    np.testing.assert_allclose(run(make("softmax"), x), [[[0.5, 0.75], [0.5, 0.25]]])
    np.testing.assert_allclose(run(make("softmax", axis=-1), x), [[[0.25, 0.75], [0.5, 0.5]]])


@hand("batchnorm")
def test_batchnorm_inference_by_hand():
    x = np.array([[[1.0, 3.0], [0.0, 2.0]]])  # (N=1, C=2, T=2)
    params = {"weight": np.array([2.0, 1.0]), "bias": np.array([1.0, 0.0]),
              "running_mean": np.array([1.0, 2.0]), "running_var": np.array([4.0, 1.0])}
    y = run(make("batchnorm", eps=1e-5), x, params=params)
    np.testing.assert_allclose(y, [[[1, 1 + 4 / math.sqrt(4 + 1e-5)],
                                    [-2 / math.sqrt(1 + 1e-5), 0]]])


@hand("batchnorm")
def test_batchnorm_training_by_hand():
    # one channel, values 1, 2 | 3, 6: mean 3, biased variance 14/4, unbiased 14/3
    x = np.array([[[1.0, 2.0]], [[3.0, 6.0]]])  # (N=2, C=1, T=2)
    params = {"weight": np.array([2.0]), "bias": np.array([0.5]),
              "running_mean": np.array([0.0]), "running_var": np.array([1.0])}
    state = {}
    y = run(make("batchnorm", momentum=0.1, eps=1e-5), x, params=params, train_state=state)
    xhat = (x - 3) / math.sqrt(3.5 + 1e-5)
    np.testing.assert_allclose(y, 2 * xhat + 0.5)
    np.testing.assert_allclose(state["running_mean"], [0.9 * 0 + 0.1 * 3])
    np.testing.assert_allclose(state["running_var"], [0.9 * 1 + 0.1 * 14 / 3])
    # the parameters themselves are left alone
    np.testing.assert_array_equal(params["running_mean"], [0.0])



@hand("batchnorm")
def test_batchnorm_momentum_is_zero_to_one_inclusive():
    x = np.array([[[1.0, 2.0]], [[3.0, 6.0]]])
    params = {"weight": np.ones(1), "bias": np.zeros(1), "running_mean": np.zeros(1),
              "running_var": np.ones(1)}
    state = {}
    run(make("batchnorm", momentum=1.0), x, params=params, train_state=state)
    np.testing.assert_allclose([state["running_mean"], state["running_var"]], [[3], [14 / 3]])
    _, problems = parse_fields(LAYER_TYPES["batchnorm"], {"momentum": 1.5})
    ((key, error),) = problems
    assert key == "momentum" and "momentum" in error.expected and "dropout" not in error.fix


@hand("lrn")
def test_lrn_by_hand():
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    # size 3: one channel either side; alpha / size = 1, beta 1, k 1: y = x / (1 + sum x^2)
    y = run(make("lrn", size=3, alpha=3.0, beta=1.0, k=1.0), x)
    np.testing.assert_allclose(y.ravel(), [1 / 6, 2 / 15, 3 / 14])
    # size 2: one channel before, none after
    y = run(make("lrn", size=2, alpha=2.0, beta=1.0, k=1.0), x)
    np.testing.assert_allclose(y.ravel(), [1 / 2, 2 / 6, 3 / 14])
    # beta 0.5, k 2 on a 1-D net (N, C, T)
    y = run(make("lrn", size=1, alpha=1.0, beta=0.5, k=2.0), x[..., 0])
    np.testing.assert_allclose(y.ravel(), [1 / math.sqrt(3), 2 / math.sqrt(6), 3 / math.sqrt(11)])


@hand("dropout")
def test_dropout_by_hand():
    x = np.full((4, 3, 50, 50), 2.0)
    layer = make("dropout", rate=0.25)
    np.testing.assert_array_equal(run(layer, x), x)  # inference: identity
    state = {"rng": np.random.default_rng(1)}
    y = run(layer, x, train_state=state)
    kept = y != 0
    np.testing.assert_array_equal(np.unique(y), [0, 2 / 0.75])
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_array_equal(state["mask"], kept)
    # a mask already in the state is used as it is (so a backward pass can replay it)
    mask = np.zeros(x.shape, bool)
    mask[0, 0, 0, :3] = True
    y = run(layer, x, train_state={"mask": mask})
    assert y.sum() == 3 * 2 / 0.75
    # a mask kept from a batch of another size is drawn afresh, not broadcast
    state = {"mask": np.ones((1, 3, 50, 50), bool), "rng": np.random.default_rng(2)}
    y = run(layer, x, train_state=state)
    assert state["mask"].shape == x.shape and abs((y != 0).mean() - 0.75) < 0.01
    np.testing.assert_array_equal(run(make("dropout", rate=0.0), x, train_state={}), x)


@hand("flatten")
def test_flatten_by_hand():
    x = np.arange(16.0).reshape(2, 2, 2, 2)
    np.testing.assert_array_equal(run(make("flatten"), x), [np.arange(8), np.arange(8, 16)])


@hand("add", "concat")
def test_merges_by_hand():
    a, b, c = (np.array([[v, v + 1]]) for v in (1.0, 3.0, 5.0))
    np.testing.assert_array_equal(run(make("add"), a, b, c), [[9, 12]])
    np.testing.assert_array_equal(run(make("concat"), a, b), [[1, 2, 3, 4]])
    x = np.arange(4.0).reshape(1, 2, 2)
    np.testing.assert_array_equal(run(make("concat"), x, 10 + x[:, :1]),
                                  [[[0, 1], [2, 3], [10, 11]]])
    np.testing.assert_array_equal(run(make("concat", axis=-1), x, 10 + x),
                                  [[[0, 1, 10, 11], [2, 3, 12, 13]]])
    np.testing.assert_array_equal(run(make("concat", axis="channels"), x), x)


@hand("locally_connected2d")
def test_locally_connected2d_by_hand():
    # a 2x2 kernel at each of 2x2 positions, each picking a different corner of the input
    w = np.zeros((2, 2, 1, 1, 2, 2))
    w[0, 0, 0, 0, 0, 0] = w[0, 1, 0, 0, 0, 1] = w[1, 0, 0, 0, 1, 0] = w[1, 1, 0, 0, 1, 1] = 1
    bias = np.array([[[10.0, 20.0], [30.0, 40.0]]])
    y = run(make("locally_connected2d", filters=1, kernel=2), X33,
            params={"weight": w, "bias": bias})
    np.testing.assert_array_equal(y[0, 0], [[11, 23], [37, 49]])
    # with shared weights it is a convolution
    shared = np.broadcast_to(np.array([[1.0, 2.0], [3.0, 4.0]]), (2, 2, 1, 1, 2, 2))
    y = run(make("locally_connected2d", filters=1, kernel=2, bias=False), X33,
            params={"weight": shared})
    np.testing.assert_array_equal(y[0, 0], [[37, 47], [67, 77]])


@hand("blurpool2d")
def test_blurpool2d_by_hand():
    np.testing.assert_array_equal(blur_filter(3) * 16, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    np.testing.assert_array_equal(blur_filter(4)[0] * 64, [1, 3, 3, 1])
    delta = np.zeros((1, 1, 3, 3))
    delta[0, 0, 1, 1] = 16.0
    y = run(make("blurpool2d", kernel=3, stride=1, pad_mode="zero"), delta)
    np.testing.assert_array_equal(y[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    # reflected, the centre appears at all four corners of every window
    y = run(make("blurpool2d", kernel=3, stride=2), delta)
    np.testing.assert_array_equal(y[0, 0], [[4, 4], [4, 4]])
    # a constant stays constant; kernel 1 is plain subsampling
    np.testing.assert_allclose(run(make("blurpool2d", kernel=5), np.full((1, 2, 6, 7), 3.0)),
                               np.full((1, 2, 3, 4), 3.0))
    x = np.arange(20.0).reshape(1, 1, 4, 5)
    np.testing.assert_array_equal(run(make("blurpool2d", kernel=1), x), x[..., ::2, ::2])
    # kernel 2 pads 0 before, 1 after: [a, b] -> (a + b) / 2, the last reflected: (c + b) / 2
    x = np.tile([1.0, 3.0, 5.0], (1, 1, 2, 1))
    y = run(make("blurpool2d", kernel=2, stride=1), x)
    np.testing.assert_array_equal(y[0, 0], [[2, 4, 4], [2, 4, 4]])


# -- against PyTorch, or a loop, over a grid -------------------------------------------------

CONV2D_PADDINGS = [0, 1, [1, 2], [[1, 0], [2, 1]], "same", "valid"]
GROUPS_FILTERS = [(1, 3), (2, 4), (4, 4), (4, 8)]  # on 4 channels: (4, *) is depthwise


def check_conv(type_name, shape, padding, dtype, kernels, strides, dilations):
    nd = len(shape) - 2
    conv = {1: F.conv1d, 2: F.conv2d}[nd]
    for kernel, stride, dilation, (groups, filters), bias in product(
            kernels, strides, dilations, GROUPS_FILTERS, (True, False)):
        layer = make(type_name, filters=filters, kernel=kernel, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, bias=bias)
        x = rand(shape, dtype, 1)
        params = {name: rand(spec.shape, dtype, 2 + i)
                  for i, (name, spec) in enumerate(layer.params([shape[1:]]).items())}
        what = f"{type_name} {layer.settings()}"
        y = run(layer, x, params=params)
        pairs = pad_pairs(padding, shape[2:], kernel, stride, dilation)
        b = t(params["bias"]) if bias else None
        expected = conv(F.pad(t(x), torch_pad(pairs)), t(params["weight"]), b, stride, 0,
                        dilation, groups).numpy()
        assert_close(y, expected, dtype, what)
        if padding == "same" and stride == 1:  # torch's own 'same' agrees at stride 1
            expected = conv(t(x), t(params["weight"]), b, 1, "same", dilation, groups).numpy()
            assert_close(y, expected, dtype, what + " vs torch padding='same'")


@grid("conv2d")
@needs_torch
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", CONV2D_PADDINGS, ids=str)
def test_conv2d_matches_torch(padding, dtype):
    check_conv("conv2d", (2, 4, 7, 8), padding, dtype, kernels=[1, 3, (2, 3)],
               strides=[1, 2, (1, 2)], dilations=[1, 2, (2, 1)])


@grid("conv1d")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", [0, 2, [[2, 0]], [[0, 1]], "same", "valid"], ids=str)
def test_conv1d_matches_torch(padding, dtype):
    check_conv("conv1d", (2, 4, 14), padding, dtype, kernels=[1, 2, 3, 5],
               strides=[1, 2, 3], dilations=[1, 2, 3])


def pool_settings(nd, kernels, strides, paddings):
    """Torch-legal window settings: symmetric padding no more than half the kernel."""
    for kernel, stride, padding, ceil_mode in product(kernels, strides, paddings, (False, True)):
        k = kernel if isinstance(kernel, tuple) else (kernel,) * nd
        p = padding if isinstance(padding, tuple) else (padding,) * nd
        if all(2 * pi <= ki for pi, ki in zip(p, k)):
            yield kernel, stride, padding, ceil_mode


def as_keys(kernel, stride, padding, ceil_mode):
    keys = {"kernel": list(kernel) if isinstance(kernel, tuple) else kernel,
            "padding": list(padding) if isinstance(padding, tuple) else padding,
            "ceil_mode": ceil_mode}
    if stride is not None:
        keys["stride"] = list(stride) if isinstance(stride, tuple) else stride
    return keys


POOL_GRID = {
    2: ((2, 3, 7, 8), [1, 2, 3, (2, 3)], [None, 1, 2, (2, 1)], [0, 1, (0, 1)]),
    1: ((2, 3, 9), [1, 2, 3, 4], [None, 1, 2, 3], [0, 1, 2]),
}


@grid("maxpool2d", "maxpool1d", "avgpool2d", "avgpool1d")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("kind", ["max", "avg_with_pad", "avg_without_pad"])
def test_pools_match_torch(kind, nd, dtype):
    shape, kernels, strides, paddings = POOL_GRID[nd]
    x = rand(shape, dtype)
    for kernel, stride, padding, ceil_mode in pool_settings(nd, kernels, strides, paddings):
        keys = as_keys(kernel, stride, padding, ceil_mode)
        if kind == "max":
            layer = make(f"maxpool{nd}d", **keys)
            fn = {1: F.max_pool1d, 2: F.max_pool2d}[nd]
            expected = fn(t(x), kernel, stride, padding, ceil_mode=ceil_mode)
        else:
            include = kind == "avg_with_pad"
            layer = make(f"avgpool{nd}d", count_include_pad=include, **keys)
            fn = {1: F.avg_pool1d, 2: F.avg_pool2d}[nd]
            expected = fn(t(x), kernel, stride, padding, ceil_mode=ceil_mode,
                          count_include_pad=include)
        assert_close(run(layer, x), expected.numpy(), dtype, f"{kind} {keys}")


@grid("maxpool2d", "avgpool2d")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", [[[1, 0], [0, 1]], [[0, 1], [1, 1]], "same"], ids=str)
def test_asymmetric_and_same_pool2d_match_padded_torch(padding, dtype):
    """Padding torch's pools cannot express: pad first, then pool without padding. Excluding
    the padding from an average is the padded sum over the padded count of real elements."""
    x = rand((2, 3, 7, 8), dtype)
    ones = torch.ones((1, 1, 7, 8), dtype=t(x).dtype)
    for kernel, stride in product([2, 3, (2, 3)], [1, 2, (2, 1), None]):
        keys = as_keys(kernel, stride, padding, False)
        s = stride or kernel
        pairs = pad_pairs(padding, (7, 8), kernel, s, 1)
        pad = torch_pad(pairs)
        expected = F.max_pool2d(F.pad(t(x), pad, value=-math.inf), kernel, s)
        assert_close(run(make("maxpool2d", **keys), x), expected.numpy(), dtype, f"max {keys}")
        expected = F.avg_pool2d(F.pad(t(x), pad), kernel, s)
        assert_close(run(make("avgpool2d", **keys), x), expected.numpy(), dtype, f"avg {keys}")
        count = F.avg_pool2d(F.pad(ones, pad), kernel, s)
        layer = make("avgpool2d", count_include_pad=False, **keys)
        assert_close(run(layer, x), (expected / count).numpy(), dtype, f"avg/count {keys}")


@grid("lppool2d", "lppool1d")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_lppool_matches_torch(p, nd, dtype):
    """The norm of signed values is PyTorch's LPPool of their absolute values (PyTorch's own
    leaves the sign: the same for even p, NaN or a signed sum for odd p)."""
    shape, kernels, strides, _ = POOL_GRID[nd]
    x = rand(shape, dtype)
    module = {1: torch.nn.LPPool1d, 2: torch.nn.LPPool2d}[nd]
    for kernel, stride, padding, ceil_mode in pool_settings(nd, kernels, strides, [0]):
        keys = as_keys(kernel, stride, padding, ceil_mode)
        pool = module(p, kernel, stride, ceil_mode)
        y = run(make(f"lppool{nd}d", p=p, **keys), x)
        assert_close(y, pool(t(np.abs(x))).numpy(), dtype, f"{keys}")
        if p % 2 == 0:
            assert_close(y, pool(t(x)).numpy(), dtype, f"{keys} signed")


def onnx_pool_loop(x, kind, kernel, stride, pads, ceil_mode, include_pad):
    """ONNX's MaxPool, AveragePool and LpPool (p = 3) written as a loop over windows: window o
    covers [o*s - before, o*s - before + k); an average that includes the padding divides by
    the part of that inside [-before, size + after), the ceil_mode overhang left out."""
    sizes = x.shape[2:]
    counts = []
    for w, k, s, (b, a) in zip(sizes, kernel, stride, pads):
        span = w + b + a - k
        n = (-(-span // s) if ceil_mode else span // s) + 1
        counts.append(n - 1 if ceil_mode and (n - 1) * s >= w + b else n)
    y = np.zeros(x.shape[:2] + tuple(counts), np.float64)
    for o in product(*(range(n) for n in counts)):
        lo = [i * s - b for i, s, (b, _) in zip(o, stride, pads)]
        hi = [start + k for start, k in zip(lo, kernel)]
        inside = tuple(slice(max(start, 0), min(end, w)) for start, end, w in zip(lo, hi, sizes))
        win = x[(..., *inside)].astype(np.float64).reshape(x.shape[:2] + (-1,))
        if kind == "max":
            y[(..., *o)] = win.max(axis=-1)
        elif kind == "lp":
            y[(..., *o)] = (np.abs(win) ** 3).sum(axis=-1) ** (1 / 3)
        elif include_pad:
            y[(..., *o)] = win.sum(axis=-1) / math.prod(
                min(end, w + a) - start for start, end, w, (_, a) in zip(lo, hi, sizes, pads))
        else:
            y[(..., *o)] = win.mean(axis=-1)
    return y


def onnx_pool(x, kind, kernel, stride, pads, ceil_mode, include_pad):
    """The same pool run by ONNX Runtime (float32, as its CPU pools are)."""
    import onnxruntime
    from onnx import TensorProto, helper

    op = {"max": "MaxPool", "avg": "AveragePool", "lp": "LpPool"}[kind]
    attrs = {"kernel_shape": list(kernel), "strides": list(stride), "ceil_mode": int(ceil_mode),
             "pads": [b for b, _ in pads] + [a for _, a in pads]}
    if kind == "avg":
        attrs["count_include_pad"] = int(include_pad)
    if kind == "lp":
        attrs["p"] = 3
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "pool", [value("x", TensorProto.FLOAT, list(x.shape))],
                              [value("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


WIDE_PADDING = [  # (kernel, stride, [(before, after)] per axis, ceil_mode): past kernel / 2
    (3, 1, (2, 2), False), (3, 2, (2, 0), True), (3, 3, (1, 2), True), (4, 3, (3, 3), False),
    (4, 3, (3, 1), True), (2, 1, (1, 1), True), (5, 2, (4, 3), False), (3, 2, (0, 2), True),
]
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None


@grid("maxpool2d", "maxpool1d", "avgpool2d", "avgpool1d", "lppool2d", "lppool1d")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("kind", ["max", "avg_with_pad", "avg_without_pad", "lp"])
def test_pools_with_padding_past_half_the_kernel_match_onnx(kind, nd, dtype):
    """PyTorch refuses padding past half the kernel; ONNX takes it up to kernel - 1. Checked
    against a loop of ONNX's rules and, where it is installed, ONNX Runtime itself. (Lp pools
    only without ceil_mode: there cnnc scales the overhanging window as PyTorch does.)"""
    x = rand((2, 3, 7) if nd == 1 else (2, 3, 7, 6), dtype)
    pool, include = kind[:3], kind == "avg_with_pad"
    extra = {"avg": {"count_include_pad": include}, "lp": {"p": 3}}.get(pool, {})
    for kernel, stride, pad, ceil_mode in WIDE_PADDING:
        if pool == "lp" and ceil_mode:
            continue
        kernel, stride, pads = (kernel,) * nd, (stride,) * nd, (pad,) * nd
        keys = as_keys(kernel, stride, [list(pad)] * nd, ceil_mode)
        y = run(make(f"{pool}pool{nd}d", **keys, **extra), x)
        expected = onnx_pool_loop(x, pool, kernel, stride, pads, ceil_mode, include)
        assert_close(y, expected.astype(dtype), dtype, f"{kind} {keys} vs loop")
        if HAVE_ORT:
            got = onnx_pool(x, pool, kernel, stride, pads, ceil_mode, include)
            np.testing.assert_allclose(y, got, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{kind} {keys} vs onnxruntime")


@pytest.mark.parametrize("nd", [1, 2])
def test_pool_padding_that_leaves_a_window_empty_is_refused(nd):
    from cnncompiler.errors import ShapeError

    shape = (3, 6) if nd == 1 else (3, 6, 6)
    for keys, where in [({"kernel": 3, "padding": 3}, "first"),
                        ({"kernel": 2, "stride": 2, "padding": [[0, 3]] * nd}, "last"),
                        ({"kernel": 2, "stride": 1, "padding": [[1, 2]] * nd}, "last")]:
        for kind in ("max", "avg", "lp"):
            layer = make(f"{kind}pool{nd}d", **keys)
            with pytest.raises(ShapeError, match=f"leaves the {where} window with no input"):
                layer.infer_shape([shape], ShapeNotes())
    # padding of kernel or more where every window still reaches an input is taken
    layer = make(f"maxpool{nd}d", kernel=2, stride=4, padding=[[0, 2]] * nd)
    assert layer.infer_shape([shape], ShapeNotes()) == (3,) + (2,) * nd


@hand("upsample")
def test_upsample_by_hand():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    np.testing.assert_array_equal(run(make("upsample"), x)[0, 0],
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    np.testing.assert_array_equal(run(make("upsample", scale=[1, 3]), x)[0, 0],
                                  [[1, 1, 1, 2, 2, 2], [3, 3, 3, 4, 4, 4]])
    np.testing.assert_array_equal(run(make("upsample", scale=1), X33), X33)



@hand("slice")
def test_slice_by_hand():
    from cnncompiler.errors import ShapeError

    x = np.arange(1.0, 7.0).reshape(1, 6, 1, 1)  # channels 1..6
    np.testing.assert_array_equal(run(make("slice", stop=2), x).ravel(), [1, 2])
    np.testing.assert_array_equal(run(make("slice", start=1, step=2), x).ravel(), [2, 4, 6])
    np.testing.assert_array_equal(run(make("slice", start=-2, stop=99), x).ravel(), [5, 6])
    np.testing.assert_array_equal(run(make("slice", axis="rows", start=1), X33)[0, 0],
                                  [[4, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(run(make("slice", axis="cols", step=2), X33)[0, 0],
                                  [[1, 3], [4, 6], [7, 9]])
    np.testing.assert_array_equal(run(make("slice", axis=-1, start=1, stop=-1), X33)[0, 0],
                                  [[2], [5], [8]])
    with pytest.raises(ShapeError, match=r"takes nothing from axis 1 of size 6 \(start 4, "
                                         r"stop 2, step 1\)"):
        make("slice", start=4, stop=2).infer_shape([(6, 1, 1)], ShapeNotes())
    with pytest.raises(ShapeError, match="axis 3 is not an axis of a sample of rank 2"):
        make("slice", axis="cols").infer_shape([(6, 5)], ShapeNotes())
    with pytest.raises(ShapeError, match="axis 0 is not an axis"):
        make("slice", axis=0).infer_shape([(6, 5)], ShapeNotes())


@grid("slice")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_slice_matches_torch(dtype):
    x = rand((2, 6, 5, 7), dtype)
    for axis in (1, 2, 3, -1):
        for start, stop, step in [(0, None, 1), (1, 4, 1), (-3, None, 2), (2, 99, 3),
                                  (-99, -1, 2), (4, 5, 1)]:
            index = [slice(None)] * 4
            index[axis] = slice(start, stop, step)
            want = t(x)[tuple(index)].numpy()
            got = run(make("slice", axis=axis, start=start, stop=stop, step=step), x)
            assert_close(got, want, dtype, f"axis {axis} [{start}:{stop}:{step}]")
    assert_close(run(make("slice", start=2, stop=5), x[:, :, 0, 0]), x[:, 2:5, 0, 0], dtype)

ADAPTIVE_SIZES = [((7, 5), (3, 4)), ((6, 6), (6, 6)), ((3, 2), (5, 7)), ((9, 8), (1, 1)),
                  ((5, 5), (2, 3)), ((4, 10), (4, 3)), ((1, 1), (2, 2))]


@grid("adaptive_avgpool2d", "adaptive_maxpool2d")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_pools_match_torch(dtype):
    for size, out in ADAPTIVE_SIZES:
        x = rand((2, 3, *size), dtype)
        keys = {"output_size": list(out) if out[0] != out[1] else out[0]}
        assert_close(run(make("adaptive_avgpool2d", **keys), x),
                     F.adaptive_avg_pool2d(t(x), out).numpy(), dtype, f"avg {size} -> {out}")
        assert_close(run(make("adaptive_maxpool2d", **keys), x),
                     F.adaptive_max_pool2d(t(x), out).numpy(), dtype, f"max {size} -> {out}")


def stats_pool_torch(x, eps):
    return torch.cat([x.mean(2), torch.sqrt(x.var(2, unbiased=False) + eps)], 1)


@grid("upsample")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_upsample_matches_torch(dtype):
    for size, scale in [((3, 4), 2), ((5, 2), [3, 1]), ((1, 1), 4), ((4, 3), [2, 5]), ((2, 2), 1)]:
        x = rand((2, 3, *size), dtype)
        factor = tuple(scale) if isinstance(scale, list) else (scale, scale)
        want = F.interpolate(t(x), scale_factor=factor, mode="nearest").numpy()
        assert_close(run(make("upsample", scale=scale), x), want, dtype, f"{size} x {scale}")


@grid("stats_pool")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7), (3, 5, 1), (1, 2, 40)], ids=str)
def test_stats_pool_matches_torch(shape, dtype):
    x = rand(shape, dtype) * 3 + 1
    for eps in (1e-5, 1e-3, 1.0):
        assert_close(run(make("stats_pool", eps=eps), x), stats_pool_torch(t(x), eps).numpy(),
                     dtype, f"eps {eps}")


@grid("lrn")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (2, 6, 5)], ids=str)
def test_lrn_matches_torch(shape, dtype):
    x = rand(shape, dtype)
    for size, alpha, beta, k in product([1, 2, 3, 4, 5, 7], [1e-4, 0.5], [0.5, 0.75, 1.0],
                                        [1.0, 2.0]):
        layer = make("lrn", size=size, alpha=alpha, beta=beta, k=k)
        expected = torch.nn.LocalResponseNorm(size, alpha, beta, k)(t(x)).numpy()
        assert_close(run(layer, x), expected, dtype, str(layer.settings()))


@grid("relu", "leaky_relu", "sigmoid", "tanh", "identity")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_match_torch(dtype):
    x = rand((2, 3, 4, 5), dtype) * 10
    x.flat[:4] = [0.0, 100.0, -100.0, -0.0]  # sigmoid must not overflow
    tx = t(x)
    assert_close(run(make("relu"), x), F.relu(tx).numpy(), dtype, "relu")
    assert_close(run(make("sigmoid"), x), torch.sigmoid(tx).numpy(), dtype, "sigmoid")
    assert_close(run(make("tanh"), x), torch.tanh(tx).numpy(), dtype, "tanh")
    assert_close(run(make("identity"), x), x, dtype, "identity")
    for alpha in [0.0, 0.01, 0.2, 1.0, 1.5]:
        assert_close(run(make("leaky_relu", alpha=alpha), x),
                     F.leaky_relu(tx, alpha).numpy(), dtype, f"leaky_relu {alpha}")


@grid("softmax")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 7)], ids=str)
def test_softmax_matches_torch(shape, dtype):
    x = rand(shape, dtype) * 5
    axes = [a for a in range(1, len(shape))] + [-a for a in range(1, len(shape))]
    for axis in axes:
        expected = torch.softmax(t(x), axis).numpy()
        assert_close(run(make("softmax", axis=axis), x), expected, dtype, f"axis {axis}")


@grid("dropout")
@needs_torch
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_dropout_matches_torch_statistics(rate):
    """Masks differ by generator; what must agree is the keep rate and the scale of survivors."""
    x = np.ones((8, 4, 32, 32), np.float32)
    y = run(make("dropout", rate=rate), x, train_state={"rng": np.random.default_rng(0)})
    expected = F.dropout(t(x), rate, training=True).numpy()
    np.testing.assert_allclose(np.unique(y[y != 0]), np.unique(expected[expected != 0]),
                               rtol=1e-6)
    assert abs((y != 0).mean() - (1 - rate)) < 0.01
    # in expectation it is the identity
    assert abs(y.mean() - 1) < 0.05


@grid("batchnorm")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (4, 3, 7), (5, 6)], ids=str)
def test_batchnorm_matches_torch(shape, dtype):
    c = shape[1]
    x = rand(shape, dtype) * 3 + 1
    for eps, momentum in product([1e-5, 1e-3], [0.0, 0.1, 0.5]):
        params = {"weight": rand((c,), dtype, 1), "bias": rand((c,), dtype, 2),
                  "running_mean": rand((c,), dtype, 3),
                  "running_var": np.abs(rand((c,), dtype, 4)) + 0.5}
        layer = make("batchnorm", eps=eps, momentum=momentum)
        what = str(layer.settings())
        tp = {k: t(v.copy()) for k, v in params.items()}
        expected = F.batch_norm(t(x), tp["running_mean"], tp["running_var"], tp["weight"],
                                tp["bias"], False, momentum, eps).numpy()
        assert_close(run(layer, x, params=params), expected, dtype, what + " inference")
        state = {}
        y = run(layer, x, params=params, train_state=state)
        expected = F.batch_norm(t(x), tp["running_mean"], tp["running_var"], tp["weight"],
                                tp["bias"], True, momentum, eps).numpy()
        assert_close(y, expected, dtype, what + " training")
        assert_close(np.asarray(state["running_mean"]), tp["running_mean"].numpy(), dtype,
                     what + " running_mean")
        assert_close(np.asarray(state["running_var"]), tp["running_var"].numpy(), dtype,
                     what + " running_var")


@grid("dense", "flatten")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_and_flatten_match_torch(dtype):
    for shape in [(2, 3, 4, 5), (2, 3, 4), (2, 6)]:
        x = rand(shape, dtype)
        assert_close(run(make("flatten"), x), torch.flatten(t(x), 1).numpy(), dtype, "flatten")
    x = rand((3, 7), dtype)
    for units, bias in product([1, 5], [True, False]):
        layer = make("dense", units=units, bias=bias)
        params = {k: rand(spec.shape, dtype, i)
                  for i, (k, spec) in enumerate(layer.params([(7,)]).items())}
        expected = F.linear(t(x), t(params["weight"]), t(params["bias"]) if bias else None)
        assert_close(run(layer, x, params=params), expected.numpy(), dtype, f"{units} {bias}")


@grid("global_avgpool", "global_maxpool")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 7), (2, 3, 1, 1)], ids=str)
def test_global_pools_match_torch(shape, dtype):
    x = rand(shape, dtype)
    axes = tuple(range(2, len(shape)))
    assert_close(run(make("global_avgpool"), x), t(x).mean(axes, keepdim=True).numpy(), dtype)
    assert_close(run(make("global_maxpool"), x), t(x).amax(axes, keepdim=True).numpy(), dtype)


@grid("add", "concat")
@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_merges_match_torch(dtype):
    xs = [rand((2, 3, 4, 5), dtype, i) for i in range(3)]
    assert_close(run(make("add"), *xs), (t(xs[0]) + t(xs[1]) + t(xs[2])).numpy(), dtype)
    for axis in [1, 2, 3, -1, -2, -3, "channels"]:
        dim = 1 if axis == "channels" else axis
        parts = []
        for i, extra in enumerate([1, 2, 3]):
            shape = [2, 3, 4, 5]
            shape[dim] = extra
            parts.append(rand(tuple(shape), dtype, i))
        expected = torch.cat([t(p) for p in parts], dim).numpy()
        assert_close(run(make("concat", axis=axis), *parts), expected, dtype, f"axis {axis}")


def locally_connected_loop(x, weight, bias, stride, pairs):
    """Each output position (i, j) has its own (filters, C, kh, kw) weight."""
    xp = np.pad(x, [(0, 0), (0, 0), *pairs])
    oh, ow, f, c, kh, kw = weight.shape
    y = np.zeros((x.shape[0], f, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            for n in range(x.shape[0]):
                for fi in range(f):
                    y[n, fi, i, j] = np.sum(patch[n] * weight[i, j, fi])
    return y if bias is None else y + bias[None]


@grid("locally_connected2d")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", [0, 1, [[1, 0], [0, 2]], "same"], ids=str)
def test_locally_connected2d_matches_loop(padding, dtype):
    x = rand((2, 3, 6, 7), dtype)
    for kernel, stride, bias in product([1, 2, (2, 3)], [1, 2, (1, 2)], [True, False]):
        layer = make("locally_connected2d", filters=2, kernel=kernel, stride=stride,
                     padding=padding, bias=bias)
        params = {k: rand(s.shape, dtype, i + 1)
                  for i, (k, s) in enumerate(layer.params([(3, 6, 7)]).items())}
        pairs = pad_pairs(padding, (6, 7), kernel, stride, 1)
        stride2 = stride if isinstance(stride, tuple) else (stride, stride)
        expected = locally_connected_loop(x, params["weight"], params.get("bias"), stride2, pairs)
        assert_close(run(layer, x, params=params), expected, dtype, str(layer.settings()))


def blurpool_loop(x, kernel, stride, mode):
    row = np.array([math.comb(kernel - 1, i) for i in range(kernel)], np.float64)
    f = np.outer(row, row) / row.sum() ** 2
    pad = ((kernel - 1) // 2, kernel // 2)
    xp = np.pad(x, [(0, 0), (0, 0), pad, pad], mode="reflect" if mode == "reflect" else "constant")
    oh = (xp.shape[2] - kernel) // stride + 1
    ow = (xp.shape[3] - kernel) // stride + 1
    y = np.zeros(x.shape[:2] + (oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + kernel, j * stride:j * stride + kernel]
            y[:, :, i, j] = (patch * f).sum(axis=(2, 3))
    return y


@grid("blurpool2d")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad_mode", ["reflect", "zero"])
def test_blurpool2d_matches_loop_and_torch(pad_mode, dtype):
    x = rand((2, 3, 9, 8), dtype)
    for kernel, stride in product(range(1, 8), [1, 2, 3]):
        layer = make("blurpool2d", kernel=kernel, stride=stride, pad_mode=pad_mode)
        y = run(layer, x)
        what = str(layer.settings())
        expected = blurpool_loop(x.astype(np.float64), kernel, stride, pad_mode)
        assert_close(y, expected.astype(dtype), dtype, what + " vs loop")
        if not HAVE_TORCH:
            continue
        row = torch.tensor([math.comb(kernel - 1, i) for i in range(kernel)], dtype=t(x).dtype)
        f = torch.outer(row, row) / row.sum() ** 2
        pad = ((kernel - 1) // 2, kernel // 2)
        xp = F.pad(t(x), pad + pad, mode="reflect" if pad_mode == "reflect" else "constant")
        expected = F.conv2d(xp, f.expand(3, 1, kernel, kernel), stride=stride, groups=3)
        assert_close(y, expected.numpy(), dtype, what + " vs torch")


# -- RoI pooling (the kernels' own tests: tests/test_roi_kernels.py) --------------------------

@hand("roi_pool", "roi_align")
def test_roi_layers_by_hand():
    box = np.array([[0.0, 0.0, 0.0, 2.0, 2.0]])
    # three positions a side cut into 2 bins of 1.5: rows [0, 2) and [1, 3), and so columns
    y = run(make("roi_pool", output_size=2), X33, box)
    np.testing.assert_array_equal(y[0, 0], [[5, 6], [8, 9]])
    # one sample in the middle of the box, at (1, 1); aligned moves it to (0.5, 0.5)
    y = run(make("roi_align", output_size=1, sampling_ratio=1), X33, box)
    np.testing.assert_allclose(y[0, 0], [[5.0]])
    y = run(make("roi_align", output_size=1, sampling_ratio=1, aligned=True), X33, box)
    np.testing.assert_allclose(y[0, 0], [[3.0]])   # (1 + 2 + 4 + 5) / 4


@grid("roi_pool", "roi_align")
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_roi_layers_against_a_loop_over_bins(scale):
    from test_roi_kernels import _random_boxes, oracle_roi_align, oracle_roi_pool

    x = np.random.default_rng(3).standard_normal((3, 2, 9, 11)).astype(np.float32)
    rois = _random_boxes(scale, seed=4)
    for size in (1, (2, 3)):
        got = run(make("roi_pool", output_size=size, spatial_scale=scale), x, rois)
        assert_close(got, oracle_roi_pool(x, rois, size, scale)[0], np.float32, "roi_pool")
        for ratio, aligned in product((0, 2), (False, True)):
            layer = make("roi_align", output_size=size, spatial_scale=scale,
                         sampling_ratio=ratio, aligned=aligned)
            assert_close(run(layer, x, rois),
                         oracle_roi_align(x, rois, size, scale, ratio, aligned), np.float32,
                         f"roi_align ratio {ratio} aligned {aligned}")

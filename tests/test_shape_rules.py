"""The shape arithmetic of every convolution and pooling layer, by hypothesis: the shape rule
agrees with the output-size formula, with the numpy reference's actual output and with PyTorch;
sizes below 1 are a ShapeError; the unread-rows warning appears exactly when it should; and the
parameter shapes, counts and FLOPs agree with PyTorch's modules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from cnncompiler.errors import ShapeError
from cnncompiler.layers import LAYER_TYPES, ShapeNotes
from cnncompiler.layers.fields import parse_fields
from cnncompiler.layers.activation import ReLU
from cnncompiler.layers.fused import Fused
from cnncompiler.layers.norm import BatchNorm
from cnncompiler.layers.window import out_size

from conftest import HAVE_TORCH, needs_torch

if HAVE_TORCH:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

CONVS = ["conv1d", "conv2d", "locally_connected2d"]
POOLS = ["maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d", "lppool1d", "lppool2d"]

FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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


def make(type_name: str, **keys):
    """A layer built as the spec parser builds it, so keys go through the same parsers."""
    cls = LAYER_TYPES[type_name]
    kwargs, problems = parse_fields(cls, keys)
    assert not problems, [str(p) for _, p in problems]
    return cls(**kwargs)


def infer(layer, shape):
    """The shape rule's output shape and warnings, or None for a ShapeError."""
    notes = ShapeNotes()
    try:
        return layer.infer_shape([shape], notes), notes.warnings
    except ShapeError:
        return None, None


# -- strategies -------------------------------------------------------------------------------

def per_axis(nd, lo, hi):
    """An int for every axis, or a list of one int per axis: both spellings a spec allows."""
    return st.one_of(st.integers(lo, hi), st.lists(st.integers(lo, hi), min_size=nd, max_size=nd))


def paddings(nd):
    small = st.integers(0, 3)
    return st.one_of(
        small,
        st.lists(small, min_size=nd, max_size=nd),
        st.lists(st.lists(small, min_size=2, max_size=2), min_size=nd, max_size=nd),
        st.sampled_from(["same", "valid"]))


@st.composite
def sliding_layers(draw, types=tuple(CONVS + POOLS)):
    """(layer, per-sample input shape) for a conv or pool layer with random keys."""
    type_name = draw(st.sampled_from(types))
    nd = 1 if type_name.endswith("1d") else 2
    keys = {"kernel": draw(per_axis(nd, 1, 5)), "padding": draw(paddings(nd))}
    stride = draw(st.one_of(st.none(), per_axis(nd, 1, 4)))
    if stride is not None or type_name in CONVS:
        keys["stride"] = 1 if stride is None else stride
    channels = draw(st.integers(1, 2))
    if type_name.startswith("conv"):
        groups = draw(st.integers(1, 3))
        channels *= groups
        keys.update(filters=groups * draw(st.integers(1, 2)), groups=groups,
                    dilation=draw(per_axis(nd, 1, 3)), bias=draw(st.booleans()))
    elif type_name in CONVS:
        keys.update(filters=draw(st.integers(1, 2)), bias=draw(st.booleans()))
    else:
        keys["ceil_mode"] = draw(st.booleans())
        if type_name.startswith("avg"):
            keys["count_include_pad"] = draw(st.booleans())
        if type_name.startswith("lp"):
            keys["p"] = draw(st.sampled_from([1, 2, 3]))
    sizes = draw(st.lists(st.integers(1, 12), min_size=nd, max_size=nd))
    return make(type_name, **keys), (channels, *sizes)


# -- the oracle, written from the formulas and not from cnnc's code ----------------------------

def axes(layer, shape):
    """Per spatial axis: (size, kernel, stride, (pad before, pad after), dilation)."""
    sizes = shape[1:]
    nd = len(sizes)
    dilation = getattr(layer, "dilation", (1,) * nd)
    out = []
    for i, (w, k, s, d) in enumerate(zip(sizes, layer.kernel, layer.stride, dilation)):
        if layer.padding == "valid":
            pad = (0, 0)
        elif layer.padding == "same":
            total = max((-(-w // s) - 1) * s + d * (k - 1) + 1 - w, 0)  # TensorFlow's rule
            pad = (total // 2, total - total // 2)
        else:
            pad = layer.padding[i]
        out.append((w, k, s, pad, d))
    return out


def expected_length(w, k, s, pad, d, ceil_mode):
    """floor((W + P - D(K-1) - 1) / S) + 1, or PyTorch's ceil_mode variant (the last window
    must start inside the input or the leading padding)."""
    span = d * (k - 1) + 1
    if not ceil_mode:
        return math.floor((w + pad[0] + pad[1] - span) / s) + 1
    n = math.ceil((w + pad[0] + pad[1] - span) / s) + 1
    return n - 1 if (n - 1) * s >= w + pad[0] else n


def expected_shape(layer, shape):
    """The output shape, or None where the layer must refuse the input."""
    ceil_mode = getattr(layer, "ceil_mode", False)
    lengths = []
    for w, k, s, pad, d in axes(layer, shape):
        n = expected_length(w, k, s, pad, d, ceil_mode)
        # a pool's window that sees only padding: the first, or the last one starting past
        # the input (ONNX takes padding up to kernel - 1, which never leaves one)
        if layer.type_name in POOLS and n >= 1 and (pad[0] >= k or (n - 1) * s >= w + pad[0]):
            return None
        lengths.append(n)
    if min(lengths) < 1:
        return None
    channels = getattr(layer, "filters", shape[0])
    return (channels, *lengths)


def unread_rows(w, k, s, pad, d, ceil_mode):
    """The input rows past the last window, (first, last), or None where it reaches the end:
    the remainder of the division, less the trailing padding it may fall in."""
    n = expected_length(w, k, s, pad, d, ceil_mode)
    left_over = w + pad[0] + pad[1] - ((n - 1) * s + d * (k - 1) + 1)
    if left_over <= pad[1]:
        return None
    return max(w - (left_over - pad[1]), 0), w - 1


# -- the shape rule -----------------------------------------------------------------------------

@FEW
@given(sliding_layers())
def test_shape_rule_matches_formula_and_reference(case):
    layer, shape = case
    expected = expected_shape(layer, shape)
    got, _ = infer(layer, shape)
    assert got == expected, layer.settings()
    if got is None:
        return
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((2, *shape)))
    params = {k: spec.initial(rng) for k, spec in layer.params([shape]).items()}
    assert layer.reference([x], params).shape == (2, *got)
    # the receptive-field step: each output sees the dilated span, one stride apart
    window = layer.window([shape])
    dilation = getattr(layer, "dilation", (1,) * len(layer.kernel))
    assert window.kernel == tuple(d * (k - 1) + 1 for k, d in zip(layer.kernel, dilation))
    assert window.stride == layer.stride


def torch_module(layer, shape):
    """The PyTorch module for the layer, or None where PyTorch has no such setting."""
    nd = len(shape) - 1
    pad = layer.padding
    if pad not in ("same", "valid"):
        if any(a != b for a, b in pad):
            return None
        pad = tuple(a for a, _ in pad)
    name = layer.type_name
    if name.startswith("conv"):
        if pad == "same" and any(s != 1 for s in layer.stride):
            return None  # PyTorch's 'same' is for stride 1 only
        cls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d}[nd]
        return cls(shape[0], layer.filters, layer.kernel, layer.stride, pad, layer.dilation,
                   layer.groups, layer.bias)
    if name not in POOLS or pad == "same":
        return None
    pad = 0 if pad == "valid" else pad
    if any(2 * p > k for p, k in zip(pad if isinstance(pad, tuple) else (pad,) * nd,
                                     layer.kernel)):
        return None  # PyTorch stops at half the kernel; cnnc takes up to kernel - 1, as ONNX
    if name.startswith("max"):
        cls = {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d}[nd]
        return cls(layer.kernel, layer.stride, pad, ceil_mode=layer.ceil_mode)
    if name.startswith("avg"):
        cls = {1: torch.nn.AvgPool1d, 2: torch.nn.AvgPool2d}[nd]
        return cls(layer.kernel, layer.stride, pad, layer.ceil_mode, layer.count_include_pad)
    if any(pad if isinstance(pad, tuple) else (pad,)):
        return None  # LPPool has no padding
    if nd == 1:  # LPPool1d multiplies by its kernel_size, which must be an int there
        return torch.nn.LPPool1d(layer.p, layer.kernel[0], layer.stride[0], layer.ceil_mode)
    return torch.nn.LPPool2d(layer.p, layer.kernel, layer.stride, layer.ceil_mode)


@needs_torch
@FEW
@given(sliding_layers(types=tuple(t for t in CONVS + POOLS if t != "locally_connected2d")))
def test_shape_rule_matches_torch(case):
    layer, shape = case
    module = torch_module(layer, shape)
    assume(module is not None)
    got, _ = infer(layer, shape)
    try:
        theirs = tuple(module(torch.ones((1, *shape))).shape[1:])
    except RuntimeError:  # PyTorch's word for "output too small" and "pad too large"
        theirs = None
    assert got == theirs, layer.settings()


@FEW
@given(w=st.integers(1, 64), k=st.integers(1, 7), s=st.integers(1, 5),
       pad=st.tuples(st.integers(0, 4), st.integers(0, 4)), d=st.integers(1, 4))
def test_out_size_is_the_window_formula(w, k, s, pad, d):
    assert out_size(w, k, s, pad, d) == (w + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1
    # PyTorch's ceil_mode, as aten's pooling_output_shape writes it for symmetric padding
    p = pad[0]
    n = (w + 2 * p - d * (k - 1) - 1 + (s - 1)) // s + 1
    if (n - 1) * s >= w + p:
        n -= 1
    assert out_size(w, k, s, (p, p), d, ceil_mode=True) == n


@FEW
@given(sliding_layers())
def test_unread_rows_warning_exactly_when_the_remainder_covers_input(case):
    layer, shape = case
    got, warnings = infer(layer, shape)
    assume(got is not None)
    ceil_mode = getattr(layer, "ceil_mode", False)
    # a window narrower than its stride subsamples by design: no warning for its tail
    unread = [(rows, axis) for axis in axes(layer, shape)
              if axis[4] * (axis[1] - 1) + 1 >= axis[2]
              and (rows := unread_rows(*axis, ceil_mode))]
    assert len(warnings) == len(unread), (layer.settings(), [w.message for w in warnings])
    for ((first, last), (_, k, s, _, d)), warning in zip(unread, warnings):
        rows = f"{first} is" if first == last else f"s {first}..{last} are"
        assert rows + " never read" in warning.message
        assert "padding: same" in warning.fix


@FEWER
@given(kernel=st.integers(1, 7), stride=st.integers(1, 3), h=st.integers(1, 10),
       w=st.integers(1, 10), pad_mode=st.sampled_from(["reflect", "zero"]))
def test_blurpool2d_shape_rule(kernel, stride, h, w, pad_mode):
    layer = make("blurpool2d", kernel=kernel, stride=stride, pad_mode=pad_mode)
    got, _ = infer(layer, (2, h, w))
    if pad_mode == "reflect" and min(h, w) <= kernel // 2:
        assert got is None  # reflection needs more rows than it pads
        return
    assert got == (2, (h - 1) // stride + 1, (w - 1) // stride + 1)
    x = np.ones((1, 2, h, w))
    assert layer.reference([x], {}).shape == (1, *got)
    if HAVE_TORCH:
        pad = ((kernel - 1) // 2, kernel // 2)
        mode = "reflect" if pad_mode == "reflect" else "constant"
        xp = torch.nn.functional.pad(torch.from_numpy(x), pad + pad, mode=mode)
        y = torch.nn.functional.conv2d(xp, torch.ones((2, 1, kernel, kernel), dtype=xp.dtype),
                                       stride=stride, groups=2)
        assert tuple(y.shape[1:]) == got


# -- parameters and cost ------------------------------------------------------------------------

@st.composite
def convs(draw):
    """(layer, input shape, matching torch keyword arguments) for conv1d or conv2d."""
    nd = draw(st.sampled_from([1, 2]))
    groups = draw(st.integers(1, 4))
    channels, filters = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.lists(st.integers(1, 4), min_size=nd, max_size=nd)))
    stride = tuple(draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd)))
    padding = tuple(draw(st.lists(st.integers(0, 2), min_size=nd, max_size=nd)))
    dilation = tuple(draw(st.lists(st.integers(1, 2), min_size=nd, max_size=nd)))
    bias = draw(st.booleans())
    sizes = tuple(draw(st.lists(st.integers(9, 12), min_size=nd, max_size=nd)))
    layer = make(f"conv{nd}d", filters=filters, kernel=list(kernel), stride=list(stride),
                 padding=list(padding), dilation=list(dilation), groups=groups, bias=bias)
    torch_args = dict(in_channels=channels, out_channels=filters, kernel_size=kernel,
                      stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    return layer, (channels, *sizes), torch_args


@FEWER
@given(convs())
def test_conv_flops_are_twice_the_macs(case):
    layer, shape, _ = case
    out, _ = infer(layer, shape)
    macs = math.prod(out) * (shape[0] // layer.groups) * math.prod(layer.kernel)
    assert layer.flops([shape], out) == 2 * macs


@FEWER
@given(convs())
def test_fused_conv_params_need_no_warning_sink(case):
    """A fused layer sizes its batch norms with the conv's shape rule, whose warnings (a 1x1
    stride-2 shortcut's unread row) were already reported: they must not need a sink."""
    layer, shape, _ = case
    fused = Fused(base=layer, steps=(BatchNorm(eps=1e-5), ReLU()))
    specs = fused.params([shape])
    assert {k: s.shape for k, s in layer.params([shape]).items()} == \
        {k: specs[k].shape for k in ("weight", "bias") if k in specs}
    assert specs["0.running_var"].shape == (layer.filters,)


@FEWER
@given(filters=st.integers(1, 3), kernel=per_axis(2, 1, 3), stride=per_axis(2, 1, 2),
       size=st.integers(4, 8), channels=st.integers(1, 3))
def test_locally_connected2d_params_and_flops(filters, kernel, stride, size, channels):
    layer = make("locally_connected2d", filters=filters, kernel=kernel, stride=stride)
    shape = (channels, size, size + 1)
    out, _ = infer(layer, shape)
    specs = layer.params([shape])
    kh, kw = layer.kernel
    assert specs["weight"].shape == (out[1], out[2], filters, channels, kh, kw)
    assert specs["bias"].shape == out
    # a conv's weights, once for every output position
    assert layer.flops([shape], out) == 2 * math.prod(out) * channels * kh * kw


def torch_fan_in(tensor) -> int:
    return torch.nn.init._calculate_fan_in_and_fan_out(tensor)[0]


@needs_torch
@FEWER
@given(convs())
def test_conv_params_and_flops_match_torch(case):
    layer, shape, torch_args = case
    module = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d}[len(shape) - 1](**torch_args)
    specs = layer.params([shape])
    theirs = dict(module.named_parameters())
    assert {k: s.shape for k, s in specs.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert sum(s.size for s in specs.values()) == sum(v.numel() for v in theirs.values())
    # the same initial bound: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    assert all(s.fan_in == torch_fan_in(module.weight) and s.trainable for s in specs.values())
    out, _ = infer(layer, shape)
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros((1, *shape)))
    assert layer.flops([shape], out) == counter.get_total_flops()


@needs_torch
@FEWER
@given(features=st.integers(1, 64), units=st.integers(1, 64), bias=st.booleans())
def test_dense_params_and_flops_match_torch(features, units, bias):
    layer = make("dense", units=units, bias=bias)
    module = torch.nn.Linear(features, units, bias=bias)
    specs = layer.params([(features,)])
    theirs = dict(module.named_parameters())
    assert {k: s.shape for k, s in specs.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert all(s.fan_in == torch_fan_in(module.weight) and s.trainable for s in specs.values())
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros((1, features)))
    assert layer.flops([(features,)], (units,)) == counter.get_total_flops() == \
        2 * features * units


@needs_torch
@FEWER
@given(shape=st.one_of(st.tuples(st.integers(1, 16)),
                       st.tuples(st.integers(1, 16), st.integers(1, 5)),
                       st.tuples(st.integers(1, 16), st.integers(1, 5), st.integers(1, 5))))
def test_batchnorm_params_match_torch(shape):
    module = (torch.nn.BatchNorm1d if len(shape) < 3 else torch.nn.BatchNorm2d)(shape[0])
    specs = make("batchnorm").params([shape])
    params = dict(module.named_parameters())
    buffers = {k: v for k, v in module.named_buffers() if k != "num_batches_tracked"}
    assert {k for k, s in specs.items() if s.trainable} == set(params)
    assert {k for k, s in specs.items() if not s.trainable} == set(buffers)
    rng = np.random.default_rng(0)
    for name, tensor in {**params, **buffers}.items():
        assert specs[name].shape == tuple(tensor.shape)
        np.testing.assert_array_equal(specs[name].initial(rng), tensor.detach().numpy())


@FEW
@given(size_in=st.integers(1, 40), size_out=st.integers(1, 40))
def test_adaptive_bins_follow_torch_and_cover_the_input(size_in, size_out):
    """PyTorch's bins, floor(i * In / Out) to ceil((i + 1) * In / Out), written in floats here;
    none empty, together covering the input; the outputs that hold an input, their inverse."""
    from cnncompiler.layers.adaptive import bin_bounds, bins_containing

    bins = [bin_bounds(i, size_in, size_out) for i in range(size_out)]
    assert bins == [(math.floor(i * size_in / size_out), math.ceil((i + 1) * size_in / size_out))
                    for i in range(size_out)]
    assert all(start < end for start, end in bins)
    assert sorted({j for start, end in bins for j in range(start, end)}) == list(range(size_in))
    for j in range(size_in):
        first, last = bins_containing(j, size_in, size_out)
        assert [i for i, (s, e) in enumerate(bins) if s <= j < e] == list(range(first, last + 1))
    layer = make("adaptive_maxpool2d", output_size=[size_out, 1])
    window = layer.window([(2, size_in, 3)])
    assert layer.infer_shape([(2, size_in, 3)], ShapeNotes()) == (2, size_out, 1)
    assert window.kernel == (max(e - s for s, e in bins), 3)
    if size_in % size_out == 0:  # a plain pool with kernel = stride = In / Out
        assert window.kernel[0] == window.stride[0] == size_in // size_out

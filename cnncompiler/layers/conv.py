"""Convolutions: conv1d, conv2d (grouped, depthwise, dilated) and locally_connected2d."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..errors import ShapeError
from .base import Layer, ParamSpec, Shape, ShapeNotes, Window, expect_rank, fmt_shape, register
from .fields import boolean, int_tuple, option, padding, positive_int
from .window import out_size, pad_spatial, resolve_padding, span, unread_tail, windows

AXIS_NAMES = {1: ("time step",), 2: ("row", "column")}


def sliding_output(layer, in_shape: Shape, notes: ShapeNotes, ceil_mode: bool = False) -> tuple:
    """Output spatial sizes of a sliding-window layer, with errors and unread-tail warnings.

    Shared by every convolution and pooling layer: ``layer`` has kernel, stride, padding and
    (optionally) dilation with one entry per spatial axis.
    """
    sizes = in_shape[1:]
    dilation = getattr(layer, "dilation", (1,) * len(sizes))
    pads = resolve_padding(layer.padding, sizes, layer.kernel, layer.stride, dilation)
    names = AXIS_NAMES[len(sizes)]
    outs = []
    for axis, (w, k, s, p, d) in enumerate(zip(sizes, layer.kernel, layer.stride, pads, dilation)):
        n = out_size(w, k, s, p, d, ceil_mode)
        if n < 1:
            need = span(k, d) - p[0] - p[1]
            raise ShapeError(
                f"the output would have {n} {names[axis]}s: input has {w} {names[axis]}s, "
                f"the window spans {span(k, d)} (kernel {k}, dilation {d}) with padding {p}",
                f"expected at least {need} input {names[axis]}s",
                "use a smaller kernel or dilation, add padding, or remove a downsampling "
                "layer before this one")
        # A window narrower than its stride subsamples by design (a 1x1 stride-2 shortcut):
        # it steps over rows everywhere, so the last one is no asymmetry worth a warning.
        tail = unread_tail(w, k, s, p, d, ceil_mode) if span(k, d) >= s else None
        if tail:
            first, last = tail
            which = f"{names[axis]} {first} is" if first == last else \
                f"{names[axis]}s {first}..{last} are"
            notes.warn(
                f"stride {s} leaves a remainder along the {names[axis]}s: "
                f"({w} + {p[0]} + {p[1]} - {span(k, d)}) / {s} is not whole, "
                f"so input {which} never read",
                "windows that tile the input symmetrically",
                "change the padding or kernel so the division is exact, or use padding: same")
        outs.append(n)
    return tuple(outs), pads


class ConvBase(Layer):
    """Shared shape rule, parameters, cost and reference of conv1d and conv2d."""

    takes_activation = True

    ndim: ClassVar[int] = 2

    def resolved_padding(self, in_shape: Shape):
        return resolve_padding(self.padding, in_shape[1:], self.kernel, self.stride, self.dilation)

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        expect_rank(shape, (self.ndim + 1,), self.type_name)
        channels = shape[0]
        if channels % self.groups or self.filters % self.groups:
            divisors = [g for g in range(1, min(channels, self.filters) + 1)
                        if channels % g == 0 and self.filters % g == 0]
            raise ShapeError(
                f"groups={self.groups} must divide both the {channels} input channels and "
                f"filters={self.filters}",
                "in_channels % groups == 0 and filters % groups == 0",
                f"use groups in {divisors}" if len(divisors) <= 12 else
                "change groups, filters or the previous layer's channels")
        spatial, _ = sliding_output(self, shape, notes)
        return (self.filters, *spatial)

    def params(self, in_shapes):
        channels = in_shapes[0][0]
        fan_in = channels // self.groups * math.prod(self.kernel)
        out = {"weight": ParamSpec((self.filters, channels // self.groups, *self.kernel),
                                   fan_in=fan_in)}
        if self.bias:
            out["bias"] = ParamSpec((self.filters,), fan_in=fan_in)
        return out

    def flops(self, in_shapes, out_shape):
        macs = math.prod(out_shape) * (in_shapes[0][0] // self.groups) * math.prod(self.kernel)
        return 2 * macs

    def window(self, in_shapes):
        return Window(tuple(span(k, d) for k, d in zip(self.kernel, self.dilation)), self.stride)

    def reference(self, xs, params):
        x = xs[0]
        pads = self.resolved_padding(x.shape[1:])
        return conv_reference(x, params["weight"], params.get("bias"), self.stride, pads,
                              self.dilation, self.groups)


def conv_reference(x, weight, bias, stride, pads, dilation, groups):
    """Grouped, dilated, strided N-d convolution of (N, C, *spatial) by (F, C/g, *kernel)."""
    n, c = x.shape[:2]
    f = weight.shape[0]
    kernel = weight.shape[2:]
    nd = len(kernel)
    win = windows(pad_spatial(x, pads), kernel, stride, dilation)  # N, C, *out, *k
    out_sp = win.shape[2:2 + nd]
    win = win.reshape(n, groups, c // groups, *out_sp, *kernel)
    w = weight.reshape(groups, f // groups, c // groups, *kernel)
    sp = "hw"[:nd] if nd <= 2 else None
    ks = "ij"[:nd]
    y = np.einsum(f"ngc{sp}{ks},gfc{ks}->ngf{sp}", win, w, optimize=True)
    y = y.reshape(n, f, *out_sp)
    if bias is not None:
        y = y + bias.reshape((1, f) + (1,) * nd)
    return y.astype(x.dtype, copy=False)


@register("conv2d")
class Conv2d(ConvBase):
    """2-D convolution over (C, H, W), PyTorch's Conv2d. Weight (filters, C/groups, kh, kw).

    YAML: ``{name: conv1, type: conv2d, filters: 64, kernel: 3, stride: 1, padding: same,
    dilation: 1, groups: 1, bias: true}``. ``groups`` equal to the input channels (and
    ``filters`` a multiple of it) makes it depthwise.
    """

    ndim: ClassVar[int] = 2
    filters: int = option(positive_int, doc="output channels")
    kernel: tuple = option(int_tuple(2), doc="window size, an int or [kh, kw]")
    stride: tuple = option(int_tuple(2), default=1)
    padding: object = option(padding(2), default=0, doc="int, pair, pairs, valid or same")
    dilation: tuple = option(int_tuple(2), default=1)
    groups: int = option(positive_int, default=1)
    bias: bool = option(boolean, default=True)


@register("conv1d")
class Conv1d(ConvBase):
    """1-D convolution over (C, T), PyTorch's Conv1d; a TDNN layer is one with dilation.

    YAML: ``{name: tdnn2, type: conv1d, filters: 512, kernel: 3, dilation: 2}``.
    Weight (filters, C/groups, k).
    """

    ndim: ClassVar[int] = 1
    filters: int = option(positive_int)
    kernel: tuple = option(int_tuple(1))
    stride: tuple = option(int_tuple(1), default=1)
    padding: object = option(padding(1), default=0)
    dilation: tuple = option(int_tuple(1), default=1)
    groups: int = option(positive_int, default=1)
    bias: bool = option(boolean, default=True)


@register("locally_connected2d")
class LocallyConnected2d(Layer):
    """A 2-D convolution whose weights are not shared: every output position has its own.

    YAML: ``{name: lc, type: locally_connected2d, filters: 32, kernel: 3, stride: 1}``.
    Weight (out_h, out_w, filters, C, kh, kw); bias (filters, out_h, out_w).
    """

    takes_activation = True

    filters: int = option(positive_int)
    kernel: tuple = option(int_tuple(2))
    stride: tuple = option(int_tuple(2), default=1)
    padding: object = option(padding(2), default=0)
    bias: bool = option(boolean, default=True)

    dilation = (1, 1)

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        expect_rank(shape, (3,), self.type_name)
        spatial, _ = sliding_output(self, shape, notes)
        return (self.filters, *spatial)

    def params(self, in_shapes):
        c = in_shapes[0][0]
        _, oh, ow = self.infer_shape(in_shapes, ShapeNotes())
        fan_in = c * math.prod(self.kernel)
        out = {"weight": ParamSpec((oh, ow, self.filters, c, *self.kernel), fan_in=fan_in)}
        if self.bias:
            out["bias"] = ParamSpec((self.filters, oh, ow), fan_in=fan_in)
        return out

    def flops(self, in_shapes, out_shape):
        return 2 * math.prod(out_shape) * in_shapes[0][0] * math.prod(self.kernel)

    def window(self, in_shapes):
        return Window(self.kernel, self.stride)

    def reference(self, xs, params):
        x = xs[0]
        pads = resolve_padding(self.padding, x.shape[2:], self.kernel, self.stride, (1, 1))
        win = windows(pad_spatial(x, pads), self.kernel, self.stride, (1, 1))
        y = np.einsum("nchwij,hwfcij->nfhw", win, params["weight"], optimize=True)
        if "bias" in params:
            y = y + params["bias"][None]
        return y.astype(x.dtype, copy=False)


__all__ = ["Conv1d", "Conv2d", "LocallyConnected2d", "conv_reference", "sliding_output",
           "fmt_shape"]

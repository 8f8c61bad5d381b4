"""Pooling: max, average and p-norm (Lp) over 1-D or 2-D windows, global pooling, and
blurpool2d (anti-aliased downsampling)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..errors import ShapeError
from .base import GLOBAL, Layer, Window, expect_rank, register
from .conv import sliding_output
from .fields import boolean, choice, int_tuple, integer, option, padding, positive_number
from .window import out_size, pad_spatial, resolve_padding, span, windows


class PoolBase(Layer):
    """Shared rule of the windowed pools; ``stride`` defaults to ``kernel`` as in PyTorch, and
    ``padding`` may reach ``kernel - 1`` on each side as in ONNX."""

    ndim: ClassVar[int] = 2

    def __post_init__(self):
        if self.stride is None:
            object.__setattr__(self, "stride", self.kernel)

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        expect_rank(shape, (self.ndim + 1,), self.type_name)
        if self.padding not in ("same", "valid"):
            for w, k, s, pad in zip(shape[1:], self.kernel, self.stride, self.padding):
                empty = empty_window(w, k, s, pad, self.ceil_mode)
                if empty:
                    raise ShapeError(
                        f"padding {list(pad)} leaves the {empty} window with no input "
                        f"(kernel {k}, stride {s}, {w} inputs)",
                        "padding < kernel on each side, so that every window sees an input",
                        f"use padding: {k - 1} or less")
        spatial, _ = sliding_output(self, shape, notes, self.ceil_mode)
        return (shape[0], *spatial)

    def window(self, in_shapes):
        return Window(self.kernel, self.stride)

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape) * math.prod(self.kernel)

    def padded_windows(self, x: np.ndarray, fill: float) -> tuple[np.ndarray, tuple]:
        """Windows over x padded with ``fill``, extended at the end for ceil_mode."""
        pads = self.full_padding(x.shape[2:])
        return self.output_windows(pad_spatial(x, pads, fill), x.shape[2:]), pads

    def output_windows(self, xp: np.ndarray, sizes) -> np.ndarray:
        """The windows of the padded ``xp`` that give an output: in ceil_mode, trailing padding
        of a kernel or more holds one more window, which PyTorch's rule drops."""
        pads = resolve_padding(self.padding, sizes, self.kernel, self.stride, (1,) * self.ndim)
        counts = [out_size(w, k, s, p, 1, self.ceil_mode)
                  for w, k, s, p in zip(sizes, self.kernel, self.stride, pads)]
        win = windows(xp, self.kernel, self.stride, (1,) * self.ndim)
        return win[(slice(None), slice(None), *(slice(n) for n in counts))]

    def full_padding(self, sizes) -> tuple:
        """Explicit padding plus, in ceil_mode, the overhang the last window needs."""
        pads = resolve_padding(self.padding, sizes, self.kernel, self.stride, (1,) * self.ndim)
        full = []
        for w, k, s, p in zip(sizes, self.kernel, self.stride, pads):
            n = out_size(w, k, s, p, 1, self.ceil_mode)
            extra = max((n - 1) * s + k - (w + p[0] + p[1]), 0)
            full.append((p[0], p[1] + extra))
        return tuple(full)

    def divisor(self, x: np.ndarray, include_pad: bool) -> np.ndarray:
        """How many elements each average divides by: PyTorch counts explicit padding when
        count_include_pad is true, never the ceil_mode overhang."""
        sizes = x.shape[2:]
        pads = resolve_padding(self.padding, sizes, self.kernel, self.stride, (1,) * self.ndim)
        full = self.full_padding(sizes)
        mask = np.ones((1, 1) + tuple(sizes), x.dtype)
        mask = pad_spatial(mask, pads, 1.0 if include_pad else 0.0)
        overhang = tuple((0, f[1] - p[1]) for f, p in zip(full, pads))
        mask = pad_spatial(mask, overhang, 0.0)
        axes = tuple(range(-self.ndim, 0))
        return self.output_windows(mask, sizes).sum(axis=axes)


def empty_window(size: int, kernel: int, stride: int, pad, ceil_mode: bool) -> str | None:
    """Which window ('first' or 'last') covers only padding, or None. Padding up to kernel - 1
    on each side leaves none, as ONNX allows (PyTorch stops at kernel / 2); the windows
    between see input whenever the first and the last do."""
    before, after = pad
    n = out_size(size, kernel, stride, pad, 1, ceil_mode)
    if n < 1:
        return None  # the shape rule reports that
    if before >= kernel:
        return "first"
    if (n - 1) * stride >= before + size:
        return "last"
    return None


def _pool_keys(ndim: int):
    return dict(
        kernel=option(int_tuple(ndim)),
        stride=option(lambda v: None if v is None else int_tuple(ndim)(v), default=None),
        padding=option(padding(ndim), default=0),
        ceil_mode=option(boolean, default=False),
    )


class MaxPoolBase(PoolBase):
    def reference(self, xs, params):
        win, _ = self.padded_windows(xs[0], -np.inf)
        return win.max(axis=tuple(range(-self.ndim, 0))).astype(xs[0].dtype, copy=False)


class AvgPoolBase(PoolBase):
    def reference(self, xs, params):
        x = xs[0]
        win, _ = self.padded_windows(x, 0.0)
        total = win.sum(axis=tuple(range(-self.ndim, 0)))
        return (total / self.divisor(x, self.count_include_pad)).astype(x.dtype, copy=False)


class LpPoolBase(PoolBase):
    def reference(self, xs, params):
        x = xs[0]
        win, _ = self.padded_windows(np.abs(x) ** self.p, 0.0)
        # As PyTorch: the power sum is averaged over the part of the window inside the input
        # and scaled back by the full window size, so a ceil_mode overhang is scaled up too
        # (ONNX's LpPool leaves it as it is).
        mean = win.sum(axis=tuple(range(-self.ndim, 0))) / self.divisor(x, True)
        return ((mean * math.prod(self.kernel)) ** (1.0 / self.p)).astype(x.dtype, copy=False)

    def flops(self, in_shapes, out_shape):
        return 2 * math.prod(out_shape) * math.prod(self.kernel)


def _pool_class(name: str, base: type, ndim: int, doc: str, extra: dict):
    keys = _pool_keys(ndim) | extra
    ns = {"__doc__": doc, "__annotations__": {k: object for k in keys}, "ndim": ndim, **keys}
    ns["__module__"] = __name__
    cls = type(name, (base,), ns)
    return cls


_AVG_EXTRA = {"count_include_pad": option(boolean, default=True)}
_LP_EXTRA = {"p": option(positive_number, default=2.0)}

MaxPool2d = register("maxpool2d")(_pool_class(
    "MaxPool2d", MaxPoolBase, 2,
    "Max over each window of (C, H, W). YAML: ``{type: maxpool2d, kernel: 3, stride: 2, "
    "padding: 1, ceil_mode: false}``; stride defaults to kernel.", {}))
AvgPool2d = register("avgpool2d")(_pool_class(
    "AvgPool2d", AvgPoolBase, 2,
    "Mean over each window of (C, H, W). YAML: ``{type: avgpool2d, kernel: 2, "
    "count_include_pad: true}``; stride defaults to kernel.", _AVG_EXTRA))
LpPool2d = register("lppool2d")(_pool_class(
    "LpPool2d", LpPoolBase, 2,
    "The p-norm (sum |x|^p)^(1/p) over each window, as ONNX's LpPool; PyTorch's LPPool2d "
    "leaves out the absolute value (NaN for odd p on negative sums) and agrees for even p. "
    "YAML: ``{type: lppool2d, p: 2, kernel: 2}``.", _LP_EXTRA))
MaxPool1d = register("maxpool1d")(_pool_class(
    "MaxPool1d", MaxPoolBase, 1,
    "Max over windows of (C, T). YAML: ``{type: maxpool1d, kernel: 3, stride: 2}``.", {}))
AvgPool1d = register("avgpool1d")(_pool_class(
    "AvgPool1d", AvgPoolBase, 1,
    "Mean over windows of (C, T). YAML: ``{type: avgpool1d, kernel: 3}``.", _AVG_EXTRA))
LpPool1d = register("lppool1d")(_pool_class(
    "LpPool1d", LpPoolBase, 1,
    "The p-norm (sum |x|^p)^(1/p) over windows of (C, T), as lppool2d. YAML: "
    "``{type: lppool1d, p: 2, kernel: 3}``.", _LP_EXTRA))


class GlobalPool(Layer):
    """Reduce every spatial axis to size 1; the channel axis stays."""

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        expect_rank(shape, (2, 3), self.type_name)
        return (shape[0],) + (1,) * (len(shape) - 1)

    def window(self, in_shapes):
        return GLOBAL

    def flops(self, in_shapes, out_shape):
        return math.prod(in_shapes[0])


@register("global_avgpool")
class GlobalAvgPool(GlobalPool):
    """Mean over all positions: (C, H, W) -> (C, 1, 1), (C, T) -> (C, 1).

    YAML: ``{type: global_avgpool}``, usually followed by ``{type: flatten}``.
    """

    def reference(self, xs, params):
        x = xs[0]
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype, copy=False)


@register("global_maxpool")
class GlobalMaxPool(GlobalPool):
    """Max over all positions: (C, H, W) -> (C, 1, 1), (C, T) -> (C, 1).

    YAML: ``{type: global_maxpool}``.
    """

    def reference(self, xs, params):
        x = xs[0]
        return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


def blur_filter(size: int) -> np.ndarray:
    """The normalised binomial low-pass filter of ``size`` taps per axis (size x size)."""
    row = np.array([math.comb(size - 1, i) for i in range(size)], np.float64)
    f = np.outer(row, row)
    return f / f.sum()


def _blur_size(value):
    size = integer(value, 1, "a filter size from 1 to 7")
    if size > 7:
        from ..errors import FieldError
        raise FieldError(f"received {size}", "expected a filter size from 1 to 7")
    return size


@register("blurpool2d")
class BlurPool2d(Layer):
    """Anti-aliased downsampling (Zhang, 2019): a fixed binomial low-pass filter applied to
    each channel, then the stride. No trainable parameters.

    YAML: ``{type: blurpool2d, kernel: 3, stride: 2, pad_mode: reflect}``. The input is padded
    by (kernel-1)//2 before and kernel//2 after each axis, reflected (or with zeros), so
    H_out = floor((H - 1) / stride) + 1.
    """

    kernel: int = option(_blur_size, default=3)
    stride: int = option(lambda v: integer(v, 1, "an integer >= 1"), default=2)
    pad_mode: str = option(choice("reflect", "zero"), default="reflect")

    def pads(self) -> tuple:
        p = ((self.kernel - 1) // 2, self.kernel // 2)
        return (p, p)

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        expect_rank(shape, (3,), self.type_name)
        c, h, w = shape
        if self.pad_mode == "reflect" and min(h, w) <= self.kernel // 2:
            raise ShapeError(
                f"input of {h}x{w} is too small to reflect-pad by {self.kernel // 2}",
                f"height and width > {self.kernel // 2}", "use pad_mode: zero or a smaller kernel")
        sizes = [out_size(n, self.kernel, self.stride, p) for n, p in zip((h, w), self.pads())]
        return (c, *sizes)

    def window(self, in_shapes):
        return Window((self.kernel, self.kernel), (self.stride, self.stride))

    def flops(self, in_shapes, out_shape):
        return 2 * math.prod(out_shape) * self.kernel ** 2

    def reference(self, xs, params):
        x = xs[0]
        mode = "reflect" if self.pad_mode == "reflect" else "constant"
        xp = pad_spatial(x, self.pads(), 0.0, mode)
        k = (self.kernel, self.kernel)
        win = windows(xp, k, (self.stride, self.stride), (1, 1))
        f = blur_filter(self.kernel).astype(x.dtype)
        return np.einsum("nchwij,ij->nchw", win, f, optimize=True).astype(x.dtype, copy=False)


__all__ = ["MaxPool2d", "AvgPool2d", "LpPool2d", "MaxPool1d", "AvgPool1d", "LpPool1d",
           "GlobalAvgPool", "GlobalMaxPool", "BlurPool2d", "blur_filter", "span"]

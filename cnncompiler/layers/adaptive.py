"""Pools that fix the output size instead of the window: adaptive average and max pooling
(PyTorch's AdaptiveAvgPool2d and AdaptiveMaxPool2d), and the statistics pooling over time of
x-vector networks (the mean and standard deviation of every channel)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .base import GLOBAL, Layer, Window, expect_rank, register
from .fields import int_tuple, option, positive_number


def bin_bounds(i, size_in: int, size_out: int):
    """The input positions [start, end) that output ``i`` of an adaptive pool reduces, by
    PyTorch's rule: start = floor(i * In / Out), end = ceil((i + 1) * In / Out). Bins are never
    empty; neighbours overlap where Out does not divide In. ``i`` may be an int or a TVM index
    expression (``//`` is floor division for both)."""
    return (i * size_in) // size_out, ((i + 1) * size_in + size_out - 1) // size_out


def bins_containing(j, size_in: int, size_out: int):
    """The outputs [first, last] whose bins contain input position ``j`` (the inverse of
    :func:`bin_bounds`, for gradients): floor(j * Out / In) to ceil((j + 1) * Out / In) - 1."""
    return (j * size_out) // size_in, ((j + 1) * size_out + size_in - 1) // size_in - 1


def widest_bin(size_in: int, size_out: int) -> int:
    return max(e - s for s, e in (bin_bounds(i, size_in, size_out) for i in range(size_out)))


def most_bins_per_input(size_in: int, size_out: int) -> int:
    """How many outputs' bins one input position falls in, at most."""
    spans = (bins_containing(j, size_in, size_out) for j in range(size_in))
    return max(last - first + 1 for first, last in spans)


class AdaptivePool2d(Layer):
    """Shared rule of the adaptive pools: (C, H, W) -> (C, *output_size), each output cell
    reducing its bin of rows and columns, whatever the input size."""

    reduce: ClassVar = None  # numpy's reduction over one axis

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        expect_rank(shape, (3,), self.type_name)
        return (shape[0], *self.output_size)

    def bins(self, in_shape) -> list[list[tuple[int, int]]]:
        """Per spatial axis, the [start, end) of every output's bin."""
        return [[bin_bounds(i, n, m) for i in range(m)]
                for n, m in zip(in_shape[1:], self.output_size)]

    def window(self, in_shapes):
        """The widest bin and the longest step between bins (exact when Out divides In)."""
        bins = self.bins(in_shapes[0])
        kernel = tuple(max(e - s for s, e in axis) for axis in bins)
        stride = tuple(max((b[0] - a[0] for a, b in zip(axis, axis[1:])), default=k)
                       for axis, k in zip(bins, kernel))
        return Window(kernel, stride)

    def flops(self, in_shapes, out_shape):
        per_channel = math.prod(sum(e - s for s, e in axis) for axis in self.bins(in_shapes[0]))
        return in_shapes[0][0] * per_channel

    def reference(self, xs, params):
        x = xs[0]
        # a bin is a rectangle: reduce the rows of each bin, then its columns
        for axis, bins in zip((2, 3), self.bins(x.shape[1:])):
            x = np.stack([self.reduce(x.take(range(s, e), axis=axis), axis=axis)
                          for s, e in bins], axis=axis)
        return x.astype(xs[0].dtype, copy=False)


_OUTPUT_SIZE = "the output's size: an int for a square or [height, width]"


@register("adaptive_avgpool2d")
class AdaptiveAvgPool2d(AdaptivePool2d):
    """Mean over each bin, PyTorch's AdaptiveAvgPool2d: the output is ``output_size`` for any
    input size (torchvision's VGG and AlexNet put one before their classifier).

    YAML: ``{type: adaptive_avgpool2d, output_size: 7}`` or ``output_size: [6, 6]``.
    """

    output_size: tuple = option(int_tuple(2), doc=_OUTPUT_SIZE)
    reduce = staticmethod(np.mean)


@register("adaptive_maxpool2d")
class AdaptiveMaxPool2d(AdaptivePool2d):
    """Max over each bin, PyTorch's AdaptiveMaxPool2d (NaN if the bin holds one); its
    gradient goes to the first maximum of each bin, as max pooling's.

    YAML: ``{type: adaptive_maxpool2d, output_size: [4, 4]}``.
    """

    output_size: tuple = option(int_tuple(2), doc=_OUTPUT_SIZE)
    reduce = staticmethod(np.max)


@register("stats_pool")
class StatsPool(Layer):
    """Statistics pooling of x-vector networks (Snyder et al., 2018): (C, T) -> (2C,), every
    channel's mean over time followed by its standard deviation sqrt(var + eps), with the
    population variance (divided by T).

    YAML: ``{type: stats_pool, eps: 1.0e-5}``, between the frame-level and the segment-level
    layers.
    """

    eps: float = option(positive_number, default=1e-5)

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        expect_rank(shape, (2,), self.type_name)
        return (2 * shape[0],)

    def window(self, in_shapes):
        return GLOBAL

    def flops(self, in_shapes, out_shape):
        return 4 * math.prod(in_shapes[0])  # the sum, then a subtract, square and add each

    def reference(self, xs, params):
        x = xs[0]
        mean = x.mean(axis=2)
        var = ((x - mean[..., None]) ** 2).mean(axis=2)
        return np.concatenate([mean, np.sqrt(var + self.eps)], axis=1).astype(x.dtype,
                                                                                copy=False)


__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AdaptivePool2d", "StatsPool",
           "bin_bounds", "bins_containing", "most_bins_per_input", "widest_bin"]

"""Layers that join branches: add (residual connections) and concat (inception)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .base import Layer, register, sample_axis
from .fields import integer, option


@register("add")
class Add(Layer):
    """Element-wise sum of two or more inputs of the same shape (a residual connection).
    (Shape errors of merges name no inputs: the checker appends each producer and its shape.)

    YAML: ``{name: add, type: add, inputs: [bn2, input]}``.
    """

    min_inputs = 2
    max_inputs = None

    def infer_shape(self, in_shapes, notes):
        first = in_shapes[0]
        for shape in in_shapes[1:]:
            if shape != first:
                raise ShapeError(
                    "inputs have different shapes",
                    "the same shape on every input of add",
                    "match channels with a 1x1 conv2d (filters, stride) on the shortcut, "
                    "or fix the strides so the sizes agree")
        return first

    def flops(self, in_shapes, out_shape):
        return (len(in_shapes) - 1) * math.prod(out_shape)

    def reference(self, xs, params):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def epilogue(self, v, m, arg, residual):
        return v + residual


def _concat_axis(value):
    if value == "channels":
        return 1
    return integer(value, None, "an integer axis (1 = channels, counting the batch axis as 0) "
                                "or 'channels'")


@register("concat")
class Concat(Layer):
    """Join inputs along ``axis``: 1 (the channels, default) counting the batch axis as 0, as
    torch.cat does; negative axes count from the end. Other axes must agree.

    YAML: ``{name: mixed, type: concat, inputs: [b1, b2, b3, b4]}``.
    """

    axis: int = option(_concat_axis, default=1)

    min_inputs = 1
    max_inputs = None

    def sample_axis(self, rank: int) -> int:
        """The axis within one sample's shape, or raise if it is the batch or out of range."""
        return sample_axis(self.axis, rank, "leave axis out to concatenate channels")

    def infer_shape(self, in_shapes, notes):
        first = in_shapes[0]
        ax = self.sample_axis(len(first))
        for shape in in_shapes[1:]:
            if len(shape) != len(first) or shape[:ax] + shape[ax + 1:] != first[:ax] + first[ax + 1:]:
                raise ShapeError(
                    "inputs disagree outside the concat axis",
                    f"equal sizes on every axis but axis {self.axis}",
                    "give every branch the same spatial size (check strides and padding)")
        total = sum(s[ax] for s in in_shapes)
        return first[:ax] + (total,) + first[ax + 1:]

    def reference(self, xs, params):
        return np.concatenate(xs, axis=self.sample_axis(xs[0].ndim - 1) + 1)

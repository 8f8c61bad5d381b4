"""Nearest-neighbour upsampling by an integer factor: each input position repeated as a block
of ``scale`` rows and columns (Darknet's [upsample], PyTorch's nn.Upsample(mode='nearest') and
ONNX's Resize in nearest mode with integer scales)."""

from __future__ import annotations

import numpy as np

from .base import Layer, expect_rank, register
from .fields import int_tuple, option


@register("upsample")
class Upsample(Layer):
    """Nearest-neighbour upsampling: (C, H, W) -> (C, H * sh, W * sw), output (i, j) reading
    input (i // sh, j // sw). The factor is an integer, so every input becomes one block.

    YAML: ``{type: upsample, scale: 2}`` or ``scale: [2, 1]`` (rows, columns); YOLOv3's heads
    upsample a coarse map this way before concatenating it with a finer one.
    """

    scale: tuple = option(int_tuple(2), default=2,
                          doc="the integer factor: one for both axes, or [rows, columns]")

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        expect_rank(shape, (3,), self.type_name)
        return (shape[0], shape[1] * self.scale[0], shape[2] * self.scale[1])

    def flops(self, in_shapes, out_shape):
        return 0  # copies only

    def reference(self, xs, params):
        x = xs[0]
        return np.repeat(np.repeat(x, self.scale[0], axis=2), self.scale[1], axis=3)


__all__ = ["Upsample"]

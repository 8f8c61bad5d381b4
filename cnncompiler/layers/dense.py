"""Fully connected layers and the reshape that feeds them: dense and flatten."""

from __future__ import annotations

import math

from ..errors import ShapeError
from .base import GLOBAL, Layer, ParamSpec, fmt_shape, register
from .fields import boolean, option, positive_int


@register("dense")
class Dense(Layer):
    """Fully connected layer y = x W^T + b, PyTorch's Linear. Weight (units, F), bias (units,).

    YAML: ``{name: fc1, type: dense, units: 120}``. Its input must be a flat vector (F,);
    put ``{type: flatten}`` after convolutions.
    """

    takes_activation = True

    units: int = option(positive_int)
    bias: bool = option(boolean, default=True)

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        if len(shape) != 1:
            raise ShapeError(
                f"input has shape {fmt_shape(shape)}, a {len(shape)}-D tensor per sample",
                "dense expects a flat vector (F,)",
                f"add {{type: flatten}} before this layer (it gives ({math.prod(shape)},))")
        return (self.units,)

    def params(self, in_shapes):
        features = in_shapes[0][0]
        out = {"weight": ParamSpec((self.units, features), fan_in=features)}
        if self.bias:
            out["bias"] = ParamSpec((self.units,), fan_in=features)
        return out

    def flops(self, in_shapes, out_shape):
        return 2 * in_shapes[0][0] * self.units

    def window(self, in_shapes):
        return GLOBAL

    def reference(self, xs, params):
        y = xs[0] @ params["weight"].T
        if "bias" in params:
            y = y + params["bias"]
        return y.astype(xs[0].dtype, copy=False)


@register("flatten")
class Flatten(Layer):
    """Flatten each sample to a vector in C, H, W order (as torch.flatten(x, 1)).

    YAML: ``{type: flatten}``.
    """

    def infer_shape(self, in_shapes, notes):
        return (math.prod(in_shapes[0]),)

    def reference(self, xs, params):
        return xs[0].reshape(xs[0].shape[0], -1)

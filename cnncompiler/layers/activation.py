"""Element-wise layers: activations, softmax, dropout and identity. Each keeps its input shape."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .base import Layer, register
from .fields import integer, non_negative_number, option, probability


class Elementwise(Layer):
    """A layer that maps each element on its own: output shape = input shape."""

    cost_per_element = 1

    def infer_shape(self, in_shapes, notes):
        return in_shapes[0]

    def flops(self, in_shapes, out_shape):
        return self.cost_per_element * math.prod(out_shape)


@register("relu")
class ReLU(Elementwise):
    """max(x, 0). YAML: ``{type: relu}``."""

    def reference(self, xs, params):
        return np.maximum(xs[0], 0).astype(xs[0].dtype, copy=False)


@register("leaky_relu")
class LeakyReLU(Elementwise):
    """x for x > 0, alpha * x otherwise. YAML: ``{type: leaky_relu, alpha: 0.01}``."""

    alpha: float = option(non_negative_number, default=0.01)

    def reference(self, xs, params):
        x = xs[0]
        return np.where(x > 0, x, x * x.dtype.type(self.alpha))


@register("sigmoid")
class Sigmoid(Elementwise):
    """1 / (1 + exp(-x)). YAML: ``{type: sigmoid}``."""

    cost_per_element = 4

    def reference(self, xs, params):
        x = xs[0]
        # exp of a large positive number overflows; split by sign to stay finite.
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


@register("tanh")
class Tanh(Elementwise):
    """Hyperbolic tangent. YAML: ``{type: tanh}``."""

    cost_per_element = 4

    def reference(self, xs, params):
        return np.tanh(xs[0])


def _axis(value):
    return integer(value, None, "an integer axis (1 = channels, counting the batch axis as 0)")


@register("softmax")
class Softmax(Elementwise):
    """exp(x) / sum(exp(x)) along ``axis`` (default 1, the channels; the batch axis is 0).

    YAML: ``{type: softmax}``. Usually the last layer of a classifier at inference; training
    with softmax_cross_entropy expects logits, so leave it out there.
    """

    axis: int = option(_axis, default=1)
    cost_per_element = 5

    def infer_shape(self, in_shapes, notes):
        shape = in_shapes[0]
        rank = len(shape) + 1
        if not (-rank < self.axis < rank) or self.axis % rank == 0:
            raise ShapeError(f"axis {self.axis} is out of range for input (N, {', '.join(map(str, shape))})",
                             f"an axis from 1 to {rank - 1}, or -1 to {-(rank - 1)}",
                             "axis 1 is the channels")
        return shape

    def reference(self, xs, params):
        x = xs[0]
        z = x - x.max(axis=self.axis, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=self.axis, keepdims=True)).astype(x.dtype, copy=False)


@register("dropout")
class Dropout(Elementwise):
    """Zero each element with probability ``rate`` in training (scaling the rest by
    1/(1-rate)); the identity at inference. YAML: ``{type: dropout, rate: 0.5}``."""

    rate: float = option(probability, default=0.5)
    cost_per_element = 0

    def reference(self, xs, params):
        return xs[0]

    def reference_train(self, xs, params, state):
        x = xs[0]
        if self.rate == 0:
            return x
        mask = state.get("mask")
        # a mask kept from a batch of another size would broadcast or fail: draw a new one
        if mask is None or mask.shape != x.shape:
            rng = state.get("rng") or np.random.default_rng(0)
            mask = rng.random(x.shape) >= self.rate
            state["mask"] = mask
        return (x * mask / (1.0 - self.rate)).astype(x.dtype, copy=False)


@register("identity")
class Identity(Elementwise):
    """Passes its input through unchanged. YAML: ``{type: identity}``."""

    cost_per_element = 0

    def reference(self, xs, params):
        return xs[0]

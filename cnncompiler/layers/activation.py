"""Element-wise layers: activations (point-wise, see ``pointwise``), softmax, dropout and
identity. Each keeps its input shape."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .base import Layer, ParamSpec, register
from .fields import choice, integer, non_negative_number, number, option, positive_int, probability
from .pointwise import NUMPY, Pointwise


class Elementwise(Layer):
    """A layer that maps each element on its own: output shape = input shape."""

    cost_per_element = 1

    def infer_shape(self, in_shapes, notes):
        return in_shapes[0]

    def flops(self, in_shapes, out_shape):
        return self.cost_per_element * math.prod(out_shape)


@register("relu")
class ReLU(Pointwise):
    """max(x, 0). YAML: ``{type: relu}``."""

    def forward(self, x, m, arg):
        return m.where(x < 0, 0.0, x)

    def backward(self, x, y, dy, m, arg):
        # PyTorch's threshold_backward: no gradient where x <= 0; a NaN passes it on
        return m.where(x <= 0, 0.0, dy)


@register("leaky_relu")
class LeakyReLU(Pointwise):
    """x for x > 0, alpha * x otherwise. YAML: ``{type: leaky_relu, alpha: 0.01}``."""

    alpha: float = option(non_negative_number, default=0.01)

    def forward(self, x, m, arg):
        return m.where(x > 0, x, x * self.alpha)

    def backward(self, x, y, dy, m, arg):
        return m.where(x > 0, dy, dy * self.alpha)


@register("prelu")
class PReLU(Pointwise):
    """Leaky ReLU with a learned slope, PyTorch's PReLU: x for x > 0, weight * x otherwise.

    YAML: ``{type: prelu, num_parameters: 1}`` (one slope) or the channel count (one per
    channel); parameter ``weight`` (num_parameters,), initialised to ``init`` (0.25)."""

    num_parameters: int = option(positive_int, default=1)
    init: float = option(number, default=0.25)

    def infer_shape(self, in_shapes, notes):
        shape = in_shapes[0]
        channels = shape[0]
        if self.num_parameters not in (1, channels):
            raise ShapeError(f"num_parameters is {self.num_parameters} but the input has "
                             f"{channels} channels",
                             f"num_parameters 1 or {channels} (the channels, axis 1)",
                             f"use num_parameters: 1 (one slope) or {channels}")
        return shape

    def params(self, in_shapes):
        return {"weight": ParamSpec((self.num_parameters,), "constant", value=self.init)}

    def forward(self, x, m, arg):
        return m.where(x > 0, x, x * arg("weight"))

    def backward(self, x, y, dy, m, arg):
        return m.where(x > 0, dy, dy * arg("weight"))

    def weight_gradient_term(self, x, dy, m):
        """What each element adds to the weight's gradient (summed over the batch, positions,
        and over the channels when there is one slope)."""
        return m.where(x > 0, 0.0, x * dy)

    def reference_weight_gradient(self, x, dy):
        term = self.weight_gradient_term(x, dy, NUMPY)
        axes = tuple(a for a in range(x.ndim) if a != 1 or self.num_parameters == 1)
        return term.sum(axis=axes).reshape(self.num_parameters).astype(x.dtype)

    def epilogue_args(self, params, channels):
        """In a fused epilogue the slope is read per channel: one slope is repeated."""
        return {"weight": np.broadcast_to(np.asarray(params["weight"]), (channels,)).copy()}

    def epilogue_arg_shapes(self, in_shapes):
        return {"weight": (in_shapes[0][0],)}


@register("relu6")
class ReLU6(Pointwise):
    """min(max(x, 0), 6), PyTorch's ReLU6. YAML: ``{type: relu6}``."""

    def forward(self, x, m, arg):
        return m.where(x < 0, 0.0, m.where(x > 6, 6.0, x))

    def backward(self, x, y, dy, m, arg):
        # PyTorch's hardtanh_backward: no gradient at or beyond either edge
        return m.where(x <= 0, 0.0, m.where(x >= 6, 0.0, dy))


@register("hardsigmoid")
class Hardsigmoid(Pointwise):
    """relu6(x + 3) / 6, PyTorch's Hardsigmoid. YAML: ``{type: hardsigmoid}``."""

    def forward(self, x, m, arg):
        return m.where(x < -3, 0.0, m.where(x > 3, 1.0, x * (1 / 6) + 0.5))

    def backward(self, x, y, dy, m, arg):
        return m.where(x > -3, m.where(x < 3, dy * (1 / 6), 0.0), 0.0)


@register("hardswish")
class Hardswish(Pointwise):
    """x * relu6(x + 3) / 6, PyTorch's Hardswish. YAML: ``{type: hardswish}``."""

    cost_per_element = 3

    def forward(self, x, m, arg):
        # as PyTorch's x * relu6(x + 3) / 6, so -inf * 0 is NaN there too
        return x * m.where(x < -3, 0.0, m.where(x > 3, 6.0, x + 3)) * (1 / 6)

    def backward(self, x, y, dy, m, arg):
        # at the two kinks PyTorch takes the outer piece's slope: 0 at -3, 1 at 3
        return m.where(x <= -3, 0.0, m.where(x < 3, dy * (x * (1 / 3) + 0.5), dy))


@register("sigmoid")
class Sigmoid(Pointwise):
    """1 / (1 + exp(-x)). YAML: ``{type: sigmoid}``."""

    cost_per_element = 4

    def forward(self, x, m, arg):
        return m.sigmoid(x)

    def backward(self, x, y, dy, m, arg):
        return dy * y * (1 - y)


@register("tanh")
class Tanh(Pointwise):
    """Hyperbolic tangent. YAML: ``{type: tanh}``."""

    cost_per_element = 4

    def forward(self, x, m, arg):
        return m.tanh(x)

    def backward(self, x, y, dy, m, arg):
        return dy * (1 - y * y)


@register("silu")
class SiLU(Pointwise):
    """x * sigmoid(x) (swish), PyTorch's SiLU. YAML: ``{type: silu}``."""

    cost_per_element = 5

    def forward(self, x, m, arg):
        return x * m.sigmoid(x)

    def backward(self, x, y, dy, m, arg):
        s = m.sigmoid(x)
        return dy * s * (1 + x * (1 - s))


@register("mish")
class Mish(Pointwise):
    """x * tanh(softplus(x)), PyTorch's Mish (Misra, 2019), the activation of YOLOv4's
    backbone. YAML: ``{type: mish}``.

    With n = e^x (e^x + 2), tanh(log(1 + e^x)) is n / (n + 2): no logarithm, and e^x is taken
    of min(x, 20), past which the factor is 1 in float32 and float64 alike (PyTorch's softplus
    returns x itself there), so it never overflows.
    """

    cost_per_element = 6

    @staticmethod
    def _factor(x, m):
        e = m.exp(m.where(x > 20, 20.0, x))
        n = e * (e + 2)
        return n / (n + 2)

    def forward(self, x, m, arg):
        return x * self._factor(x, m)

    def backward(self, x, y, dy, m, arg):
        # d/dx x tanh(sp(x)) = tanh(sp(x)) + x (1 - tanh(sp(x))^2) sigmoid(x)
        t = self._factor(x, m)
        return dy * (t + x * (1 - t * t) * m.sigmoid(x))


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


@register("gelu")
class GELU(Pointwise):
    """x * Phi(x), PyTorch's GELU: ``approximate: none`` uses the error function,
    ``approximate: tanh`` the tanh approximation. YAML: ``{type: gelu, approximate: none}``."""

    approximate: str = option(choice("none", "tanh"), default="none")
    cost_per_element = 8

    def forward(self, x, m, arg):
        if self.approximate == "tanh":
            inner = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)
            return 0.5 * x * (1 + m.tanh(inner))
        return 0.5 * x * (1 + m.erf(x * (1 / math.sqrt(2))))

    def backward(self, x, y, dy, m, arg):
        if self.approximate == "tanh":
            t = m.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x))
            slope = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
            return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * slope)
        cdf = 0.5 * (1 + m.erf(x * (1 / math.sqrt(2))))
        pdf = m.exp(x * x * -0.5) * (1 / math.sqrt(2 * math.pi))
        return dy * (cdf + x * pdf)


def _axis(value):
    return integer(value, None, "an integer axis (1 = channels, counting the batch axis as 0)")


@register("softmax")
class Softmax(Elementwise):
    """exp(x) / sum(exp(x)) along ``axis`` (default 1, the channels; the batch axis is 0).

    YAML: ``{type: softmax}``. Usually the last layer of a classifier at inference; training
    with softmax_cross_entropy expects logits, so leave it out there.
    """

    is_activation = True

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
    passthrough = True

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
    passthrough = True

    def reference(self, xs, params):
        return xs[0]

"""Point-wise layers declared once: forward and gradient written in the operations of a
``math`` namespace, so one definition is the numpy reference, the compiled kernel, the fused
conv/dense epilogue and the training gradient.

    @register("silu")
    class SiLU(Pointwise):
        \"\"\"x * sigmoid(x). YAML: ``{type: silu}``.\"\"\"
        def forward(self, x, m, arg):
            return x * m.sigmoid(x)
        def backward(self, x, y, dy, m, arg):
            s = m.sigmoid(x)
            return dy * s * (1 + x * (1 - s))

``m`` is :data:`NUMPY` here (arrays) and, in the backends, TVM's scalar expressions (with the
CPU's vectorizable exp and tanh): the same text is evaluated on either. ``x`` and the result
are one element (or an array of them), ``y`` the forward's result, ``dy`` the gradient of the
output; ``arg(key)`` is the layer's prepared parameter ``key`` at this element's channel
(PReLU's slope). Comparisons are written so that NaN passes through, as in PyTorch: a NaN
compares false, so ``m.where(x < 0, 0, x)`` keeps it. Constants are written as Python floats:
activations compute in float32.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Layer


class NumpyMath:
    """The operations point-wise layers are written in, on numpy arrays: the reference."""

    @staticmethod
    def where(cond, a, b):
        """Select; the result has an array branch's dtype (two numbers: the caller casts)."""
        out = np.where(cond, a, b)
        dtypes = [v.dtype for v in (a, b) if isinstance(v, np.ndarray)]
        return out.astype(dtypes[0], copy=False) if dtypes else out

    @staticmethod
    def exp(x):
        return np.exp(x)

    @staticmethod
    def tanh(x):
        return np.tanh(x)

    @staticmethod
    def sigmoid(x):
        # exp of a large positive number overflows; split by sign to stay finite
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    @staticmethod
    def erf(x):
        values = np.frompyfunc(math.erf, 1, 1)(np.asarray(x, np.float64))
        return np.asarray(values, np.float64).astype(x.dtype, copy=False)


NUMPY = NumpyMath()


class Pointwise(Layer):
    """A layer that maps each element on its own, declared by ``forward`` and ``backward``
    in the operations of ``m`` (see the module docstring). It keeps its input's shape and
    fuses into the epilogue of the conv or dense layer before it."""

    is_activation = True

    cost_per_element = 1

    def forward(self, x, m, arg):
        """The output element from the input element ``x``."""
        raise NotImplementedError

    def backward(self, x, y, dy, m, arg):
        """The input's gradient from the input ``x``, the output ``y`` and its gradient."""
        raise NotImplementedError

    # -- what every layer states, derived from forward ------------------------------------
    def infer_shape(self, in_shapes, notes):
        return in_shapes[0]

    def flops(self, in_shapes, out_shape):
        return self.cost_per_element * math.prod(out_shape)

    def reference(self, xs, params):
        x = xs[0]
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf pass, as in PyTorch
            y = self.forward(x, NUMPY, channel_lookup(params, x))
        return y.astype(x.dtype, copy=False)

    def reference_backward(self, x, y, dy, params):
        """The numpy gradient of the input (what the compiled backward must match)."""
        with np.errstate(invalid="ignore", over="ignore"):
            out = self.backward(x, y, dy, NUMPY, channel_lookup(params, x))
        return np.asarray(out, x.dtype)

    # -- as a step of a fused epilogue -----------------------------------------------------
    def epilogue(self, v, m, arg, residual):
        return self.forward(v, m, arg)


def per_channel(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A (C,) or (1,) vector shaped to broadcast over the channel axis 1 of ``like``."""
    v = np.asarray(v)
    return v.reshape((1, -1) + (1,) * (like.ndim - 2)).astype(like.dtype, copy=False)


def channel_lookup(params: dict, like: np.ndarray):
    """``arg`` for the numpy reference: a parameter broadcast over ``like``'s channels."""
    return lambda key: per_channel(params[key], like)

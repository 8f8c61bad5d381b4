"""Normalisation: batch norm and local response normalisation (LRN)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import FieldError
from .base import Layer, ParamSpec, expect_rank, register
from .fields import number, option, positive_int, positive_number


def _channel_axes(x: np.ndarray) -> tuple[int, ...]:
    """The axes statistics are taken over: all but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (x.ndim - 2)).astype(x.dtype, copy=False)


def momentum_value(value) -> float:
    """A batch norm's momentum, 0 to 1 inclusive as PyTorch allows (1 keeps only the last
    batch's statistics)."""
    v = number(value, "a number from 0 to 1")
    if not 0.0 <= v <= 1.0:
        raise FieldError(f"received {value}", "expected a momentum from 0 to 1",
                         "0.1 (PyTorch's default) moves the running statistics a tenth of the "
                         "way to each batch's")
    return v


@register("batchnorm")
class BatchNorm(Layer):
    """Batch normalisation over the channel axis, PyTorch's BatchNorm1d/2d.

    YAML: ``{name: bn1, type: batchnorm, eps: 1.0e-5, momentum: 0.1}``. Parameters ``weight``
    and ``bias`` (C,), buffers ``running_mean`` and ``running_var`` (C,). Training normalises
    with the batch's statistics and moves the running ones by ``momentum`` (unbiased variance).
    """

    eps: float = option(positive_number, default=1e-5)
    momentum: float = option(momentum_value, default=0.1)

    def infer_shape(self, in_shapes, notes):
        expect_rank(in_shapes[0], (1, 2, 3), self.type_name)
        return in_shapes[0]

    def params(self, in_shapes):
        c = in_shapes[0][0]
        return {
            "weight": ParamSpec((c,), "ones"),
            "bias": ParamSpec((c,), "zeros"),
            "running_mean": ParamSpec((c,), "zeros", trainable=False),
            "running_var": ParamSpec((c,), "ones", trainable=False),
        }

    def flops(self, in_shapes, out_shape):
        return 2 * math.prod(out_shape)

    def reference(self, xs, params):
        x = xs[0]
        scale = params["weight"] / np.sqrt(params["running_var"] + self.eps)
        shift = params["bias"] - params["running_mean"] * scale
        return x * _per_channel(scale, x) + _per_channel(shift, x)

    def prepare(self, params):
        """At inference the four statistics fold into a per-channel scale and shift, once."""
        weight, bias, mean, var = (np.asarray(params[k], np.float64) for k in
                                   ("weight", "bias", "running_mean", "running_var"))
        scale = weight / np.sqrt(var + self.eps)
        return {"scale": scale, "shift": bias - mean * scale}

    def kernel_arg_shapes(self, in_shapes):
        c = in_shapes[0][0]
        return {"scale": (c,), "shift": (c,)}

    def epilogue(self, v, m, arg, residual):
        return v * arg("scale") + arg("shift")

    def reference_train(self, xs, params, state):
        x = xs[0]
        axes = _channel_axes(x)
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
        count = x.size // x.shape[1]
        unbiased = var * count / max(count - 1, 1)
        m = self.momentum
        state["running_mean"] = (1 - m) * params["running_mean"] + m * mean
        state["running_var"] = (1 - m) * params["running_var"] + m * unbiased
        xhat = (x - _per_channel(mean, x)) / np.sqrt(_per_channel(var, x) + self.eps)
        return xhat * _per_channel(params["weight"], x) + _per_channel(params["bias"], x)


@register("lrn")
class LRN(Layer):
    """Local response normalisation across channels (AlexNet), PyTorch's LocalResponseNorm:

        y_c = x_c / (k + alpha / size * sum_{c' near c} x_c'^2) ^ beta

    over ``size`` neighbouring channels (size//2 before, (size-1)//2 after, zero outside).
    YAML: ``{type: lrn, size: 5, alpha: 1.0e-4, beta: 0.75, k: 2.0}``.
    """

    size: int = option(positive_int, default=5)
    alpha: float = option(number, default=1e-4)
    beta: float = option(number, default=0.75)
    k: float = option(number, default=1.0)

    def infer_shape(self, in_shapes, notes):
        expect_rank(in_shapes[0], (2, 3), self.type_name)
        return in_shapes[0]

    def flops(self, in_shapes, out_shape):
        return (self.size + 4) * math.prod(out_shape)

    def channel_sums(self, x: np.ndarray) -> np.ndarray:
        sq = x * x
        width = [(0, 0)] * x.ndim
        width[1] = (self.size // 2, (self.size - 1) // 2)
        sq = np.pad(sq, width)
        win = np.lib.stride_tricks.sliding_window_view(sq, self.size, axis=1)
        return win.sum(axis=-1)

    def reference(self, xs, params):
        x = xs[0]
        t = x.dtype.type
        div = (t(self.k) + t(self.alpha / self.size) * self.channel_sums(x)) ** t(self.beta)
        return (x / div).astype(x.dtype, copy=False)

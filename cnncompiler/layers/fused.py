"""The fused layer that the optimiser makes: a conv (1-D or 2-D) or dense layer followed by an
epilogue of batch norms, activations and one residual add, run as ONE kernel.

It is not written in specs; ``cnnc compile --explain`` shows where passes made one, e.g.

    layer1.0.conv2 = conv2d + batchnorm(folded) + add(layer1.0.relu1... shortcut) + relu

Parameters keep their original names (``param_names`` on the graph node maps the local names
below to ``layer1.0.conv2.weight``, ``layer1.0.bn2.running_var``, ...), so weights saved for
the spec still load. :meth:`Fused.prepare` turns them into the kernel's arguments once, at load
time: a batch norm straight after the conv is folded into its weight and bias; a later one
becomes a per-channel scale and shift.
"""

from __future__ import annotations

import numpy as np

from .activation import LeakyReLU, ReLU, Sigmoid, Tanh
from .base import Layer, ParamSpec, ShapeNotes, register

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
_ACTIVATION_LAYERS = {"relu": ReLU(), "sigmoid": Sigmoid(), "tanh": Tanh()}


def activation_step(layer: Layer) -> tuple:
    """The epilogue step for an activation layer: ('relu',) or ('leaky_relu', alpha)."""
    if layer.type_name == "leaky_relu":
        return ("leaky_relu", layer.alpha)
    return (layer.type_name,)


def apply_activation(step: tuple, y: np.ndarray) -> np.ndarray:
    if step[0] == "leaky_relu":
        return LeakyReLU(alpha=step[1]).reference([y], {})
    return _ACTIVATION_LAYERS[step[0]].reference([y], {})


def _per_channel(v: np.ndarray, y: np.ndarray) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (y.ndim - 2)).astype(y.dtype, copy=False)


@register("fused", internal=True)
class Fused(Layer):
    """``base`` (conv1d, conv2d or dense) then ``steps`` in order, each one of
    ``('batchnorm', eps)``, ``('add',)`` (the second input, a residual), or an activation."""

    base: Layer = None
    steps: tuple = ()

    min_inputs = 1
    max_inputs = 2

    @property
    def folded(self) -> int:
        """How many leading batch-norm steps fold into the base's weights."""
        n = 0
        while n < len(self.steps) and self.steps[n][0] == "batchnorm":
            n += 1
        return n

    @property
    def has_residual(self) -> bool:
        return any(s[0] == "add" for s in self.steps)

    def describe(self) -> str:
        parts = [self.base.type_name]
        for i, step in enumerate(self.steps):
            parts.append(f"batchnorm({'folded' if i < self.folded else 'scale-shift'})"
                         if step[0] == "batchnorm" else step[0])
        return " + ".join(parts)

    def infer_shape(self, in_shapes, notes):
        return self.base.infer_shape(in_shapes[:1], notes)

    def params(self, in_shapes):
        out = dict(self.base.params(in_shapes[:1]))
        # a fresh sink: the base's warnings (a 1x1 stride-2 shortcut's unread row) were
        # already reported when the spec was checked
        shape = self.infer_shape(in_shapes, ShapeNotes())
        for i, step in enumerate(self.steps):
            if step[0] == "batchnorm":
                c = shape[0]
                out |= {f"{i}.weight": ParamSpec((c,), "ones"), f"{i}.bias": ParamSpec((c,), "zeros"),
                        f"{i}.running_mean": ParamSpec((c,), "zeros", trainable=False),
                        f"{i}.running_var": ParamSpec((c,), "ones", trainable=False)}
        return out

    def flops(self, in_shapes, out_shape):
        size = int(np.prod(out_shape))
        return self.base.flops(in_shapes[:1], out_shape) + size * len(self.steps[self.folded:])

    def window(self, in_shapes):
        return self.base.window(in_shapes[:1])

    # -- load-time preparation and the kernel's reference --------------------------------
    def prepare(self, params: dict) -> dict:
        """The kernel's arguments from the layer's parameters (PyTorch names, local form)."""
        w = np.asarray(params["weight"], np.float64)
        b = np.asarray(params["bias"], np.float64) if "bias" in params else None
        for i in range(self.folded):
            scale, shift = self._scale_shift(i, params)
            w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            b = shift if b is None else b * scale + shift
        dtype = np.asarray(params["weight"]).dtype
        out = {"weight": w.astype(dtype)}
        if b is not None:
            out["bias"] = b.astype(dtype)
        for i in range(self.folded, len(self.steps)):
            if self.steps[i][0] == "batchnorm":
                scale, shift = self._scale_shift(i, params)
                out[f"{i}.scale"], out[f"{i}.shift"] = scale.astype(dtype), shift.astype(dtype)
        return out

    def _scale_shift(self, i: int, params: dict):
        eps = self.steps[i][1]
        scale = np.asarray(params[f"{i}.weight"], np.float64) / np.sqrt(
            np.asarray(params[f"{i}.running_var"], np.float64) + eps)
        shift = np.asarray(params[f"{i}.bias"], np.float64) - \
            np.asarray(params[f"{i}.running_mean"], np.float64) * scale
        return scale, shift

    def kernel_reference(self, xs: list[np.ndarray], args: dict) -> np.ndarray:
        """What the fused kernel computes from the prepared arguments."""
        base_args = {k: args[k] for k in ("weight", "bias") if k in args}
        y = self.base.reference(xs[:1], base_args)
        for i, step in enumerate(self.steps[self.folded:], self.folded):
            if step[0] == "batchnorm":
                y = y * _per_channel(args[f"{i}.scale"], y) + _per_channel(args[f"{i}.shift"], y)
            elif step[0] == "add":
                y = y + xs[1]
            else:
                y = apply_activation(step, y)
        return y.astype(xs[0].dtype, copy=False)

    def reference(self, xs, params):
        return self.kernel_reference(xs, self.prepare(params))

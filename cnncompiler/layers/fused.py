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

import functools

import numpy as np

from .base import Layer, ShapeNotes, register
from .merge import Add
from .norm import BatchNorm
from .pointwise import NUMPY, per_channel


def step_arg(index: int, key: str) -> str:
    """The kernel argument name of epilogue step ``index``'s prepared ``key``: '2.scale'."""
    return f"{index}.{key}"


@register("fused", internal=True)
class Fused(Layer):
    """``base`` (conv1d, conv2d or dense) then ``steps`` in order: layers that act on each
    element of its output (``Layer.epilogue``): batch norms, point-wise activations and one
    add (whose other input is the kernel's second input, a residual)."""

    base: Layer = None
    steps: tuple = ()

    min_inputs = 1
    max_inputs = 2

    @property
    def folded(self) -> int:
        """How many leading batch-norm steps fold into the base's weights."""
        n = 0
        while n < len(self.steps) and isinstance(self.steps[n], BatchNorm):
            n += 1
        return n

    @property
    def has_residual(self) -> bool:
        return any(isinstance(s, Add) for s in self.steps)

    def epilogue_steps(self) -> list[tuple[int, Layer]]:
        """(index, step) of the steps the kernel applies after the base (the unfolded ones)."""
        return list(enumerate(self.steps))[self.folded:]

    def describe(self) -> str:
        parts = [self.base.type_name]
        for i, step in enumerate(self.steps):
            parts.append(f"batchnorm({'folded' if i < self.folded else 'scale-shift'})"
                         if isinstance(step, BatchNorm) else step.type_name)
        return " + ".join(parts)

    def infer_shape(self, in_shapes, notes):
        return self.base.infer_shape(in_shapes[:1], notes)

    def _out_shape(self, in_shapes):
        # a fresh sink: the base's warnings (a 1x1 stride-2 shortcut's unread row) were
        # already reported when the spec was checked
        return self.infer_shape(in_shapes, ShapeNotes())

    def params(self, in_shapes):
        out = dict(self.base.params(in_shapes[:1]))
        shape = self._out_shape(in_shapes)
        for i, step in enumerate(self.steps):
            out |= {step_arg(i, k): spec for k, spec in step.params([shape]).items()}
        return out

    def kernel_arg_shapes(self, in_shapes):
        base = self.base.kernel_arg_shapes(in_shapes[:1])
        out = {"weight": base["weight"]}
        shape = self._out_shape(in_shapes)
        if "bias" in base or self.folded:
            out["bias"] = (shape[0],)
        for i, step in self.epilogue_steps():
            out |= {step_arg(i, k): s for k, s in step.epilogue_arg_shapes([shape]).items()}
        return out

    def flops(self, in_shapes, out_shape):
        size = int(np.prod(out_shape))
        return self.base.flops(in_shapes[:1], out_shape) + size * len(self.steps[self.folded:])

    def window(self, in_shapes):
        return self.base.window(in_shapes[:1])

    # -- load-time preparation and the kernel's reference --------------------------------
    def prepare(self, params: dict) -> dict:
        """The kernel's arguments from the layer's parameters (PyTorch names, local form)."""
        weight = np.asarray(params["weight"])
        dtype = weight.dtype
        b = np.asarray(params["bias"], np.float64) if "bias" in params else None
        folds = []
        for i in range(self.folded):
            prepared = self.steps[i].prepare(self._step_params(i, params))
            folds.append(prepared["scale"])
            b = prepared["shift"] if b is None else b * prepared["scale"] + prepared["shift"]
        out = {"weight": _scaled_rows(weight, folds)}
        if b is not None:
            out["bias"] = b.astype(dtype)
        channels = weight.shape[0]
        for i, step in self.epilogue_steps():
            local = self._step_params(i, params)
            if local:
                out |= {step_arg(i, k): np.asarray(v).astype(dtype) for k, v in
                        step.epilogue_args(local, channels).items()}
        return out

    @staticmethod
    def _step_params(i: int, params: dict) -> dict:
        prefix = f"{i}."
        return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}

    def kernel_reference(self, xs: list[np.ndarray], args: dict) -> np.ndarray:
        """What the fused kernel computes from the prepared arguments."""
        base_args = {k: args[k] for k in ("weight", "bias") if k in args}
        y = self.base.reference(xs[:1], base_args)
        residual = xs[1] if len(xs) > 1 else None
        y = apply_epilogue(self, y, NUMPY, lambda name: per_channel(args[name], y), residual)
        return y.astype(xs[0].dtype, copy=False)

    def reference(self, xs, params):
        return self.kernel_reference(xs, self.prepare(params))


FOLD_ROWS_BYTES = 64 << 20  # float64 bytes of weight rows scaled at a time


def _scaled_rows(weight: np.ndarray, scales: list) -> np.ndarray:
    """``weight`` with its output rows multiplied by each of ``scales`` in turn, in float64,
    returned in the weight's dtype. Done a slice of rows at a time: the same numbers as the
    whole tensor at once, without its float64 copies (VGG-16-BN's first dense layer: two
    temporaries of 822 MB)."""
    out = np.empty(weight.shape, weight.dtype)
    rows = max(1, FOLD_ROWS_BYTES // max(1, 8 * weight[:1].size))
    for start in range(0, weight.shape[0], rows):
        part = weight[start:start + rows].astype(np.float64)
        for scale in scales:
            part *= scale[start:start + rows].reshape((-1,) + (1,) * (weight.ndim - 1))
        out[start:start + rows] = part
    return out


def apply_epilogue(fused: Fused, v, m, arg, residual):
    """``v`` through the fused layer's epilogue: the one interpreter of epilogue steps, for
    the numpy reference and every backend's kernels. ``arg(name)`` reads the kernel argument
    ``name`` (see :func:`step_arg`) at ``v``'s channel; ``m`` gives the operations."""
    for i, step in fused.epilogue_steps():
        v = step.epilogue(v, m, functools.partial(_step_lookup, arg, i), residual)
    return v


def _step_lookup(arg, index: int, key: str):
    return arg(step_arg(index, key))

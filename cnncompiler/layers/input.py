"""The model's input, the one node every graph starts from."""

from __future__ import annotations

from .base import Layer, register


@register("input", internal=True)
class Input(Layer):
    """The per-sample input shape of the spec's ``input:`` key; not written as a layer."""

    shape: tuple = ()

    min_inputs = 0
    max_inputs = 0

    def infer_shape(self, in_shapes, notes):
        return self.shape

    def reference(self, xs, params):
        return xs[0]

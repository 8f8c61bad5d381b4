"""The model's input, the one node every graph starts from."""

from __future__ import annotations

from .base import Layer, register


@register("input", internal=True)
class Input(Layer):
    """An input of the spec (``input:``, or one of ``inputs:``); not written as a layer.
    ``shape`` is per sample; an input with ``batched: false`` has no batch axis: its first
    axis counts rows of its own (R boxes), whose number varies from call to call, and
    ``shape`` is what follows it."""

    shape: tuple = ()
    batched: bool = True

    min_inputs = 0
    max_inputs = 0

    def infer_shape(self, in_shapes, notes):
        return self.shape

    def reference(self, xs, params):
        return xs[0]

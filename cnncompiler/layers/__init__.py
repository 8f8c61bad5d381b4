"""The layer types of the spec language, each declared once with its keys, shape rule,
parameters, cost and numpy reference. ``LAYER_TYPES`` maps a spec's ``type`` to its class."""

from . import activation, adaptive, conv, dense, fused, merge, norm, pool  # noqa: F401  (registers the types)
from .base import GLOBAL, LAYER_TYPES, Layer, ParamSpec, Shape, ShapeNotes, Window, fmt_shape
from .input import Input

__all__ = ["GLOBAL", "LAYER_TYPES", "Input", "Layer", "ParamSpec", "Shape", "ShapeNotes",
           "Window", "fmt_shape"]

"""The layer types of the spec language, each declared once with its keys, shape rule,
parameters, cost and numpy reference. ``LAYER_TYPES`` maps a spec's ``type`` to its class.

A layer type declared outside the package (see ``layers.custom``) uses what is exported here:
``Layer`` or ``Pointwise`` as its base, ``register`` to name it, ``option`` and the key parsers
for its keys, ``ParamSpec`` for its weights.
"""

from . import activation, adaptive, conv, dense, detection, fused, merge, norm, pool, resize, slice  # noqa: F401,E501  (registers the types)
from .base import (BATCH, GLOBAL, LAYER_TYPES, Layer, ParamSpec, Shape, ShapeNotes, Window,
                   fmt_shape, register)
from .fields import (boolean, choice, int_tuple, integer, non_negative_int, non_negative_number,
                     number, option, positive_int, positive_number, probability)
from .input import Input
from .pointwise import Pointwise

__all__ = ["BATCH", "GLOBAL", "LAYER_TYPES", "Input", "Layer", "ParamSpec", "Pointwise", "Shape",
           "ShapeNotes", "Window", "boolean", "choice", "fmt_shape", "int_tuple", "integer",
           "non_negative_int", "non_negative_number", "number", "option", "positive_int",
           "positive_number", "probability", "register"]

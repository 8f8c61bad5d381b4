"""Part of a tensor along one axis: every ``step``-th position from ``start`` up to ``stop``, as
Python and PyTorch index ``x[:, start:stop:step]`` (ONNX's Slice on one axis). Darknet's
[route] with ``groups`` takes a channel group this way, and its [shortcut] between maps of
different sizes samples the larger one with a stride."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer, register, sample_axis
from .fields import FieldError, integer, option, positive_int

AXIS_NAMES = {"channels": 1, "rows": 2, "cols": 3}


def slice_axis(value) -> int:
    """'channels', 'rows', 'cols', or an integer axis counting the batch axis as 0 (as concat's
    ``axis`` and torch's dim); negative axes count from the end."""
    if isinstance(value, str) and value in AXIS_NAMES:
        return AXIS_NAMES[value]
    if isinstance(value, str):
        raise FieldError(f"received '{value}'", "'channels', 'rows', 'cols' or an integer axis",
                         "write axis: channels, or 1 for the channels (the batch axis is 0)")
    return integer(value, None, "an integer axis (1 = channels, counting the batch axis as 0) "
                                "or 'channels', 'rows', 'cols'")


def any_int(value) -> int:
    return integer(value, None)


def int_or_end(value) -> int | None:
    return None if value is None else integer(value, None, "an integer or null (the end)")


@register("slice")
class Slice(Layer):
    """Positions start, start + step, ... below stop of one axis of each sample; start and stop
    count from the end where negative and are clipped to the axis, as in Python (``stop:
    null``, the default, is the end). An empty slice is an error at the layer.

    YAML: ``{type: slice, axis: channels, start: 0, stop: 32}`` (the first 32 channels);
    ``{type: slice, axis: rows, step: 2}`` (every other row); ``axis`` is 'channels', 'rows',
    'cols', or an integer counting the batch axis as 0 (as concat's: 1 is the channels).
    """

    axis: int = option(slice_axis, default=1,
                       doc="'channels' (1), 'rows' (2), 'cols' (3), or an axis counting the "
                           "batch axis as 0; negative counts from the end")
    start: int = option(any_int, default=0,
                        doc="the first position taken; negative counts from the end")
    stop: int | None = option(int_or_end, default=None,
                              doc="the position the slice stops before; null: the end")
    step: int = option(positive_int, default=1, doc="take every step-th position")

    def sample_axis(self, rank: int) -> int:
        """The axis within one sample's shape, or raise if it is the batch or out of range."""
        return sample_axis(self.axis, rank, "write axis: channels (1), rows (2) or cols (3)")

    def positions(self, size: int) -> range:
        """The positions taken from an axis of ``size``."""
        return range(*slice(self.start, self.stop, self.step).indices(size))

    def infer_shape(self, in_shapes, notes):
        (shape,) = in_shapes
        ax = self.sample_axis(len(shape))
        taken = len(self.positions(shape[ax]))
        if taken == 0:
            stop = "null" if self.stop is None else self.stop  # as the spec writes it
            raise ShapeError(f"takes nothing from axis {self.axis} of size {shape[ax]} "
                             f"(start {self.start}, stop {stop}, step {self.step})",
                             "at least one position", "check start and stop against the size")
        return shape[:ax] + (taken,) + shape[ax + 1:]

    def reference(self, xs, params):
        x = xs[0]
        index = [slice(None)] * x.ndim
        index[self.sample_axis(x.ndim - 1) + 1] = slice(self.start, self.stop, self.step)
        return x[tuple(index)]


__all__ = ["Slice"]

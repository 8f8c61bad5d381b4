"""Detection heads' layers: RoI max pooling (Fast R-CNN) and RoI align (Mask R-CNN), as
``torchvision.ops.roi_pool`` and ``roi_align`` compute them (references in ``layers.roi``).

They read a batch of feature maps and a tensor of boxes without the batch axis, one box a row
as (batch_index, x1, y1, x2, y2) in input-image coordinates, and give one pooled map per box:
the layers after them work box by box (their leading axis counts the boxes)::

    inputs:
      image: [3, 64, 64]
      rois: {shape: [null, 5], batched: false}
    layers:
      - {name: backbone, type: conv2d, filters: 32, kernel: 3, stride: 4, padding: 1}
      - {name: pool, type: roi_align, inputs: [backbone, rois], output_size: 4,
         spatial_scale: 0.25, sampling_ratio: 2, aligned: true}
      - {type: flatten}
      - {name: cls, type: dense, units: 4}
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import BATCH, Layer, register
from .fields import boolean, int_tuple, integer, option, positive_number
from .roi import roi_align_reference, roi_pool_reference

BOX_FIELDS = 5  # batch_index, x1, y1, x2, y2


def _sampling_ratio(value) -> int:
    return integer(value, None, "an integer: samples per bin and axis, 0 or less for adaptive")


class RoIBase(Layer):
    """Shape rule and box checks shared by roi_pool and roi_align."""

    min_inputs = 2
    max_inputs = 2

    def leading_axis(self, in_leads: list[str]) -> str:
        features, boxes = in_leads
        if features != BATCH:
            raise ShapeError(f"its first input (the feature maps) counts the rows of "
                             f"'{features}', not the batch's samples",
                             "inputs: [features, boxes]: a batch of feature maps first",
                             "give the backbone's output first, the boxes second")
        if boxes == BATCH:
            raise ShapeError("its boxes are a batched tensor; boxes are rows of their own, "
                             "each naming its image by batch index",
                             "boxes from an input {shape: [null, 5], batched: false}",
                             "declare the boxes input with batched: false")
        return boxes

    def infer_shape(self, in_shapes, notes):
        features, boxes = in_shapes
        if len(features) != 3:
            raise ShapeError(f"its feature maps are {tuple(features)} per sample",
                             "(C, H, W) feature maps", "feed it the output of a 2-D layer")
        if tuple(boxes) != (BOX_FIELDS,):
            raise ShapeError(f"its boxes are rows of {tuple(boxes)}",
                             "rows of 5: (batch_index, x1, y1, x2, y2)",
                             "give boxes as {shape: [null, 5], batched: false}")
        return (features[0], *self.output_size)

    def flops(self, in_shapes, out_shape) -> int:
        return int(np.prod(out_shape)) * self.flops_per_output


@register("roi_pool")
class RoIPool(RoIBase):
    """RoI max pooling: each box's region cut into ``output_size`` bins, each bin's maximum
    (an empty bin gives 0). YAML: ``{type: roi_pool, inputs: [features, rois], output_size: 7,
    spatial_scale: 0.0625}``."""

    output_size: tuple = option(int_tuple(2))
    spatial_scale: float = option(positive_number, default=1.0)

    flops_per_output = 4  # a bin is a few positions of comparisons, on average

    def reference(self, xs, params):
        return roi_pool_reference(xs[0], xs[1], self.output_size, self.spatial_scale)


@register("roi_align")
class RoIAlign(RoIBase):
    """RoI align: each bin the average of a grid of bilinear samples (``sampling_ratio`` per
    axis; 0 or less: adaptive, ceil(box size / output size)); ``aligned: true`` puts pixel
    centres at .5 (Detectron2's choice). YAML: ``{type: roi_align, inputs: [features, rois],
    output_size: 7, spatial_scale: 0.0625, sampling_ratio: 2, aligned: true}``."""

    output_size: tuple = option(int_tuple(2))
    spatial_scale: float = option(positive_number, default=1.0)
    sampling_ratio: int = option(_sampling_ratio, default=0)
    aligned: bool = option(boolean, default=False)

    flops_per_output = 4 * 8  # four samples a bin, 8 operations each (bilinear)

    def reference(self, xs, params):
        return roi_align_reference(xs[0], xs[1], self.output_size, self.spatial_scale,
                                   self.sampling_ratio, self.aligned)

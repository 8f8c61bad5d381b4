"""The rules' computes and gradients of the RoI layers (``layers.detection``): adapters from a
layer's keys to ``te_roi``'s kernels, in the (compute, gradient) forms rules.py takes.

    - {name: pool, type: roi_align, inputs: [features, rois], output_size: 7,
       spatial_scale: 0.0625, sampling_ratio: 2, aligned: true}
"""

from __future__ import annotations

from . import te_roi


def lower_roi_pool(layer, xs, args, out_shape):
    return te_roi.roi_pool(xs[0], xs[1], layer.output_size, layer.spatial_scale)


def grad_roi_pool(layer, xs, y, dy, args, out_shape):
    """The features' gradient; boxes get none (as torchvision)."""
    dx = te_roi.roi_pool_backward(xs[0], xs[1], dy, layer.output_size, layer.spatial_scale, y=y)
    return [dx, None], {}


def lower_roi_align(layer, xs, args, out_shape):
    return te_roi.roi_align(xs[0], xs[1], layer.output_size, layer.spatial_scale,
                            layer.sampling_ratio, layer.aligned)


def grad_roi_align(layer, xs, y, dy, args, out_shape):
    """The features' gradient; boxes get none (as torchvision)."""
    dx = te_roi.roi_align_backward(xs[0], xs[1], dy, layer.output_size, layer.spatial_scale,
                                   layer.sampling_ratio, layer.aligned)
    return [dx, None], {}

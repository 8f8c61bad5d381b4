"""A checked layer graph as an ONNX model that computes what cnnc's numpy reference computes.

    graph, _ = cnncompiler.check("specs/resnet18.yaml")
    export_onnx(graph, params, "resnet18.onnx")       # params: PyTorch names -> arrays

The model is the unoptimised graph: each spec layer becomes one group of ONNX nodes named
``/<layer>/<Op>`` (as PyTorch's exporter names them), whose last output is the tensor named
after the layer; the weights are initializers under their PyTorch names and layouts; the model's
inputs keep the spec's input names; the batch axis is symbolic (``N``, and ``R_<input>`` for the
rows of an input without the batch axis, as the compiled model's signature names them).

``ONNX_EXPORT`` holds one entry per layer class: the function that writes the layer's nodes,
found by the class and then its bases, as ``backends/rules.py`` finds a layer's backend facts.
Where ONNX has no operator of the same semantics, the entry writes an exact decomposition (an
adaptive pool with uneven bins as slices and reductions); a type that has none gets an entry
from :func:`no_exact_mapping`, which refuses with the reason. A type without an entry (a custom
one) is refused by name, and tests/test_onnx_export.py fails for any of cnnc's own types that
lacks one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import CnncError
from ..graph import layer_node, param_names, topo_layers
from ..graph.signature import leading_axis
from ..layers.activation import (GELU, Dropout, Hardsigmoid, Hardswish, Identity, LeakyReLU,
                                 Mish, PReLU, ReLU, ReLU6, SiLU, Sigmoid, Softmax, Tanh)
from ..layers.adaptive import AdaptiveAvgPool2d, AdaptiveMaxPool2d, StatsPool
from ..layers.conv import ConvBase, LocallyConnected2d
from ..layers.dense import Dense, Flatten
from ..layers.detection import RoIAlign, RoIPool
from ..layers.merge import Add, Concat
from ..layers.norm import LRN, BatchNorm
from ..layers.pool import (AvgPoolBase, BlurPool2d, GlobalAvgPool, GlobalMaxPool, LpPoolBase,
                           MaxPoolBase, blur_filter)
from ..layers.resize import Upsample
from ..layers.slice import Slice
from ..layers.window import out_size, resolve_padding
from ..storage import write_atomic

DEFAULT_OPSET = 17
# Softmax over one axis, Unsqueeze's axes and Clip's bounds as inputs: opset 13 on
MIN_OPSET = 13
# protobuf cannot serialise a message of 2 GiB or more
MAX_MODEL_BYTES = 2**31 - 2**20


class ExportError(CnncError):
    """A graph, or one of its layers, that cannot be written as an ONNX model."""


@dataclass(frozen=True)
class LayerSite:
    """One layer as its export function sees it: its name, settings, the ONNX tensors it
    reads, the per-sample shapes of those and of its output, and its initializers."""

    name: str
    layer: object
    inputs: tuple[str, ...]
    in_shapes: tuple[tuple[int, ...], ...]
    shape: tuple[int, ...]
    params: dict[str, str]  # local parameter name -> initializer name

    @property
    def x(self) -> str:
        return self.inputs[0]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.in_shapes[0]


class OnnxWriter:
    """The nodes and initializers of the model being written, under names unique in it."""

    def __init__(self, opset: int):
        from onnx import helper

        self.helper = helper
        self.opset = opset
        self.nodes: list = []
        self.initializers: list[tuple[str, np.ndarray]] = []  # added to the model last
        self.taken: set[str] = set()
        self.producer: dict[str, object] = {}  # tensor -> the node that writes it

    def unique(self, name: str) -> str:
        candidate, k = name, 0
        while candidate in self.taken:
            k += 1
            candidate = f"{name}_{k}"
        self.taken.add(candidate)
        return candidate

    def initializer(self, name: str, value: np.ndarray) -> str:
        name = self.unique(name)
        self.initializers.append((name, np.asarray(value)))
        return name

    def floats(self, site: LayerSite, hint: str, value) -> str:
        """A float32 constant of the layer (a scalar, or an array)."""
        return self.initializer(f"/{site.name}/{hint}", np.asarray(value, np.float32))

    def ints(self, site: LayerSite, hint: str, values) -> str:
        """An int64 vector constant of the layer (axes, shapes, slice bounds)."""
        return self.initializer(f"/{site.name}/{hint}", np.asarray(values, np.int64))

    def op(self, site: LayerSite, op_type: str, inputs, **attrs) -> str:
        """Add one node of ``site``'s layer; returns its (first) output."""
        node_name = self.unique(f"/{site.name}/{op_type}")
        out = self.unique(f"{node_name}_output_0")
        node = self.helper.make_node(op_type, list(inputs), [out], name=node_name, **attrs)
        self.nodes.append(node)
        self.producer[out] = node
        return out

    def rename_output(self, tensor: str, name: str) -> str:
        """Give the layer's last output the layer's name (made unique if a weight has it)."""
        node = self.producer.pop(tensor)
        new = self.unique(name)
        node.output[0] = new
        self.producer[new] = node
        return new


def onnx_pads(pairs) -> list[int]:
    """ONNX's pads: every axis's 'before', then every axis's 'after'."""
    return [p[0] for p in pairs] + [p[1] for p in pairs]


# -- convolutions and dense -------------------------------------------------------------------

def conv_nodes(w: OnnxWriter, site: LayerSite) -> str:
    layer = site.layer
    pads = layer.resolved_padding(site.in_shape)
    weights = [site.params["weight"]] + ([site.params["bias"]] if "bias" in site.params else [])
    return w.op(site, "Conv", [site.x, *weights], kernel_shape=list(layer.kernel),
                strides=list(layer.stride), pads=onnx_pads(pads),
                dilations=list(layer.dilation), group=layer.groups)


def dense_nodes(w: OnnxWriter, site: LayerSite) -> str:
    weights = [site.params["weight"]] + ([site.params["bias"]] if "bias" in site.params else [])
    # the weight stays in PyTorch's (units, features) layout: Gemm transposes it
    return w.op(site, "Gemm", [site.x, *weights], transB=1)


def pad_with_zeros(w: OnnxWriter, site: LayerSite, x: str, pads) -> str:
    if not any(a or b for a, b in pads):
        return x
    return w.op(site, "Pad", [x, w.ints(site, "pads", onnx_pads(((0, 0), (0, 0), *pads)))])


def locally_connected_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """Every kernel offset's inputs sliced out (no arithmetic, so exact), gathered into
    (positions, N, C*kh*kw) patches, times each position's own (C*kh*kw, filters) weights."""
    layer = site.layer
    channels = site.in_shape[0]
    filters, out_h, out_w = site.shape
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    pads = resolve_padding(layer.padding, site.in_shape[1:], layer.kernel, layer.stride, (1, 1))
    x = pad_with_zeros(w, site, site.x, pads)
    axes, steps, unsqueeze = w.ints(site, "axes", [2, 3]), w.ints(site, "steps", [sh, sw]), \
        w.ints(site, "tap_axis", [2])
    taps = []
    for i in range(kh):
        for j in range(kw):
            ends = [i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1]
            tap = w.op(site, "Slice", [x, w.ints(site, "starts", [i, j]),
                                       w.ints(site, "ends", ends), axes, steps])
            taps.append(w.op(site, "Unsqueeze", [tap, unsqueeze]))
    patch_len, positions = channels * kh * kw, out_h * out_w
    patches = w.op(site, "Concat", taps, axis=2)                  # N, C, kh*kw, OH, OW
    patches = w.op(site, "Reshape", [patches, w.ints(site, "patch_shape",
                                                     [0, patch_len, positions])])
    patches = w.op(site, "Transpose", [patches], perm=[2, 0, 1])  # OH*OW, N, C*kh*kw
    weight = w.op(site, "Reshape", [site.params["weight"], w.ints(
        site, "weight_shape", [positions, filters, patch_len])])
    weight = w.op(site, "Transpose", [weight], perm=[0, 2, 1])   # OH*OW, C*kh*kw, F
    y = w.op(site, "MatMul", [patches, weight])                   # OH*OW, N, F
    y = w.op(site, "Transpose", [y], perm=[1, 2, 0])
    y = w.op(site, "Reshape", [y, w.ints(site, "out_shape", [0, filters, out_h, out_w])])
    if "bias" in site.params:
        y = w.op(site, "Add", [y, site.params["bias"]])
    return y


# -- pools ------------------------------------------------------------------------------------

def pool_attrs(site: LayerSite) -> dict:
    layer = site.layer
    pads = resolve_padding(layer.padding, site.in_shape[1:], layer.kernel, layer.stride,
                           (1,) * layer.ndim)
    return dict(kernel_shape=list(layer.kernel), strides=list(layer.stride),
                pads=onnx_pads(pads), ceil_mode=onnx_ceil_mode(site, pads))


def onnx_ceil_mode(site: LayerSite, pads) -> int:
    """ceil_mode as ONNX needs it: 1 only where it adds a window. ONNX's rule, as PyTorch's
    and cnnc's, then drops a last window that would start in the right padding, and ONNX
    Runtime follows it; onnx's shape inference (run by the checker) does not, so a layer whose
    ceil_mode adds a window along one axis and drops one along another is refused."""
    layer = site.layer
    counts = [(out_size(w, k, s, p), out_size(w, k, s, p, 1, layer.ceil_mode),
               -(-(w + sum(p) - k) // s) + 1)
              for w, k, s, p in zip(site.in_shape[1:], layer.kernel, layer.stride, pads)]
    if all(count == floor for floor, count, _ in counts):
        return 0
    if all(count == undropped for _, count, undropped in counts):
        return 1
    raise ExportError(f"layer '{site.name}' ({layer.type_name}): no exact ONNX mapping because "
                      "its ceil_mode adds a window along one axis and drops a window that would "
                      "start in the padding along another, which onnx's shape inference does "
                      "not count as ONNX Runtime does; change the padding or ceil_mode")


def maxpool_nodes(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "MaxPool", [site.x], **pool_attrs(site))


def avgpool_nodes(w: OnnxWriter, site: LayerSite) -> str:
    # ceil_mode's overhang is never counted, as in PyTorch; ONNX Runtime agrees
    return w.op(site, "AveragePool", [site.x], **pool_attrs(site),
                count_include_pad=int(site.layer.count_include_pad))


def has_overhang(layer, in_shape) -> bool:
    """Whether ceil_mode adds a window that reaches past the padded input."""
    sizes = in_shape[1:]
    pads = resolve_padding(layer.padding, sizes, layer.kernel, layer.stride, (1,) * layer.ndim)
    return tuple(layer.full_padding(sizes)) != tuple(pads)


def lppool_nodes(w: OnnxWriter, site: LayerSite) -> str:
    layer = site.layer
    attrs = pool_attrs(site)
    if float(layer.p).is_integer() and not has_overhang(layer, site.in_shape):
        attrs.pop("ceil_mode")  # no overhang: the same windows either way (and opset 17 has none)
        return w.op(site, "LpPool", [site.x], p=int(layer.p), **attrs)
    # ONNX's p is whole, and its LpPool leaves a ceil_mode overhang unscaled where cnnc, as
    # PyTorch, scales the window's mean back by the full window size (LpPoolBase.reference)
    powered = w.op(site, "Pow", [w.op(site, "Abs", [site.x]), w.floats(site, "p", layer.p)])
    mean = w.op(site, "AveragePool", [powered], count_include_pad=1, **attrs)
    total = w.op(site, "Mul", [mean, w.floats(site, "window", math.prod(layer.kernel))])
    return w.op(site, "Pow", [total, w.floats(site, "inverse_p", 1.0 / layer.p)])


def global_pool_nodes(w: OnnxWriter, site: LayerSite, op: str) -> str:
    return w.op(site, op, [site.x])


def reduce(w: OnnxWriter, site: LayerSite, op: str, x: str, axes, keepdims: int) -> str:
    """ReduceMean / ReduceMax over ``axes``: an attribute before opset 18, an input since."""
    if w.opset >= 18:
        return w.op(site, op, [x, w.ints(site, "axes", axes)], keepdims=keepdims)
    return w.op(site, op, [x], axes=list(axes), keepdims=keepdims)


def regular_window(bins) -> tuple[int, int] | None:
    """(kernel, stride) of a plain pool whose windows are exactly these adaptive bins."""
    widths = {end - start for start, end in bins}
    stride = bins[1][0] - bins[0][0] if len(bins) > 1 else bins[0][1]
    if len(widths) != 1 or any(start != i * stride for i, (start, _) in enumerate(bins)):
        return None
    return widths.pop(), stride


def adaptive_pool_nodes(w: OnnxWriter, site: LayerSite, pool: str, reduction: str) -> str:
    """PyTorch's bins: one plain pool where they are evenly spaced windows of one size (the
    output divides the input); otherwise each bin sliced and reduced, rows then columns (a bin
    is a rectangle), as the reference does."""
    bins = site.layer.bins(site.in_shape)
    windows = [regular_window(axis_bins) for axis_bins in bins]
    if all(windows):
        kernel, stride = zip(*windows)
        return w.op(site, pool, [site.x], kernel_shape=list(kernel), strides=list(stride))
    y = site.x
    for axis, axis_bins in zip((2, 3), bins):
        pieces = [reduce(w, site, reduction, slice_axis(w, site, y, axis, start, end), [axis], 1)
                  for start, end in axis_bins]
        y = w.op(site, "Concat", pieces, axis=axis)
    return y


def slice_axis(w: OnnxWriter, site: LayerSite, x: str, axis: int, start: int, end: int) -> str:
    return w.op(site, "Slice", [x, w.ints(site, "starts", [start]), w.ints(site, "ends", [end]),
                                w.ints(site, "axes", [axis])])


def stats_pool_nodes(w: OnnxWriter, site: LayerSite) -> str:
    mean = reduce(w, site, "ReduceMean", site.x, [2], 1)
    centred = w.op(site, "Sub", [site.x, mean])
    var = reduce(w, site, "ReduceMean", w.op(site, "Mul", [centred, centred]), [2], 0)
    std = w.op(site, "Sqrt", [w.op(site, "Add", [var, w.floats(site, "eps", site.layer.eps)])])
    return w.op(site, "Concat", [w.op(site, "Flatten", [mean], axis=1), std], axis=1)


def blurpool_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """A depthwise convolution by the fixed binomial filter, after reflection padding."""
    layer = site.layer
    channels, k = site.in_shape[0], layer.kernel
    x, conv_pads = site.x, layer.pads()
    if layer.pad_mode == "reflect" and k > 1:
        pads = w.ints(site, "pads", onnx_pads(((0, 0), (0, 0), *layer.pads())))
        x, conv_pads = w.op(site, "Pad", [x, pads], mode="reflect"), ((0, 0), (0, 0))
    kernel = np.broadcast_to(blur_filter(k).astype(np.float32), (channels, 1, k, k))
    return w.op(site, "Conv", [x, w.floats(site, "blur_filter", kernel)], kernel_shape=[k, k],
                strides=[layer.stride] * 2, pads=onnx_pads(conv_pads), group=channels)


# -- point-wise layers, softmax, dropout, identity ----------------------------------------------

def single_op(w: OnnxWriter, site: LayerSite, op: str, **attrs) -> str:
    return w.op(site, op, [site.x], **attrs)


def leaky_relu_nodes(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "LeakyRelu", [site.x], alpha=site.layer.alpha)


def prelu_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """The slope is kept as PyTorch's (num_parameters,) weight and reshaped here to broadcast
    over the channel axis."""
    slope = site.params["weight"]
    if site.layer.num_parameters > 1 and len(site.in_shape) > 1:
        shape = [site.layer.num_parameters] + [1] * (len(site.in_shape) - 1)
        slope = w.op(site, "Reshape", [slope, w.ints(site, "slope_shape", shape)])
    return w.op(site, "PRelu", [site.x, slope])


def relu6_nodes(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "Clip", [site.x, w.floats(site, "min", 0.0), w.floats(site, "max", 6.0)])


def hardsigmoid_nodes(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "HardSigmoid", [site.x], alpha=1 / 6, beta=0.5)


def hardswish_nodes(w: OnnxWriter, site: LayerSite) -> str:
    if w.opset >= 14:
        return w.op(site, "HardSwish", [site.x])
    gate = w.op(site, "HardSigmoid", [site.x], alpha=1 / 6, beta=0.5)
    return w.op(site, "Mul", [site.x, gate])


def silu_nodes(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "Mul", [site.x, w.op(site, "Sigmoid", [site.x])])


def mish_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """Mish is an operator from opset 18; before, x * tanh(softplus(x))."""
    if w.opset >= 18:
        return w.op(site, "Mish", [site.x])
    softplus = w.op(site, "Softplus", [site.x])
    return w.op(site, "Mul", [site.x, w.op(site, "Tanh", [softplus])])


def gelu_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """ONNX's Gelu from opset 20; before it, the formula, as PyTorch's exporter writes it."""
    approximate = site.layer.approximate
    if w.opset >= 20:
        return w.op(site, "Gelu", [site.x], approximate=approximate)
    x = site.x
    if approximate == "tanh":
        cube = w.op(site, "Mul", [w.op(site, "Mul", [x, x]), x])
        inner = w.op(site, "Add", [x, w.op(site, "Mul", [cube, w.floats(site, "cubic", 0.044715)])])
        inner = w.op(site, "Mul", [inner, w.floats(site, "sqrt_2_over_pi", math.sqrt(2 / math.pi))])
        curve = w.op(site, "Tanh", [inner])
    else:
        curve = w.op(site, "Erf", [w.op(site, "Div", [x, w.floats(site, "sqrt_2", math.sqrt(2))])])
    one_plus = w.op(site, "Add", [curve, w.floats(site, "one", 1.0)])
    return w.op(site, "Mul", [w.op(site, "Mul", [x, one_plus]), w.floats(site, "half", 0.5)])


def softmax_nodes(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "Softmax", [site.x], axis=site.layer.axis)


def dropout_nodes(w: OnnxWriter, site: LayerSite) -> str:
    # the identity at inference; written as Dropout so that the rate travels with the model
    return w.op(site, "Dropout", [site.x, w.floats(site, "ratio", site.layer.rate)])


# -- normalisation, reshapes, merges ------------------------------------------------------------

def batchnorm_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """Inference: normalised by the running statistics. ONNX's momentum weighs the running
    value, PyTorch's (cnnc's) the batch's."""
    p = site.params
    return w.op(site, "BatchNormalization",
                [site.x, p["weight"], p["bias"], p["running_mean"], p["running_var"]],
                epsilon=site.layer.eps, momentum=1.0 - site.layer.momentum)


def lrn_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """ONNX's LRN (with cnnc's alpha / size convention) for an odd size over (C, H, W). ONNX's
    window of an even size reaches one channel further after a channel than before it, cnnc's
    (as PyTorch's) one further before, and ONNX Runtime's LRN takes neither an even size nor
    3-D input: those are written out, the window's sum of squares as a 1-norm pool."""
    layer = site.layer
    if layer.size % 2 and len(site.in_shape) == 3:
        return w.op(site, "LRN", [site.x], size=layer.size, alpha=layer.alpha, beta=layer.beta,
                    bias=layer.k)
    spatial = len(site.in_shape) - 1
    axis = w.ints(site, "channel_axis", [1])
    squares = w.op(site, "Unsqueeze", [w.op(site, "Mul", [site.x, site.x]), axis])
    sums = w.op(site, "LpPool", [squares], p=1, kernel_shape=[layer.size] + [1] * spatial,
                pads=[layer.size // 2] + [0] * spatial + [(layer.size - 1) // 2] + [0] * spatial)
    sums = w.op(site, "Squeeze", [sums, axis])
    scaled = w.op(site, "Mul", [sums, w.floats(site, "alpha_over_size", layer.alpha / layer.size)])
    base = w.op(site, "Add", [scaled, w.floats(site, "k", layer.k)])
    return w.op(site, "Div", [site.x, w.op(site, "Pow", [base, w.floats(site, "beta", layer.beta)])])


def flatten_nodes(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "Flatten", [site.x], axis=1)  # C, H, W order, as torch.flatten(x, 1)


def add_nodes(w: OnnxWriter, site: LayerSite) -> str:
    # Sum adds its inputs left to right, as the reference does
    return w.op(site, "Add" if len(site.inputs) == 2 else "Sum", list(site.inputs))


def concat_nodes(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "Concat", list(site.inputs), axis=site.layer.axis)


def upsample_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """Resize in nearest mode: with asymmetric coordinates and floor rounding, output i reads
    input floor(i / scale), exactly (PyTorch's exporter writes nn.Upsample so)."""
    scales = w.floats(site, "scales", [1.0, 1.0, *site.layer.scale])
    return w.op(site, "Resize", [site.x, "", scales], mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")



def slice_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """Slice on one axis, with the bounds resolved against the input's size (ONNX clips them
    the same way, but written resolved the node reads plainly in Netron)."""
    layer = site.layer
    axis = layer.sample_axis(len(site.in_shape))
    taken = layer.positions(site.in_shape[axis])
    end = taken.start + len(taken) * taken.step  # past the last position taken
    return w.op(site, "Slice", [site.x, w.ints(site, "starts", [taken.start]),
                                w.ints(site, "ends", [end]), w.ints(site, "axes", [axis + 1]),
                                w.ints(site, "steps", [taken.step])])

# -- region-of-interest pooling --------------------------------------------------------------

def valid_boxes(w: OnnxWriter, site: LayerSite) -> tuple[str, str]:
    """(each box's batch index, truncated toward zero and 0 where it names no image of the
    batch, as (R, 1) floats; whether it names one, (R, 1)). A box outside the batch pools
    zeros in cnnc, where ONNX Runtime would read outside its input."""
    features, rois = site.inputs
    first = w.op(site, "Slice", [rois, w.ints(site, "starts", [0]), w.ints(site, "ends", [1]),
                                 w.ints(site, "axes", [1])])
    zero = w.floats(site, "zero", 0.0)
    whole = w.op(site, "Where", [w.op(site, "Less", [first, zero]), w.op(site, "Ceil", [first]),
                                 w.op(site, "Floor", [first])])
    batch = w.op(site, "Gather", [w.op(site, "Shape", [features]), w.ints(site, "batch_axis", [0])])
    batch = w.op(site, "Cast", [batch], to=1)  # FLOAT
    valid = w.op(site, "And", [w.op(site, "GreaterOrEqual", [whole, zero]),
                               w.op(site, "Less", [whole, batch])])
    return w.op(site, "Where", [valid, whole, zero]), valid


def zero_invalid(w: OnnxWriter, site: LayerSite, pooled: str, valid: str) -> str:
    mask = w.op(site, "Reshape", [valid, w.ints(site, "mask_shape", [-1, 1, 1, 1])])
    return w.op(site, "Where", [mask, pooled, w.floats(site, "zero", 0.0)])


def box_corners(w: OnnxWriter, site: LayerSite) -> str:
    return w.op(site, "Slice", [site.inputs[1], w.ints(site, "starts", [1]),
                                w.ints(site, "ends", [5]), w.ints(site, "axes", [1])])


def roi_pool_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """ONNX's MaxRoiPool (torchvision's rounding and empty bins, as ONNX Runtime computes)."""
    index, valid = valid_boxes(w, site)
    rois = w.op(site, "Concat", [index, box_corners(w, site)], axis=1)
    pooled = w.op(site, "MaxRoiPool", [site.x, rois], pooled_shape=list(site.layer.output_size),
                  spatial_scale=site.layer.spatial_scale)
    return zero_invalid(w, site, pooled, valid)


def roi_align_nodes(w: OnnxWriter, site: LayerSite) -> str:
    """ONNX's RoiAlign: aligned is the half_pixel coordinate mode (from opset 16), not aligned
    output_half_pixel; a sampling ratio of 0 or less is adaptive."""
    layer = site.layer
    if layer.aligned and w.opset < 16:
        no_exact_mapping(f"aligned: true is RoiAlign's half_pixel mode, from opset 16 (this "
                         f"export writes opset {w.opset})")(w, site)
    mode = {"coordinate_transformation_mode": "half_pixel" if layer.aligned else
            "output_half_pixel"} if w.opset >= 16 else {}
    index, valid = valid_boxes(w, site)
    batch = w.op(site, "Cast", [w.op(site, "Reshape", [index, w.ints(site, "flat", [-1])])],
                 to=7)  # INT64
    pooled = w.op(site, "RoiAlign", [site.x, box_corners(w, site), batch], mode="avg",
                  output_height=layer.output_size[0], output_width=layer.output_size[1],
                  spatial_scale=layer.spatial_scale,
                  sampling_ratio=max(layer.sampling_ratio, 0), **mode)
    return zero_invalid(w, site, pooled, valid)


def no_exact_mapping(reason: str):
    """The entry of a layer type that ONNX cannot compute exactly: refuses, saying why."""

    def refuse(w: OnnxWriter, site: LayerSite) -> str:
        raise ExportError(f"layer '{site.name}' ({site.layer.type_name}): no exact ONNX mapping "
                          f"because {reason}")

    return refuse


ONNX_EXPORT = {
    ConvBase: conv_nodes,
    Dense: dense_nodes,
    LocallyConnected2d: locally_connected_nodes,
    MaxPoolBase: maxpool_nodes,
    AvgPoolBase: avgpool_nodes,
    LpPoolBase: lppool_nodes,
    GlobalAvgPool: partial(global_pool_nodes, op="GlobalAveragePool"),
    GlobalMaxPool: partial(global_pool_nodes, op="GlobalMaxPool"),
    AdaptiveAvgPool2d: partial(adaptive_pool_nodes, pool="AveragePool", reduction="ReduceMean"),
    AdaptiveMaxPool2d: partial(adaptive_pool_nodes, pool="MaxPool", reduction="ReduceMax"),
    StatsPool: stats_pool_nodes,
    BlurPool2d: blurpool_nodes,
    ReLU: partial(single_op, op="Relu"),
    LeakyReLU: leaky_relu_nodes,
    PReLU: prelu_nodes,
    ReLU6: relu6_nodes,
    Hardsigmoid: hardsigmoid_nodes,
    Hardswish: hardswish_nodes,
    Sigmoid: partial(single_op, op="Sigmoid"),
    Tanh: partial(single_op, op="Tanh"),
    SiLU: silu_nodes,
    Mish: mish_nodes,
    GELU: gelu_nodes,
    Softmax: softmax_nodes,
    Dropout: dropout_nodes,
    Identity: partial(single_op, op="Identity"),
    BatchNorm: batchnorm_nodes,
    LRN: lrn_nodes,
    Flatten: flatten_nodes,
    Add: add_nodes,
    Concat: concat_nodes,
    Upsample: upsample_nodes,
    Slice: slice_nodes,
    RoIPool: roi_pool_nodes,
    RoIAlign: roi_align_nodes,
}


def find_export(cls: type):
    """The export function of ``cls`` or of its nearest base that has one; None if none."""
    for klass in cls.__mro__:
        if klass in ONNX_EXPORT:
            return ONNX_EXPORT[klass]
    return None


def export_for(site: LayerSite):
    found = find_export(type(site.layer))
    if found is None:
        raise ExportError(f"layer '{site.name}' ({site.layer.type_name}): no ONNX mapping for "
                          "this layer type; export the spec's graph as cnnc.check gives it "
                          "(an optimised graph's fused layers have none), or declare one in "
                          "cnncompiler.interop.onnx_export.ONNX_EXPORT")
    return found


# -- the model ----------------------------------------------------------------------------------

def model_inputs(graph) -> list[str]:
    """The model's inputs, in order: the one ``input`` of an ``input:`` spec, or each of the
    graph's ``inputs``; each is an input of the ONNX model of the same name."""
    return list(graph.graph.get("inputs") or ["input"])


def check_opset(opset) -> int:
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(f"ONNX opset {opset!r} is not supported; expected an integer from "
                          f"{MIN_OPSET} to {newest} (this onnx package's newest); the default "
                          f"is {DEFAULT_OPSET}")
    return opset


def checked_params(graph, params) -> dict[str, np.ndarray]:
    """Every weight the spec needs, by name and shape, as float32."""
    from ..runtime.weights import validate_weights

    return validate_weights(graph, params, {}, strict=True, copy=False)  # read, never kept


def value_info(helper, graph, name: str, tensor: str) -> object:
    from onnx import TensorProto

    shape = [leading_axis(graph, name), *layer_node(graph, name).shape]
    return helper.make_tensor_value_info(tensor, TensorProto.FLOAT, shape)


def layer_site(graph, name: str, tensors: dict, params: dict, w: OnnxWriter) -> LayerSite:
    node = layer_node(graph, name)
    local = {key: w.initializer(glob, params[glob]) for key, glob in param_names(graph, name).items()}
    return LayerSite(name, node.layer, tuple(tensors[src] for src in node.inputs),
                     tuple(tuple(layer_node(graph, src).shape) for src in node.inputs),
                     tuple(node.shape), local)


def add_initializer(body, name: str, value: np.ndarray) -> None:
    """Written straight into the model: onnx's helpers copy every weight two or three times
    more (seconds for VGG's 0.5 GB)."""
    from onnx import TensorProto

    tensor = body.initializer.add()
    tensor.name = name
    tensor.data_type = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64}[value.dtype.type]
    tensor.dims.extend(value.shape)
    tensor.raw_data = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()


def check_size(params: dict) -> None:
    nbytes = sum(a.nbytes for a in params.values())
    if nbytes > MAX_MODEL_BYTES:
        raise ExportError(f"the weights take {nbytes / 2**30:.1f} GiB; an ONNX file (one protobuf "
                          "message) holds under 2 GiB")


def onnx_model_bytes(graph, params, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialised ONNX model of the checked, unoptimised ``graph`` with ``params``
    (PyTorch names), passed by onnx's full checker (shape inference included)."""
    import onnx

    opset = check_opset(opset)
    params = checked_params(graph, params)
    check_size(params)
    w = OnnxWriter(opset)
    inputs = model_inputs(graph)
    tensors = {name: w.unique(name) for name in inputs}
    for name in topo_layers(graph):
        if name in tensors:
            continue
        site = layer_site(graph, name, tensors, params, w)
        tensors[name] = w.rename_output(export_for(site)(w, site), name)
    outputs = [value_info(w.helper, graph, o, tensors[o]) for o in graph.graph["outputs"]]
    body = w.helper.make_graph(w.nodes, graph.graph["name"],
                               [value_info(w.helper, graph, n, tensors[n]) for n in inputs],
                               outputs)
    opsets = [w.helper.make_opsetid("", opset)]
    model = w.helper.make_model(body, opset_imports=opsets, producer_name="cnnc",
                                producer_version=__version__,
                                ir_version=w.helper.find_min_ir_version_for(opsets))
    for name, value in w.initializers:
        add_initializer(model.graph, name, value)
    data = model.SerializeToString()  # once: VGG-16's 0.55 GB take a second a copy
    onnx.checker.check_model(data, full_check=True)
    return data


def export_onnx(graph, params, path, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``graph`` (from ``cnncompiler.check``) with ``params`` as an ONNX model at
    ``path``, atomically; returns the path."""
    data = onnx_model_bytes(graph, params, opset)
    path = Path(path)
    write_atomic(path, data)
    return path


__all__ = ["DEFAULT_OPSET", "ONNX_EXPORT", "ExportError", "LayerSite", "export_onnx",
           "find_export", "no_exact_mapping", "onnx_model_bytes"]

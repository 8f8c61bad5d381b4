"""An ONNX model as a cnnc spec and its weights (PyTorch names and layouts).

    spec_text, params = import_onnx("resnet18.onnx")

The model's shapes are inferred first (onnx's shape inference). Then the operators cnnc can
express become layers, one entry per operator type in ``ONNX_IMPORT``; what PyTorch's exporter
writes as several operators is first rewritten into the one it stands for (x * sigmoid(x) is
Swish, the error-function formula is Gelu, MatMul and a constant Add are Gemm), and a Split
into a Slice per output; nodes whose inputs are all constants are evaluated (weight-sharing
Identity nodes, reshaped slopes). Any other operator that the outputs depend on is refused
with the node's name, its operator and the model's opset: nothing is dropped.

Layer names come from the node names, which PyTorch's exporter makes from the module paths:
``/layer1/layer1.0/conv1/Conv`` is ``layer1.0.conv1``; a node of a module that holds other
modules, or one of several in a module, adds its operator: ``layer1.0.add``, ``relu_1``. The
weights are then ``layer1.0.conv1.weight``, as in the network's ``state_dict``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import CnncError
from ..spec.parse import MAX_NAME, name_problem, safe_name
from .spec_writer import ImportedLayer, ModelImportError, write_spec

DEFAULT_DOMAINS = ("", "ai.onnx")
NOT_CONSTANT = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                "Bernoulli", "Multinomial")  # a node that draws is never evaluated once
SQRT_2 = math.sqrt(2)


# -- the model as the rules read it ------------------------------------------------------------------

class OnnxGraph:
    """The model's nodes, constants and inferred tensor types, and who reads each tensor."""

    def __init__(self, model, source: str):
        from onnx import numpy_helper

        self.source = source
        self.opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS),
                          1)
        graph = model.graph
        self.nodes = list(graph.node)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.types = {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)}
        self.outputs = [o.name for o in graph.output]
        self.inputs = [i for i in graph.input if i.name not in self.constants]
        self.readers: dict[str, list] = {}
        self.producers: dict[str, object] = {}
        self.index()

    def index(self) -> None:
        """Who reads and who writes each tensor, after the nodes changed."""
        self.readers, self.producers = defaultdict(list), {}
        for node in self.nodes:
            for tensor in node.input:
                self.readers[tensor].append(node)
            for tensor in node.output:
                self.producers[tensor] = node

    def shape(self, tensor: str) -> tuple | None:
        """The inferred shape, batch axis first (None for a dimension not known), or None."""
        kind = self.types.get(tensor)
        if kind is None or not kind.tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None
                     for d in kind.tensor_type.shape.dim)

    def sole_reader(self, tensor: str, op_type: str | None = None):
        """The one node that reads ``tensor`` (not a graph output), of ``op_type`` if given."""
        readers = self.readers.get(tensor, [])
        if len(readers) != 1 or tensor in self.outputs:
            return None
        return readers[0] if op_type is None or readers[0].op_type == op_type else None

    def scalar(self, tensor: str) -> float | None:
        """The number a constant tensor of one element holds, else None."""
        value = self.constants.get(tensor)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def short_float(value) -> float:
    """The shortest decimal that is the same float32: what a model's writer meant by it."""
    return float(str(np.float32(value)))


def node_name(node) -> str:
    return node.name or f"{node.op_type} -> {node.output[0] if node.output else '?'}"


# -- what one node says -----------------------------------------------------------------------------

@dataclass
class LayerDraft:
    """A layer a rule makes of a node: type, keys, weights, and the activations it reads."""

    type_name: str
    keys: dict
    params: dict = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)


class NodeReader:
    """One node as its rule reads it: attributes, constant inputs, activations, shapes."""

    def __init__(self, graph: OnnxGraph, node, activations: set[str]):
        from onnx import helper

        self.graph, self.node, self.activations = graph, node, activations
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def refuse(self, reason: str) -> ModelImportError:
        """The error for this node: its name, operator (and the pattern it stands for) and
        the model's opset, then ``reason``."""
        op = ", ".join(filter(None, (self.node.op_type, self.node.doc_string)))
        return ModelImportError(f"{self.graph.source}: node '{node_name(self.node)}' ({op}, "
                                f"opset {self.graph.opset}): {reason}")

    def attr(self, name: str, default=None):
        """An attribute's value; a float as the shortest decimal of its float32 (0.01, not
        0.009999999776), which is what the model's writer meant."""
        value = self.attrs.get(name, default)
        if isinstance(value, bytes):
            return value.decode()
        return short_float(value) if isinstance(value, float) else value

    def has_input(self, i: int) -> bool:
        return len(self.node.input) > i and self.node.input[i] != ""

    def data(self, i: int = 0) -> str:
        tensor = self.node.input[i]
        if tensor not in self.activations:
            what = "a constant" if tensor in self.graph.constants else \
                "not computed from the model's input"
            raise self.refuse(f"input {i} ('{tensor}') is {what}; cnnc's layer reads the "
                              "network's activations there")
        return tensor

    def constant(self, i: int, what: str) -> np.ndarray:
        tensor = self.node.input[i] if self.has_input(i) else None
        if tensor not in self.graph.constants:
            raise self.refuse(f"its {what} (input {i}) is computed while the model runs; cnnc "
                              "needs it as a constant (an initializer)")
        return self.graph.constants[tensor]

    def optional_constant(self, i: int, what: str) -> np.ndarray | None:
        return self.constant(i, what) if self.has_input(i) else None

    def scalar(self, i: int, what: str, default: float) -> float:
        """A constant input holding one number (``default`` where the input is left out)."""
        if not self.has_input(i):
            return default
        value = self.constant(i, what)
        if value.size != 1:
            raise self.refuse(f"its {what} (input {i}) has shape {value.shape}; cnnc reads one "
                              "number there")
        return short_float(value.reshape(-1)[0])

    def sample_shape(self, tensor: str | None = None) -> tuple[int, ...]:
        """A tensor's shape without the batch axis (default: the first input's)."""
        tensor = tensor or self.node.input[0]
        shape = self.graph.shape(tensor)
        if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
            raise self.refuse(f"the shape of '{tensor}' is not known after shape inference "
                              f"({shape}); cnnc needs every size but the batch's")
        return tuple(shape[1:])

    def only_first_output_used(self) -> None:
        for extra in self.node.output[1:]:
            if extra and (self.graph.readers.get(extra) or extra in self.graph.outputs):
                raise self.refuse(f"its output '{extra}' is used; cnnc's layer gives only the "
                                  "first output")

    def layer(self, type_name: str, keys: dict, params=None, inputs=None) -> LayerDraft:
        return LayerDraft(type_name, keys, dict(params or {}), inputs or [self.data(0)])


# -- helpers of the rules -----------------------------------------------------------------------------

def compact(values) -> object:
    """A per-axis tuple as a spec writes it: one int when every axis has it."""
    values = [int(v) for v in values]
    return values[0] if len(set(values)) == 1 else values


def compact_pads(pairs) -> object:
    """(before, after) per axis as a spec writes padding: an int, a list, or pairs."""
    if all(b == a for b, a in pairs):
        return compact([b for b, _ in pairs])
    return [[int(b), int(a)] for b, a in pairs]


def explicit_pads(reader: NodeReader, kernel, strides, dilations) -> list[tuple[int, int]]:
    """ONNX's pads (every axis's start, then every end) or auto_pad as (before, after) pairs."""
    n = len(kernel)
    auto = reader.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(reader.attr("pads", [0] * 2 * n))
        return list(zip(pads[:n], pads[n:]))
    if auto == "VALID":
        return [(0, 0)] * n
    sizes = reader.sample_shape()[1:]
    pairs = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pairs.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return pairs


def spatial_rank(reader: NodeReader, what: str) -> int:
    rank = len(reader.sample_shape()) - 1
    if rank not in (1, 2):
        raise reader.refuse(f"a {what} over {rank} spatial axes; cnnc's take 1 (C, T) or "
                            "2 (C, H, W)")
    return rank


def window_keys(reader: NodeReader, kernel) -> dict:
    """kernel, stride and padding of a convolution or pool."""
    n = len(kernel)
    strides = list(reader.attr("strides", [1] * n))
    dilations = list(reader.attr("dilations", [1] * n))
    pads = explicit_pads(reader, kernel, strides, dilations)
    return {"kernel": compact(kernel), "stride": compact(strides), "padding": compact_pads(pads),
            "dilation": compact(dilations)}


# -- the rules: one per operator type ------------------------------------------------------------------

def conv_layer(r: NodeReader) -> LayerDraft:
    weight = r.constant(1, "weight")
    bias = r.optional_constant(2, "bias")
    rank = spatial_rank(r, "convolution")
    keys = {"filters": int(weight.shape[0]), **window_keys(r, weight.shape[2:]),
            "groups": int(r.attr("group", 1)), "bias": bias is not None}
    params = {"weight": weight} | ({"bias": bias} if bias is not None else {})
    return r.layer(f"conv{rank}d", keys, params)


def gemm_layer(r: NodeReader) -> LayerDraft:
    """Gemm, and MatMul (with a constant Add) rewritten as one: a dense layer."""
    x = r.data(0)
    if len(r.sample_shape(x)) != 1 or r.attr("transA", 0):
        raise r.refuse("its input is not a batch of vectors (N, F); cnnc's dense takes one "
                       "(put a Flatten before it)")
    b = r.constant(1, "weight")
    weight = (b if r.attr("transB", 0) else b.T) * np.float32(r.attr("alpha", 1.0))
    units = weight.shape[0]
    params = {"weight": weight}
    c = r.optional_constant(2, "bias")
    if c is not None:
        if c.size not in (1, units) or (c.ndim == 2 and c.shape[0] != 1):
            raise r.refuse(f"its bias has shape {c.shape}; cnnc's dense adds one per unit "
                           f"({units},)")
        params["bias"] = np.broadcast_to(c.reshape(-1), (units,)) * np.float32(r.attr("beta", 1.0))
    return r.layer("dense", {"units": int(units), "bias": c is not None}, params, [x])


def pool_layer(r: NodeReader, kind: str) -> LayerDraft:
    r.only_first_output_used()
    rank = spatial_rank(r, "pool")
    kernel = list(r.attr("kernel_shape"))
    keys = window_keys(r, kernel)
    if keys.pop("dilation") != 1:
        raise r.refuse("a dilated pool; cnnc's pools take no dilation")
    keys["ceil_mode"] = bool(r.attr("ceil_mode", 0))
    if kind == "avg":  # without padding it counts nothing: leave cnnc's default
        keys["count_include_pad"] = bool(r.attr("count_include_pad", 0)) or keys["padding"] == 0
    if kind == "lp":
        keys = {"p": float(r.attr("p", 2)), **keys}
        if keys["ceil_mode"] and lp_overhang(r, kernel, keys):
            raise r.refuse("ceil_mode adds a window past the padded input, which ONNX's LpPool "
                           "leaves unscaled and cnnc's (as PyTorch's) scales to the whole window")
    return r.layer(f"{kind}pool{rank}d", keys)


def lp_overhang(r: NodeReader, kernel, keys) -> bool:
    from ..layers import LAYER_TYPES
    from ..layers.fields import parse_fields

    cls = LAYER_TYPES[f"lppool{len(kernel)}d"]
    layer = cls(**parse_fields(cls, keys)[0])
    sizes = r.sample_shape()[1:]
    return tuple(layer.full_padding(sizes)) != tuple(tuple(p) for p in layer.padding)


def global_pool_layer(r: NodeReader, type_name: str) -> LayerDraft:
    spatial_rank(r, "global pool")
    return plain_layer(r, type_name)


def reduce_layers(r: NodeReader, type_name: str) -> list[LayerDraft]:
    """ReduceMean / ReduceMax over every spatial axis (x.mean((2, 3))): a global pool, and a
    flatten where the spatial axes are dropped."""
    rank = len(r.sample_shape()) + 1
    axes = r.attr("axes") if r.graph.opset < 18 else (
        r.optional_constant(1, "axes") if r.has_input(1) else None)
    if axes is None or sorted(int(a) % rank for a in np.ravel(axes)) != list(range(2, rank)) \
            or rank not in (3, 4):
        raise r.refuse(f"reduces over axes {None if axes is None else list(np.ravel(axes))}; "
                       "cnnc's global pools reduce every spatial axis of (N, C, T) or "
                       "(N, C, H, W)")
    pool = r.layer(type_name, {})
    return [pool] if r.attr("keepdims", 1) else [pool, LayerDraft("flatten", {})]


def batchnorm_layer(r: NodeReader) -> LayerDraft:
    if r.attr("training_mode", 0):
        raise r.refuse("training_mode is set; cnnc reads a batch norm for inference, "
                       "normalised by its running statistics")
    r.only_first_output_used()
    names = ("weight", "bias", "running_mean", "running_var")
    params = {name: r.constant(i + 1, name.replace("_", " ")) for i, name in enumerate(names)}
    return r.layer("batchnorm", {"eps": float(r.attr("epsilon", 1e-5)),
                                 "momentum": complement(r.attr("momentum", 0.9))}, params)


def complement(onnx_momentum: float) -> float:
    """PyTorch's momentum from ONNX's (which weighs the running value, not the batch's): the
    shortest decimal d with float32(1 - d) == ONNX's, so 0.9 gives 0.1."""
    held = np.float32(onnx_momentum)
    for digits in range(1, 10):
        candidate = round(1.0 - float(held), digits)
        if np.float32(1.0 - candidate) == held:
            return min(max(candidate, 0.0), 1.0)
    return min(max(1.0 - float(held), 0.0), 1.0)


def clip_layer(r: NodeReader) -> LayerDraft:
    if r.graph.opset < 11:
        low, high = r.attr("min", -np.inf), r.attr("max", np.inf)
    else:
        low, high = r.scalar(1, "min", -np.inf), r.scalar(2, "max", np.inf)
    if low == 0 and high == 6:
        return r.layer("relu6", {})
    if low == 0 and high == np.inf:
        return r.layer("relu", {})
    raise r.refuse(f"Clip(min={low}, max={high}); cnnc expresses Clip(0, 6) (relu6) and "
                   "Clip(0, inf) (relu)")


def leaky_relu_layer(r: NodeReader) -> LayerDraft:
    alpha = r.attr("alpha", 0.01)
    if alpha < 0:
        raise r.refuse(f"alpha is {alpha}; cnnc's leaky_relu takes alpha >= 0")
    return r.layer("leaky_relu", {"alpha": alpha})


def prelu_layer(r: NodeReader) -> LayerDraft:
    slope = r.constant(1, "slope")
    shape = r.sample_shape()
    channels = shape[0]
    full = (1,) * (len(shape) + 1 - slope.ndim) + slope.shape
    if slope.size == 1:
        count = 1
    elif slope.size == channels and full[1] == channels:
        count = channels
    else:
        raise r.refuse(f"its slope has shape {slope.shape}; cnnc's prelu has one slope, or one "
                       f"per channel ({channels}, 1, ...)")
    return r.layer("prelu", {"num_parameters": count}, {"weight": slope.reshape(count)})


def hardsigmoid_layer(r: NodeReader) -> LayerDraft:
    alpha, beta = float(r.attr("alpha", 0.2)), float(r.attr("beta", 0.5))
    if abs(alpha - 1 / 6) > 1e-6 or beta != 0.5:
        raise r.refuse(f"HardSigmoid(alpha={alpha:g}, beta={beta:g}); cnnc's hardsigmoid is "
                       "PyTorch's, alpha 1/6 and beta 0.5")
    return r.layer("hardsigmoid", {})


def swish_layer(r: NodeReader) -> LayerDraft:
    if r.attr("alpha", 1.0) != 1.0:
        raise r.refuse(f"Swish with alpha {r.attr('alpha')}; cnnc's silu is x * sigmoid(x)")
    return r.layer("silu", {})


def gelu_layer(r: NodeReader) -> LayerDraft:
    return r.layer("gelu", {"approximate": r.attr("approximate", "none")})


def softmax_layer(r: NodeReader) -> LayerDraft:
    shape = r.sample_shape()
    rank = len(shape) + 1
    axis = int(r.attr("axis", 1 if r.graph.opset < 13 else -1))
    if axis % rank == 0:
        raise r.refuse("a softmax over the batch axis; cnnc's softmax is over a sample's axis")
    # before opset 13 Softmax normalised over every axis from ``axis`` on
    if r.graph.opset < 13 and any(d != 1 for d in shape[axis % rank:]):
        raise r.refuse(f"a softmax over axes {axis % rank} to {rank - 1} together (opset "
                       "< 13); cnnc's softmax is over one axis")
    return r.layer("softmax", {"axis": axis})


def resize_layer(r: NodeReader) -> LayerDraft:
    """Resize of a (N, C, H, W) map to integer multiples of its height and width, nearest mode:
    cnnc's upsample, where output i reads input floor(i / s). That holds for asymmetric
    coordinates with floor rounding, and for half-pixel coordinates rounded to the nearest
    (they land within 0.5 - 0.5 / s of the input they belong to)."""
    mode = r.attr("mode", "nearest")
    coords = r.attr("coordinate_transformation_mode", "half_pixel" if r.graph.opset >= 11
                    else "asymmetric")
    rounding = r.attr("nearest_mode", "round_prefer_floor")
    exact = (coords == "asymmetric" and rounding == "floor") or (
        coords in ("half_pixel", "pytorch_half_pixel") and rounding.startswith("round_"))
    if mode != "nearest" or not exact or r.attr("axes") is not None:
        raise r.refuse(f"Resize in {mode} mode with {coords} coordinates and {rounding} "
                       "rounding; cnnc's upsample is nearest-neighbour by integer factors, "
                       "output i reading input floor(i / scale)")
    shape, out = r.sample_shape(), r.sample_shape(r.node.output[0])
    if len(shape) != 3 or out[0] != shape[0] or any(o % i for o, i in zip(out[1:], shape[1:])):
        raise r.refuse(f"resizes {shape} to {out}; cnnc's upsample multiplies the height and "
                       "width of a (C, H, W) map by integers")
    return r.layer("upsample", {"scale": compact([o // i for o, i in zip(out[1:], shape[1:])])})


def lrn_layer(r: NodeReader) -> LayerDraft:
    size = int(r.attr("size"))
    if size % 2 == 0:
        raise r.refuse(f"size {size} is even: ONNX's window reaches one channel further after a "
                       "channel than before it, cnnc's (as PyTorch's) one further before")
    return r.layer("lrn", {"size": size, "alpha": float(r.attr("alpha", 1e-4)),
                           "beta": float(r.attr("beta", 0.75)), "k": float(r.attr("bias", 1.0))})


def concat_layer(r: NodeReader) -> LayerDraft:
    axis = int(r.attr("axis"))
    if axis % (len(r.sample_shape()) + 1) == 0:
        raise r.refuse("a concatenation along the batch axis; cnnc's concat joins a sample's axes")
    inputs = [r.data(i) for i in range(len(r.node.input))]
    return r.layer("concat", {"axis": axis}, inputs=inputs)


def add_layer(r: NodeReader) -> LayerDraft:
    inputs = [r.data(i) for i in range(len(r.node.input))]
    shapes = {r.graph.shape(x) for x in inputs}
    if len(shapes) != 1:
        raise r.refuse(f"its inputs have shapes {sorted(map(str, shapes))}; cnnc's add sums "
                       "inputs of one shape (no broadcasting)")
    return r.layer("add", {}, inputs=inputs)


def flatten_layer(r: NodeReader) -> LayerDraft:
    rank = len(r.sample_shape()) + 1
    if int(r.attr("axis", 1)) % rank != 1:
        raise r.refuse(f"Flatten(axis={r.attr('axis')}) merges the batch with other axes or "
                       "keeps several; cnnc's flatten gives (N, C*H*W)")
    return r.layer("flatten", {})


def reshape_layer(r: NodeReader) -> LayerDraft:
    """A reshape of each sample to a vector (x.view(x.size(0), -1)): a flatten."""
    features = math.prod(r.sample_shape())
    out = r.graph.shape(r.node.output[0])
    if out is None and r.node.input[1] in r.graph.constants:
        out = tuple(int(d) for d in r.graph.constants[r.node.input[1]])
        out = (None, features) if len(out) == 2 and out[1] in (-1, features) else out
    if out is None or len(out) != 2 or out[1] != features:
        raise r.refuse(f"reshapes each sample to {out and out[1:]}; cnnc reads a reshape "
                       f"only to a vector of the sample's {features} values (a flatten)")
    return r.layer("flatten", {})


reshape_layer.unread_inputs = (1,)  # the target shape: the inferred output shape says it

def slice_bounds(r: NodeReader) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, as written (inputs from opset 10, attributes
    before it); axes default to 0, 1, ... and steps to 1."""
    if r.graph.opset < 10:
        starts, ends = r.attr("starts"), r.attr("ends")
        axes, steps = r.attr("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = r.constant(1, "starts"), r.constant(2, "ends")
        axes = r.optional_constant(3, "axes")
        axes = range(len(starts)) if axes is None else axes
        steps = r.optional_constant(4, "steps")
        steps = [1] * len(starts) if steps is None else steps
    return [tuple(int(v) for v in b) for b in zip(axes, np.ravel(starts), np.ravel(ends),
                                                    np.ravel(steps))]


def slice_layers(r: NodeReader) -> list[LayerDraft]:
    """Slice: one cnnc slice per axis it cuts (x[:, 2:10, ::2] is two), the bounds resolved
    against the input's size as ONNX clips them; an axis taken whole needs none."""
    shape = r.sample_shape()
    rank = len(shape) + 1
    drafts = []
    for axis, start, end, step in slice_bounds(r):
        axis %= rank
        size = shape[axis - 1] if axis else None
        if step < 1:
            raise r.refuse(f"a slice with step {step}; cnnc's slice steps forward (step >= 1)")
        if axis == 0:
            if (start, step) != (0, 1) or end < 2 ** 31 - 1:
                raise r.refuse("a slice of the batch axis; cnnc's slice cuts a sample's axes")
            continue
        taken = range(*slice(start, end, step).indices(size))
        if not taken:
            raise r.refuse(f"takes nothing from axis {axis} of size {size} (starts {start}, "
                           f"ends {end}, steps {step})")
        if len(taken) == size:
            continue
        stop = taken[-1] + 1
        named = ("channels", "rows", "cols")[axis - 1] if len(shape) == 3 else axis
        keys = {"axis": named, "start": taken.start, "stop": stop if stop < size else None,
                "step": step}
        drafts.append(LayerDraft("slice", keys, inputs=[] if drafts else [r.data(0)]))
    return drafts or [r.layer("identity", {})]



def dropout_layer(r: NodeReader) -> LayerDraft:
    r.only_first_output_used()
    if r.graph.opset < 12:
        rate = float(r.attr("ratio", 0.5))
    else:
        rate = r.scalar(1, "ratio", 0.5)
        if r.scalar(2, "training_mode", 0.0):
            raise r.refuse("training_mode is true; cnnc reads the network for inference")
    if not 0 <= rate < 1:
        raise r.refuse(f"ratio {rate}; cnnc's dropout rate is in [0, 1)")
    return r.layer("dropout", {"rate": rate})


def plain_layer(r: NodeReader, type_name: str) -> LayerDraft:
    """An operator that is a cnnc layer type without keys."""
    return r.layer(type_name, {})


ONNX_IMPORT = {
    "Conv": conv_layer,
    "Gemm": gemm_layer,
    "MaxPool": partial(pool_layer, kind="max"),
    "AveragePool": partial(pool_layer, kind="avg"),
    "LpPool": partial(pool_layer, kind="lp"),
    "GlobalAveragePool": partial(global_pool_layer, type_name="global_avgpool"),
    "GlobalMaxPool": partial(global_pool_layer, type_name="global_maxpool"),
    "ReduceMean": partial(reduce_layers, type_name="global_avgpool"),
    "ReduceMax": partial(reduce_layers, type_name="global_maxpool"),
    "BatchNormalization": batchnorm_layer,
    "Relu": partial(plain_layer, type_name="relu"),
    "Clip": clip_layer,
    "LeakyRelu": leaky_relu_layer,
    "PRelu": prelu_layer,
    "Sigmoid": partial(plain_layer, type_name="sigmoid"),
    "Tanh": partial(plain_layer, type_name="tanh"),
    "HardSigmoid": hardsigmoid_layer,
    "HardSwish": partial(plain_layer, type_name="hardswish"),
    "Swish": swish_layer,
    "Mish": partial(plain_layer, type_name="mish"),
    "Gelu": gelu_layer,
    "Softmax": softmax_layer,
    "LRN": lrn_layer,
    "Concat": concat_layer,
    "Add": add_layer,
    "Sum": add_layer,
    "Flatten": flatten_layer,
    "Reshape": reshape_layer,
    "Resize": resize_layer,
    "Slice": slice_layers,
    "Dropout": dropout_layer,
    "Identity": partial(plain_layer, type_name="identity"),
}


# -- what PyTorch's exporter writes as several nodes ----------------------------------------------------

def make_node(op_type: str, inputs, output: str, nodes: list, like, **attrs):
    """A node standing for the pattern ``nodes``, named in the scope of its node ``like``."""
    from onnx import helper

    scope = like.name.rsplit("/", 1)[0] + "/" if "/" in like.name else ""
    return helper.make_node(op_type, list(inputs), [output], name=f"{scope}{op_type}",
                            doc_string="from " + " + ".join(n.op_type for n in nodes), **attrs)


def other_input(node, tensor: str) -> str | None:
    others = [t for t in node.input if t != tensor]
    return others[0] if len(node.input) == 2 and len(others) == 1 else None


def close_to(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * abs(target)


def match_gate(graph: OnnxGraph, mul, gate_op: str, check=lambda node: True):
    """x * gate(x) for a Mul node: (x, the gate node) or None."""
    for tensor in mul.input:
        gate = graph.producers.get(tensor)
        if gate is not None and gate.op_type == gate_op and check(gate) and \
                graph.sole_reader(gate.output[0]) is mul and \
                other_input(mul, gate.output[0]) == gate.input[0]:
            return gate.input[0], gate
    return None


def rewrite_gates(graph: OnnxGraph) -> None:
    """x * sigmoid(x) is Swish (silu); x * HardSigmoid(1/6, 0.5)(x) is HardSwish."""
    from onnx import helper

    def pytorch_hardsigmoid(node) -> bool:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return close_to(attrs.get("alpha", 0.2), 1 / 6) and attrs.get("beta", 0.5) == 0.5

    for mul in [n for n in graph.nodes if n.op_type == "Mul"]:
        for gate_op, op, check in (("Sigmoid", "Swish", lambda n: True),
                                   ("HardSigmoid", "HardSwish", pytorch_hardsigmoid)):
            found = match_gate(graph, mul, gate_op, check)
            if found:
                x, gate = found
                replace(graph, [gate, mul], make_node(op, [x], mul.output[0], [gate, mul], mul))
                break


def rewrite_mish(graph: OnnxGraph) -> None:
    """x * tanh(softplus(x)), as Mish is written before opset 18: Mish."""
    for mul in [n for n in graph.nodes if n.op_type == "Mul"]:
        for tensor in mul.input:
            tanh = graph.producers.get(tensor)
            if tanh is None or tanh.op_type != "Tanh":
                continue
            softplus = graph.producers.get(tanh.input[0])
            if softplus is not None and softplus.op_type == "Softplus" and \
                    graph.sole_reader(softplus.output[0]) is tanh and \
                    graph.sole_reader(tanh.output[0]) is mul and \
                    other_input(mul, tanh.output[0]) == softplus.input[0]:
                pattern = [softplus, tanh, mul]
                replace(graph, pattern, make_node("Mish", [softplus.input[0]], mul.output[0],
                                                  pattern, mul))
                break


def rewrite_matmul_add(graph: OnnxGraph) -> None:
    """MatMul by a constant, with a constant Add after it (nn.Linear on more than two axes, or
    another exporter's dense layer): one Gemm."""
    for matmul in [n for n in graph.nodes if n.op_type == "MatMul"]:
        if matmul.input[1] not in graph.constants:
            continue
        add = graph.sole_reader(matmul.output[0], "Add")
        bias = other_input(add, matmul.output[0]) if add is not None else None
        pattern = [matmul, add] if bias in graph.constants else [matmul]
        inputs = [*matmul.input[:2], bias][:len(pattern) + 1]
        replace(graph, pattern, make_node("Gemm", inputs, pattern[-1].output[0], pattern, matmul))


def rewrite_erf_gelu(graph: OnnxGraph) -> None:
    """0.5 * x * (1 + erf(x / sqrt(2))), as PyTorch writes GELU before opset 20: Gelu."""
    for erf in [n for n in graph.nodes if n.op_type == "Erf"]:
        found = match_erf_gelu(graph, erf)
        if found:
            x, nodes, output = found
            replace(graph, nodes, make_node("Gelu", [x], output, nodes, erf))


def match_erf_gelu(graph: OnnxGraph, erf):
    """(x, the pattern's nodes, its output) where ``erf`` is the heart of one, else None."""
    scaled = graph.producers.get(erf.input[0])
    if scaled is None or graph.sole_reader(scaled.output[0]) is not erf or not (
            (scaled.op_type == "Div" and close_to(graph.scalar(scaled.input[1]), SQRT_2)) or
            (scaled.op_type == "Mul" and close_to(graph.scalar(scaled.input[1]), 1 / SQRT_2))):
        return None
    x = scaled.input[0]
    add = graph.sole_reader(erf.output[0], "Add")
    if add is None or not close_to(graph.scalar(other_input(add, erf.output[0]) or ""), 1.0):
        return None
    nodes, factors, current = [scaled, erf, add], [], add.output[0]
    while len(factors) < 2:  # x and 0.5, in either order, or as one node x * 0.5
        mul = graph.sole_reader(current, "Mul")
        factor = other_input(mul, current) if mul is not None else None
        if factor is None:
            return None
        if factor == x or close_to(graph.scalar(factor), 0.5):
            factors.append("x" if factor == x else "half")
        elif is_half_of(graph, factor, x, mul):
            factors += ["x", "half"]
            nodes.append(graph.producers[factor])
        else:
            return None
        nodes.append(mul)
        current = mul.output[0]
    return (x, nodes, current) if sorted(factors) == ["half", "x"] else None


def is_half_of(graph: OnnxGraph, tensor: str, x: str, reader) -> bool:
    """Whether ``tensor`` is x * 0.5, read by ``reader`` alone."""
    node = graph.producers.get(tensor)
    return node is not None and node.op_type == "Mul" and x in node.input and \
        close_to(graph.scalar(other_input(node, x) or ""), 0.5) and \
        graph.sole_reader(tensor) is reader


def replace(graph: OnnxGraph, nodes: list, new) -> None:
    """Put ``new`` where the last of ``nodes`` stood (its inputs are written before the
    first), and remove the others."""
    ids = {id(n) for n in nodes}
    last = max(i for i, n in enumerate(graph.nodes) if id(n) in ids)
    graph.nodes = [new if i == last else n for i, n in enumerate(graph.nodes)
                   if id(n) not in ids or i == last]
    graph.index()


def split_sizes(graph: OnnxGraph, split) -> list[int] | None:
    """The sizes a Split cuts its axis into (given, or equal parts as ONNX rounds them), or
    None where they are not known before the model runs (left to be refused as a Split)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in split.attribute}
    shape = graph.shape(split.input[0])
    axis = attrs.get("axis", 0)
    if shape is None or not -len(shape) <= axis < len(shape) or shape[axis] is None:
        return None
    if len(split.input) > 1 and split.input[1]:
        given = graph.constants.get(split.input[1])
        return None if given is None else [int(v) for v in np.ravel(given)]
    if "split" in attrs:
        return [int(v) for v in attrs["split"]]
    parts = len(split.output)
    step = -(-shape[axis] // parts)  # opset 18's num_outputs: the last part may be smaller
    return [min(step, shape[axis] - step * i) for i in range(parts)]


def rewrite_split(graph: OnnxGraph) -> None:
    """Split (torch.split, torch.chunk): a Slice per output, each taking its stretch of the
    axis, so that each output is a layer of its own."""
    from onnx import helper

    for split in [n for n in graph.nodes if n.op_type == "Split"]:
        sizes = split_sizes(graph, split)
        if sizes is None or len(sizes) != len(split.output):
            continue
        axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
        slices, start = [], 0
        for i, (output, size) in enumerate(zip(split.output, sizes)):
            bounds = []
            for what, value in (("starts", start), ("ends", start + size), ("axes", axis)):
                bounds.append(f"{split.name or 'split'}_{i}_{what}")
                graph.constants[bounds[-1]] = np.array([value], np.int64)
            slices.append(helper.make_node("Slice", [split.input[0], *bounds], [output],
                                           name=f"{split.name or 'Split'}_{i}",
                                           doc_string="from Split"))
            start += size
        at = next(i for i, n in enumerate(graph.nodes) if n is split)
        graph.nodes[at:at + 1] = slices
        graph.index()


REWRITES = (rewrite_erf_gelu, rewrite_gates, rewrite_mish, rewrite_matmul_add, rewrite_split)


# -- the model ------------------------------------------------------------------------------------

def load_model(path: Path):
    """The model with every tensor's shape inferred."""
    import onnx

    if not path.is_file():
        raise CnncError(f"no ONNX model at '{path}'")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, a missing external data file, ...
        raise ModelImportError(f"{path}: not a readable ONNX model ({type(exc).__name__}: "
                               f"{exc})") from None
    fix_batch_size(model)
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise ModelImportError(f"{path}: onnx's shape inference failed on the model: {exc}") \
            from None


def fix_batch_size(model) -> None:
    """A free batch axis becomes 1 for shape inference, so that shapes computed from the input's
    (x.view(x.size(0), -1)) are known; cnnc's spec has no batch size anyway."""
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1


def model_inputs(graph: OnnxGraph) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The model's inputs: ONNX tensor -> (the spec's name for it, its shape per sample; the
    first axis is the batch). One input is the spec's ``input``; several keep their ONNX names
    (made into spec names), written as cnnc's ``inputs: {x: [3, 32, 32], side: [8]}``."""
    if not graph.inputs:
        raise ModelImportError(f"{graph.source}: the model has no inputs; cnnc imports models "
                               "that compute from at least one")
    taken: set[str] = set()
    found = {}
    for value in graph.inputs:
        name = "input" if len(graph.inputs) == 1 else unique_name(value.name, "input", taken)
        found[value.name] = (name, input_shape(graph, value))
    return found


def input_shape(graph: OnnxGraph, value) -> tuple[int, ...]:
    """One input's shape per sample, once it is float32 with every size but the batch's known."""
    from onnx import TensorProto

    shape = graph.shape(value.name)
    if value.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelImportError(f"{graph.source}: its input '{value.name}' is not float32; cnnc "
                               "computes in float32")
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        raise ModelImportError(f"{graph.source}: its input '{value.name}' has shape {shape}; "
                               "cnnc needs (batch, *sizes) with every size but the batch's known")
    return tuple(shape[1:])


def needed_nodes(graph: OnnxGraph) -> set[int]:
    """The nodes the outputs depend on, by what each rule reads (a Reshape's target shape is
    read from the inferred shapes, so the Shape nodes that compute it are not needed)."""
    needed, stack = set(), list(graph.outputs)
    while stack:
        node = graph.producers.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        unread = getattr(ONNX_IMPORT.get(node.op_type), "unread_inputs", ())
        stack += [t for i, t in enumerate(node.input) if t and i not in unread]
    return needed


def foldable(graph: OnnxGraph, node) -> bool:
    return node.domain in DEFAULT_DOMAINS and node.op_type not in NOT_CONSTANT and \
        all(t in graph.constants for t in node.input if t)


def fold(graph: OnnxGraph, node) -> None:
    """Evaluate a node whose inputs are all constants (onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    feeds = {t: graph.constants[t] for t in node.input if t}
    values = ReferenceEvaluator(node, opsets={"": graph.opset}).run(None, feeds)
    graph.constants.update(zip(node.output, (np.asarray(v) for v in values)))


def fold_constants(graph: OnnxGraph) -> None:
    """Evaluate, in order, every node whose inputs are constants (a weight shared through an
    Identity, a slope reshaped, a bias scaled), so that the rules and patterns see constants.
    One that fails to evaluate stays, to be refused if the outputs need it."""
    kept = []
    for node in graph.nodes:
        try:
            if not foldable(graph, node):
                raise ValueError
            fold(graph, node)
        except Exception:
            kept.append(node)
    graph.nodes = kept
    graph.index()


def rule_for(graph: OnnxGraph, node):
    reader = NodeReader(graph, node, set())
    if node.domain not in DEFAULT_DOMAINS:
        raise reader.refuse(f"an operator of the domain '{node.domain}'; cnnc reads the "
                            "standard ONNX operators")
    rule = ONNX_IMPORT.get(node.op_type)
    if rule is None:
        raise reader.refuse("cnnc has no layer for this operator; it reads "
                            + ", ".join(sorted(ONNX_IMPORT)))
    return rule


def convert(graph: OnnxGraph, input_names) -> list[tuple[object, list[LayerDraft]]]:
    """Each needed node, in order, as the layers it is (constant ones evaluated)."""
    needed = needed_nodes(graph)
    activations = set(input_names)
    converted = []
    for node in graph.nodes:
        if id(node) not in needed:
            continue
        if foldable(graph, node):
            raise NodeReader(graph, node, set()).refuse(
                "its inputs are constants, but onnx's reference evaluator cannot evaluate it")
        drafts = rule_for(graph, node)(NodeReader(graph, node, activations))
        converted.append((node, drafts if isinstance(drafts, list) else [drafts]))
        activations.add(node.output[0])
    for tensor in graph.outputs:
        if tensor not in activations or tensor in input_names:
            raise ModelImportError(f"{graph.source}: its output '{tensor}' is "
                                   + ("an input itself" if tensor in input_names else
                                      "a constant") + "; cnnc's outputs are layers")
    return converted


# -- names ----------------------------------------------------------------------------------------------

def scope_and_tag(node) -> tuple[tuple[str, ...], str]:
    """'/layer1/layer1.0/conv1/Conv' -> (('layer1', 'layer1.0', 'conv1'), 'conv'); a name
    without '/' is all tag ('conv1'); a node without a name is its operator."""
    if "/" not in node.name:
        return (), node.name or node.op_type.lower()
    parts = [p for p in node.name.split("/") if p] or [node.op_type]
    return tuple(parts[:-1]), parts[-1].lower()


def module_path(scope: tuple[str, ...]) -> str:
    """The module's dotted path from PyTorch's scopes, which name a container's child by the
    container's own name and the index ('layer1.0' inside 'layer1', 'downsample.0' inside
    'downsample') and any other child by its attribute name ('conv1')."""
    path, previous = "", ""
    for part in scope:
        if previous and part.startswith(previous + "."):
            path += part[len(previous):]
        else:
            path = f"{path}.{part}" if path else part
        previous = part
    return path


def unique_name(text: str, fallback: str, taken: set[str]) -> str:
    base = safe_name(text, fallback, MAX_NAME - 8)
    if name_problem(base) is not None:
        base = fallback
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def layer_names(converted, input_names) -> list[str]:
    """One readable name per converted node: its module's path where the module holds this
    node alone, else the path and the operator (never one of the spec's input names)."""
    scopes = [scope_and_tag(node) for node, _ in converted]
    counts = Counter(scope for scope, _ in scopes if scope)
    containers = {scope[:i] for scope, _ in scopes for i in range(1, len(scope))}
    taken = {"input", *input_names}
    names = []
    for (scope, tag), (_, drafts) in zip(scopes, converted):
        path = module_path(scope)
        alone = scope and counts[scope] == 1 and scope not in containers
        text = path if alone else f"{path}.{tag}" if path else tag
        names.append(unique_name(text, drafts[0].type_name, taken))
    return names


def imported_layers(converted, input_names: dict[str, str], outputs: list[str]):
    """The spec's layers, named, each reading layers (or inputs: ONNX tensor -> spec name in
    ``input_names``) by name; and the output layers."""
    by_tensor = dict(input_names)
    taken = set()
    layers = []
    for (node, drafts), name in zip(converted, layer_names(converted, input_names.values())):
        taken.add(name)
        previous = None
        for i, draft in enumerate(drafts):
            layer_name = name if i == 0 else unique_name(f"{name}.{draft.type_name}",
                                                         draft.type_name, taken)
            inputs = [by_tensor[t] for t in draft.inputs] if draft.inputs else [previous]
            layers.append(ImportedLayer(layer_name, draft.type_name, draft.keys, draft.params,
                                        inputs))
            previous = layer_name
        by_tensor[node.output[0]] = previous
    return layers, [by_tensor[t] for t in outputs]


def import_onnx(path) -> tuple[str, dict[str, np.ndarray]]:
    """The cnnc spec (YAML text) and weights (PyTorch names) of the ONNX model at ``path``."""
    path = Path(path)
    model = load_model(path)
    graph = OnnxGraph(model, str(path))
    fold_constants(graph)
    for rewrite in REWRITES:
        rewrite(graph)
    inputs = model_inputs(graph)
    converted = convert(graph, inputs)
    layers, outputs = imported_layers(converted, {t: name for t, (name, _) in inputs.items()},
                                      graph.outputs)
    shapes = {name: shape for name, shape in inputs.values()}
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    header = (f"Imported from {path.name} (ONNX opset {graph.opset}"
              + (f", written by {producer}" if producer else "") + ") by cnnc import.")
    return write_spec(safe_name(path.stem, "model"),
                      shapes if len(shapes) > 1 else next(iter(shapes.values())), layers,
                      outputs, str(path), header)


__all__ = ["ONNX_IMPORT", "import_onnx"]

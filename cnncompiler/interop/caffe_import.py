"""A Caffe network (``deploy.prototxt``, with its ``.caffemodel`` weights) as a cnnc spec and its
weights (PyTorch names and layouts).

    spec_text, params = import_caffe("deploy.prototxt")                  # net.caffemodel beside it?
    spec_text, params = import_caffe("deploy.prototxt", caffemodel="bvlc_alexnet.caffemodel")

Both files are read without Caffe or its schema: the prototxt by a small parser of protobuf's
text format, the caffemodel by a decoder of protobuf's wire format that reads the few fields a
weight needs (each layer's name and blobs). Each Caffe layer type is one entry of
``CAFFE_LAYERS``; a layer whose top is its bottom (an in-place ReLU) reads and replaces the blob.
Layers that only train (data, accuracy, losses) are skipped with a note, a loss's kind written
as the spec's ``train: loss``; any other type is refused with the layer's name, type and line.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import CnncError, Diagnostic, SourceLoc
from ..spec.parse import safe_name
from .onnx_import import unique_name
from .spec_writer import ImportedLayer, ModelImportError, spec_text, write_spec


# -- protobuf's text format ------------------------------------------------------------------------

class Word(str):
    """A bare word of the text format: an enum value (MAX, ACROSS_CHANNELS) or true/false."""


@dataclass
class TextField:
    name: str
    value: object  # int, float, str, Word or Message
    loc: SourceLoc


@dataclass
class Message:
    """A message of the text format: its fields in order, repeated ones as often as written."""

    loc: SourceLoc
    fields: list[TextField] = field(default_factory=list)

    def all(self, name: str) -> list:
        return [f.value for f in self.fields if f.name == name]

    def get(self, name: str, default=None):
        values = self.all(name)
        return values[-1] if values else default

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def where(self, name: str) -> SourceLoc:
        return next((f.loc for f in self.fields if f.name == name), self.loc)

    def sub(self, name: str) -> "Message":
        value = self.get(name)
        return value if isinstance(value, Message) else Message(self.loc)


TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?|inf(?:inity)?|nan)(?![\w.]))
  | (?P<word>[A-Za-z_][\w.]*)
  | (?P<punct>[{}<>\[\]:,;])
""", re.VERBOSE)
CLOSE = {"{": "}", "<": ">"}


class TextParser:
    """Protobuf's text format (``name: value``, ``name { ... }``, ``# comments``) as a tree of
    :class:`Message`; a mistake is reported at its line and column."""

    def __init__(self, text: str, source: str):
        self.text, self.source, self.lines = text, source, text.splitlines()
        self.tokens = list(self.tokenize())
        self.i = 0

    def loc(self, offset: int) -> SourceLoc:
        line = self.text.count("\n", 0, offset) + 1
        return SourceLoc(self.source, line, offset - (self.text.rfind("\n", 0, offset) + 1) + 1)

    def error(self, message: str, offset: int) -> ModelImportError:
        return ModelImportError(Diagnostic(message, self.loc(offset)).format(self.lines))

    def tokenize(self):
        offset = 0
        while offset < len(self.text):
            m = TOKEN.match(self.text, offset)
            if m is None:
                raise self.error(f"unexpected character {self.text[offset]!r} in the prototxt",
                                 offset)
            if m.lastgroup != "space":
                yield m.lastgroup, m.group(), offset
            offset = m.end()

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "", len(self.text))

    def take(self, kind: str):
        token = self.peek()
        assert token[0] == kind, token  # the caller peeked
        self.i += 1
        return token

    def message(self, start: int, close: str | None) -> Message:
        """The fields up to ``close`` (None: the end of the file) of the message opened at
        ``start``."""
        msg = Message(self.loc(start))
        while True:
            kind, text, offset = self.peek()
            if close is None and kind == "end":
                return msg
            if text == close:
                self.i += 1
                return msg
            if kind == "end":
                raise self.error(f"'{self.text[start]}' is never closed: expected '{close}' "
                                 "before the end of the file", start)
            if kind != "word":
                raise self.error(f"expected a field name{f' or {close!r}' if close else ''}, "
                                 f"found {text!r}", offset)
            _, name, start_of_name = self.take("word")
            msg.fields += [TextField(name, v, self.loc(start_of_name))
                           for v in self.field_values()]
            if self.peek()[1] in (",", ";"):
                self.i += 1

    def field_values(self) -> list:
        colon = self.peek()[1] == ":"
        if colon:
            self.i += 1
        kind, text, offset = self.peek()
        if text in CLOSE:
            self.i += 1
            return [self.message(offset, CLOSE[text])]
        if not colon:
            raise self.error(f"expected ':' or '{{', found {text or 'the end of the file'!r}",
                             offset)
        if text == "[":
            self.i += 1
            values = []
            while self.peek()[1] != "]":
                values.append(self.scalar())
                if self.peek()[1] == ",":
                    self.i += 1
            self.i += 1
            return values
        return [self.scalar()]

    def scalar(self):
        kind, text, offset = self.peek()
        if kind == "string":
            self.i += 1
            return bytes(text[1:-1], "utf-8").decode("unicode_escape")
        if kind == "number":
            self.i += 1
            plain = text.rstrip("fF") if not text.lower().endswith(("inf", "inity")) else text
            return int(plain) if re.fullmatch(r"[-+]?\d+", plain) else float(plain)
        if kind == "word":
            self.i += 1
            return Word(text)
        raise self.error(f"expected a value, found {text or 'the end of the file'!r}", offset)


def parse_prototxt(text: str, source: str) -> tuple[Message, list[str]]:
    """The NetParameter written in ``text``, and the text's lines (for error excerpts)."""
    parser = TextParser(text, source)
    return parser.message(0, None), parser.lines


# -- protobuf's wire format ------------------------------------------------------------------------

def varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("a varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def wire_fields(buf: memoryview):
    """(field number, wire type, value) for each field of one message: an int for a varint, a
    memoryview of the bytes for the other wire types."""
    pos = 0
    sizes = {1: 8, 5: 4}
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            size, pos = varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
            if pos > len(buf):
                raise ValueError(f"field {number} runs past the end")
        elif wire in sizes:
            value, pos = buf[pos:pos + sizes[wire]], pos + sizes[wire]
        else:
            raise ValueError(f"field {number} has the wire type {wire}, which Caffe never writes")
        yield number, wire, value


def varints(value, wire: int) -> list[int]:
    """A repeated integer field's values, packed (wire type 2) or one."""
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = varint(value, pos)
        out.append(v)
    return out


def blob_array(buf: memoryview) -> np.ndarray:
    """A BlobProto: its data (float or double, packed or not) in its shape (BlobShape, or the
    legacy num, channels, height, width)."""
    legacy, dims, chunks = {}, [], []
    for number, wire, value in wire_fields(buf):
        if number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
        elif number == 5:
            chunks.append(np.frombuffer(value, "<f4"))
        elif number == 8:
            chunks.append(np.frombuffer(value, "<f8").astype(np.float32))
        elif number == 7:
            dims += [v for n, w, x in wire_fields(value) if n == 1 for v in varints(x, w)]
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not dims:  # a legacy blob is 4-D: (1, 1, out, in) for an InnerProduct's weight
        dims = [legacy.get(k, 1) for k in (1, 2, 3, 4)] if legacy else [data.size]
    shape = dims
    if int(np.prod(shape)) != data.size:
        raise ValueError(f"a blob of shape {tuple(shape)} holds {data.size} values")
    return data.reshape(shape).astype(np.float32)


# NetParameter: layer (100, LayerParameter: name 1, blobs 7) and the older layers (2,
# V1LayerParameter: name 4, blobs 6)
LAYER_FIELDS = {100: (1, 7), 2: (4, 6)}


def read_caffemodel(path: Path) -> dict[str, list[np.ndarray]]:
    """Each layer's blobs by layer name, from a binary NetParameter."""
    buf = memoryview(path.read_bytes())
    blobs = {}
    try:
        for number, wire, value in wire_fields(buf):
            if number not in LAYER_FIELDS or wire != 2:
                continue
            name_field, blob_field = LAYER_FIELDS[number]
            name, arrays = None, []
            for n, w, v in wire_fields(value):
                if n == name_field and w == 2:
                    name = bytes(v).decode("utf-8")
                elif n == blob_field and w == 2:
                    arrays.append(blob_array(v))
            if name is not None and arrays:
                blobs[name] = arrays
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelImportError(f"{path}: not a readable caffemodel ({exc})") from None
    return blobs


# -- the net as the rules read it ------------------------------------------------------------------

# The V1 prototxt's layer types (``layers { type: CONVOLUTION }``) by their later names.
V1_TYPES = {
    "CONVOLUTION": "Convolution", "POOLING": "Pooling", "INNER_PRODUCT": "InnerProduct",
    "RELU": "ReLU", "SIGMOID": "Sigmoid", "TANH": "TanH", "LRN": "LRN", "DROPOUT": "Dropout",
    "CONCAT": "Concat", "ELTWISE": "Eltwise", "SOFTMAX": "Softmax", "FLATTEN": "Flatten",
    "SPLIT": "Split", "DATA": "Data", "IMAGE_DATA": "ImageData", "HDF5_DATA": "HDF5Data",
    "MEMORY_DATA": "MemoryData", "WINDOW_DATA": "WindowData", "ACCURACY": "Accuracy",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
}
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
              "AnnotatedData", "VideoData"}
LOSSES = {"SoftmaxWithLoss": "softmax_cross_entropy", "SigmoidCrossEntropyLoss":
          "sigmoid_cross_entropy", "EuclideanLoss": "euclidean"}
TRAIN_ONLY = DATA_TYPES | set(LOSSES) | {"Accuracy", "Silence"}


@dataclass
class CaffeLayer:
    """One layer of the prototxt as its rule reads it: its settings, blobs and input ranks."""

    msg: Message
    type_name: str
    name: str
    bottoms: list[str]
    tops: list[str]
    source_lines: list[str]
    blobs: list[np.ndarray] | None = None
    ranks: list[int] = field(default_factory=list)  # of each bottom, the batch axis counted

    @property
    def loc(self) -> SourceLoc:
        return self.msg.where("type")

    def refuse(self, reason: str, loc: SourceLoc | None = None) -> ModelImportError:
        diag = Diagnostic(reason, loc or self.loc, layer=self.name, layer_type=self.type_name)
        return ModelImportError(diag.format(self.source_lines))

    def params(self, name: str) -> Message:
        return self.msg.sub(name)

    def weights(self, count: int) -> list[np.ndarray] | None:
        """The layer's first ``count`` blobs from the caffemodel (None without one)."""
        if self.blobs is None:
            return None
        if len(self.blobs) < count:
            raise self.refuse(f"the caffemodel holds {len(self.blobs)} blobs for this layer; "
                              f"a {self.type_name} with these settings has {count}")
        return self.blobs[:count]


@dataclass
class Draft:
    """A cnnc layer a rule makes of a Caffe layer: type, keys, weights, and the blobs it reads
    (none: the layer the rule made before it)."""

    type_name: str
    keys: dict
    params: dict = field(default_factory=dict)
    bottoms: list[str] | None = None


def flag(layer: CaffeLayer, msg: Message, name: str, default: bool) -> bool:
    value = msg.get(name, default)
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "t", "1"):
        return True
    if str(value).lower() in ("false", "f", "0"):
        return False
    raise layer.refuse(f"{name}: {value!r} is not true or false", msg.where(name))


def enum(msg: Message, name: str, default: str, numbers: tuple[str, ...] = ()) -> str:
    """An enum setting by name (V1 files may write its number)."""
    value = msg.get(name, default)
    return numbers[value] if isinstance(value, int) and 0 <= value < len(numbers) else str(value)


def number(layer: CaffeLayer, msg: Message, name: str, default=None, value=None,
           kind=float):
    """A numeric setting (``value`` if given, else the field's last value, else ``default``);
    a missing required one, or one that is not a number, is refused at its place."""
    value = msg.get(name, default) if value is None else value
    if value is None:
        raise layer.refuse(f"no {name}; Caffe needs one for this layer", msg.loc)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (kind is int and not isinstance(value, int)):
        what = "an integer" if kind is int else "a number"
        raise layer.refuse(f"{name}: {value!r} is not {what}", msg.where(name))
    return kind(value)


def integer(layer: CaffeLayer, msg: Message, name: str, default=None) -> int:
    return number(layer, msg, name, default, kind=int)


def pair(layer: CaffeLayer, msg: Message, name: str, default: int,
         single: str | None = None) -> tuple[int, int]:
    """A spatial setting of a window: ``name_h``/``name_w``, else ``single`` (default
    ``name``: one value, or one per axis), else ``default``."""
    if msg.has(f"{name}_h") or msg.has(f"{name}_w"):
        return (integer(layer, msg, f"{name}_h", default),
                integer(layer, msg, f"{name}_w", default))
    name = single or name
    values = [number(layer, msg, name, value=v, kind=int) for v in msg.all(name)]
    if len(values) > 2:
        raise layer.refuse(f"{len(values)} values of {name}: a {len(values)}-D window; cnnc "
                           "reads 2-D ones", msg.where(name))
    if not values:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def compact(values):
    return values[0] if values[0] == values[1] else list(values)


def vector(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1)


def matrix(array: np.ndarray) -> np.ndarray:
    """An InnerProduct weight, (out, in), also from the legacy (1, 1, out, in) blob."""
    return array.reshape(array.shape[-2:]) if array.ndim > 2 else array


def default_axis(layer: CaffeLayer, msg: Message, name: str = "axis") -> None:
    if integer(layer, msg, name, 1) != 1:
        raise layer.refuse(f"{name} {msg.get(name)}; cnnc reads this layer over the channel "
                           "axis, 1", msg.where(name))


# -- one rule per Caffe layer type -----------------------------------------------------------------

def convolution(layer: CaffeLayer) -> list[Draft]:
    p = layer.params("convolution_param")
    default_axis(layer, p)
    kernel = pair(layer, p, "kernel", 0, "kernel_size")
    if min(kernel) < 1:
        raise layer.refuse("no kernel_size (or kernel_h and kernel_w)", p.loc)
    bias = flag(layer, p, "bias_term", True)
    keys = {"filters": integer(layer, p, "num_output"), "kernel": compact(kernel),
            "stride": compact(pair(layer, p, "stride", 1)),
            "padding": compact(pair(layer, p, "pad", 0)),
            "dilation": compact(pair(layer, p, "dilation", 1)),
            "groups": integer(layer, p, "group", 1), "bias": bias}
    blobs = layer.weights(2 if bias else 1)
    params = {} if blobs is None else {"weight": blobs[0]} | (
        {"bias": vector(blobs[1])} if bias else {})
    return [Draft("conv2d", keys, params)]


def caffe_pool_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooled size: rounded up, then one less where the last window would start in
    the trailing padding (a check Caffe makes only when there is padding)."""
    n = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (n - 1) * stride >= size + pad:
        n -= 1
    return n


def pooling(layer: CaffeLayer) -> list[Draft]:
    p = layer.params("pooling_param")
    kind = enum(p, "pool", "MAX", ("MAX", "AVE", "STOCHASTIC"))
    if kind not in ("MAX", "AVE"):
        raise layer.refuse(f"pool: {kind}; cnnc reads MAX and AVE pooling", p.where("pool"))
    if flag(layer, p, "global_pooling", False):
        return [Draft("global_maxpool" if kind == "MAX" else "global_avgpool", {})]
    kernel = pair(layer, p, "kernel", 0, "kernel_size")
    if min(kernel) < 1:
        raise layer.refuse("no kernel_size (or kernel_h and kernel_w, or global_pooling)", p.loc)
    stride, pad = pair(layer, p, "stride", 1), pair(layer, p, "pad", 0)
    ceil = enum(p, "round_mode", "CEIL", ("CEIL", "FLOOR")) == "CEIL"
    keys = {"kernel": compact(kernel), "stride": compact(stride), "padding": compact(pad),
            "ceil_mode": ceil}
    if ceil:
        check_pool_rounding(layer, kernel, stride, pad)
    return [Draft("maxpool2d" if kind == "MAX" else "avgpool2d", keys)]


def check_pool_rounding(layer: CaffeLayer, kernel, stride, pad) -> None:
    """Without padding, Caffe keeps a last window that starts past the input (kernel smaller
    than stride), which PyTorch's rounding, and cnnc's, drops: refuse where the two differ."""
    from ..layers.window import out_size

    for k, s, p in zip(kernel, stride, pad):
        if p == 0 and k < s and any(caffe_pool_size(n, k, s, p) != out_size(n, k, s, (p, p), 1,
                                                                             True)
                                    for n in range(k, k + s * 4)):
            raise layer.refuse(f"a kernel of {k} with stride {s} and no padding: Caffe's rounded-"
                               "up pooling keeps a window past the input on some sizes, which "
                               "cnnc's ceil_mode (as PyTorch's) drops; set round_mode: FLOOR")


def inner_product(layer: CaffeLayer) -> list[Draft]:
    p = layer.params("inner_product_param")
    default_axis(layer, p)
    if flag(layer, p, "transpose", False):
        raise layer.refuse("transpose: true stores the weight as (in, out); cnnc reads Caffe's "
                           "usual (out, in)", p.where("transpose"))
    bias = flag(layer, p, "bias_term", True)
    blobs = layer.weights(2 if bias else 1)
    params = {} if blobs is None else {"weight": matrix(blobs[0])} | (
        {"bias": vector(blobs[1])} if bias else {})
    dense = Draft("dense", {"units": integer(layer, p, "num_output"), "bias": bias}, params)
    # Caffe flattens (C, H, W) in the order cnnc's flatten does
    return [Draft("flatten", {}), dense] if layer.ranks[0] > 2 else [dense]


def relu(layer: CaffeLayer) -> list[Draft]:
    slope = number(layer, layer.params("relu_param"), "negative_slope", 0.0)
    if slope == 0:
        return [Draft("relu", {})]
    if slope < 0:
        raise layer.refuse(f"negative_slope {slope}; cnnc's leaky_relu takes alpha >= 0")
    return [Draft("leaky_relu", {"alpha": slope})]


def lrn(layer: CaffeLayer) -> list[Draft]:
    p = layer.params("lrn_param")
    region = enum(p, "norm_region", "ACROSS_CHANNELS", ("ACROSS_CHANNELS", "WITHIN_CHANNEL"))
    if region != "ACROSS_CHANNELS":
        raise layer.refuse(f"norm_region: {region}; cnnc's lrn normalises across channels "
                           "(ACROSS_CHANNELS)", p.where("norm_region"))
    size = integer(layer, p, "local_size", 5)
    if size % 2 == 0:
        raise layer.refuse(f"local_size {size} is even; Caffe itself takes odd sizes only",
                           p.where("local_size"))
    return [Draft("lrn", {"size": size, "alpha": number(layer, p, "alpha", 1.0),
                          "beta": number(layer, p, "beta", 0.75), "k": number(layer, p, "k", 1.0)})]


def dropout(layer: CaffeLayer) -> list[Draft]:
    rate = number(layer, layer.params("dropout_param"), "dropout_ratio", 0.5)
    return [Draft("dropout", {"rate": rate})]


def concat(layer: CaffeLayer) -> list[Draft]:
    p = layer.params("concat_param")
    axis = integer(layer, p, "axis", p.get("concat_dim", 1))
    if axis % max(layer.ranks) == 0:
        raise layer.refuse("a concatenation along the batch axis; cnnc's concat joins a "
                           "sample's axes", p.where("axis"))
    return [Draft("concat", {"axis": axis}, bottoms=layer.bottoms)]


def eltwise(layer: CaffeLayer) -> list[Draft]:
    p = layer.params("eltwise_param")
    operation = enum(p, "operation", "SUM", ("PROD", "SUM", "MAX"))
    coeffs = [number(layer, p, "coeff", value=c) for c in p.all("coeff")]
    if operation != "SUM" or any(c != 1 for c in coeffs):
        what = f"operation: {operation}" if operation != "SUM" else f"coeff {coeffs}"
        raise layer.refuse(f"{what}; cnnc's add is an Eltwise SUM with every coeff 1",
                           p.where("operation" if operation != "SUM" else "coeff"))
    return [Draft("add", {}, bottoms=layer.bottoms)]


def softmax(layer: CaffeLayer) -> list[Draft]:
    return [Draft("softmax", {"axis": integer(layer, layer.params("softmax_param"), "axis", 1)})]


def flatten(layer: CaffeLayer) -> list[Draft]:
    p = layer.params("flatten_param")
    default_axis(layer, p)
    if integer(layer, p, "end_axis", -1) != -1:
        raise layer.refuse(f"end_axis {p.get('end_axis')}; cnnc's flatten merges every axis "
                           "after the batch's", p.where("end_axis"))
    return [Draft("flatten", {})]


def batch_norm(layer: CaffeLayer, scale: CaffeLayer | None) -> list[Draft]:
    """BatchNorm, whose blobs are the mean and variance times a scale factor (the third blob),
    and the Scale after it (gamma and beta), as one batchnorm."""
    p = layer.params("batch_norm_param")
    fraction = number(layer, p, "moving_average_fraction", 0.999)
    keys = {"eps": number(layer, p, "eps", 1e-5), "momentum": round(1.0 - fraction, 9)}
    blobs = layer.weights(3)
    params = {}
    if blobs is not None:
        factor = float(vector(blobs[2])[0])
        factor = 0.0 if factor == 0 else 1.0 / factor
        mean, var = vector(blobs[0]) * factor, vector(blobs[1]) * factor
        params = {"weight": np.ones_like(mean), "bias": np.zeros_like(mean),
                  "running_mean": mean, "running_var": var}
        if scale is not None:
            bias = flag(scale, scale.params("scale_param"), "bias_term", False)
            scale_blobs = scale.weights(2 if bias else 1)
            params["weight"] = vector(scale_blobs[0])
            if bias:
                params["bias"] = vector(scale_blobs[1])
    return [Draft("batchnorm", keys, params)]


def scale_alone(layer: CaffeLayer) -> list[Draft]:
    raise layer.refuse("a Scale that does not follow a BatchNorm (as its only reader); cnnc "
                       "reads Scale as the weight and bias of the batch norm before it")


def plain(type_name: str):
    return lambda layer: [Draft(type_name, {})]


CAFFE_LAYERS = {
    "Convolution": convolution, "Pooling": pooling, "InnerProduct": inner_product,
    "ReLU": relu, "Sigmoid": plain("sigmoid"), "TanH": plain("tanh"), "LRN": lrn,
    "Dropout": dropout, "Concat": concat, "Eltwise": eltwise, "Softmax": softmax,
    "Flatten": flatten, "Scale": scale_alone,
}


# -- the net ---------------------------------------------------------------------------------------

@dataclass
class Step:
    """A layer of the prototxt with its blobs made unique: an in-place layer's top is a new
    version of its bottom (``conv1`` then ``conv1#1``), so each version has one writer."""

    msg: Message
    type_name: str
    name: str
    bottoms: list[str]
    tops: list[str]


class CaffeNet:
    """The prototxt's layers in order, their blob versions, and what the import noted."""

    def __init__(self, net: Message, lines: list[str], source: str):
        self.net, self.lines, self.source = net, lines, source
        self.notes: list[Diagnostic] = []
        self.steps: list[Step] = []
        self.skipped: dict[str, Step] = {}  # blob version -> the skipped layer that makes it
        self.losses: list[tuple[str, str]] = []  # (prediction version, loss kind)
        self.latest: dict[str, str] = {}
        self.writes = 0

    def note(self, step: Step, message: str) -> None:
        self.notes.append(Diagnostic(message, step.msg.where("type"), layer=step.name,
                                     layer_type=step.type_name, severity="note"))

    def refuse(self, message: str, loc: SourceLoc, step: Step | None = None):
        diag = Diagnostic(message, loc, layer=step and step.name,
                          layer_type=step and step.type_name)
        return ModelImportError(diag.format(self.lines))

    def version(self, blob: str, new: bool) -> str:
        if new:
            self.writes += 1
            self.latest[blob] = blob if blob not in self.latest else f"{blob}#{self.writes}"
        return self.latest.get(blob, blob)

    def add(self, msg: Message) -> Step | None:
        """The layer as a step, or None where it only trains (noted)."""
        raw = str(msg.get("type", ""))
        type_name = V1_TYPES.get(raw, raw)
        step = Step(msg, type_name, str(msg.get("name", f"{type_name.lower()}{len(self.steps)}")),
                    [self.version(str(b), False) for b in msg.all("bottom")], [])
        step.tops = [self.version(str(t), True) for t in msg.all("top")]
        phase = train_phase(msg)
        if phase or type_name in TRAIN_ONLY:
            for top in step.tops:
                self.skipped[top] = step
            if type_name in LOSSES and step.bottoms:
                self.losses.append((step.bottoms[0], LOSSES[type_name]))
            self.note(step, f"skipped: {phase or 'it only trains'}" + (
                f"; the spec's train: loss is {LOSSES[type_name]}" if type_name in LOSSES
                else ""))
            return None
        self.steps.append(step)
        return step


def train_phase(msg: Message) -> str | None:
    """Why a layer is left out of the deploy net by its phase rules, or None."""
    for rule in msg.all("include"):
        if isinstance(rule, Message) and str(rule.get("phase", "TEST")) in ("TRAIN", "0"):
            return "it is included in the TRAIN phase only"
    for rule in msg.all("exclude"):
        if isinstance(rule, Message) and str(rule.get("phase", "")) in ("TEST", "1"):
            return "it is excluded from the TEST phase"
    return None


def input_shape(shape, what: str, net: CaffeNet, loc: SourceLoc) -> tuple[int, ...]:
    """A BlobShape's ``dim`` values (or the four ``input_dim`` values) without the batch's."""
    dims = shape.all("dim") if isinstance(shape, Message) else list(shape)
    if len(dims) < 2 or any(not isinstance(d, int) or d < 1 for d in dims):
        raise net.refuse(f"{what} has the shape {dims}; cnnc needs (batch, *sizes), every size "
                         "known", loc)
    return tuple(dims[1:])


def legacy_inputs(net: CaffeNet) -> dict[str, tuple[int, ...]]:
    """The net-level ``input: "data"`` with its ``input_shape { dim: ... }`` or four
    ``input_dim``s each."""
    names = [str(n) for n in net.net.all("input")]
    shapes = net.net.all("input_shape")
    dims = net.net.all("input_dim")
    loc = net.net.where("input")
    if shapes:
        return {n: input_shape(s, f"the input '{n}'", net, loc)
                for n, s in zip(names, shapes)}
    if len(dims) != 4 * len(names):
        raise net.refuse(f"{len(names)} inputs and {len(dims)} input_dim values; Caffe gives "
                         "four per input (batch, channels, height, width)", loc)
    return {n: input_shape(dims[4 * i:4 * i + 4], f"the input '{n}'", net, loc)
            for i, n in enumerate(names)}


def read_net(path: Path) -> tuple[CaffeNet, dict[str, tuple[int, ...]]]:
    """The prototxt's steps and its inputs' shapes (without the batch axis) by blob."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CnncError(f"cannot read the prototxt '{path}': {exc}") from None
    msg, lines = parse_prototxt(text, str(path))
    net = CaffeNet(msg, lines, str(path))
    inputs = legacy_inputs(net)
    for layer in msg.all("layer") + msg.all("layers"):
        if not isinstance(layer, Message):
            raise net.refuse("a layer written as a value; Caffe writes layer { ... }", msg.loc)
        type_name = V1_TYPES.get(str(layer.get("type", "")), str(layer.get("type", "")))
        if type_name != "Input":
            net.add(layer)
            continue
        shapes = layer.sub("input_param").all("shape")
        if not shapes:
            raise net.refuse("an Input layer without input_param { shape { dim: ... } }",
                             layer.where("type"))
        for i, top in enumerate(layer.all("top")):
            shape = shapes[min(i, len(shapes) - 1)]  # one shape may serve every top
            inputs[str(top)] = input_shape(shape, f"the input '{top}'", net, layer.where("type"))
            net.version(str(top), True)
    if len(inputs) != 1:
        data = next(iter(net.skipped.values()), None)
        why = (f"; its data comes from the skipped layer '{data.name}' ({data.type_name}): "
               "import the deploy prototxt, which has an Input layer" if not inputs and data
               else "")
        raise net.refuse(f"the net has {len(inputs)} inputs ({', '.join(inputs) or 'none'}); "
                         f"cnnc imports nets of one{why}", msg.loc)
    return net, inputs


def merge_scales(net: CaffeNet) -> dict[int, Step]:
    """The Scale read as the weight and bias of each BatchNorm (by the BatchNorm step's id):
    one that reads the BatchNorm's top, as that top's only reader."""
    readers: dict[str, list[Step]] = {}
    for step in net.steps:
        for bottom in step.bottoms:
            readers.setdefault(bottom, []).append(step)
    merged = {}
    for step in net.steps:
        if step.type_name != "BatchNorm" or len(step.tops) != 1:
            continue
        after = readers.get(step.tops[0], [])
        if len(after) == 1 and after[0].type_name == "Scale" and len(after[0].bottoms) == 1:
            merged[id(step)] = after[0]
    return merged


def drop_softmax_before_loss(net: CaffeNet, outputs: list[str]) -> None:
    """A Softmax that reads what a softmax loss reads, and that nothing else reads, is the
    TEST phase's probabilities; the spec's output is the logits that its loss takes."""
    logits = {v for v, kind in net.losses if kind == "softmax_cross_entropy"}
    for step in list(net.steps):
        if step.type_name == "Softmax" and step.bottoms and step.bottoms[0] in logits \
                and step.tops and step.tops[0] in outputs:
            net.steps.remove(step)
            outputs.remove(step.tops[0])
            net.note(step, "dropped: softmax_cross_entropy takes the logits it reads, which "
                           "become the output")


def net_outputs(net: CaffeNet) -> list[str]:
    """The blob versions that the kept layers make and do not read, in order (Caffe's outputs)."""
    read = {b for step in net.steps for b in step.bottoms}
    outputs = [t for step in net.steps for t in step.tops if t not in read]
    drop_softmax_before_loss(net, outputs)
    read = {b for step in net.steps for b in step.bottoms}
    return [t for step in net.steps for t in step.tops if t not in read]


def rank_after(draft: Draft, rank: int) -> int:
    return 2 if draft.type_name in ("flatten", "dense") else rank


class Converter:
    """The steps as cnnc layers, each blob version read as the layer that made it."""

    def __init__(self, net: CaffeNet, input_blob: str, rank: int, blobs: dict | None):
        self.net, self.blobs = net, blobs
        self.layer_of = {net.version(input_blob, False): "input"}
        self.rank = {"input": rank}
        self.taken = {"input"}
        self.layers: list[ImportedLayer] = []

    def reads(self, step: Step) -> list[str]:
        out = []
        for blob in step.bottoms:
            if blob in self.layer_of:
                out.append(self.layer_of[blob])
                continue
            maker = self.net.skipped.get(blob)
            why = (f", which only the skipped layer '{maker.name}' ({maker.type_name}) makes"
                   if maker else ", which no layer before it makes")
            raise self.net.refuse(f"it reads the blob '{blob.split('#')[0]}'{why}",
                                  step.msg.where("bottom"), step)
        if not out:
            raise self.net.refuse("it has no bottom", step.msg.where("type"), step)
        return out

    def caffe_layer(self, step: Step, inputs: list[str]) -> CaffeLayer:
        blobs = None if self.blobs is None else self.blobs.get(step.name, [])
        return CaffeLayer(step.msg, step.type_name, step.name, inputs, step.tops,
                          self.net.lines, blobs, [self.rank[i] for i in inputs])

    def convert(self, step: Step, scale: Step | None) -> None:
        inputs = self.reads(step)
        layer = self.caffe_layer(step, inputs)
        if step.type_name == "Split":
            for top in step.tops:
                self.layer_of[top] = inputs[0]
            return
        if step.type_name == "BatchNorm":
            drafts = batch_norm(layer, scale and self.caffe_layer(scale, inputs))
        elif step.type_name in CAFFE_LAYERS:
            drafts = CAFFE_LAYERS[step.type_name](layer)
        else:
            raise layer.refuse("cnnc has no layer for this Caffe type; it reads "
                               + ", ".join(sorted({*CAFFE_LAYERS, "BatchNorm", "Input",
                                                   "Split"})))
        if len(step.tops) != 1:
            raise layer.refuse(f"{len(step.tops)} tops; cnnc reads this type with one")
        previous, rank = inputs[0], layer.ranks[0]
        for i, draft in enumerate(drafts):
            last = i == len(drafts) - 1
            caffe_name = step.name.replace("/", ".")  # inception_3a/1x1 -> inception_3a.1x1
            name = unique_name(caffe_name if last else f"{caffe_name}.{draft.type_name}",
                               draft.type_name, self.taken)
            reads = inputs if draft.bottoms is not None else [previous]
            self.layers.append(ImportedLayer(name, draft.type_name, draft.keys, draft.params,
                                             reads))
            rank = rank_after(draft, rank)
            self.rank[name] = rank
            previous = name
        self.layer_of[(scale or step).tops[0]] = previous


def checked_spec(name, shape, layers, outputs, source, header) -> tuple[str, dict]:
    """The spec, checked, without weights (a prototxt read without its caffemodel)."""
    from ..errors import SpecError
    from ..graph import check_spec
    from ..spec import parse_spec_text

    text = spec_text(name, shape, layers, outputs, header)
    try:
        check_spec(parse_spec_text(text, f"<spec written from {source}>"))
    except SpecError as exc:
        raise CnncError(f"{source}: the spec written from it does not check:\n{exc.format()}") \
            from None
    return text, {}


def train_section(net: CaffeNet, converter: Converter, outputs: list[str]) -> str:
    """``train: loss`` from the net's losses whose predictions are outputs."""
    kinds = {converter.layer_of[v]: kind for v, kind in net.losses if v in converter.layer_of
             and converter.layer_of[v] in outputs}
    if not kinds:
        return ""
    if len(kinds) == 1 and len(outputs) == 1:
        return f"train:\n  loss: {next(iter(kinds.values()))}\n"
    return "train:\n  loss: {" + ", ".join(f"{o}: {k}" for o, k in kinds.items()) + "}\n"


def caffemodel_for(path: Path, caffemodel) -> Path | None:
    if caffemodel is not None:
        caffemodel = Path(caffemodel)
        if not caffemodel.is_file():
            raise CnncError(f"no caffemodel at '{caffemodel}'")
        return caffemodel
    beside = path.with_suffix(".caffemodel")
    return beside if beside.is_file() else None


def import_caffe(path, caffemodel=None) -> tuple[str, dict[str, np.ndarray]]:
    """The cnnc spec (YAML text) and weights of the Caffe net ``path`` (a prototxt), with the
    weights of ``caffemodel`` (default: the prototxt's name with ``.caffemodel``, if there is
    one; without, the spec alone). What the import skipped is printed as notes on stderr."""
    path = Path(path)
    if not path.is_file():
        raise CnncError(f"no Caffe prototxt at '{path}'")
    weights_path = caffemodel_for(path, caffemodel)
    blobs = read_caffemodel(weights_path) if weights_path else None
    net, inputs = read_net(path)
    (input_blob, shape), = inputs.items()
    merged = merge_scales(net)
    scales = {id(scale) for scale in merged.values()}
    converter = Converter(net, input_blob, len(shape) + 1, blobs)
    outputs = net_outputs(net)
    for step in net.steps:
        if id(step) not in scales:
            converter.convert(step, merged.get(id(step)))
    return finish(path, weights_path, net, converter, shape, outputs)


def finish(path: Path, weights_path: Path | None, net: CaffeNet, converter: Converter, shape,
           versions: list[str]) -> tuple[str, dict[str, np.ndarray]]:
    """The spec's text and weights, the notes printed and written at its head."""
    outputs = list(dict.fromkeys(converter.layer_of[v] for v in versions))
    if not converter.layers or "input" in outputs:
        raise ModelImportError(f"{path}: its input blob is itself an output, unread by any "
                               "layer; cnnc's outputs are layers")
    sources = path.name + (f" and {weights_path.name}" if weights_path else "")
    header = "\n".join([f"Imported from {sources} (Caffe) by cnnc import."]
                       + [replace(d, loc=replace(d.loc, file=path.name)).format()
                          for d in net.notes])
    for diag in net.notes:
        print(diag.format(), file=sys.stderr)
    if weights_path is None:
        print(f"note: {path}: no caffemodel (give --caffemodel, or put "
              f"{path.with_suffix('.caffemodel').name} beside it): the spec without weights",
              file=sys.stderr)
    name = safe_name(str(net.net.get("name", "")) or path.stem, "model")
    write = write_spec if weights_path else checked_spec
    text, params = write(name, shape, converter.layers, outputs, str(path), header)
    return text + train_section(net, converter, outputs), params


__all__ = ["CAFFE_LAYERS", "import_caffe", "parse_prototxt", "read_caffemodel"]

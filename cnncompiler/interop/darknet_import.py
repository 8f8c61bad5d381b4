"""A Darknet model (a ``.cfg`` file and its ``.weights``) as a cnnc spec and its weights.

    text, params = import_darknet("yolov3-tiny.cfg")          # reads yolov3-tiny.weights beside it
    text, params = import_darknet("net.cfg", weights="other.weights")

A ``.cfg`` is a list of sections in order (``[net]``, then one per layer, names repeating), each
of ``key=value`` lines; ``#`` and ``;`` start comments. Darknet numbers its layers from 0 after
``[net]``, and ``[route]`` and ``[shortcut]`` name others by that number (or counting back from
their own, when negative); the spec's layers are named after it (``conv3``, ``conv3.bn``,
``conv3.leaky_relu``, ``route9``). A route's ``groups`` and a shortcut between maps of
different shapes are slices of their inputs (then an add, and a concat of the channels the
shortcut leaves alone), as the original Darknet computes them. A detection head (``[yolo]``, ``[region]``, ``[detection]``)
or a ``[cost]`` is not converted: the layer it reads becomes an output of the spec, and a note
names the section and its line. A section or key cnnc cannot express is refused with its line.

The ``.weights`` file is a header (major, minor and revision as int32, then the count of
images seen: int64 from version 0.2 on, int32 before) and float32s, layer by layer: for a
convolution, batch norm's beta, gamma, running mean and running variance (or the bias when it
has no batch norm), then the kernel (out, in / groups, kh, kw); for ``[connected]`` the bias
and the weight (out, in), then gamma, mean and variance if it has batch norm.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .spec_writer import ImportedLayer, ModelImportError, write_spec

# Darknet's batch norm divides by sqrt(variance + 1e-5) (the maintained fork's form)
BN_EPS = 1e-5
ACTIVATIONS = {"leaky": ("leaky_relu", {"alpha": 0.1}), "relu": ("relu", {}),
               "logistic": ("sigmoid", {}), "tanh": ("tanh", {}), "swish": ("silu", {}),
               "mish": ("mish", {}), "linear": None}
HEADS = ("yolo", "region", "detection", "cost")
# keys of any layer that change only training (where gradients stop, which norms train)
TRAINING_KEYS = ("stopbackward", "train_only_bn")
COMMENT = re.compile(r"[#;]")


@dataclass
class Section:
    """One ``[kind]`` section of a cfg, with its keys (value and line) in order."""

    kind: str
    line: int
    keys: dict[str, tuple[str, int]] = field(default_factory=dict)


class CfgReader:
    """The keys of one section, read as Darknet reads them; every key is accounted for, so a
    key that changes what a layer computes is never passed over."""

    def __init__(self, source: str, section: Section):
        self.source, self.section = source, section
        self.used: set[str] = set(TRAINING_KEYS)

    def where(self, key: str | None = None) -> str:
        line = self.section.keys[key][1] if key in self.section.keys else self.section.line
        return f"{self.source}:{line}: [{self.section.kind}]"

    def error(self, message: str, key: str | None = None) -> ModelImportError:
        return ModelImportError(f"{self.where(key)}: {message}")

    def text(self, key: str, default: str | None = None) -> str:
        self.used.add(key)
        if key in self.section.keys:
            return self.section.keys[key][0]
        if default is None:
            raise self.error(f"the key '{key}' is missing; Darknet needs it here")
        return default

    def int(self, key: str, default: int | None = None) -> int:
        value = self.text(key, None if default is None else str(default))
        try:
            return int(value)
        except ValueError:
            raise self.error(f"{key}={value} is not an integer", key) from None

    def float(self, key: str, default: float) -> float:
        value = self.text(key, str(default))
        try:
            return float(value)
        except ValueError:
            raise self.error(f"{key}={value} is not a number", key) from None

    def ignore(self, *keys: str) -> None:
        """Keys of training (learning rates, augmentation) that do not change the forward."""
        self.used.update(keys)

    def expect(self, key: str, wanted: str, why: str) -> None:
        """A key cnnc supports only at one value (its Darknet default)."""
        if key in self.section.keys and self.text(key) != wanted:
            raise self.error(f"{key}={self.text(key)} is not supported; {why}", key)
        self.used.add(key)

    def unused(self) -> list[str]:
        return [k for k in self.section.keys if k not in self.used]


def parse_cfg(text: str, source: str) -> list[Section]:
    """The sections of a cfg in order; not INI (section names repeat)."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = COMMENT.split(raw, 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ModelImportError(f"{source}:{number}: '{raw.strip()}' is not a section "
                                       "header such as [convolutional]")
            sections.append(Section(line[1:-1].strip().lower(), number))
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            raise ModelImportError(f"{source}:{number}: '{raw.strip()}' is neither a [section] "
                                   "nor key=value")
        if not sections:
            raise ModelImportError(f"{source}:{number}: key '{key.strip()}' before the first "
                                   "section; a cfg begins with [net]")
        key = key.strip()
        if key in sections[-1].keys:
            raise ModelImportError(f"{source}:{number}: '{key}' is given twice in the "
                                   f"[{sections[-1].kind}] of line {sections[-1].line}")
        sections[-1].keys[key] = (value.strip(), number)
    if not sections or sections[0].kind not in ("net", "network"):
        raise ModelImportError(f"{source}: a Darknet cfg begins with a [net] section")
    return sections


class WeightFile:
    """The float32s of a ``.weights`` file after its header, handed out in order."""

    def __init__(self, path: Path):
        data = path.read_bytes()
        if len(data) < 16:
            raise ModelImportError(f"{path}: {len(data)} bytes, shorter than a Darknet weights "
                                   "header")
        major, minor, _ = np.frombuffer(data[:12], "<i4")
        if major > 1000 or minor > 1000:
            raise ModelImportError(f"{path}: version {major}.{minor} stores [connected] weights "
                                   "transposed; cnnc reads versions below 1000")
        start = 20 if major * 10 + minor >= 2 else 16
        if (len(data) - start) % 4:
            raise ModelImportError(f"{path}: {len(data) - start} bytes after the header, not a "
                                   "whole number of float32s")
        self.path, self.values, self.at = path, np.frombuffer(data[start:], "<f4"), 0

    def take(self, shape, what: str) -> np.ndarray:
        count = math.prod(shape)
        if self.at + count > self.values.size:
            raise ModelImportError(f"{self.path}: ends after {self.values.size} floats, while "
                                   f"{what} needs {count} from float {self.at}; the weights "
                                   "belong to another cfg")
        out = self.values[self.at:self.at + count].reshape(shape)
        self.at += count
        return out

    def finish(self) -> None:
        left = self.values.size - self.at
        if left:
            raise ModelImportError(f"{self.path}: {left} floats are left over after the last "
                                   "layer; the weights belong to another cfg")


class Converter:
    """The cfg's layers as cnnc layers, with each Darknet layer's output (a cnnc layer name,
    and its shape) by Darknet's index."""

    def __init__(self, source: str, weights):
        self.source, self.weights = source, weights
        self.layers: list[ImportedLayer] = []
        self.outputs: list[tuple[str, tuple]] = []  # per Darknet index; None for a head
        self.heads: list[str] = []                   # tensors read by a head: spec outputs
        self.notes: list[str] = []

    # -- building blocks --------------------------------------------------------------------
    def add(self, name: str, type_name: str, keys: dict, inputs: list[str], params=None) -> str:
        self.layers.append(ImportedLayer(name, type_name, keys, params or {}, inputs))
        return name

    def take(self, shape, what: str) -> np.ndarray:
        return self.weights.take(shape, what)

    def activation(self, r: CfgReader, name: str, x: str, default: str = "logistic") -> str:
        word = r.text("activation", default)
        if word not in ACTIVATIONS:
            raise r.error(f"activation={word} is not supported; cnnc converts "
                          f"{', '.join(ACTIVATIONS)}", "activation")
        if ACTIVATIONS[word] is None:
            return x
        type_name, keys = ACTIVATIONS[word]
        return self.add(f"{name}.{type_name}", type_name, dict(keys), [x])

    def bn_stats(self, name: str, channels: int) -> list[np.ndarray]:
        """Batch norm's scale (gamma), rolling mean and rolling variance, in the file's order."""
        return [self.take((channels,), f"{name}'s batch-norm {what}")
                for what in ("scale", "rolling mean", "rolling variance")]

    def batchnorm(self, name: str, x: str, beta, stats) -> str:
        gamma, mean, var = stats
        return self.add(f"{name}.bn", "batchnorm", {"eps": BN_EPS}, [x],
                        {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var})

    def source_of(self, r: CfgReader, key: str, ref: int, here: int) -> tuple[str, tuple]:
        """The output of the layer that ``ref`` names from layer ``here``."""
        index = here + ref if ref < 0 else ref
        if not 0 <= index < here:
            raise r.error(f"{key} names layer {ref}, which is layer {index}; only the "
                          f"layers before this one (0 to {here - 1}) can be read", key)
        if self.outputs[index] is None:
            raise r.error(f"{key} names layer {index}, a detection head, which cnnc does "
                          "not convert", key)
        return self.outputs[index]

    # -- the sections ------------------------------------------------------------------------
    def convolutional(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        c, h, w = self.spatial(r, shape)
        filters, size, stride = r.int("filters", 1), r.int("size", 1), r.int("stride", 1)
        groups = r.int("groups", 1)
        pad = size // 2 if r.int("pad", 0) else r.int("padding", 0)
        bn = r.int("batch_normalize", 0)
        r.expect("dilation", "1", "cnnc converts undilated Darknet convolutions")
        r.expect("binary", "0", "cnnc has no binary convolution")
        r.expect("xnor", "0", "cnnc has no XNOR convolution")
        r.expect("stride_x", str(stride), "cnnc converts one stride for both axes")
        r.expect("stride_y", str(stride), "cnnc converts one stride for both axes")
        if c % groups or filters % groups:
            raise r.error(f"groups={groups} divides neither the {c} input channels nor "
                          f"filters={filters}", "groups")
        out = ((h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1)
        if min(out) < 1:
            raise r.error(f"a {size}x{size} kernel with padding {pad} does not fit the "
                          f"{h}x{w} input", "size")
        name = f"conv{i}"
        bias = self.take((filters,), f"{name}'s bias" + (" (batch norm's beta)" if bn else ""))
        stats = self.bn_stats(name, filters) if bn else None
        kernel = self.take((filters, c // groups, size, size), f"{name}'s kernel")
        keys = {"filters": filters, "kernel": size, "stride": stride, "padding": pad,
                "groups": groups, "bias": not bn}
        y = self.add(name, "conv2d", keys, [x], {"weight": kernel} if bn else
                     {"weight": kernel, "bias": bias})
        if bn:
            y = self.batchnorm(name, y, bias, stats)
        return self.activation(r, name, y), (filters, *out)

    def maxpool(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        c, h, w = self.spatial(r, shape)
        stride = r.int("stride", 1)
        size = r.int("size", stride)
        padding = r.int("padding", size - 1)
        r.expect("stride_x", str(stride), "cnnc converts one stride for both axes")
        r.expect("stride_y", str(stride), "cnnc converts one stride for both axes")
        r.expect("maxpool_depth", "0", "cnnc pools over space only")
        # Darknet pads (padding // 2) before and the rest after: a size-2 stride-1 pool keeps
        # the map's size
        before, after = padding // 2, padding - padding // 2
        out = ((h + padding - size) // stride + 1, (w + padding - size) // stride + 1)
        keys = {"kernel": size, "stride": stride, "padding": [[before, after], [before, after]]}
        return self.add(f"maxpool{i}", "maxpool2d", keys, [x]), (c, *out)

    def avgpool(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        c, _, _ = self.spatial(r, shape)
        return self.add(f"avgpool{i}", "global_avgpool", {}, [x]), (c, 1, 1)

    def connected(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        units = r.int("output", 1)
        bn = r.int("batch_normalize", 0)
        name = f"fc{i}"
        if len(shape) > 1:
            x = self.add(f"{name}.flatten", "flatten", {}, [x])
        inputs = math.prod(shape)
        bias = self.take((units,), f"{name}'s bias")
        weight = self.take((units, inputs), f"{name}'s weight")
        y = self.add(name, "dense", {"units": units, "bias": not bn}, [x],
                     {"weight": weight} if bn else {"weight": weight, "bias": bias})
        if bn:
            y = self.batchnorm(name, y, bias, self.bn_stats(name, units))
        return self.activation(r, name, y), (units,)

    def dropout(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        rate = r.float("probability", 0.5)
        r.ignore("dropblock", "dropblock_size_rel", "dropblock_size_abs")
        return self.add(f"dropout{i}", "dropout", {"rate": rate}, [x]), shape

    def softmax(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        r.expect("groups", "1", "cnnc's softmax covers all of a layer's values")
        r.expect("temperature", "1", "cnnc's softmax has no temperature")
        name = f"softmax{i}"
        if len(shape) > 1:  # Darknet's softmax runs over every value of the layer
            x = self.add(f"{name}.flatten", "flatten", {}, [x])
        return self.add(name, "softmax", {}, [x]), (math.prod(shape),)

    def shortcut(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        refs = self.indices(r, "from")
        r.expect("weights_type", "none", "cnnc adds without weights")
        r.expect("weights_normalization", "none", "cnnc adds without weights")
        others = [self.source_of(r, "from", ref, i) for ref in refs]
        name = f"shortcut{i}"
        if len(others) == 1 and others[0][1] != shape:
            y = self.shortcut_of_shapes(r, name, x, shape, *others[0])
        else:
            for _, other in others:
                if other != shape:
                    raise r.error(f"adds layers of shapes {', '.join(str(s) for _, s in others)}"
                                  f" to one of shape {shape}; cnnc adds several layers of one "
                                  "shape, or one of another shape", "from")
            y = self.add(name, "add", {}, [x, *(n for n, _ in others)])
        return self.activation(r, name, y, default="linear"), shape

    def shortcut_of_shapes(self, r: CfgReader, name: str, x: str, shape: tuple, other: str,
                           other_shape: tuple) -> str:
        """Darknet's shortcut from a map (C1, H1, W1) onto the previous layer's (C2, H2, W2),
        as the original Darknet computes it: over the first min(C1, C2) channels, the previous
        layer's (j, i) gains the other's (j * s, i * s), s = W1 // W2 (the larger map sampled
        with a stride); channels past the other's stay as they were. YAML it becomes, for a
        (64, 8, 8) map added onto a (128, 4, 4) one::

            - {name: shortcut9.from.rows, type: slice, axis: rows, stop: 7, step: 2,
               inputs: [conv5]}
            - {name: shortcut9.from.cols, type: slice, axis: cols, stop: 7, step: 2}
            - {name: shortcut9.head, type: slice, stop: 64, inputs: [conv8]}
            - {name: shortcut9.sum, type: add, inputs: [shortcut9.head, shortcut9.from.cols]}
            - {name: shortcut9.tail, type: slice, start: 64, inputs: [conv8]}
            - {name: shortcut9, type: concat, inputs: [shortcut9.sum, shortcut9.tail]}
        """
        if len(shape) != 3 or len(other_shape) != 3:
            raise r.error(f"adds a layer of shape {other_shape} to one of shape {shape}; cnnc "
                          "adds maps of different sizes only when both are (C, H, W)", "from")
        (c2, h2, w2), (c1, h1, w1) = shape, other_shape
        stride = w1 // w2
        if h1 < h2 or w1 < w2 or h1 // h2 != stride:
            raise r.error(f"adds a map of shape {other_shape} onto one of shape {shape}; Darknet "
                          "adds a smaller map into every (H2 / H1)-th position of the larger, "
                          "which cnnc cannot express (it samples a larger 'from' map with one "
                          "stride for rows and columns)", "from")
        keep = min(c1, c2)
        y = other
        for axis, size, other_size in (("rows", h2, h1), ("cols", w2, w1)):
            if other_size != size:
                keys = {"axis": axis, "stop": (size - 1) * stride + 1, "step": stride}
                y = self.add(f"{name}.from.{axis}", "slice", keys, [y])
        if c1 > keep:
            y = self.add(f"{name}.from.channels", "slice", {"stop": keep}, [y])
        if c2 == keep:
            return self.add(name, "add", {}, [x, y])
        head = self.add(f"{name}.head", "slice", {"stop": keep}, [x])
        total = self.add(f"{name}.sum", "add", {}, [head, y])
        tail = self.add(f"{name}.tail", "slice", {"start": keep}, [x])
        return self.add(name, "concat", {}, [total, tail])

    def route(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        groups, group_id = r.int("groups", 1), r.int("group_id", 0)
        if groups < 1 or not 0 <= group_id < groups:
            raise r.error(f"groups={groups}, group_id={group_id}: Darknet takes group group_id "
                          "(0 to groups - 1) of each layer's channels",
                          "group_id" if groups >= 1 else "groups")
        sources = [self.source_of(r, "layers", ref, i) for ref in self.indices(r, "layers")]
        if groups > 1:  # each source's group_id-th of groups equal parts, its channels
            sources = [self.channel_group(r, f"route{i}" if len(sources) == 1 else
                                          f"route{i}.group{k}", *source, groups, group_id)
                       for k, source in enumerate(sources)]
            if len(sources) == 1:
                return sources[0]
        if len(sources) == 1:  # one layer: its output, as it is
            return self.add(f"route{i}", "identity", {}, [sources[0][0]]), sources[0][1]
        shapes = [s for _, s in sources]
        if any(len(s) != 3 or s[1:] != shapes[0][1:] for s in shapes):
            raise r.error(f"joins maps of shapes {', '.join(map(str, shapes))}; a route "
                          "concatenates maps of one height and width", "layers")
        out = (sum(s[0] for s in shapes), *shapes[0][1:])
        return self.add(f"route{i}", "concat", {}, [n for n, _ in sources]), out

    def channel_group(self, r: CfgReader, name: str, source: str, shape: tuple, groups: int,
                      group_id: int) -> tuple[str, tuple]:
        """Darknet copies the group_id-th of ``groups`` equal stretches of each sample's values:
        whole channels when the channels divide evenly (YOLOv4-tiny's CSP halves)::

            - {name: route3, type: slice, start: 32, inputs: [conv2.leaky_relu]}
        """
        channels = shape[0]
        if channels % groups:
            raise r.error(f"groups={groups} does not divide the {channels} channels of "
                          f"{shape}; Darknet's part would cut through a channel", "groups")
        part = channels // groups
        keys = {"start": part * group_id, "stop": part * (group_id + 1) if group_id + 1 < groups
                else None}
        return self.add(name, "slice", keys, [source]), (part, *shape[1:])

    def upsample(self, r: CfgReader, i: int, x: str, shape: tuple) -> tuple[str, tuple]:
        c, h, w = self.spatial(r, shape)
        stride = r.int("stride", 2)
        if stride < 1:
            raise r.error(f"stride={stride} downsamples; cnnc converts upsampling by an "
                          "integer factor >= 1", "stride")
        r.expect("scale", "1", "cnnc's upsample does not scale the values")
        return self.add(f"upsample{i}", "upsample", {"scale": stride}, [x]), \
            (c, h * stride, w * stride)

    # -- helpers -----------------------------------------------------------------------------
    def spatial(self, r: CfgReader, shape: tuple) -> tuple:
        if len(shape) != 3:
            raise r.error(f"reads a vector of {shape[0]} values; this layer needs a "
                          "(C, H, W) map")
        return shape

    def indices(self, r: CfgReader, key: str) -> list[int]:
        try:
            return [int(v) for v in r.text(key).split(",") if v.strip()]
        except ValueError:
            raise r.error(f"{key}={r.text(key)} is not a list of layer numbers", key) from None


# the sections cnnc converts (each a method of Converter), and Darknet's short names for some
SECTIONS = ("convolutional", "maxpool", "avgpool", "connected", "dropout", "softmax",
            "shortcut", "route", "upsample")
ALIASES = {"conv": "convolutional", "max": "maxpool", "avg": "avgpool", "soft": "softmax"}


def net_input(source: str, section: Section) -> tuple[int, int, int]:
    r = CfgReader(source, section)
    shape = tuple(r.int(k, 0) for k in ("channels", "height", "width"))
    if min(shape) < 1:
        raise r.error(f"channels, height and width are {shape}; the input needs all three "
                      "(each >= 1)")
    return shape


def import_darknet(path, weights=None) -> tuple[str, dict[str, np.ndarray]]:
    """(spec text, weights) of the Darknet model ``path`` (a ``.cfg``); the weights are read
    from ``weights``, else from ``<stem>.weights`` beside the cfg; with neither, the spec comes
    without weights."""
    path = Path(path)
    source = str(path)
    sections = parse_cfg(path.read_text(encoding="utf-8", errors="replace"), source)
    weights_path = Path(weights) if weights else path.with_suffix(".weights")
    if weights and not weights_path.exists():
        raise ModelImportError(f"{weights_path}: no such weights file")
    wf = WeightFile(weights_path) if weights_path.exists() else None
    conv = Converter(source, wf if wf is not None else ZeroWeights())
    input_shape = net_input(source, sections[0])
    x, shape = "input", input_shape
    training = [k for k in sections[0].keys if k not in ("channels", "height", "width")]
    if training:
        conv.notes.append(f"{source}:{sections[0].line}: [net]: {', '.join(training)} "
                          "(training and input settings) are not part of the spec")
    for i, section in enumerate(sections[1:]):
        x, shape = convert_section(conv, CfgReader(source, section), i, x, shape)
    if wf is not None:
        wf.finish()
    outputs = list(dict.fromkeys(conv.heads))
    if conv.outputs and conv.outputs[-1] is not None:
        outputs.append(x)
    for note in conv.notes:
        print(f"note: {note}", file=sys.stderr)
    header = f"imported from {path.name}" + "".join(f"\n{n}" for n in conv.notes)
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.stem) or "darknet"
    text, params = write_spec(name, list(input_shape), conv.layers, outputs, source, header)
    return text, params if wf is not None else {}


def convert_section(conv: Converter, r: CfgReader, i: int, x: str, shape: tuple):
    """Darknet's layer ``i`` added to ``conv``; its output and shape, which the next reads."""
    kind = ALIASES.get(r.section.kind, r.section.kind)
    if kind in HEADS:
        conv.heads.append(x)
        conv.notes.append(f"{r.where()}: layer {i} is a {kind} head, not converted; the spec "
                          f"outputs '{x}', the map it reads")
        conv.outputs.append(None)
        return x, shape
    if kind not in SECTIONS:
        raise r.error(f"layer {i}: cnnc cannot convert a [{r.section.kind}] section; it "
                      f"converts {', '.join(SECTIONS)} and ends the spec's branch at "
                      f"{', '.join(HEADS)}")
    if conv.outputs and conv.outputs[-1] is None and kind != "route":
        raise r.error(f"layer {i} reads the detection head before it; cnnc does not convert "
                      "heads")
    x, shape = getattr(conv, kind)(r, i, x, shape)
    left = r.unused()
    if left:
        raise r.error(f"the key '{left[0]}' is not one cnnc reads for [{r.section.kind}] (it "
                      "may change what the layer computes)", left[0])
    conv.outputs.append((x, shape))
    return x, shape


class ZeroWeights:
    """Stands in for a missing ``.weights`` file: zeros of every shape, so that the spec is
    still checked against weights of the shapes it gives (and none are returned)."""

    def take(self, shape, what: str) -> np.ndarray:
        return np.zeros(shape, np.float32)


__all__ = ["import_darknet", "parse_cfg"]

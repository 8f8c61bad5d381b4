"""From spec text to a flat, named list of layers: blocks expanded, names and inputs resolved.

```yaml
name: tiny
input: [3, 32, 32]
blocks:
  basic:
    params: {filters: null, stride: 1}          # null = required
    layers:
      - {name: conv1, type: conv2d, filters: $filters, kernel: 3, stride: $stride, padding: 1}
      - {name: relu1, type: relu}
      - {name: add, type: add, inputs: [relu1, input]}   # 'input' = the block's input
layers:
  - {name: stem, type: conv2d, filters: 16, kernel: 3, padding: same}
  - {name: layer1, type: basic, filters: 16, repeat: 2}  # layer1.0.conv1 ... layer1.1.add
```

Every problem found is collected with its file, line and column, and the layer it belongs
to; parsing goes on after a bad layer so one run reports them all.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Diagnostic, DiagnosticSink, FieldError, SourceLoc, SpecError, display_path
from ..layers import LAYER_TYPES, Layer
from ..layers.fields import MAX_INT, describe, parse_fields, positive_int, show_int
from ..suggest import did_you_mean, one_of
from .train_config import OPTIMIZERS, Schedule, TrainConfig
from .yaml_source import MAX_FILE_BYTES, YamlList, YamlMap, gc_paused, parse_yaml

TOP_KEYS = ("name", "input", "inputs", "blocks", "layers", "outputs", "train", "description")
MAX_INPUTS = 64
LAYER_RESERVED = ("type", "name", "inputs")
INSTANCE_RESERVED = ("type", "name", "inputs", "repeat")
BLOCK_KEYS = ("params", "layers", "output", "description")
# Names of the model, blocks and layers. They become parts of file names, parameter names
# ('layer1.0.conv1.weight') and printed messages, so: no path separators, no leading '.' or
# '-' ('..', hidden files, options), nothing a terminal would act on.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
NAME_EXPECTED = "a name of ASCII letters, digits, '_', '-' and '.', not starting with '.' or '-'"
MAX_NAME = 200
PARAM_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Bounds that keep hostile or mistyped specs cheap to refuse. The largest classic networks
# expand to about a thousand layers; no size of a real layer is near 2**31 (TVM indexes with
# int32); an expression of block parameters is a few characters.
MAX_LAYERS = 20_000
MAX_SIZE = MAX_INT
MAX_EXPRESSION = 200
MAX_ERRORS = 100
MAX_SUGGEST_OPTIONS = 1_000
MAX_SUGGEST_WORK = 5_000


@dataclass
class LayerDecl:
    """One layer after expansion: its global name, parsed settings, inputs and origin."""

    name: str
    layer: Layer
    inputs: tuple[str, ...]
    loc: SourceLoc
    notes: tuple[str, ...] = ()

    @property
    def type(self) -> str:
        return self.layer.type_name


@dataclass
class Spec:
    """A parsed spec: the flat layer list every later stage builds on."""

    name: str
    path: str
    inputs: dict[str, tuple[int, ...]]  # input name -> per-sample shape, in spec order
    input_locs: dict[str, SourceLoc]
    layers: list[LayerDecl]
    outputs: list[str]
    train: TrainConfig
    text: str
    warnings: list[Diagnostic] = field(default_factory=list)
    unbatched: frozenset = frozenset()  # inputs without the batch axis (batched: false)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The first input's per-sample shape (the only one of an ``input:`` spec)."""
        return next(iter(self.inputs.values()))

    @property
    def source_lines(self) -> list[str]:
        return self.text.splitlines()


@dataclass(frozen=True)
class Block:
    name: str
    params: dict          # name -> default (None = required)
    param_source: YamlMap
    layers: YamlList
    output: str | None
    loc: SourceLoc
    output_loc: SourceLoc | None = None


@dataclass(frozen=True)
class Scope:
    """Where a list of layers is being expanded: name prefix, the scope's input, block params."""

    prefix: str = ""
    input_name: str = "input"
    params: dict | None = None      # block parameter -> (value, loc)
    stack: tuple[str, ...] = ()     # blocks being expanded, to refuse recursion
    notes: tuple[str, ...] = ()


class SpecParser:
    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.sink = DiagnosticSink(text.splitlines())
        self.blocks: dict[str, Block] = {}
        self.decls: list[LayerDecl] = []
        self.produced: dict[str, SourceLoc] = {}  # every name taken, with where
        self.input_names: list[str] = []
        self.unbatched: set[str] = set()  # inputs without the batch axis
        self.aliases: dict[str, str] = {}  # every name a later layer may use -> its output
        self.expanded = 0  # layer entries expanded so far, blocks and repeats included
        self.suggest_work = MAX_SUGGEST_WORK  # names 'did you mean' may still compare

    # -- diagnostics ------------------------------------------------------------------------
    def error(self, message, loc, layer=None, ltype=None, expected=None, fix=None, notes=()):
        # a message may quote a value of a mebibyte (aliased a hundred times)
        self.sink.add(Diagnostic(_clip(message), loc, _clip(layer, 100), _clip(ltype, 60),
                                 _clip(expected), _clip(fix), notes=tuple(notes)))
        if len(self.sink.errors) >= MAX_ERRORS:
            self.sink.add(Diagnostic(f"stopped after {MAX_ERRORS} errors", None,
                                     fix="fix these and run cnnc check again"))
            raise SpecError(self.sink.items, self.sink.source_lines)

    def field_error(self, exc: FieldError, loc, layer=None, ltype=None, notes=()):
        self.error(exc.message, loc, layer, ltype, exc.expected, exc.fix, notes)

    def did_you_mean(self, word, options) -> str | None:
        """did_you_mean over at most MAX_SUGGEST_OPTIONS names of about the word's length, and
        over MAX_SUGGEST_WORK names in all, so a spec of thousands of layers with a hundred
        misspelt inputs is not slow to report (nor one with a word of a mebibyte, which no
        name is close to)."""
        if len(str(word)) > MAX_NAME or self.suggest_work <= 0:
            return None
        options = [str(o) for o in options]
        if len(options) > MAX_SUGGEST_OPTIONS:
            n = len(str(word))
            options = [o for o in options if abs(len(o) - n) <= 2][:MAX_SUGGEST_OPTIONS]
        self.suggest_work -= len(options)
        return did_you_mean(word, options)

    # -- top level --------------------------------------------------------------------------
    def parse(self) -> Spec:
        doc = parse_yaml(self.text, self.path)
        if not isinstance(doc, YamlMap):
            raise SpecError([Diagnostic(
                f"the spec must be a mapping, received {_brief(doc)}",
                getattr(doc, "loc", SourceLoc(self.path, 1, 1)),
                expected="a mapping with the keys name, input and layers",
                fix="write e.g. 'input: [1, 28, 28]' and a 'layers:' list")],
                self.sink.source_lines)
        for key in doc:
            if key not in TOP_KEYS:
                self.error(f"unknown top-level key '{key}'", doc.key_loc(key),
                           expected="one of: " + ", ".join(TOP_KEYS),
                           fix=self.did_you_mean(key, TOP_KEYS) or f"remove '{key}'")
        name = self.parse_name(doc)
        inputs, input_locs = self.parse_inputs(doc)
        self.parse_blocks(doc.get("blocks"), doc)
        layers = doc.get("layers")
        last = None
        if not isinstance(layers, YamlList) or not layers:
            self.error("missing required key 'layers'" if layers is None else
                       f"'layers' must be a non-empty list, received {_brief(layers)}",
                       doc.loc_of("layers") if "layers" in doc else doc.loc,
                       expected="a list of layers such as {type: conv2d, filters: 16, kernel: 3}",
                       fix="add 'layers:' with one '- {type: ...}' line per layer")
        else:
            last = self.expand(layers, Scope(input_name=next(iter(inputs))))
        outputs = self.parse_outputs(doc, last)
        train = self.parse_train(doc.get("train"), doc.loc_of("train"))
        train = self.resolve_loss_outputs(train, doc.get("train"), outputs)
        self.sink.raise_if_errors()
        return Spec(name, self.path, inputs, input_locs, self.decls, outputs, train, self.text,
                    self.sink.warnings, frozenset(self.unbatched))

    def parse_name(self, doc: YamlMap) -> str:
        default = safe_name(Path(self.path).stem, "model")
        if "name" not in doc:
            return default
        name = doc["name"]
        if isinstance(name, bool) or not isinstance(name, (str, int)):
            self.error(f"'name' must be a string, received {_brief(name)}", doc.loc_of("name"),
                       fix="write e.g. name: resnet18")
            return default
        problem = name_problem(str(name), "model")
        if problem is not None:
            self.error(f"the model name '{_shorten(str(name))}' {problem.message}",
                       doc.loc_of("name"), expected=problem.expected, fix=problem.fix)
            return default
        return str(name)

    def parse_inputs(self, doc: YamlMap) -> tuple[dict, dict]:
        """``input: [C, H, W]`` (one input, named ``input``) or ``inputs:``, a mapping of names
        to shapes: ``inputs: {image: [3, 64, 64], side: [8]}``. Layers name an input as they
        name a layer; the first layer reads the first input unless it says otherwise."""
        if "inputs" not in doc:
            shape, loc = self.parse_input(doc), doc.loc_of("input")
            self.produced["input"] = loc
            self.input_names = ["input"]
            return {"input": shape}, {"input": loc}
        if "input" in doc:
            self.error("a spec has 'input' or 'inputs', not both", doc.key_loc("inputs"),
                       fix="name every input under 'inputs', or keep 'input' alone")
        raw = doc["inputs"]
        if not isinstance(raw, YamlMap) or not raw or len(raw) > MAX_INPUTS:
            self.error(f"'inputs' must map input names to shapes, received {_brief(raw)}",
                       doc.loc_of("inputs"),
                       expected=f"a mapping of 1 to {MAX_INPUTS} names to per-sample shapes",
                       fix="write e.g. inputs: {image: [3, 64, 64], side: [8]}")
            return {"input": (1,)}, {"input": doc.loc_of("inputs")}
        shapes, locs = {}, {}
        for key, value in raw.items():
            name = self.input_name(key, raw)
            found = self.named_input_shape(value, raw.loc_of(key),
                                           f"'inputs.{_shorten(str(key))}'")
            if name is not None and found is not None:
                shape, batched = found
                if batched:
                    self.warn_if_channels_last(shape, raw.loc_of(key))
                else:
                    self.unbatched.add(name)
                shapes[name], locs[name] = shape, raw.loc_of(key)
                self.produced[name] = raw.key_loc(key)
                self.aliases[name] = name
        self.input_names = list(shapes)
        if shapes and self.unbatched == set(shapes):
            self.error("every input is without the batch axis (batched: false)", raw.loc,
                       expected="at least one batched input: the samples the rows belong to",
                       fix="give the feature maps or images as a batched input")
        return (shapes, locs) if shapes else ({"input": (1,)}, {"input": raw.loc})

    def input_name(self, key, raw: YamlMap) -> str | None:
        problem = name_problem(str(key), "image") if isinstance(key, (str, int)) and \
            not isinstance(key, bool) else FieldError(f"is {_brief(key)}, not a name")
        if problem is None and key == "input":
            problem = FieldError("is 'input', which layers use for the first input",
                                 fix="choose another name, e.g. image")
        if problem is not None:
            self.error(f"the input name {problem.message}", raw.key_loc(key),
                       expected=problem.expected, fix=problem.fix)
            return None
        return str(key)

    def named_input_shape(self, value, loc, what: str):
        """One named input: ``[C, H, W]``, or ``{shape: [...], batched: false}`` for a
        tensor without the batch axis, ``[null, 5]``: R rows of 5, R known only when it runs
        (the boxes of a RoI pool). Returns (per-row shape, batched) or None."""
        batched = True
        if isinstance(value, YamlMap):
            extra = [k for k in value if k not in ("shape", "batched")]
            if extra or "shape" not in value:
                self.error(f"{what}: a mapping takes 'shape' (and 'batched'), received "
                           f"{_brief(value)}", loc, fix="write e.g. {shape: [3, 64, 64]}")
                return None
            batched = value.get("batched", True)
            if not isinstance(batched, bool):
                self.error(f"{what}: 'batched' is true or false, received {_brief(batched)}",
                           value.loc_of("batched"))
                return None
            value, loc = value["shape"], value.loc_of("shape")
        try:
            if not batched:
                return self.rows_shape_of(value), False
            return self.shape_of(value), True
        except FieldError as exc:
            self.error(f"{what}: {exc.message}", loc,
                       expected="[null, ...], rows of a size known when it runs, then 0 to 3 "
                                "positive integers" if not batched else
                       "a list of 1 to 3 positive integers: [C, H, W], [C, T] or [F]",
                       fix=exc.fix or ("write e.g. {shape: [null, 5], batched: false}"
                                       if not batched else "write e.g. [3, 64, 64]"))
            return None

    def rows_shape_of(self, value) -> tuple[int, ...]:
        """``[null, 5]``: the shape after the rows, ``(5,)``."""
        if not isinstance(value, list) or not value or value[0] is not None:
            raise FieldError(f"received {_brief(value)}; an input without the batch axis "
                             "starts with null, its number of rows")
        return self.shape_of(value[1:]) if len(value) > 1 else ()

    @staticmethod
    def shape_of(value) -> tuple[int, ...]:
        if not isinstance(value, list) or not 1 <= len(value) <= 3:
            raise FieldError(f"received {_brief(value)}")
        for v in value:
            if v is None:
                raise FieldError("received null for a size", fix="give every size; an input "
                                 "of R rows known only when it runs has no batch axis: "
                                 "{shape: [null, 5], batched: false}")
            if isinstance(v, int) and v > MAX_SIZE:
                raise FieldError(f"{show_int(v)} is larger than any input cnnc accepts "
                                 f"(at most {MAX_SIZE:,} per axis)")
        return tuple(positive_int(v) for v in value)

    def parse_input(self, doc: YamlMap) -> tuple[int, ...]:
        if "input" not in doc:
            self.error("missing required key 'input'", doc.loc,
                       expected="the per-sample input shape: [C, H, W] or [C, T]",
                       fix="add 'input: [3, 32, 32]' for 32x32 RGB images")
            return (1,)
        value = doc["input"]
        try:
            shape = self.shape_of(value)
        except FieldError as exc:
            self.error(f"'input': {exc.message}", doc.loc_of("input"),
                       expected="a list of 1 to 3 positive integers: [C, H, W], [C, T] or [F]",
                       fix="write e.g. input: [1, 28, 28]")
            return (1,)
        self.warn_if_channels_last(shape, doc.loc_of("input"))
        return shape

    def warn_if_channels_last(self, shape: tuple[int, ...], loc) -> None:
        """``[32, 32, 3]`` is an image in Keras's and TensorFlow's layout, where cnnc, as
        PyTorch, takes channels first: as written, it is 32 channels of 32x3 pixels."""
        if len(shape) == 3 and shape[2] in (1, 3, 4) and shape[0] > 4 and shape[1] > 4:
            h, w, c = shape
            self.sink.warn(f"'input' {list(shape)} looks like an image with its channels last "
                           f"(height, width, channels); cnnc reads it as {h} channels of "
                           f"{w}x{c}", loc, expected="[C, H, W], channels first, as PyTorch",
                           fix=f"write input: [{c}, {h}, {w}] and give arrays as (N, {c}, {h}, "
                               f"{w}), e.g. x.transpose(0, 3, 1, 2)")

    def parse_outputs(self, doc: YamlMap, last: str | None) -> list[str]:
        raw = doc.get("outputs")
        if raw is None:
            return [last] if last else []
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            self.error(f"'outputs' must be a list of layer names, received {_brief(raw)}",
                       doc.loc_of("outputs"))
            return [last] if last else []
        outs: dict[str, None] = {}  # ordered, and a set: a model may return every layer
        for i, item in enumerate(raw):
            where = raw.loc_of(i) if isinstance(raw, YamlList) else doc.loc_of("outputs")
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                self.error(f"'outputs' lists {_brief(item)}, not a layer name", where,
                           expected="names of layers whose values the model returns")
                continue
            name = str(item)
            resolved = self.aliases.get(name)
            problem = None if resolved is not None else name_problem(name)
            if problem is not None:
                self.error(f"output name '{_shorten(name)}' {problem.message}", where,
                           expected=problem.expected, fix="list the name of a layer")
            elif name == "input" or resolved in self.input_names:
                self.error(f"output '{name}' is the model's input, not a layer", where,
                           expected="names of layers whose values the model returns",
                           fix="list a layer, or add {type: identity} and list that")
            elif resolved is None:
                options = [n for n in self.aliases if n not in self.input_names]
                self.error(f"output '{_shorten(name)}' is not a layer of this spec", where,
                           expected="names of layers whose values the model returns",
                           fix=self.did_you_mean(name, options) or "check the spelling")
            elif resolved in outs:
                self.error(f"output '{name}' is listed twice", where,
                           fix="list each output once")
            else:
                outs[resolved] = None
        return list(outs)

    # -- blocks -----------------------------------------------------------------------------
    def parse_blocks(self, raw, doc: YamlMap) -> None:
        if raw is None:
            return
        if not isinstance(raw, YamlMap):
            self.error(f"'blocks' must be a mapping of block names to blocks, "
                       f"received {_brief(raw)}", doc.loc_of("blocks"))
            return
        for written, body in raw.items():
            loc, name_loc, name = raw.loc_of(written), raw.key_loc(written), str(written)
            if isinstance(written, bool) or not isinstance(written, (str, int)):
                self.error(f"a block name must be a string, received {_brief(written)}",
                           name_loc, fix="write e.g. 'basic:' under 'blocks:'")
                continue
            problem = name_problem(name, "block1")
            if problem is not None:
                self.error(f"block '{_shorten(name)}': the block name {problem.message}",
                           name_loc, expected=problem.expected, fix=problem.fix)
                continue
            if name in LAYER_TYPES:
                self.error(f"block '{name}' has the name of a built-in layer type", name_loc,
                           fix="rename the block")
                continue
            if not isinstance(body, YamlMap):
                self.error(f"block '{name}' must be a mapping with 'params' and 'layers'", loc)
                continue
            for key in body:
                if key not in BLOCK_KEYS:
                    self.error(f"block '{name}': unknown key '{key}'", body.key_loc(key),
                               expected="one of: " + ", ".join(BLOCK_KEYS),
                               fix=self.did_you_mean(key, BLOCK_KEYS) or f"remove '{key}'")
            params = body.get("params", YamlMap())
            if params is None:
                params = YamlMap()
            if not isinstance(params, YamlMap):
                self.error(f"block '{name}': 'params' must be a mapping of names to defaults "
                           "(null for required)", body.loc_of("params"))
                continue
            defaults = {}
            for param, default in params.items():
                if isinstance(param, str) and PARAM_NAME_RE.fullmatch(param):
                    defaults[param] = default
                else:
                    self.error(f"block '{name}': parameter {_brief(param)} is not a name "
                               "that '$' can refer to", params.key_loc(param),
                               expected="letters, digits and '_', not starting with a digit",
                               fix="rename it, e.g. filters")
            layers = body.get("layers")
            if not isinstance(layers, YamlList) or not layers:
                self.error(f"block '{name}' needs a non-empty 'layers' list",
                           body.loc_of("layers") if "layers" in body else body.loc)
                continue
            output = body.get("output")
            if output is not None and not self.block_declares(layers, str(output)):
                names = self.block_names(layers)
                self.error(f"block output '{output}' is not a layer of the block",
                           body.loc_of("output"), expected="the name of one of its layers",
                           fix=self.did_you_mean(output, names) or f"use one of: {one_of(names)}")
                output = None  # still expand the block, so its instances are checked
            self.blocks[name] = Block(name, defaults, params, layers,
                                      None if output is None else str(output), body.loc,
                                      body.loc_of("output"))

    @staticmethod
    def block_names(layers: YamlList) -> list[str]:
        return [str(e.get("name", i)) for i, e in enumerate(layers) if isinstance(e, dict)]

    def block_declares(self, layers: YamlList, name: str) -> bool:
        names = self.block_names(layers)
        # a name made from a block parameter ($branch) is only known when expanded
        return name in names or any("$" in n for n in names)

    # -- expansion --------------------------------------------------------------------------
    def expand(self, entries: YamlList, scope: Scope, output: str | None = None,
               output_loc: SourceLoc | None = None) -> str | None:
        """Expand one list of layers; returns the global name of its output."""
        declared = {}
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and "name" in entry:
                declared.setdefault(str(entry["name"]), entry)
        local: dict[str, str] = {}
        local_locs: dict[str, SourceLoc] = {}
        prev = scope.input_name
        for i, raw in enumerate(entries):
            loc = entries.loc_of(i)
            self.count_expansion(loc, scope)
            if not isinstance(raw, YamlMap):
                self.error(f"a layer must be a mapping, received {_brief(raw)}", loc,
                           expected="a mapping such as {type: relu} or "
                                    "{name: fc, type: dense, units: 10}",
                           notes=scope.notes)
                continue
            entry = self.substitute_entry(raw, scope)
            if entry is None:
                continue
            name = self.local_name(entry, i, loc, local_locs, scope)
            if name is None:
                continue
            ltype = entry.get("type")
            if ltype is None:
                self.error("missing required key 'type'", loc, name, "?",
                           fix="add e.g. 'type: conv2d'", notes=scope.notes)
                continue
            if not isinstance(ltype, str):
                self.error(f"'type' must be a string, received {_brief(ltype)}",
                           entry.loc_of("type"), name, "?", notes=scope.notes)
                continue
            inputs, inputs_ok = self.resolve_inputs(entry, prev, local, declared, scope, name,
                                                    ltype)
            full = scope.prefix + name
            if ltype in self.blocks:
                if not inputs_ok:  # still expand, to report what is wrong inside the block
                    inputs = inputs[:1] or (prev,)
                produced = self.expand_block(self.blocks[ltype], entry, scope, full, inputs, loc)
            else:
                produced = self.add_layer(entry, ltype, full, inputs, loc, scope, inputs_ok)
            if produced is None:
                # keep later layers checkable: they see the failed layer's input instead
                produced = inputs[0] if inputs else prev
            local[name] = produced
            self.aliases[full] = produced
            prev = produced
        if output is not None:
            if output not in local:
                self.error(f"block output '{output}' is not a layer of the block",
                           output_loc or entries.loc, expected="the name of one of its layers",
                           fix=self.did_you_mean(output, local) or "name one of its layers",
                           notes=scope.notes)
                return prev
            return local[output]
        return prev

    def count_expansion(self, loc, scope) -> None:
        """Refuse a spec that expands to more layers than any real network has (a repeat
        typo or nested repeats), before the expansion costs time and memory."""
        self.expanded += 1
        if self.expanded > MAX_LAYERS:
            self.sink.add(Diagnostic(
                f"the spec expands to more than {MAX_LAYERS:,} layers; refused", loc,
                expected="a network of at most a few thousand layers",
                fix="check 'repeat' and blocks that use other repeated blocks",
                notes=scope.notes))
            raise SpecError(self.sink.items, self.sink.source_lines)

    def local_name(self, entry, index, loc, local_locs, scope) -> str | None:
        raw = entry.get("name", str(index))
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            self.error(f"'name' must be a string, received {_brief(raw)}", entry.loc_of("name"),
                       notes=scope.notes)
            return None
        name = str(raw)
        ltype = entry.get("type", "?")
        problem = name_problem(name)
        if problem is not None:
            self.error(f"the layer name {problem.message}", entry.loc_of("name"),
                       _shorten(scope.prefix + name),
                       _shorten(ltype, 40) if isinstance(ltype, str) else "?", problem.expected,
                       problem.fix, notes=scope.notes + self.subst_notes(entry, "name"))
            return None
        if name == "input":
            self.error("'input' is reserved for the model's (or block's) input",
                       entry.loc_of("name"), name, ltype, fix="choose another name",
                       notes=scope.notes)
            return None
        full = scope.prefix + name
        if name in local_locs or full in self.produced:
            first = local_locs.get(name) or self.produced.get(full)
            self.error(f"duplicate layer name '{full}' (first at line {first.line})",
                       entry.loc_of("name"), full, ltype, expected="unique layer names",
                       fix="rename one of the two layers", notes=scope.notes)
            return None
        local_locs[name] = loc
        return name

    def resolve_inputs(self, entry, prev, local, declared, scope, name, ltype):
        """The global names of a layer's inputs, and whether every one of them resolved (a
        layer with a bad input is not checked further, so one typo gives one error)."""
        if "inputs" not in entry:
            return (prev,), True
        raw = entry["inputs"]
        items = [raw] if isinstance(raw, (str, int)) and not isinstance(raw, bool) else raw
        where = entry.loc_of("inputs")
        if not isinstance(items, list) or not items:
            self.error(f"'inputs' must be a list of layer names, received {_brief(raw)}",
                       where, scope.prefix + name, ltype,
                       fix="write e.g. inputs: [conv1, input]", notes=scope.notes)
            return (prev,), False
        out = []
        for j, item in enumerate(items):
            item_loc = items.loc_of(j) if isinstance(items, YamlList) else where
            ref = str(item) if isinstance(item, (str, int)) else _brief(item)
            if ref == "input" and not scope.prefix and len(self.input_names) > 1:
                self.error("'input' is ambiguous: this spec has inputs "
                           f"{', '.join(self.input_names)}", item_loc, scope.prefix + name,
                           ltype, fix=f"name one of them, e.g. inputs: [{self.input_names[0]}]",
                           notes=scope.notes)
            elif ref == "input":
                out.append(scope.input_name)
            elif ref in local:
                out.append(local[ref])
            elif scope.prefix == "" and ref in self.aliases:
                out.append(self.aliases[ref])
            elif ref in declared:
                self.error(f"input '{ref}' is defined later (line {declared[ref].loc.line})",
                           item_loc, scope.prefix + name, ltype,
                           expected="inputs that name earlier layers",
                           fix=f"move '{ref}' before '{scope.prefix + name}'",
                           notes=scope.notes)
            else:
                options = list(local) + ["input"] + (list(self.aliases) if not scope.prefix else [])
                self.error(f"unknown input '{ref}'", item_loc, scope.prefix + name, ltype,
                           expected="the name of an earlier layer, or 'input'",
                           fix=self.did_you_mean(ref, options) or "check the spelling",
                           notes=scope.notes)
        return tuple(out), len(out) == len(items)

    def add_layer(self, entry, ltype, full, inputs, loc, scope, inputs_ok=True) -> str | None:
        cls = LAYER_TYPES.get(ltype)
        if cls is None or cls.internal:
            options = [t for t, c in LAYER_TYPES.items() if not c.internal] + list(self.blocks)
            self.error(f"unknown layer type '{ltype}'", entry.loc_of("type"), full, ltype,
                       expected="a layer type or a block name",
                       fix=self.did_you_mean(ltype, options) or
                       f"known types: {one_of(options)}; a layer type declared in a Python file "
                       "is known once that file is loaded (cnnc --layers FILE)",
                       notes=scope.notes)
            return None
        reserved = LAYER_RESERVED + (("activation",) if cls.takes_activation else ())
        kwargs, problems = parse_fields(cls, entry, reserved)
        for key, exc in problems:
            if key == "repeat":
                exc = FieldError("'repeat' is only for block instances",
                                 fix=f"define a block holding this {ltype} and repeat that")
            where = loc if key is None else \
                entry.key_loc(key) if key not in cls.keys() else entry.loc_of(key)
            notes = scope.notes + self.subst_notes(entry, key)
            self.field_error(exc, where, full, ltype, notes)
        if problems or not inputs_ok:
            return None
        n = len(inputs)
        if n < cls.min_inputs or (cls.max_inputs is not None and n > cls.max_inputs):
            want = (f"{cls.min_inputs}" if cls.max_inputs == cls.min_inputs else
                    f"at least {cls.min_inputs}" if cls.max_inputs is None else
                    f"{cls.min_inputs} to {cls.max_inputs}")
            given = ", ".join(f"'{i}'" for i in inputs)
            self.error(f"{ltype} takes {want} input(s), received {n} ({given})",
                       entry.loc_of("inputs") if "inputs" in entry else loc, full, ltype,
                       fix="list the branches to merge in 'inputs', e.g. inputs: [conv2, input]"
                       if cls.min_inputs > 1 else
                       "list one layer in 'inputs', or join the branches first with add or "
                       "concat", notes=scope.notes)
            return None
        try:
            layer = cls(**kwargs)
        except FieldError as exc:
            self.field_error(exc, loc, full, ltype, scope.notes)
            return None
        self.decls.append(LayerDecl(full, layer, tuple(inputs), loc, scope.notes))
        self.produced[full] = loc
        if "activation" in entry and cls.takes_activation:
            return self.add_activation(entry, full, ltype, scope)
        return full

    def add_activation(self, entry, full: str, ltype: str, scope) -> str:
        """Keras's ``activation:`` on conv and dense layers, written out as the activation
        layer ``<layer>.<type>`` after it; later layers and ``outputs`` naming the layer get
        the activation's output, as in Keras (the fusion pass puts it back into the layer's
        kernel). ``{name: c1, type: conv2d, filters: 8, kernel: 3, activation: relu}``, or
        ``activation: {type: leaky_relu, alpha: 0.1}``; ``linear`` or null for none."""
        value, where = entry["activation"], entry.loc_of("activation")
        if value is None or value == "linear":
            return full
        act = value if isinstance(value, YamlMap) else self.placed({"type": value}, entry,
                                                                    "activation")
        kind = act.get("type")
        cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None or cls.internal or not cls.is_activation:
            options = [t for t, c in LAYER_TYPES.items() if c.is_activation and not c.internal]
            self.error(f"'activation' must name an activation layer type, received "
                       f"{_brief(value)}", where, full, ltype,
                       expected=f"one of: {one_of(options)} (or linear), or a mapping such as "
                                "{type: leaky_relu, alpha: 0.1}",
                       fix=(self.did_you_mean(kind, options) if isinstance(kind, str) else None)
                       or "or write the activation as a layer of its own after this one",
                       notes=scope.notes)
            return full
        if "name" in act or "inputs" in act:
            self.error("an 'activation' takes no name or inputs", where, full, ltype,
                       fix=f"remove them: it is named '{full}.{kind}' and takes this layer's "
                           "output; or write it as a layer of its own", notes=scope.notes)
            return full
        name = f"{full}.{kind}"
        if name in self.produced:
            self.error(f"the activation layer '{name}' that 'activation: {kind}' adds is "
                       f"already a layer (line {self.produced[name].line})", where, full, ltype,
                       fix="rename that layer, or write the activation as a layer of its own",
                       notes=scope.notes)
            return full
        return self.add_layer(act, kind, name, (full,), where, scope) or full

    @staticmethod
    def placed(mapping: dict, entry: YamlMap, key: str) -> YamlMap:
        """``mapping`` as if written where ``entry``'s ``key`` is (for its errors)."""
        placed = YamlMap(mapping)
        placed.file, placed.mark = entry.file, entry.marks.get(key) or entry.mark
        return placed

    def expand_block(self, block: Block, entry, scope, full, inputs, loc) -> str | None:
        if block.name in scope.stack:
            self.error(f"block '{block.name}' uses itself "
                       f"({' -> '.join(scope.stack + (block.name,))})", entry.loc_of("type"),
                       full, block.name, fix="a block cannot contain itself", notes=scope.notes)
            return None
        if len(inputs) != 1:
            self.error(f"block '{block.name}' takes one input, received {len(inputs)}",
                       entry.loc_of("inputs"), full, block.name, notes=scope.notes)
            return None
        params, ok = {}, True
        for key in entry:
            if key in INSTANCE_RESERVED:
                continue
            if key not in block.params:
                self.error(f"unknown key '{key}' for block '{block.name}'", entry.key_loc(key),
                           full, block.name,
                           expected="block parameters: " + (one_of(block.params) or "none"),
                           fix=self.did_you_mean(key, block.params) or f"remove '{key}'",
                           notes=scope.notes)
                ok = False
            else:
                params[key] = (entry[key], entry.loc_of(key))
        for key, default in block.params.items():
            if key not in params:
                if default is None:
                    self.error(f"missing required block parameter '{key}'", loc, full, block.name,
                               fix=f"add '{key}: <value>'", notes=scope.notes)
                    ok = False
                else:
                    params[key] = (default, block.param_source.loc_of(key) or block.loc)
        repeat = None
        if "repeat" in entry:
            try:
                repeat = entry["repeat"]
                if isinstance(repeat, int) and repeat > MAX_LAYERS:
                    raise FieldError(f"received {show_int(repeat)}",
                                     f"expected at most {MAX_LAYERS:,} repeats")
                repeat = positive_int(repeat)
            except FieldError as exc:
                self.field_error(FieldError(f"key 'repeat': {exc.message}", exc.expected),
                                 entry.loc_of("repeat"), full, block.name, scope.notes)
                ok = False
        if not ok:
            return None
        current = inputs[0]
        for r in range(repeat or 1):
            prefix = f"{full}.{r}." if repeat is not None else f"{full}."
            note = f"in block '{block.name}', expanded as '{prefix[:-1]}' at {loc}"
            inner = Scope(prefix, current, params, scope.stack + (block.name,),
                          scope.notes + (note,))
            current = self.expand(block.layers, inner, block.output, block.output_loc)
        return current

    # -- block parameter substitution -------------------------------------------------------
    def substitute_entry(self, entry: YamlMap, scope: Scope) -> YamlMap | None:
        """The entry with its block parameters replaced (the entry itself when it has none),
        or None when one cannot be."""
        if not any(map(_has_param, entry.values())):
            return entry
        out = YamlMap().placed_like(entry)
        out.from_params = {}
        ok = True
        for key, value in entry.items():
            try:
                out[key], used = self.substitute(value, scope)
            except FieldError as exc:
                name, ltype = entry.get("name"), entry.get("type")
                self.error(exc.message, entry.loc_of(key),
                           _shorten(str(name)) if isinstance(name, (str, int)) else None,
                           _shorten(ltype, 40) if isinstance(ltype, str) else "?",
                           exc.expected, exc.fix, scope.notes)
                ok = False
                continue
            if used:
                out.from_params[key] = used
        return out if ok else None

    def substitute(self, value, scope: Scope):
        """Replace ``$param`` (or an arithmetic expression of params) with the block's value."""
        if isinstance(value, list):
            items, used = [], []
            for v in value:
                new, u = self.substitute(v, scope)
                items.append(new)
                used += u
            return YamlList(items).placed_like(value), used
        if not isinstance(value, str) or "$" not in value:
            return value, []
        names = PARAM_RE.findall(value)
        params = scope.params or {}
        for n in names:
            if n not in params:
                if scope.params is None:
                    raise FieldError(f"'{value}' names a block parameter outside any block",
                                     fix="write the value itself, or move this layer into a block")
                if not params:
                    raise FieldError(f"unknown block parameter '${n}': the block has no params",
                                     fix=f"add 'params: {{{n}: <default>}}' to the block")
                raise FieldError(f"unknown block parameter '${n}'",
                                 "one of: " + ", ".join("$" + p for p in params),
                                 self.did_you_mean("$" + n, ["$" + p for p in params])
                                 or f"add '{n}' to the block's params")
        used = [(n, params[n][1]) for n in names]
        whole = PARAM_RE.fullmatch(value.strip())
        if whole:
            return params[whole.group(1)][0], used
        return evaluate(value, {n: params[n][0] for n in names}), used

    def subst_notes(self, entry, key) -> tuple[str, ...]:
        used = getattr(entry, "from_params", {}).get(key, [])
        return tuple(f"'{key}' comes from ${n} given at {loc}" for n, loc in used)

    # -- train ------------------------------------------------------------------------------
    def parse_train(self, raw, loc) -> TrainConfig:
        if raw is None:
            return TrainConfig(optimizer=OPTIMIZERS["sgd"]())
        if not isinstance(raw, YamlMap):
            self.error(f"'train' must be a mapping, received {_brief(raw)}", loc)
            return TrainConfig(optimizer=OPTIMIZERS["sgd"]())
        plain = {k: v for k, v in raw.items() if k not in ("optimizer", "schedule")}
        kwargs, problems = parse_fields(TrainConfig, plain, ())
        for key, exc in problems:
            self.field_error(FieldError(f"train: {exc.message}", exc.expected, exc.fix),
                             raw.loc_of(key) if key else raw.loc)
        kwargs["optimizer"] = self.parse_optimizer(raw.get("optimizer"), raw.loc_of("optimizer"))
        if "schedule" in raw:
            kwargs["schedule"] = self.parse_schedule(raw["schedule"], raw.loc_of("schedule"))
        return TrainConfig(**kwargs, loc=loc,
                           loss_loc=raw.loc_of("loss") if "loss" in raw else raw.loc)

    def resolve_loss_outputs(self, train: TrainConfig, raw, outputs: list[str]) -> TrainConfig:
        """A loss per output names outputs as ``outputs:`` does (a layer with an activation
        key stands for its activation): each name resolved, and one of the model's outputs."""
        if not isinstance(train.loss, dict) and not train.loss_weights:
            return train
        resolved = {}
        for what in ("loss", "loss_weights"):
            named = getattr(train, what)
            if not isinstance(named, dict):
                continue
            resolved[what] = {}
            for key, value in named.items():
                target = self.aliases.get(key, key)
                if target not in outputs:
                    where = raw[what].key_loc(key) if isinstance(raw, YamlMap) and \
                        isinstance(raw.get(what), YamlMap) else train.loss_loc
                    self.error(f"train.{what} names '{_shorten(key)}', which is not an output",
                               where, expected=f"one of the outputs: {', '.join(outputs)}",
                               fix=self.did_you_mean(key, outputs) or "list it in 'outputs'")
                    continue
                resolved[what][target] = value
        return dataclasses.replace(train, **resolved)

    def parse_optimizer(self, raw, loc):
        if raw is None:
            return OPTIMIZERS["sgd"]()
        if isinstance(raw, str):
            raw = {"type": raw}
        if not isinstance(raw, dict) or "type" not in raw:
            self.error("train.optimizer must be a mapping with a 'type'", loc,
                       expected="a mapping such as {type: sgd, lr: 0.1, momentum: 0.9}",
                       fix="add 'type: sgd' (or adam, adamw)" if isinstance(raw, dict) else
                       "write e.g. optimizer: {type: sgd, lr: 0.1}")
            return OPTIMIZERS["sgd"]()
        kind = raw["type"]
        cls = OPTIMIZERS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            self.error(f"unknown optimizer '{kind}'", getattr(raw, "loc_of", lambda k: loc)("type"),
                       expected="one of: " + ", ".join(OPTIMIZERS),
                       fix=self.did_you_mean(kind, OPTIMIZERS) or "use sgd, adam or adamw")
            return OPTIMIZERS["sgd"]()
        kwargs, problems = parse_fields(cls, raw, ("type",))
        for key, exc in problems:
            where = raw.loc_of(key) if key and isinstance(raw, YamlMap) else loc
            self.field_error(FieldError(f"train.optimizer: {exc.message}", exc.expected, exc.fix),
                             where)
        return cls(**kwargs)

    def parse_schedule(self, raw, loc) -> Schedule:
        if isinstance(raw, str):
            raw = {"type": raw}
        if not isinstance(raw, dict):
            self.error("train.schedule must be a mapping with a 'type'", loc,
                       expected="a mapping such as {type: cosine} or "
                                "{type: step, step_size: 30, gamma: 0.1}")
            return Schedule()
        kwargs, problems = parse_fields(Schedule, raw, ())
        for key, exc in problems:
            where = raw.loc_of(key) if key and isinstance(raw, YamlMap) else loc
            self.field_error(FieldError(f"train.schedule: {exc.message}", exc.expected, exc.fix),
                             where)
        if kwargs.get("type") == "multistep" and "milestones" not in raw:
            self.error("train.schedule: multistep needs 'milestones'", loc,
                       fix="add e.g. milestones: [30, 60]")
        return Schedule(**kwargs)


def name_problem(name: str, example: str = "layer1") -> FieldError | None:
    """What is wrong with ``name`` as the name of a model, block or layer, or None.

    The message completes "the layer name ...": ``contains '/'``, ``starts with '.'``.
    """
    if len(name) <= MAX_NAME and NAME_RE.fullmatch(name):
        return None
    fix = f"rename it, e.g. '{safe_name(name, example, 40)}'"
    if not name:
        return FieldError("is empty", NAME_EXPECTED, "write a name such as 'conv1'")
    if len(name) > MAX_NAME:
        return FieldError(f"is {len(name):,} characters long",
                          f"{NAME_EXPECTED}, of at most {MAX_NAME} characters", fix)
    bad = next((c for c in name if not NAME_RE.fullmatch("a" + c)), None)
    if bad is not None:
        return FieldError(f"contains {_show_char(bad)}", NAME_EXPECTED, fix)
    return FieldError(f"starts with '{name[0]}'", NAME_EXPECTED, fix)


def safe_name(text: str, fallback: str, limit: int = MAX_NAME) -> str:
    """``text`` made into a name: other characters become '_', and what leads up to the first
    letter or digit goes (``../../x`` becomes ``x``)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("._-")[:limit]
    return name or fallback


def _show_char(c: str) -> str:
    """A character as a message names it: '/', a space, U+202E (RIGHT-TO-LEFT OVERRIDE)."""
    if c == " ":
        return "a space"
    if c.isascii() and c.isprintable():
        return f"'{c}'"
    return f"U+{ord(c):04X} ({unicodedata.name(c, 'a control character')})"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _clip(text: str | None, limit: int = 300) -> str | None:
    """``text`` with its middle left out when it is longer than ``limit``, keeping the end,
    where a message says what was expected."""
    if text is None:
        return None
    text = str(text)  # a layer's 'type' may be any YAML value
    if len(text) <= limit:
        return text
    tail = (limit - 5) // 3
    return text[:limit - 5 - tail] + " ... " + text[-tail:]


def _has_param(value) -> bool:
    """Whether a value names a block parameter ($filters), or holds one that does."""
    if isinstance(value, str):
        return "$" in value
    return isinstance(value, list) and any(map(_has_param, value))


def _brief(value, limit: int = 80) -> str:
    """describe() cut to ``limit`` characters: the value may be a whole mistyped spec."""
    text = describe(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_ALLOWED_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
MAX_EXPRESSION_VALUE = 2**63


def evaluate(text: str, values: dict):
    """Evaluate ``$filters * 4``-style arithmetic over block parameters (numbers only)."""
    if len(text) > MAX_EXPRESSION:
        raise FieldError(f"the expression is {len(text)} characters long",
                         f"at most {MAX_EXPRESSION} characters, e.g. '$filters * 4'")
    expr = PARAM_RE.sub(lambda m: m.group(1), text)
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise FieldError(f"cannot read the expression '{text}'",
                         "a block parameter like $filters, or arithmetic like '$filters * 4'") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            v = values[node.id]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise FieldError(f"${node.id} is {_brief(v)} and cannot take part in '{text}'")
            return v
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, _ALLOWED_OPS):
            a, b = ev(node.left), ev(node.right)
            if max(abs(a), abs(b)) > MAX_EXPRESSION_VALUE:
                raise FieldError(f"'{text}' is too large (more than 2**63)")
            if isinstance(node.op, ast.Pow) and abs(b) > 64:
                raise FieldError(f"exponent too large in '{text}'")
            try:
                result = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b,
                          ast.Mult: lambda: a * b, ast.Div: lambda: a / b,
                          ast.FloorDiv: lambda: a // b, ast.Mod: lambda: a % b,
                          ast.Pow: lambda: a ** b}[type(node.op)]()
            except ZeroDivisionError:
                raise FieldError(f"division by zero in '{text}'") from None
            except OverflowError:
                raise FieldError(f"'{text}' is too large to compute") from None
            if isinstance(result, complex):
                raise FieldError(f"'{text}' is not a real number (a fractional power of a "
                                 "negative number)")
            if abs(result) > MAX_EXPRESSION_VALUE:
                raise FieldError(f"'{text}' is too large (more than 2**63)")
            return result
        raise FieldError(f"cannot evaluate '{text}'",
                         "numbers, block parameters and + - * / // % ** only")

    try:
        return ev(tree)
    except RecursionError:
        raise FieldError(f"the expression '{text}' nests too deeply") from None


def parse_spec_text(text: str, path: str = "<spec>") -> Spec:
    """Parse spec text; raises SpecError listing every problem with its place."""
    try:
        with gc_paused():
            return SpecParser(text, path).parse()
    except SpecError as exc:
        exc.source_lines = exc.source_lines or text.splitlines()
        raise


def _read_bounded(path: Path, shown: str) -> bytes:
    """The file's bytes, reading no more than the size limit plus one (so /dev/zero or a huge
    file is refused without being read)."""
    try:
        if path.is_dir():
            raise IsADirectoryError
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([Diagnostic(f"no such spec file: {shown}", None,
                                    fix="check the path")]) from None
    except IsADirectoryError:
        raise SpecError([Diagnostic(f"{shown} is a directory, not a spec file", None,
                                    fix="name a .yaml file in it")]) from None
    except OSError as exc:
        raise SpecError([Diagnostic(f"cannot read {shown}: {exc.strerror or exc}", None)]) from None
    except ValueError as exc:  # a NUL character in the path
        raise SpecError([Diagnostic(f"cannot read {shown!r}: {exc}", None)]) from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError([Diagnostic(
            f"the spec is larger than {MAX_FILE_BYTES // 1024:,} KiB; refused",
            SourceLoc(shown, 1, 1), fix="a network spec is a few kilobytes; check the file")])
    return data


def load_spec(path) -> Spec:
    """Read and parse a spec file. ``cnnc check`` and ``cc.compile`` start here."""
    shown = display_path(path)
    data = _read_bounded(Path(path), shown)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SpecError([Diagnostic("the spec is not UTF-8 text (a binary file?)",
                                    SourceLoc(shown, line, 1))]) from None
    if "\x00" in text:
        raise SpecError([Diagnostic("the spec contains NUL bytes (a binary file?)",
                                    SourceLoc(shown, 1, 1))])
    return parse_spec_text(text, shown)

"""The cnnc spec an importer writes: one ``- {name: ..., type: ..., ...}`` line per layer, keys
left out where they hold the type's default, ``inputs:`` only where a layer does not read the
one before it; then checked, with its weights, as ``cnnc check`` and ``cc.compile`` will.

Any reader (ONNX, or a Caffe or Darknet one) builds a list of :class:`ImportedLayer` and calls
:func:`write_spec`::

    layers = [ImportedLayer("conv1", "conv2d", {"filters": 16, "kernel": 3, "padding": 1},
                            {"weight": w, "bias": b}, ["input"]), ...]
    text, params = write_spec("net", (3, 32, 32), layers, ["fc"], source="net.onnx")

A model of several inputs passes them by name, ``{"image": (3, 64, 64), "side": (8,)}``, and
its layers read them by those names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import CnncError, SpecError
from ..layers import LAYER_TYPES
from ..layers.fields import parse_fields

PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
# plain words YAML reads as something other than a string
YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"}


@dataclass
class ImportedLayer:
    """One layer of the spec being written: its name, type and keys (as YAML values), its
    weights by local name (``weight``, ``running_mean``) and the layers it reads ('input' is
    the model's input)."""

    name: str
    type_name: str
    keys: dict
    params: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)


class ModelImportError(CnncError):
    """A model that cnnc cannot read, or cannot express as a spec."""


def yaml_value(value) -> str:
    """A value as flow-style YAML that reads back as the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return yaml_float(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    text = str(value)
    if PLAIN.fullmatch(text) and text.lower() not in YAML_WORDS:
        return text
    return "'" + text.replace("'", "''") + "'"


def yaml_float(value) -> str:
    """The shortest text of the float32 nearest ``value`` (every real-valued setting a model
    file holds is a float32), with a '.0' that keeps '1e-05' a number for any YAML reader."""
    text = str(np.float32(value))
    mantissa, e, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + (f"e{exponent}" if e else "")


def written_keys(layer: ImportedLayer) -> list[tuple[str, object]]:
    """The layer's keys, in order, without those that hold the type's default."""
    cls = LAYER_TYPES[layer.type_name]
    kwargs, problems = parse_fields(cls, layer.keys)
    if problems:
        key, error = problems[0]
        raise CnncError(f"cannot write layer '{layer.name}' ({layer.type_name}): key '{key}': "
                        f"{error.message}; this is a bug in the importer")
    whole = cls(**kwargs)
    return [(key, value) for key, value in layer.keys.items()
            if cls(**{k: v for k, v in kwargs.items() if k != key}) != whole]


def layer_line(layer: ImportedLayer, previous: str) -> str:
    fields = [("name", layer.name), ("type", layer.type_name), *written_keys(layer)]
    if layer.inputs != [previous]:
        fields.append(("inputs", layer.inputs))
    return "  - {" + ", ".join(f"{key}: {yaml_value(value)}" for key, value in fields) + "}"


def input_lines(inputs) -> list[str]:
    """The spec's input: one shape as ``input: [3, 32, 32]`` (layers read it as 'input'), or
    several by name as cnnc's named-inputs form::

        inputs:
          image: [3, 32, 32]
          side: [8]
    """
    if not isinstance(inputs, dict):
        return [f"input: {yaml_value(list(inputs))}"]
    return ["inputs:"] + [f"  {yaml_value(name)}: {yaml_value(list(shape))}"
                          for name, shape in inputs.items()]


def spec_text(name: str, inputs, layers: list[ImportedLayer], outputs: list[str],
              header: str = "") -> str:
    """``inputs``: one shape (C, H, W), or a dict of them by input name (first: what the
    first layer reads unless it says otherwise)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"name: {yaml_value(name)}", *input_lines(inputs), "layers:"]
    previous = next(iter(inputs)) if isinstance(inputs, dict) else "input"
    for layer in layers:
        lines.append(layer_line(layer, previous))
        previous = layer.name
    if outputs != [previous]:
        lines.append(f"outputs: {yaml_value(outputs)}")
    return "\n".join(lines) + "\n"


def spec_params(layers: list[ImportedLayer]) -> dict[str, np.ndarray]:
    """The weights under the spec's names (``<layer>.<local>``), as float32."""
    return {f"{layer.name}.{local}": np.ascontiguousarray(value, np.float32)
            for layer in layers for local, value in layer.params.items()}


def write_spec(name: str, inputs, layers: list[ImportedLayer], outputs: list[str],
               source: str, header: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """(spec text, weights) for ``layers``, once the spec checks and the weights fit it
    (``inputs``: one shape, or a dict of shapes by input name)."""
    from ..graph import check_spec
    from ..runtime.weights import validate_weights
    from ..spec import parse_spec_text

    text = spec_text(name, inputs, layers, outputs, header)
    params = spec_params(layers)
    try:
        graph, _ = check_spec(parse_spec_text(text, f"<spec written from {source}>"))
    except SpecError as exc:
        raise CnncError(f"{source}: the spec written from it does not check (a bug in the "
                        f"importer):\n{exc.format()}") from None
    return text, validate_weights(graph, params, {}, strict=True, copy=False)


__all__ = ["ModelImportError", "ImportedLayer", "spec_text", "write_spec", "yaml_value"]

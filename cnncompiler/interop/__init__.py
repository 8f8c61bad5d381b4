"""Other frameworks' model files: a cnnc spec and its weights read from one, and a checked
cnnc graph with its weights written as one. Each format is one entry of ``FORMATS``, chosen by
the file's suffix:

    spec_text, params = read_model("resnet18.onnx")       # cnnc YAML, PyTorch-named weights
    write_model(graph, params, "resnet18.onnx")           # graph from cnncompiler.check

A reader is ``read(path, **options) -> (spec_text, params)`` (options such as a Caffe net's
``caffemodel``); a writer is ``write(graph, params, path, **options)``. Both are named as
``"module:function"`` and imported only when used, so that cnnc runs without the packages they
need; a format may have either or both (the Caffe ``.prototxt`` and Darknet ``.cfg`` readers
are one entry each).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import CnncError


@dataclass(frozen=True)
class ModelFormat:
    """A model file format: its name, the suffixes that select it, and its reader and writer
    (``"module:function"``, or None where cnnc has none), with the package they import."""

    name: str
    suffixes: tuple[str, ...]
    reader: str | None = None
    writer: str | None = None
    package: str | None = None

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.suffixes)})"


FORMATS = (
    ModelFormat("ONNX", (".onnx",), reader="cnncompiler.interop.onnx_import:import_onnx",
                writer="cnncompiler.interop.onnx_export:export_onnx", package="onnx"),
    ModelFormat("Caffe", (".prototxt",), reader="cnncompiler.interop.caffe_import:import_caffe"),
    ModelFormat("Darknet", (".cfg",), reader="cnncompiler.interop.darknet_import:import_darknet"),
)

ROLES = {"reader": ("reads", "reading"), "writer": ("writes", "writing")}


def format_for(path, role: str) -> ModelFormat:
    """The format of ``path`` by its suffix, which must have a ``role`` ('reader' or
    'writer'); else an error listing the formats that do."""
    suffix = Path(path).suffix.lower()
    able = [f for f in FORMATS if getattr(f, role)]
    for fmt in able:
        if suffix in fmt.suffixes:
            return fmt
    known = "; ".join(f.describe() for f in able)
    raise CnncError(f"'{path}': no model format with the suffix '{suffix or '(none)'}'; cnnc "
                    f"{ROLES[role][0]} {known}; name the file with one of these suffixes")


def _function(fmt: ModelFormat, role: str):
    module_name, _, name = getattr(fmt, role).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if fmt.package and exc.name and exc.name.split(".")[0] == fmt.package:
            raise CnncError(f"{ROLES[role][1]} {fmt.name} needs the '{fmt.package}' package: "
                            f"pip install {fmt.package}") from None
        raise
    return getattr(module, name)


def read_model(path, **options) -> tuple[str, dict]:
    """A cnnc spec (YAML text) and its weights (PyTorch names) from the model file ``path``
    (``options``: the reader's own, such as a Caffe net's ``caffemodel``)."""
    return _function(format_for(path, "reader"), "reader")(path, **options)


def write_model(graph, params: dict, path, **options) -> Path:
    """Write the checked ``graph`` with ``params`` as the model file ``path``."""
    return _function(format_for(path, "writer"), "writer")(graph, params, path, **options)


__all__ = ["FORMATS", "ModelFormat", "format_for", "read_model", "write_model"]

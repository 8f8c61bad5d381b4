"""Layer types defined outside the package: one Python file declares a layer type, and cnnc
then checks, compiles, fuses and trains it like its own.

    # my_layers.py
    from cnncompiler.layers import Pointwise, register

    @register("softsign")
    class Softsign(Pointwise):
        \"\"\"x / (1 + |x|). YAML: ``{type: softsign}``.\"\"\"
        def forward(self, x, m, arg):
            return x / (1 + m.where(x < 0, -x, x))
        def backward(self, x, y, dy, m, arg):
            d = 1 + m.where(x < 0, -x, x)
            return dy / (d * d)

    $ cnnc --layers my_layers.py compile net.yaml -o build/net

A point-wise layer needs nothing more. Any other layer gives, beside its keys, shape rule and
numpy reference, its TVM compute and gradient as methods (``te_compute``, ``te_gradient``;
see ``Layer``), importing TVM inside them so that checking a spec never loads it.

A compile for CUDA runs in a worker process, and a compiled training step is cached by the
code that wrote it: both need the file, found here from the registered classes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from ..errors import CnncError
from .base import LAYER_TYPES

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def load_layer_file(path) -> list[str]:
    """Import the Python file ``path``, which registers layer types; the types it added."""
    path = Path(path).resolve()
    if not path.is_file():
        raise CnncError(f"{path}: no such layer file (a Python file that registers layer "
                        "types with @register)")
    before = set(LAYER_TYPES)
    # one module name per file: loading it again re-declares the same classes
    name = "cnnc_layers_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except CnncError:
        del sys.modules[name]
        raise
    except Exception as exc:
        del sys.modules[name]
        raise CnncError(f"{path}: importing the layer file failed: "
                        f"{type(exc).__name__}: {exc}") from exc
    return sorted(set(LAYER_TYPES) - before)


def custom_layer_files() -> list[str]:
    """The source files of the registered layer types that are not cnnc's own."""
    files = set()
    for cls in LAYER_TYPES.values():
        source = inspect.getsourcefile(cls)
        if source and PACKAGE_ROOT not in Path(source).resolve().parents:
            files.add(str(Path(source).resolve()))
    return sorted(files)

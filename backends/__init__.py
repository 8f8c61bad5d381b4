"""Target-specific lowering: the layer graph to TVM, and TVM to CPU (LLVM) or CUDA code.

Installed as ``cnncompiler.backends``. Everything that imports tvm's compiler lives here; the
front end (spec, layers, graph, passes, reference) never does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cnncompiler.errors import CompileError

RUNTIME_ONLY = "TVM_USE_RUNTIME_LIB"


def compiler_ready() -> bool:
    """Does (or will) TVM's compiler load in this process?

    ``TVM_USE_RUNTIME_LIB=1`` makes ``import tvm`` load the runtime alone, which is all that
    running a model needs. Compiling needs the compiler: where TVM is not imported yet the
    variable is dropped here; where it already was, it is too late (compile in a worker).
    """
    if "tvm" not in sys.modules:
        os.environ.pop(RUNTIME_ONLY, None)
        return True
    import tvm

    return "tvm_compiler" in getattr(tvm.base, "_LOADED_LIBS", {})


def require_compiler(what: str) -> None:
    if not compiler_ready():
        raise CompileError(f"{what} needs TVM's compiler, but this process loaded TVM's runtime "
                           f"alone ({RUNTIME_ONLY}=1 was set before TVM was imported); unset "
                           f"{RUNTIME_ONLY}, or do this in another process")


def build_library(g, choice, lib_path: Path, batch_sizes=(), schedule_hook=None) -> dict:
    """Lower the optimised graph and compile it for ``choice`` into ``lib_path``;
    ``schedule_hook`` (CPU only) may give kernels tuned schedules."""
    if choice.kind == "cuda":
        from .cuda import build_cuda
        from .lower import build_module

        return build_cuda(build_module(g, batch_sizes), choice, lib_path)
    from .cpu import build_cpu
    return build_cpu(g, choice, lib_path, batch_sizes, schedule_hook)

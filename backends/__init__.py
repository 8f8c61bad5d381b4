"""Target-specific lowering: the layer graph to TVM, and TVM to CPU (LLVM) or CUDA code.

Installed as ``cnncompiler.backends``. Everything that imports tvm's compiler lives here; the
front end (spec, layers, graph, passes, reference) never does.
"""

from __future__ import annotations

from pathlib import Path


def build_library(g, choice, lib_path: Path, batch_sizes=(), schedule_hook=None) -> dict:
    """Lower the optimised graph and compile it for ``choice`` into ``lib_path``;
    ``schedule_hook`` (CPU only) may give kernels tuned schedules."""
    if choice.kind == "cuda":
        from .cuda import build_cuda
        from .lower import build_module

        return build_cuda(build_module(g, batch_sizes), choice, lib_path)
    from .cpu import build_cpu
    return build_cpu(g, choice, lib_path, batch_sizes, schedule_hook)

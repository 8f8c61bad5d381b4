"""CPU code generation through LLVM."""

from __future__ import annotations

from pathlib import Path


def build_cpu(mod, choice, lib_path: Path) -> dict:
    """Compile a Relax module for the CPU and export it as a shared library."""
    import tvm

    target = tvm.target.Target(choice.config)
    with target:
        executable = tvm.compile(mod, target=target)
    executable.export_library(str(lib_path))
    return {"device_code": "native"}

"""CPU code generation through LLVM, with cnnc's own schedules: fast without tuning.

The layer graph is lowered by ``emit`` following ``plan``: convolutions in the blocked layout
NC[b]c with ``b`` the target's float32 vector width (``TargetChoice.vector_lanes``), their
weights packed once at load time; pools, activations, batch norms and adds carrying that
layout; everything else through ``te_ops`` with a parallel, vectorized fallback schedule.

    build = build_cpu(g, choice, lib_path, batch_sizes=(1, 64))
    build["layouts"]   # kernel argument -> packed layout, applied by the runtime at load
    build["memory"]    # activation memory the compiled functions plan, per batch size
"""

from __future__ import annotations

from pathlib import Path


def build_cpu(g, choice, lib_path: Path, batch_sizes=()) -> dict:
    """Lower the optimised graph, compile it for the CPU and export it as a shared library."""
    import tvm

    from .emit import build_cpu_module
    from .memory import planned_memory

    target = tvm.target.Target(choice.config)
    mod, plan = build_cpu_module(g, choice.vector_lanes, batch_sizes)
    with target:
        executable = tvm.compile(mod, target=target)
    executable.export_library(str(lib_path))
    layouts = {f"{node}:{key}": layout for node, c in plan.items()
               for key, layout in c.layouts.items()}
    return {"device_code": "native", "layouts": layouts,
            "kernels": {kind: sum(c.kind == kind for c in plan.values())
                        for kind in sorted({c.kind for c in plan.values()})},
            "fallbacks": {node: c.note for node, c in plan.items() if c.kind == "generic"},
            "memory": planned_memory(mod, target, batch_sizes)}


def build_plain(mod, choice, lib_path: Path) -> dict:
    """TVM's default lowering of the generic NCHW module, unscheduled (for comparison)."""
    import tvm

    target = tvm.target.Target(choice.config)
    with target:
        executable = tvm.compile(mod, target=target)
    executable.export_library(str(lib_path))
    return {"device_code": "native"}

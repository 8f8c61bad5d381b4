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


def build_cpu(g, choice, lib_path: Path, batch_sizes=(), schedule_hook=None) -> dict:
    """Lower the optimised graph, compile it for the CPU and export it as a shared library.
    ``schedule_hook`` may give kernels other schedules (tuned ones: backends/tuning)."""
    import tvm

    from .emit import build_cpu_module, kernel_layouts
    from .memory import planned_memory

    target = tvm.target.Target(choice.config)
    unscheduled: list[str] = []
    mod, plan = build_cpu_module(g, choice.vector_lanes, batch_sizes, unscheduled,
                                 schedule_hook)
    with target:
        executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline())
    executable.export_library(str(lib_path))
    return {"device_code": "native", "layouts": kernel_layouts(plan),
            "kernels": {kind: sum(c.kind == kind for c in plan.values())
                        for kind in sorted({c.kind for c in plan.values()})},
            "fallbacks": {node: c.note for node, c in plan.items() if c.kind == "generic"},
            "assembled": sorted(node for node, c in plan.items() if c.kind == "assembled"),
            "absorbed": {c.pool: node for node, c in plan.items() if c.pool is not None},
            "unscheduled": unscheduled,
            "memory": planned_memory(mod, target, batch_sizes)}


def relax_pipeline():
    """Relax's default build pipeline with cnnc's arena packing (``planning_passes``), the
    VM's per-call checks of the weights dropped (``arg_checks``), then every PrimFunc marked
    ``tirx.noalias``.

    NOTE: the pipeline adds a host function, ``shape_func``, without that mark, and one such
    function in the module makes LLVM code generation drop ``noalias`` from every kernel: the
    conv kernels then store their register tile after every FMA and run 2.4 times slower.
    shape_func reads and writes one buffer, so the mark is true of it too.
    """
    import tvm
    from tvm import relax, tirx

    @tvm.transform.module_pass(opt_level=0, name="cnnc.MarkNoAlias")
    def mark_noalias(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.noalias", False):
                mod[gv] = func.with_attr("tirx.noalias", True)
        return mod

    from .arg_checks import drop_weight_checks

    t = relax.transform
    rest = [t.RewriteCUDAGraph(), t.LowerAllocTensor(), t.KillAfterLastUse(),
            t.LowerRuntimeBuiltin(), t.ComputePrimValue(), t.VMShapeLower(),
            drop_weight_checks(), t.AttachGlobalSymbol()]
    return tvm.transform.Sequential([*planning_passes(), *rest, mark_noalias])


def planning_passes() -> list:
    """Relax's default build pipeline (``tvm.relax.pipeline.default_build_pipeline``, TVM 0.27)
    up to its memory planning, then ``arena.pack_arena``: what ``relax_pipeline`` compiles and
    what ``memory.planned_memory`` measures, so the reported plan is the built one."""
    from tvm.relax import backend, transform as t

    from .arena import pack_arena

    return [backend.DispatchSampling(), backend.DispatchSortScan(), t.LegalizeOps(),
            t.RewriteDataflowReshape(), t.ToNonDataflow(), t.RemovePurityChecking(),
            t.CallTIRRewrite(), t.StaticPlanBlockMemory(), pack_arena()]

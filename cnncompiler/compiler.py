"""The whole pipeline in one call: spec -> graph -> check -> passes -> TVM -> artifact -> model.

    import cnncompiler as cc
    model = cc.compile("specs/lenet5.yaml", target="cpu")          # a CompiledModel
    model = cc.compile("specs/resnet18.yaml", target="cuda", output_dir="build/resnet18")
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import tempfile
import time
from pathlib import Path

from . import __version__
from .errors import CnncError, display_path
from .graph import check_spec, layer_node
from .graph.signature import leading_axis
from .passes import optimize, resolve_passes
from .reference import init_params
from .runtime import artifact as art
from .graph.signature import kernel_signature
from .spec import load_spec, parse_spec_text
from .storage import DirectoryWriter


def _front_end(spec_text: str, spec_path: str, opt_level: int, passes):
    spec = parse_spec_text(spec_text, spec_path)
    graph, warnings = check_spec(spec)
    chosen = [p.name for p in resolve_passes(opt_level, passes)]
    optimized, reports = optimize(graph, passes=chosen)
    return graph, optimized, reports, warnings, chosen


def signature_json(g) -> tuple[list[dict], list[dict]]:
    """The inputs and outputs, in the compiled function's order; the batch axis is 'N'."""
    def entry(name, node):
        return {"name": name, "shape": [leading_axis(g, node), *layer_node(g, node).shape],
                "dtype": "float32"}

    inputs = [entry("x" if i == "input" else i, i) for i in g.graph["inputs"]]
    return inputs, [entry(o, o) for o in g.graph["outputs"]]


def check_tuning(choice, tune_budget, batch_sizes) -> float | None:
    """The tuning budget in seconds (None: no tuning), once the request is known to make sense."""
    if tune_budget is None:
        return None
    from cnncompiler.backends.tuning.budget import parse_budget

    seconds = parse_budget(tune_budget, "--tune-budget")
    if choice.kind != "cpu":
        raise CnncError(f"tuning runs on the CPU target only; received target "
                        f"'{choice.describe()}'; drop the tune budget or use --target cpu")
    if not batch_sizes:
        raise CnncError("tuning needs static shapes, and the symbolic-batch function keeps "
                        "cnnc's schedules; give the batch sizes to tune and specialise for, "
                        "e.g. --batch-sizes 1,64")
    return seconds


def tuning_hook(choice, tuning_cache):
    """The schedule hook that applies cached tuned schedules (None: cnnc's defaults only)."""
    if tuning_cache is False or choice.kind != "cpu":
        return None
    from cnncompiler.backends.tuning import TuningCache
    from cnncompiler.backends.tuning.apply import TunedSchedules

    return TunedSchedules(TuningCache(tuning_cache or None), choice)


def build_artifact(spec_text: str, spec_path: str, target: str, output_dir: str, *,
                   arch: str | None = None, opt_level: int = 2, passes=None, batch_sizes=(),
                   seed: int = 0, weights: str | None = None, tune_budget=None,
                   tuning_cache=None, progress=None, precision: str | None = None) -> dict:
    """Compile a spec into an artifact directory; returns the manifest.

    The files are built inside ``output_dir`` and committed whole at the end, so a failed or
    killed compile never leaves a half-written artifact, and a second compile into the same
    directory at the same time is refused; the directory's other contents stay. ``tune_budget`` tunes the kernels of the
    batch-specialised functions first (``progress`` gets a line per kernel); the build then
    uses every cached schedule measured faster than cnnc's default (``tuning_cache``: the
    cache directory, default ``$CNNC_CACHE/tuning`` or ~/.cache/cnnc/tuning; False: none).
    ``precision``: 'fp32' (default) or 'mixed' (CUDA: ``backends.precision``). The tune
    budget counts from this call to its return, the build after tuning included.
    """
    started = time.monotonic()  # the tune budget's clock
    from cnncompiler.backends import build_library, require_compiler
    from cnncompiler.backends.precision import check_fp16_weights, check_precision
    from cnncompiler.backends.targets import parse_target

    require_compiler("compiling")
    import tvm

    choice = parse_target(target, arch)
    choice = dataclasses.replace(choice, precision=check_precision(precision, choice.kind,
                                                                   choice.arch))
    budget_s = check_tuning(choice, tune_budget, batch_sizes)
    out = Path(output_dir)
    art.check_output_dir(out)  # before any tuning budget is spent
    with DirectoryWriter(out, "artifact") as writer:
        graph, optimized, reports, warnings, chosen = _front_end(spec_text, spec_path,
                                                                 opt_level, passes)
        hook = tuning_hook(choice, tuning_cache)
        search = None
        if budget_s is not None:
            search = _tune(optimized, choice, batch_sizes, budget_s, hook, progress, started)
            art.check_output_dir(out)  # again: tuning ran for minutes, the user may have too
        staging = writer.staging()
        (staging / art.SPEC).write_text(spec_text)
        if weights:  # every weight given (strict): none is drawn
            from .runtime.weights import read_weights, validate_weights
            params = validate_weights(graph, read_weights(weights), {}, strict=True, copy=False)
        else:
            params = init_params(graph, seed)
        if choice.precision == "mixed":
            check_fp16_weights(optimized, params)
        from .runtime.weights import write_weights
        write_weights(staging / art.WEIGHTS, params)
        start = time.perf_counter()
        build = build_library(optimized, choice, staging / art.LIBRARY, tuple(batch_sizes),
                              hook)
        build["seconds"] = round(time.perf_counter() - start, 3)
        tuned = hook.report() if hook else {"cache": None, "tuned": [], "kept_default": []}
        build["tuned_kernels"] = len(tuned["tuned"])
        report = {"passes": [r.to_json() for r in reports],
                  "warnings": [w.format() for w in warnings],
                  "kernels": kernel_report(optimized, tuned["tuned"],
                                           build.get("assembled", ()),
                                           build.get("absorbed", {})),
                  "tuning": {**tuned, "search": search},
                  "precision": {"policy": choice.precision,
                                "tensor_core_kernels": build.get("tensor_core_kernels", [])}}
        (staging / art.REPORT).write_text(json.dumps(report, indent=2) + "\n")
        inputs, outputs = signature_json(graph)
        manifest = {
            "cnnc_version": __version__, "tvm_version": tvm.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "spec": {"name": graph.graph["name"], "file": art.SPEC, "source": spec_path},
            "target": choice.to_json(),
            "precision": choice.precision,
            "optimization": {"level": opt_level if passes is None else None, "passes": chosen},
            "input": inputs[0], "inputs": inputs, "outputs": outputs,
            "batch_sizes": sorted(set(int(b) for b in batch_sizes)),
            "kernel_args": [{"name": a.name, "shape": list(a.shape),
                             "layout": build.get("layouts", {}).get(a.name)}
                            for a in kernel_signature(optimized)],
            "params": [{"name": k, "shape": list(v.shape)} for k, v in params.items()],
            "build": build,
            "files": {name: {} for name in art.FILES},
        }
        art.write_manifest(staging, manifest)
        art.commit(writer, staging)
    return manifest


def _tune(optimized, choice, batch_sizes, budget_s, hook, progress, started) -> dict:
    from cnncompiler.backends.tuning.search import tune_model

    cache = hook.cache if hook else None
    if cache is None:
        raise CnncError("tuning needs a cache to keep its results in; do not turn the "
                        "tuning cache off when giving a tune budget")
    return tune_model(optimized, choice, tuple(batch_sizes), budget_s, cache,
                      progress=progress, started=started, build_after=True).to_json()


def kernel_report(g, tuned=(), assembled=(), absorbed=None) -> list[dict]:
    """One row per kernel of the optimised graph: which spec layers it computes, and the batch
    sizes at which it runs a tuned schedule (``tuned``: the tuning hook's report rows).
    ``assembled``: concats whose inputs' kernels write their output, with no kernel of their
    own (the CPU build's ``assembled`` kind); ``absorbed``: pools their conv's kernel computes
    (pool -> conv); their rows say so."""
    absorbed = absorbed or {}
    from .graph import topo_layers
    from .graph.signature import kernel_name

    rows = []
    for name in topo_layers(g):
        node = layer_node(g, name)
        layer = node.layer
        if name in g.graph["inputs"] or layer.passthrough:
            continue
        what = layer.describe() if hasattr(layer, "describe") else layer.type_name
        if name in assembled:
            what += ", no kernel: its inputs' kernels write it"
        if name in absorbed:
            what += f", no kernel: the kernel of '{absorbed[name]}' computes it"
        rows.append({"kernel": name, "computes": list(node.merged), "what": what,
                     "tuned_batches": sorted(t["batch"] for t in tuned
                                             if t["kernel"] == kernel_name(name))})
    return rows


def compile(spec, target: str = "cpu", output_dir=None, *, arch: str | None = None,
            opt_level: int = 2, passes=None, batch_sizes=(), seed: int = 0, weights=None,
            tune_budget=None, tuning_cache=None, progress=None, precision: str | None = None):
    """Compile a spec file to a model ready to run (CPU) or to ship (CUDA).

    ``output_dir=None`` compiles into a temporary directory that lives as long as the model.
    ``batch_sizes`` adds functions specialised for those batch sizes; any size still runs.
    On the CPU their kernels use the tuned schedules the tuning cache holds where those were
    measured faster than cnnc's own (``tuning_cache``: a directory, or False for none);
    ``tune_budget`` (``"10m"``, ``"90s"``, or seconds) tunes them first, reporting each
    kernel to ``progress``. ``precision``: 'fp32' (default) or, for CUDA, 'mixed' (conv and
    dense on tensor cores, float16 operands, float32 accumulation).
    """
    from .train.model import load

    spec_obj = load_spec(spec)
    if isinstance(batch_sizes, int):
        batch_sizes = (batch_sizes,)
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise CnncError(f"batch size {b!r} is not a positive integer")
    keep = None
    if output_dir is None:
        # a private folder of our own, never named after the spec
        keep = tempfile.TemporaryDirectory(prefix="cnnc-")
        output_dir = Path(keep.name) / "model"
    request = dict(spec_text=spec_obj.text, spec_path=spec_obj.path, target=target,
                   output_dir=str(output_dir), arch=arch, opt_level=opt_level,
                   passes=list(passes) if passes is not None else None,
                   batch_sizes=list(batch_sizes), seed=seed,
                   weights=str(weights) if weights is not None else None,
                   tuning_cache=str(tuning_cache) if tuning_cache else tuning_cache,
                   precision=precision)
    from cnncompiler.backends import compiler_ready, cuda
    from cnncompiler.backends.precision import check_precision

    from .compile_worker import compile_in_worker

    if not compiler_ready():
        if tune_budget is not None:
            raise CnncError("tuning needs TVM's compiler in this process, which loaded TVM's "
                            "runtime alone (TVM_USE_RUNTIME_LIB=1); tune with cnnc tune")
        compile_in_worker(request)
        return load(output_dir, _keep=keep)
    from cnncompiler.backends.targets import parse_target

    choice = parse_target(target, arch)
    check_precision(precision, choice.kind, choice.arch)
    check_tuning(choice, tune_budget, batch_sizes)
    if choice.kind == "cuda":
        cuda.find_nvcc()
        if not cuda.prepare_process():
            compile_in_worker(request)
            return load(output_dir, _keep=keep)
    build_artifact(**request, tune_budget=tune_budget, progress=progress)
    return load(output_dir, _keep=keep)


__all__ = ["build_artifact", "compile", "display_path"]

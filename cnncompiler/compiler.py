"""The whole pipeline in one call: spec -> graph -> check -> passes -> TVM -> artifact -> model.

    import cnncompiler as cc
    model = cc.compile("specs/lenet5.yaml", target="cpu")          # a CompiledModel
    model = cc.compile("specs/resnet18.yaml", target="cuda", output_dir="build/resnet18")
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
import time
from pathlib import Path

from . import __version__
from .errors import CnncError, CompileError, display_path
from .graph import check_spec
from .passes import optimize, resolve_passes
from .reference import init_params
from .runtime import artifact as art
from .runtime.signature import kernel_signature
from .spec import load_spec, parse_spec_text


def _front_end(spec_text: str, spec_path: str, opt_level: int, passes):
    spec = parse_spec_text(spec_text, spec_path)
    graph, warnings = check_spec(spec)
    chosen = [p.name for p in resolve_passes(opt_level, passes)]
    optimized, reports = optimize(graph, passes=chosen)
    return graph, optimized, reports, warnings, chosen


def signature_json(g) -> tuple[dict, list[dict]]:
    """The input and output signature; the batch axis is 'N'."""
    inputs = {"name": "x", "shape": ["N", *g.graph["input_shape"]], "dtype": "float32"}
    outputs = [{"name": o, "shape": ["N", *g.nodes[o]["shape"]], "dtype": "float32"}
               for o in g.graph["outputs"]]
    return inputs, outputs


def build_artifact(spec_text: str, spec_path: str, target: str, output_dir: str, *,
                   arch: str | None = None, opt_level: int = 2, passes=None, batch_sizes=(),
                   seed: int = 0, weights: str | None = None) -> dict:
    """Compile a spec into an artifact directory; returns the manifest.

    The directory is built beside ``output_dir`` and renamed into place at the end, so a failed
    compile never leaves a half-written artifact.
    """
    from cnncompiler.backends import build_library
    from cnncompiler.backends.targets import parse_target
    import tvm

    choice = parse_target(target, arch)
    graph, optimized, reports, warnings, chosen = _front_end(spec_text, spec_path, opt_level,
                                                             passes)
    out = Path(output_dir)
    _check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(0o777 & ~art._umask())  # mkdtemp makes 0700
        (staging / art.SPEC).write_text(spec_text)
        params = init_params(graph, seed)
        if weights:
            from .runtime.weights import read_weights, validate_weights
            params = validate_weights(graph, read_weights(weights), params, strict=True)
        from .runtime.weights import write_weights
        write_weights(staging / art.WEIGHTS, params)
        start = time.perf_counter()
        build = build_library(optimized, choice, staging / art.LIBRARY, tuple(batch_sizes))
        build["seconds"] = round(time.perf_counter() - start, 3)
        report = {"passes": [r.to_json() for r in reports],
                  "warnings": [w.format() for w in warnings],
                  "kernels": kernel_report(optimized)}
        (staging / art.REPORT).write_text(json.dumps(report, indent=2) + "\n")
        inputs, outputs = signature_json(graph)
        manifest = {
            "cnnc_version": __version__, "tvm_version": tvm.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "spec": {"name": graph.graph["name"], "file": art.SPEC, "source": spec_path},
            "target": choice.to_json(),
            "optimization": {"level": opt_level if passes is None else None, "passes": chosen},
            "input": inputs, "outputs": outputs,
            "batch_sizes": sorted(set(int(b) for b in batch_sizes)),
            "kernel_args": [{"name": a.name, "shape": list(a.shape),
                             "layout": build.get("layouts", {}).get(a.name)}
                            for a in kernel_signature(optimized)],
            "params": [{"name": k, "shape": list(v.shape)} for k, v in params.items()],
            "build": build,
            "files": {name: {} for name in (art.LIBRARY, art.WEIGHTS, art.SPEC, art.REPORT)},
        }
        art.write_manifest(staging, manifest)
        art.swap_in_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def kernel_report(g) -> list[dict]:
    """One row per kernel of the optimised graph: which spec layers it computes."""
    from .graph import topo_layers

    rows = []
    for name in topo_layers(g):
        node = g.nodes[name]
        layer = node["layer"]
        if name == "input" or layer.type_name in ("dropout", "identity"):
            continue
        rows.append({"kernel": name, "computes": list(node.get("merged", (name,))),
                     "what": layer.describe() if hasattr(layer, "describe") else layer.type_name})
    return rows


def _check_output_dir(out: Path) -> None:
    """Only a new directory or an earlier artifact may be (over)written."""
    if out.exists():
        if not out.is_dir():
            raise CompileError(f"output '{out}' exists and is a file; choose a directory")
        if any(out.iterdir()) and not (out / art.MANIFEST).exists():
            raise CompileError(f"output directory '{out}' is not empty and not a cnnc artifact; "
                               "refusing to overwrite it")


def compile(spec, target: str = "cpu", output_dir=None, *, arch: str | None = None,
            opt_level: int = 2, passes=None, batch_sizes=(), seed: int = 0, weights=None):
    """Compile a spec file to a model ready to run (CPU) or to ship (CUDA).

    ``output_dir=None`` compiles into a temporary directory that lives as long as the model.
    ``batch_sizes`` adds functions specialised for those batch sizes; any size still runs.
    """
    from .runtime.model import load

    spec_obj = load_spec(spec)
    if isinstance(batch_sizes, int):
        batch_sizes = (batch_sizes,)
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise CnncError(f"batch size {b!r} is not a positive integer")
    keep = None
    if output_dir is None:
        keep = tempfile.TemporaryDirectory(prefix="cnnc-")
        output_dir = Path(keep.name) / spec_obj.name
    request = dict(spec_text=spec_obj.text, spec_path=spec_obj.path, target=target,
                   output_dir=str(output_dir), arch=arch, opt_level=opt_level,
                   passes=list(passes) if passes is not None else None,
                   batch_sizes=list(batch_sizes), seed=seed,
                   weights=str(weights) if weights is not None else None)
    from cnncompiler.backends.targets import parse_target

    if parse_target(target, arch).kind == "cuda":
        from cnncompiler.backends import cuda

        cuda.find_nvcc()
        if not cuda.prepare_process():
            cuda.compile_in_worker(request)
            return load(output_dir, _keep=keep)
    build_artifact(**request)
    return load(output_dir, _keep=keep)


__all__ = ["build_artifact", "compile", "display_path"]

"""``cnnc compile``, ``cnnc run`` and ``cnnc bench``: build an artifact, run it, time it.

    cnnc compile specs/resnet18.yaml --target cuda -o build/resnet18 [-O2] [--explain]
    cnnc run build/lenet5 --input x.npy -o y.npy
    cnnc bench build/lenet5 --batch 64
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .cli_train import cmd_train
from .errors import CnncError, InputError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CnncError(f"'{text}' is not a comma-separated list of batch sizes") from None
    if any(v < 1 for v in values):
        raise CnncError(f"batch sizes must be positive: '{text}'")
    return values


def cmd_compile(args) -> int:
    from .compiler import compile as compile_spec
    from .passes import format_reports, resolve_passes
    from .runtime.model import load_report

    passes = [p for p in args.passes.split(",") if p] if args.passes is not None else None
    resolve_passes(args.opt_level, passes)  # reject unknown names before compiling
    start = time.perf_counter()
    model = compile_spec(args.spec, target=args.target, output_dir=args.output, arch=args.arch,
                         opt_level=args.opt_level, passes=passes,
                         batch_sizes=_int_list(args.batch_sizes) if args.batch_sizes else (),
                         seed=args.seed, weights=args.weights, tune_budget=args.tune_budget,
                         tuning_cache=False if args.no_tuned else args.cache,
                         precision=args.precision,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    report = load_report(args.output)
    for w in report["warnings"]:
        print(w, file=sys.stderr)
    if args.explain:
        from .passes.rewrite import PassReport
        print(format_reports([PassReport(r["pass"], r["applied"], r["declined"])
                              for r in report["passes"]]))
        print("kernels:")
        for k in report["kernels"]:
            tuned = k.get("tuned_batches")
            print(f"  {k['kernel']}: {k['what']}  <- {', '.join(k['computes'])}"
                  + (f"  [tuned schedule at batch {','.join(map(str, tuned))}]" if tuned else ""))
        print(format_tuning(report.get("tuning") or {}))
    m = model.manifest
    tuned = m["build"].get("tuned_kernels")
    on_tensor_cores = m["build"].get("tensor_core_kernels")
    print(f"compiled {m['spec']['name']} for {m['target']['kind']} "
          f"({m['target']['tvm'].get('mcpu') or m['target'].get('arch')}) in {seconds:.1f} s: "
          f"{len(report['kernels'])} kernels" + (f" ({tuned} with tuned schedules)" if tuned
                                                 else "")
          + (f", {len(on_tensor_cores)} kernel functions on tensor cores (precision mixed)"
             if on_tensor_cores else "") + f" -> {args.output}")
    return 0


def format_tuning(tuning: dict) -> str:
    """The report's tuning section: which kernels run tuned schedules, measured how fast."""
    if not tuning.get("cache"):
        return "tuned schedules: not used (cnnc's default schedules only)"
    rows = tuning.get("tuned", [])
    lines = [f"tuned schedules from {tuning['cache']}: {len(rows)} kernel(s)"
             + ("" if rows else " (none measured faster than cnnc's default for these "
                "kernels; cnnc tune SPEC --budget 10m --batch-sizes ... searches for some)")]
    for r in rows:
        lines.append(f"  {r['kernel']} b{r['batch']}: {r['schedule']}: {r['tuned_ms']:.3f} ms "
                     f"vs default {r['default_ms']:.3f} ms ({r['speedup']:.2f}x)")
    return "\n".join(lines)


def _runtime_only() -> None:
    """``cnnc run`` and ``bench`` need no compiler: load TVM's runtime library alone."""
    if "tvm" not in sys.modules:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")


def _read_input(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no input file at '{path}'")
    try:
        x = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"'{path}' is not a readable .npy array ({exc})") from None
    if isinstance(x, np.lib.npyio.NpzFile):
        raise InputError(f"'{path}' is an .npz archive; save each input with np.save")
    return x


def cmd_run(args) -> int:
    _runtime_only()
    from .runtime.model import load

    model = load(args.artifact, device=args.device)
    xs = _read_inputs(args.input, model.input_names)
    y = model.predict(xs if len(xs) > 1 else next(iter(xs.values())))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_arrays(out, y)
    shapes = ", ".join(f"{k} {v.shape}" for k, v in y.items()) if isinstance(y, dict) else \
        str(y.shape)
    given = ", ".join(f"{args.input[i]} {x.shape}" for i, x in enumerate(xs.values()))
    print(f"{given} -> {out} {shapes}")
    return 0


def _read_inputs(given: list[str], names: list[str]) -> dict[str, np.ndarray]:
    """``--input x.npy`` for a one-input model, ``--input NAME=FILE.npy`` once per input of a
    model with several (in any order)."""
    if len(names) == 1 and len(given) == 1 and "=" not in given[0]:
        return {names[0]: _read_input(given[0])}
    pairs = {}
    for item in given:
        name, eq, path = item.partition("=")
        if not eq or name not in names:
            raise InputError(f"--input {item}: this model's inputs are {', '.join(names)}; "
                             f"give each as --input NAME=FILE.npy" if len(names) > 1 else
                             f"--input {item}: give the input's .npy file, or "
                             f"{names[0]}=FILE.npy")
        if name in pairs:
            raise InputError(f"--input {name}= is given twice")
        pairs[name] = _read_input(path)
    missing = [n for n in names if n not in pairs]
    if missing:
        raise InputError(f"missing --input for {', '.join(missing)} (NAME=FILE.npy each)")
    return {n: pairs[n] for n in names}


def _save_arrays(out: Path, y) -> None:
    """One output as .npy, several as .npz by output name; written atomically."""
    import io

    from .storage import write_atomic

    buffer = io.BytesIO()
    if isinstance(y, dict):
        np.savez(buffer, **y)
    else:
        np.save(buffer, y)
    write_atomic(out, buffer.getvalue())


def _mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.2f}"


def cmd_bench(args) -> int:
    _runtime_only()
    from .bench import OnnxModel, bench_model
    from .runtime.model import load
    from .threads import default_threads

    if args.repeat < 1 or args.warmup < 0:
        raise CnncError(f"--repeat must be at least 1 and --warmup at least 0; received "
                        f"--repeat {args.repeat} --warmup {args.warmup}")
    batches = _int_list(args.batch)
    model = load(args.artifact)
    threads = default_threads()
    onnx = None
    if args.onnx:
        onnx = OnnxModel(args.onnx, threads)
        onnx.check_input(model.input_shape)
    memory = not args.no_memory
    results = [bench_model(model, b, args.warmup, args.repeat, onnx=onnx, memory=memory)
               for b in batches]
    if args.json:
        print(json.dumps({"artifact": str(args.artifact), "target": model.target,
                          "threads": threads, "onnx": args.onnx, "results": results}, indent=2))
        return 0
    print(f"{model.graph.graph['name']} ({model.target}, {threads} threads), median of "
          f"{args.repeat} runs after {args.warmup} warm-up runs"
          + (f"; ONNX Runtime {onnx.version} on {args.onnx}, {threads} threads" if onnx else ""))
    print(f"{'batch':>6}  {'latency ms':>11}  {'min ms':>9}  {'samples/s':>10}  "
          f"{'planned MiB':>11}  {'peak MiB':>9}"
          + (f"  {'ORT ms':>9}  {'ORT peak MiB':>12}  {'cnnc/ORT':>8}" if onnx else ""))
    for r in results:
        line = (f"{r['batch']:>6}  {r['median_ms']:>11.3f}  {r['min_ms']:>9.3f}  "
                f"{r['throughput']:>10.1f}  {_mib(r['activation_bytes']):>11}  "
                f"{_mib(r.get('peak', {}).get('bytes')):>9}")
        ort = r.get("onnxruntime")
        if ort and "median_ms" in ort:
            line += (f"  {ort['median_ms']:>9.3f}  {_mib(ort.get('peak', {}).get('bytes')):>12}  "
                     f"{r['median_ms'] / ort['median_ms']:>8.2f}")
        elif ort:
            line += f"  ({ort['error']})"
        print(line)
    for r in results:
        for measured in (r.get("peak"), r.get("onnxruntime", {}).get("peak")):
            if measured and "error" in measured:
                print(f"batch {r['batch']}: peak memory not measured: {measured['error']}",
                      file=sys.stderr)
    print("peak MiB: how far one inference raises a fresh process's peak resident set "
          "(activations, workspaces, allocator pools); planned MiB: cnnc's activation plan")
    return 0


def register(sub) -> None:
    c = sub.add_parser("compile", help="compile a spec through TVM into an artifact directory")
    c.add_argument("spec", help="the YAML spec file")
    c.add_argument("-o", "--output", required=True, help="artifact directory to write")
    c.add_argument("--target", default="cpu",
                   help="cpu (this machine), \"llvm -mcpu=NAME\", or cuda (default: cpu)")
    c.add_argument("--arch", help="CUDA architecture, e.g. sm_80 (default sm_90)")
    c.add_argument("--precision", choices=("fp32", "mixed"), default="fp32",
                   help="fp32 (default), or mixed (CUDA: conv and dense on tensor cores with "
                        "float16 operands and float32 accumulation)")
    c.add_argument("-O", dest="opt_level", type=int, default=2, choices=(0, 1, 2),
                   help="optimisation level: 0 none, 1 cleanups + batch-norm folding, 2 + fusion")
    c.add_argument("--passes", help="comma-separated passes to run instead of a level")
    c.add_argument("--explain", action="store_true",
                   help="print each fusion and fold applied or declined, and the kernels")
    c.add_argument("--batch-sizes", help="batch sizes to specialise for, e.g. 1,64 "
                                         "(any batch size still runs)")
    c.add_argument("--weights", help="a .safetensors file of weights to ship (PyTorch names)")
    c.add_argument("--seed", type=int, default=0, help="seed of new weights (default 0)")
    c.add_argument("--tune-budget", help="tune the --batch-sizes kernels first; the whole "
                                         "command, build included, keeps within this time, "
                                         "e.g. 10m (see cnnc tune)")
    c.add_argument("--cache", help="tuning cache directory (default: $CNNC_CACHE/tuning, "
                                   "else ~/.cache/cnnc/tuning)")
    c.add_argument("--no-tuned", action="store_true",
                   help="use cnnc's default schedules only, not the tuning cache")
    c.set_defaults(run=cmd_compile)

    r = sub.add_parser("run", help="run a compiled artifact on an input .npy")
    r.add_argument("artifact", help="a compiled model's directory (cnnc compile -o)")
    r.add_argument("--input", required=True, action="append",
                   help="float32 array (N, ...) saved with np.save; a model with several "
                        "inputs takes --input NAME=FILE.npy once for each")
    r.add_argument("-o", "--output", required=True, help="where to write the output .npy")
    r.add_argument("--device", choices=("cpu", "cuda"), help="refuse artifacts for other targets")
    r.set_defaults(run=cmd_run)

    t = sub.add_parser("train", help="train a spec on a dataset and write the trained artifact")
    t.add_argument("spec", help="the YAML spec file")
    t.add_argument("--data", required=True,
                   help="digits, an .npz file, or a folder of MNIST IDX files, CIFAR-10 python "
                        "batches, or class subfolders of images")
    t.add_argument("-o", "--output", required=True, help="artifact directory to write")
    t.add_argument("--epochs", type=int, help="the run's total number of epochs (a resumed run "
                                              "continues to it); default: the spec's "
                                              "train.epochs")
    t.add_argument("--batch-size", type=int, help="default: the spec's train.batch_size")
    t.add_argument("--target", default="cpu",
                   help="where the training step is compiled for and runs (default: cpu)")
    t.add_argument("--optimizer", choices=("sgd", "adam", "adamw"),
                   help="optimizer family (default: the spec's train.optimizer, whose "
                        "settings are kept; another family starts from its own defaults)")
    t.add_argument("--lr", type=float, help="learning rate (overrides the spec)")
    t.add_argument("--test-fraction", type=float, default=0.25,
                   help="held-out fraction when the data has no test split (default 0.25)")
    t.add_argument("--validation-fraction", type=float,
                   help="fraction of the training data held out to choose the epoch by "
                        "(default 0.1; a resumed run keeps its own); 0 for none")
    t.add_argument("--keep", choices=("best", "last"),
                   help="the weights the artifact gets: the epoch best on the validation split "
                        "(default) or the last epoch's (the default without validation)")
    t.add_argument("--checkpoint-dir", help="default: OUTPUT/checkpoints")
    t.add_argument("--resume", help="continue a run: its output directory, its checkpoints "
                                     "folder (takes 'last'), or one checkpoint")
    t.add_argument("--seed", type=int, help="seed of weights, data split and order (default 0; "
                                            "a resumed run keeps its own)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int,
                   help="train on N local processes (data-parallel, torch.distributed: gloo on "
                        "CPUs, NCCL on GPUs); --batch-size is each process's, the global batch "
                        "N times it. Across machines, start the same command without --nproc "
                        "under torchrun")
    t.set_defaults(run=cmd_train)

    b = sub.add_parser("bench", help="latency and throughput of a compiled artifact")
    b.add_argument("artifact", help="a compiled model's directory (cnnc compile -o)")
    b.add_argument("--batch", default="1", help="batch size(s), e.g. 1,64")
    b.add_argument("--repeat", type=int, default=20,
                   help="timed runs per batch size; the median is reported (default 20)")
    b.add_argument("--warmup", type=int, default=5,
                   help="untimed runs first, per batch size (default 5)")
    b.add_argument("--onnx", help="an ONNX model of the same net: time it and measure its peak "
                                   "memory with ONNX Runtime, side by side")
    b.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurement (a fresh process per batch size)")
    b.add_argument("--json", action="store_true", help="print the figures as JSON")
    b.set_defaults(run=cmd_bench)

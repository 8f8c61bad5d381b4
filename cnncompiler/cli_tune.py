"""``cnnc tune``: search faster schedules for a model's kernels within a wall-clock budget.

    cnnc tune specs/resnet18_cifar.yaml --budget 10m --batch-sizes 1,64
    cnnc tune specs/lenet5.yaml --budget 90s --cache /tmp/tuning --json

Results go to the tuning cache (``--cache``, else $CNNC_CACHE/tuning, else ~/.cache/cnnc/tuning),
shared by every model and run; ``cnnc compile`` with the same batch sizes then uses each tuned
schedule that was measured faster than cnnc's default. ``cnnc compile --tune-budget 10m``
does both in one step. The budget is a deadline, counted from when the command has read its
arguments: the command returns within it and a few seconds more.
"""

from __future__ import annotations

import json
import sys
import time

from .cli_build import _int_list
from .errors import CnncError


def cmd_tune(args) -> int:
    # the budget's clock: what ran before (Python's start, reading the arguments) took 0.6 s
    # on a 2-core machine; importing TVM, finding the kernels and the rest count
    started = time.monotonic()
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.backends.tuning import TuningCache, format_seconds, parse_budget

    from .compiler import _front_end, check_tuning
    from .passes import resolve_passes
    from .spec import load_spec

    budget = parse_budget(args.budget)
    if args.threads is not None and args.threads < 1:
        raise CnncError(f"--threads must be at least 1; received {args.threads}")
    batch_sizes = _int_list(args.batch_sizes)
    passes = [p for p in args.passes.split(",") if p] if args.passes is not None else None
    resolve_passes(args.opt_level, passes)
    choice = parse_target(args.target)
    check_tuning(choice, budget, batch_sizes)
    spec = load_spec(args.spec)
    _, optimized, _, warnings, _ = _front_end(spec.text, spec.path, args.opt_level, passes)
    for w in warnings:
        print(w.format(), file=sys.stderr)
    from cnncompiler.backends.tuning.search import tune_model

    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    summary = tune_model(optimized, choice, tuple(batch_sizes), budget, TuningCache(args.cache),
                         threads=args.threads, retune=args.retune, strategy=args.search,
                         progress=say, started=started)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    elif summary.wins():
        print(f"budget {format_seconds(budget)}, spent {format_seconds(summary.spent_s)}; "
              f"compile with --batch-sizes {args.batch_sizes} to use the tuned schedules")
    return 0


def register(sub) -> None:
    t = sub.add_parser("tune", help="search faster kernel schedules within a time budget; "
                                    "cnnc compile uses them from the tuning cache")
    t.add_argument("spec", help="the YAML spec file")
    t.add_argument("--budget", required=True,
                   help="wall-clock time to spend, e.g. 90s, 10m, 1h (shared among the "
                        "kernels by their FLOPs)")
    t.add_argument("--batch-sizes", default="1",
                   help="batch sizes to tune, as compile's --batch-sizes (default 1)")
    t.add_argument("--target", default="cpu", help="cpu or \"llvm -mcpu=NAME\" (default: cpu)")
    t.add_argument("--cache", help="tuning cache directory (default: $CNNC_CACHE/tuning, "
                                   "else ~/.cache/cnnc/tuning)")
    t.add_argument("--threads", type=int,
                   help="threads to time kernels with (default: what models run on: "
                        "TVM_NUM_THREADS, else one per physical core); a build uses a record "
                        "only when it runs on the same count")
    t.add_argument("--search", choices=("both", "tiles", "metaschedule"), default="both",
                   help="what to search: the tiles of cnnc's own schedules, TVM's MetaSchedule "
                        "on the kernel's compute, or both (default: tiles first, then "
                        "MetaSchedule with the rest of each kernel's share when at least 90 s "
                        "is left)")
    t.add_argument("--retune", action="store_true",
                   help="search kernels the cache already has results for again")
    t.add_argument("-O", dest="opt_level", type=int, default=2, choices=(0, 1, 2),
                   help="optimisation level, as for compile (the kernels depend on it)")
    t.add_argument("--passes", help="comma-separated passes, as for compile")
    t.add_argument("--json", action="store_true",
                   help="print the summary as JSON (progress goes to stderr)")
    t.set_defaults(run=cmd_tune)

"""The ``cnnc`` command line.

    cnnc check specs/resnet18.yaml [--strict]
    cnnc summary specs/resnet18.yaml [--json]
    cnnc graph specs/resnet18.yaml -o net.svg

Every error cnnc raises on purpose is printed as a message (with file, line and layer where
there is one) and exits 1; nothing a user can type makes it print a traceback. Set
CNNC_DEBUG=1 to see tracebacks of internal errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import CnncError, SpecError

EXIT_ERROR = 1
EXIT_INTERNAL = 70


def _print_warnings(warnings, source_lines=None, stream=None):
    for w in warnings:
        print(w.format(source_lines), file=stream or sys.stderr)


def cmd_check(args) -> int:
    from .graph import load_checked
    from .graph.summary import summarize

    g, warnings = load_checked(args.spec, strict=args.strict)
    lines = g.graph["text"].splitlines()
    _print_warnings(warnings, lines, sys.stdout)
    s = summarize(g)
    outs = ", ".join(f"'{o}' {tuple(shape)}" for o, shape in s["output_shapes"].items())
    ins = ", ".join(f"'{i}' {tuple(shape)}" if len(s["input_shapes"]) > 1 else str(tuple(shape))
                    for i, shape in s["input_shapes"].items())
    print(f"{g.graph['path']}: ok: {len(s['layers']) - len(s['input_shapes'])} layers checked, "
          f"input {ins} -> {outs}; {s['total_params']:,} parameters, "
          f"{s['total_flops']:,} FLOPs per sample"
          + (f"; {len(warnings)} warning(s)" if warnings else ""))
    return 0


def cmd_summary(args) -> int:
    from .graph import load_checked
    from .graph.summary import format_table, summarize

    g, warnings = load_checked(args.spec)
    s = summarize(g)
    if args.json:
        s["warnings"] = [w.format() for w in warnings]
        print(json.dumps(s, indent=2))
    else:
        _print_warnings(warnings, g.graph["text"].splitlines())
        print(format_table(s))
    return 0


def cmd_graph(args) -> int:
    from .graph import load_checked
    from .graph.draw import render

    g, warnings = load_checked(args.spec)
    _print_warnings(warnings, g.graph["text"].splitlines())
    how = render(g, args.output)
    print(f"wrote {args.output} ({how})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnc", description="A compiler for convolutional neural "
                                "networks written as YAML specs.")
    p.add_argument("--version", action="version", version=f"cnnc {__version__}")
    p.add_argument("--layers", action="append", default=[], metavar="FILE",
                   help="a Python file that declares layer types (see 'Custom layer types' in "
                   "the README); may be given more than once, before the command")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check", help="check a spec's shapes; print every problem with its line")
    c.add_argument("spec", help="the YAML spec file")
    c.add_argument("--strict", action="store_true",
                   help="treat warnings (strides that leave input rows unread) as errors")
    c.set_defaults(run=cmd_check)

    s = sub.add_parser("summary", help="per-layer shapes, parameters, FLOPs, receptive field")
    s.add_argument("spec", help="the YAML spec file")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(run=cmd_summary)

    gr = sub.add_parser("graph", help="draw the layer graph with shapes on the edges")
    gr.add_argument("spec", help="the YAML spec file")
    gr.add_argument("-o", "--output", required=True, help="picture to write: .svg, .png or .dot")
    gr.set_defaults(run=cmd_graph)

    for register in EXTRA_COMMANDS:
        register(sub)
    return p


def _build_commands(sub):
    from .cli_build import register
    register(sub)


def _tune_commands(sub):
    from .cli_tune import register
    register(sub)


def _interop_commands(sub):
    from .cli_interop import register
    register(sub)


# Later pipeline stages add their subcommands here.
EXTRA_COMMANDS: list = [_build_commands, _tune_commands, _interop_commands]


def _tolerant_streams() -> None:
    """Print what cannot be encoded (a terminal that is not UTF-8) as escapes, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def main(argv=None) -> int:
    _tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a launcher passes on
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        for layer_file in args.layers:
            from .layers.custom import load_layer_file

            load_layer_file(layer_file)
        return args.run(args)
    except SpecError as exc:
        print(exc.format(), file=sys.stderr)
        n = len(exc.errors)
        print(f"{n} error{'s' if n != 1 else ''} found", file=sys.stderr)
        return EXIT_ERROR
    except CnncError as exc:
        print(f"cnnc: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cnnc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an internal bug: say so plainly, keep the trace out of the way
        if os.environ.get("CNNC_DEBUG"):
            raise
        print(f"cnnc: internal error: {type(exc).__name__}: {exc}\n"
              "this is a bug in cnnc; rerun with CNNC_DEBUG=1 for the traceback",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())

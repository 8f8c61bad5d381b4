"""``cnnc export`` and ``cnnc import``: a spec and its weights to and from other frameworks'
model files (ONNX both ways; Caffe and Darknet in); the format follows the file's suffix
(``cnncompiler.interop``).

    cnnc export specs/resnet18.yaml --weights resnet18.safetensors -o resnet18.onnx
    cnnc export --artifact build/lenet5 -o lenet5.onnx
    cnnc import resnet18.onnx -o resnet18.yaml [--weights resnet18.safetensors] [--force]
    cnnc import deploy.prototxt --caffemodel net.caffemodel -o net.yaml
    cnnc import yolov3-tiny.cfg --darknet-weights yolov3-tiny.weights -o yolov3-tiny.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import CnncError


def _artifact_inputs(directory, spec_path):
    """The graph (from ``spec_path``, else the artifact's own spec) and the artifact's
    weights, read from the checked bytes of the artifact."""
    from .graph import check_spec, load_checked
    from .runtime import artifact as art
    from .runtime.weights import parse_weights
    from .spec import parse_spec_text

    _, files = art.open_verified(Path(directory))
    if spec_path:
        graph, warnings = load_checked(spec_path)
    else:
        spec = parse_spec_text(files[art.SPEC].decode("utf-8"), str(Path(directory) / art.SPEC))
        graph, warnings = check_spec(spec)
    return graph, warnings, parse_weights(files[art.WEIGHTS], str(Path(directory) / art.WEIGHTS))


def _export_inputs(args):
    """(graph, warnings, weights, where the weights came from) for ``cnnc export``."""
    from .graph import load_checked

    if args.artifact:
        if args.weights:
            raise CnncError("give --weights or --artifact, not both")
        return (*_artifact_inputs(args.artifact, args.spec), f"the artifact {args.artifact}")
    if not args.spec:
        raise CnncError("give the spec to export (or --artifact DIR, whose spec is used)")
    graph, warnings = load_checked(args.spec)
    if args.weights:
        from .runtime.weights import read_weights

        return graph, warnings, read_weights(args.weights), args.weights
    from .reference import init_params

    return graph, warnings, init_params(graph, args.seed), f"new weights (seed {args.seed})"


def cmd_export(args) -> int:
    from .graph import is_model_input
    from .interop import format_for, write_model

    format_for(args.output, "writer")  # an unknown suffix is refused before any work
    graph, warnings, params, source = _export_inputs(args)
    for w in warnings:
        print(w.format(), file=sys.stderr)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_model(graph, params, out, opset=args.opset)
    layers = sum(1 for name in graph if not is_model_input(graph, name))
    print(f"wrote {out}: {graph.graph['name']}, {layers} layers, ONNX opset {args.opset}, "
          f"weights from {source}")
    return 0


def _refuse_overwrite(paths, force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise CnncError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                        "refusing to overwrite (give --force to replace)")


def cmd_import(args) -> int:
    from .interop import format_for, read_model
    from .runtime.weights import write_weights
    from .storage import write_atomic

    # a format's own weights file, where it keeps them apart from the net:
    # format -> (flag, its value, the reader's option)
    source_weights = {"Caffe": ("--caffemodel", args.caffemodel, "caffemodel"),
                      "Darknet": ("--darknet-weights", args.darknet_weights, "weights")}
    fmt = format_for(args.model, "reader").name
    options = {}
    for name, (flag, given, option) in source_weights.items():
        if given and name != fmt:
            raise CnncError(f"{flag} gives a {name} net's weights; this model is not a "
                            f"{name} net")
        if given:
            options[option] = given
    spec_path = Path(args.output)
    weights_path = Path(args.weights) if args.weights else spec_path.with_suffix(".safetensors")
    if weights_path.resolve() == spec_path.resolve():
        raise CnncError(f"the spec and the weights would both be written to '{spec_path}'; "
                        "give --weights another file")
    _refuse_overwrite([spec_path, weights_path], args.force)
    text, params = read_model(args.model, **options)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(spec_path, text.encode("utf-8"))
    if params:
        write_weights(weights_path, params)
    count = sum(int(a.size) for a in params.values())
    print(f"wrote {spec_path}" + (f" and {weights_path} ({len(params)} tensors, {count:,} "
                                  f"weights)" if params else " (the model has no weights)"))
    if params:
        print(f"compile it with: cnnc compile {spec_path} --weights {weights_path} -o DIR")
    return 0


def register(sub) -> None:
    from .interop.onnx_export import DEFAULT_OPSET

    e = sub.add_parser("export", help="write a spec and its weights as an ONNX model")
    e.add_argument("spec", nargs="?",
                   help="the YAML spec file (optional with --artifact: the artifact's spec)")
    e.add_argument("-o", "--output", required=True, help="the model file to write (.onnx)")
    e.add_argument("--weights", help="a .safetensors (or .npz) file of the spec's weights, "
                                     "PyTorch names (default: new weights from --seed)")
    e.add_argument("--artifact", help="a compiled model's directory: export its weights "
                                      "(and its spec when none is given)")
    e.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"the ONNX opset to write (default {DEFAULT_OPSET})")
    e.add_argument("--seed", type=int, default=0,
                   help="seed of new weights when neither --weights nor --artifact is given "
                        "(default 0)")
    e.set_defaults(run=cmd_export)

    i = sub.add_parser("import", help="write a cnnc spec and its weights from an ONNX, Caffe "
                                      "or Darknet model")
    i.add_argument("model", help="the model file to read (.onnx, .prototxt, .cfg)")
    i.add_argument("-o", "--output", required=True, help="the YAML spec file to write")
    i.add_argument("--weights", help="the .safetensors file to write the weights to (default: "
                                     "the spec's path with .safetensors)")
    i.add_argument("--caffemodel", help="a Caffe net's weights (default: the .prototxt's name "
                                        "with .caffemodel, where that file exists)")
    i.add_argument("--darknet-weights", help="a Darknet net's .weights (default: the .cfg's "
                                             "name with .weights, where that file exists)")
    i.add_argument("--force", action="store_true",
                   help="replace the spec and weights files if they exist")
    i.set_defaults(run=cmd_import)

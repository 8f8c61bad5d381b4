"""Stage 3: the checker. Infers every layer's shape before anything runs, and reports every
problem with the spec's file, line and layer.

Per layer it annotates the graph node with ``shape`` (per sample), ``param_specs``, ``flops``
and the receptive field (``rf``, ``jump``: per spatial axis, in input pixels). A layer whose
inputs failed is skipped rather than reported again, so one mistake gives one error.
"""

from __future__ import annotations

import math

import networkx as nx

from ..errors import Diagnostic, DiagnosticSink, ShapeError, SpecError
from ..layers import BATCH, GLOBAL, ShapeNotes, fmt_shape
from ..spec import Spec, load_spec
from ..spec.losses import LOSSES, loss_terms
from .build import build_graph, topo_layers

BYTES_PER_VALUE = 4
MAX_PARAM_BYTES = 8 * 1024 ** 3          # weights of the whole model
MAX_ACTIVATION_BYTES = 4 * 1024 ** 3     # one layer's output for one sample


def human_bytes(n: int) -> str:
    """``12.0 KiB``. Exact for any whole number: a mistyped size can exceed what a float holds."""
    n = int(n)
    if abs(n) < 1024:
        return f"{n} B"
    for power, unit in enumerate(("KiB", "MiB", "GiB", "TiB"), start=1):
        if abs(n) < 1024 ** (power + 1):
            return f"{n / 1024 ** power:.1f} {unit}"
    pib = n // 1024 ** 5
    if pib < 10**6:
        return f"{n / 1024 ** 5:.1f} PiB"
    digits = str(abs(pib))  # beyond what a float holds, say the order of magnitude
    return f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1} PiB"


def _diag(g, name, exc: ShapeError, severity="error", notes=()) -> Diagnostic:
    node = g.nodes[name]
    return Diagnostic(exc.message, node["loc"], name, node["layer"].type_name, exc.expected,
                      exc.fix, severity, tuple(node.get("notes", ())) + tuple(notes))


def _producers(g, name, in_shapes) -> str:
    return ", ".join(f"'{src}' gives {fmt_shape(s)}"
                     for src, s in zip(g.nodes[name]["inputs"], in_shapes))


def infer_shapes(g: nx.DiGraph, strict: bool = False) -> list[Diagnostic]:
    """Annotate every node with its shape, parameters and cost; return the diagnostics."""
    diags: list[Diagnostic] = []
    total_param_bytes = 0
    order = topo_layers(g)
    for name in order:
        node = g.nodes[name]
        layer = node["layer"]
        in_shapes = [g.nodes[src].get("shape") for src in node["inputs"]]
        node["shape"] = None
        if any(s is None for s in in_shapes):
            continue
        notes = ShapeNotes()
        try:
            lead = _lead(g, name, layer)
            shape = layer.infer_shape(in_shapes, notes)
        except ShapeError as exc:
            if len(in_shapes) > 1:
                exc = ShapeError(f"{exc.message}: {_producers(g, name, in_shapes)}",
                                 exc.expected, exc.fix)
            diags.append(_diag(g, name, exc))
            continue
        for warning in notes.warnings:
            diags.append(_diag(g, name, warning, "error" if strict else "warning",
                               ("an error because of --strict",) if strict else ()))
        specs = layer.params(in_shapes)
        activation = math.prod(shape) * BYTES_PER_VALUE
        param_bytes = sum(s.size for s in specs.values()) * BYTES_PER_VALUE
        if activation > MAX_ACTIVATION_BYTES:
            diags.append(_diag(g, name, ShapeError(
                f"its output {fmt_shape(shape)} needs {human_bytes(activation)} per sample",
                f"at most {human_bytes(MAX_ACTIVATION_BYTES)} per layer and sample",
                "check the sizes: this looks like a typo")))
            continue
        total_param_bytes += param_bytes
        if param_bytes > MAX_PARAM_BYTES or total_param_bytes > MAX_PARAM_BYTES:
            count = sum(s.size for s in specs.values())
            diags.append(_diag(g, name, ShapeError(
                f"its weights need {human_bytes(param_bytes)} ({count:,} values); the model "
                f"would need {human_bytes(total_param_bytes)}",
                f"at most {human_bytes(MAX_PARAM_BYTES)} of weights in a model",
                "check filters, units and kernel sizes: this looks like a typo")))
            continue
        node["shape"] = tuple(shape)
        node["lead"] = lead
        node["in_shapes"] = [tuple(s) for s in in_shapes]
        node["param_specs"] = specs
        node["flops"] = layer.flops(in_shapes, shape)
    diags += _dead_layer_warnings(g)
    return diags


def _lead(g: nx.DiGraph, name: str, layer) -> str:
    """Whose rows the layer's leading axis counts (see ``Layer.leading_axis``)."""
    if not g.nodes[name]["inputs"]:  # a model input
        return BATCH if layer.batched else name
    return layer.leading_axis([g.nodes[src]["lead"] for src in g.nodes[name]["inputs"]])


def _dead_layer_warnings(g: nx.DiGraph) -> list[Diagnostic]:
    # one reverse walk from every output at once: linear in the graph, however many outputs
    live = {out for out in g.graph["outputs"] if out in g}
    stack = list(live)
    while stack:
        for src in g.predecessors(stack.pop()):
            if src not in live:
                live.add(src)
                stack.append(src)
    return [Diagnostic("its output reaches no model output", g.nodes[n]["loc"], n,
                       g.nodes[n]["layer"].type_name,
                       fix="use it as an input, list it in 'outputs', or remove it "
                           "(the optimiser drops it)", severity="warning")
            for n in g.nodes if n not in live and n not in g.graph["inputs"]]


def _loss_warnings(g: nx.DiGraph) -> list[Diagnostic]:
    """A loss applies its activation itself (softmax, sigmoid) and takes logits: an output
    that ends in that activation would train on it twice, and learn slowly if at all."""
    train = g.graph.get("train")
    if train is None or train.loc is None or not g.graph["outputs"]:
        return []  # no train section: a model for inference may end as it likes
    if isinstance(train.loss, str) and len(g.graph["outputs"]) > 1:
        return []  # nothing to train on until each output has its loss
    terms = loss_terms(train.loss, g.graph["outputs"])
    return [w for term in terms if (w := _activation_before(g, term, train)) is not None]


def _activation_before(g: nx.DiGraph, term, train) -> Diagnostic | None:
    loss = LOSSES[term.loss]
    name = term.output
    while name in g and g.nodes[name]["layer"].passthrough:
        name = g.nodes[name]["inputs"][0]
    if name not in g or loss.applies is None or g.nodes[name]["layer"].type_name != loss.applies:
        return None
    return Diagnostic(f"its output feeds the loss {loss.name}, which applies {loss.applies} "
                      f"itself: training would apply it twice", g.nodes[name]["loc"], name,
                      loss.applies, expected=f"{loss.name} takes logits (the input of this "
                      "layer)", fix=f"remove this layer; apply {loss.applies} to predict's "
                      "output when you want probabilities", severity="warning",
                      notes=(f"the loss is set at {train.loss_loc}",))


def receptive_fields(g: nx.DiGraph) -> None:
    """Annotate each checked layer with its receptive field size and stride (jump) per
    spatial axis, in input positions (for the cost sheet; checking does not need them)."""
    for name in topo_layers(g):
        node = g.nodes[name]
        if node.get("shape") is None:
            continue
        if name in g.graph["inputs"]:
            nd = max(len(node["shape"]) - 1, 0)
            node["rf"], node["jump"] = (1,) * nd, (1,) * nd
            continue
        ins = [g.nodes[s] for s in node["inputs"]]
        rf = tuple(max(vals) for vals in zip(*(i["rf"] for i in ins)))
        jump = tuple(max(vals) for vals in zip(*(i["jump"] for i in ins)))
        window = node["layer"].window(node["in_shapes"])
        spatial_in = node["in_shapes"][0][1:]
        if window is GLOBAL:
            if len(spatial_in) == len(rf):
                rf = tuple(r + (n - 1) * j for r, n, j in zip(rf, spatial_in, jump))
        elif window is not None and len(window.kernel) == len(rf):
            rf = tuple(r + (k - 1) * j for r, k, j in zip(rf, window.kernel, jump))
            jump = tuple(j * s for j, s in zip(jump, window.stride))
        node["rf"], node["jump"] = rf, jump


def check_graph(g: nx.DiGraph, strict: bool = False, source_lines=None) -> list[Diagnostic]:
    """Infer shapes; raise SpecError if any error was found, else return the warnings."""
    diags = infer_shapes(g, strict)
    diags += _loss_warnings(g)
    sink = DiagnosticSink(source_lines, diags)
    sink.raise_if_errors()
    return diags


def check_spec(spec: Spec, strict: bool = False) -> tuple[nx.DiGraph, list[Diagnostic]]:
    """Build and check the graph of a parsed spec; returns it with the warnings."""
    from ..spec.yaml_source import gc_paused

    with gc_paused():  # tens of thousands of node dicts, no cycles worth collecting
        g = build_graph(spec)
        warnings = check_graph(g, strict, spec.source_lines)
    return g, list(spec.warnings) + warnings


def load_checked(path, strict: bool = False) -> tuple[nx.DiGraph, list[Diagnostic]]:
    """Parse, build and check a spec file: the front end in one call."""
    spec = load_spec(path)
    try:
        return check_spec(spec, strict)
    except SpecError as exc:
        exc.source_lines = exc.source_lines or spec.source_lines
        raise

"""The cost sheet of a checked graph: per layer its output shape, parameters, FLOPs (a multiply
and an add count as 2), receptive field and stride in input positions, and activation memory;
with totals. ``cnnc summary`` prints it as a table or as JSON."""

from __future__ import annotations

import networkx as nx

from ..layers import BATCH, fmt_shape
from .build import layer_node, topo_layers
from .check import BYTES_PER_VALUE, human_bytes, receptive_fields


def _axes(values) -> str:
    return "x".join(str(v) for v in values) if values else "-"


def summarize(g: nx.DiGraph) -> dict:
    """Per-layer rows and totals as plain data (what ``cnnc summary --json`` prints)."""
    receptive_fields(g)
    rows = []
    for name in topo_layers(g):
        node, notes = layer_node(g, name), g.nodes[name]  # the rf and jump this module wrote
        specs = node.param_specs
        shape = node.shape
        elements = 1
        for s in shape:
            elements *= s
        rows.append({
            "name": name,
            "type": node.layer.type_name,
            "inputs": list(node.inputs),
            "output_shape": list(shape),
            "rows": node.lead,  # 'N': per sample of the batch; else per row of that input
            "params": sum(s.size for s in specs.values() if s.trainable),
            "buffers": sum(s.size for s in specs.values() if not s.trainable),
            "flops": node.flops,
            "receptive_field": list(notes.get("rf", ())),
            "stride": list(notes.get("jump", ())),
            "activation_bytes": elements * BYTES_PER_VALUE,
            "line": node.loc.line if node.loc else None,
        })
    outputs = g.graph["outputs"]
    return {
        "name": g.graph["name"],
        "spec": g.graph.get("path"),
        "input_shape": list(g.graph["input_shape"]),
        "input_shapes": {i: list(layer_node(g, i).shape) for i in g.graph["inputs"]},
        "output_shapes": {o: list(layer_node(g, o).shape) for o in outputs},
        "total_params": sum(r["params"] for r in rows),
        "total_buffers": sum(r["buffers"] for r in rows),
        "total_flops": sum(r["flops"] for r in rows),
        "total_activation_bytes": sum(r["activation_bytes"] for r in rows),
        "param_bytes": sum(r["params"] + r["buffers"] for r in rows) * BYTES_PER_VALUE,
        "layers": rows,
    }


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _output(row: dict) -> str:
    """``(256, 7, 7)`` per sample, ``rois x (256, 7, 7)`` per row of an input without the
    batch axis."""
    shape = fmt_shape(tuple(row["output_shape"]))
    return shape if row["rows"] in (BATCH, None) else f"{row['rows']} x {shape}"


def format_table(summary: dict) -> str:
    """A fixed-width table of the summary, one row per layer, then totals."""
    head = ("layer", "type", "output", "params", "FLOPs", "RF", "stride", "act. mem")
    body = [(r["name"], r["type"], _output(r), f"{r['params']:,}",
             _si(r["flops"]), _axes(r["receptive_field"]), _axes(r["stride"]),
             human_bytes(r["activation_bytes"])) for r in summary["layers"]]
    widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
    right = {3, 4, 7}

    def line(row):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(line(head))
    out = [f"{summary['name']}  ({summary['spec']})", rule, line(head), rule]
    out += [line(r) for r in body]
    out += [rule,
            f"parameters: {summary['total_params']:,} trainable"
            + (f", {summary['total_buffers']:,} buffers" if summary["total_buffers"] else "")
            + f" ({human_bytes(summary['param_bytes'])})",
            f"FLOPs per sample: {summary['total_flops']:,} ({_si(summary['total_flops'])})",
            f"activation memory per sample: {human_bytes(summary['total_activation_bytes'])} "
            "(all layer outputs)"]
    return "\n".join(out)

"""Stages 2 and 3: the layer graph (networkx) and the checker that infers every shape."""

from .build import build_graph, node_inputs, param_names, topo_layers, users
from .check import check_graph, check_spec, infer_shapes, load_checked

__all__ = ["build_graph", "check_graph", "check_spec", "infer_shapes", "load_checked",
           "node_inputs", "param_names", "topo_layers", "users"]

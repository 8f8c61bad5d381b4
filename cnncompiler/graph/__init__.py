"""Stages 2 and 3: the layer graph (networkx) and the checker that infers every shape."""

from .build import (LayerNode, build_graph, by_input_name, is_model_input, layer_node, node_inputs,
                    param_names, set_inputs, topo_layers, users)
from .check import check_graph, check_spec, infer_shapes, load_checked

__all__ = ["LayerNode", "build_graph", "by_input_name", "check_graph", "check_spec", "infer_shapes",
           "is_model_input", "layer_node",
           "load_checked", "node_inputs", "param_names", "set_inputs", "topo_layers", "users"]

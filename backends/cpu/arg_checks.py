"""The VM checks a call makes of its arguments: kept for the inputs, dropped for the weights.

Relax's ``VMShapeLower`` makes every call of a function check each argument's type, rank,
dtype and shape, two packed calls per argument. A model's weights are its runtime's own
arrays, prepared once at load in the layouts the build declared and checked there against
those shapes (``runtime.model.CompiledModel._device_args``); checking them again on every
call is overhead, about 70 ns a weight: LeNet-5's ten weights were 1.4 of its 15 us per call
at batch 1 (13.5 us without them), MobileNet-v1 CIFAR's 5 of 258 us. The inputs, which come
from the caller, keep their checks.

A function says how many of its leading parameters are inputs with ``INPUTS_ATTR``
(``emit.emit_function`` sets it); a function without the attribute keeps every check.

    Sequential([..., relax.transform.VMShapeLower(), drop_weight_checks()])
"""

from __future__ import annotations

import tvm
from tvm import relax

INPUTS_ATTR = "cnnc.input_params"  # how many leading parameters are the caller's inputs
ARGUMENT_CHECKS = ("vm.builtin.check_tensor_info", "vm.builtin.match_shape")


def is_weight_check(value, weights: list) -> bool:
    """Is ``value`` a VM check (``ARGUMENT_CHECKS``) of one of ``weights``?"""
    return isinstance(value, relax.Call) and isinstance(value.op, relax.ExternFunc) and \
        str(value.op.global_symbol) in ARGUMENT_CHECKS and \
        any(value.args[0].same_as(w) for w in weights)


def without_weight_checks(func: relax.Function) -> relax.Function:
    """``func`` without the VM's checks of the parameters after its inputs."""
    inputs = func.attrs.get(INPUTS_ATTR) if func.attrs is not None else None
    if inputs is None:
        return func
    weights = list(func.params[int(inputs):])
    blocks = [relax.BindingBlock([b for b in block.bindings
                                  if not is_weight_check(b.value, weights)])
              for block in func.body.blocks]
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                          func.is_pure, func.attrs)


def drop_weight_checks():
    """The module pass: ``without_weight_checks`` on every Relax function."""

    @tvm.transform.module_pass(opt_level=0, name="cnnc.DropWeightChecks")
    def run(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod[gv] = without_weight_checks(func)
        return mod

    return run

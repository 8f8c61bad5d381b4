"""The compiled CPU functions check their inputs on every call and their weights once, when the
runtime prepares them (``backends/cpu/arg_checks.py``, ``runtime/signature.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from cnncompiler.errors import ArtifactError

SPEC = """
name: checked
input: [2, 8, 8]
layers:
  - {name: conv, type: conv2d, filters: 4, kernel: 3, padding: 1}
  - {name: act, type: relu}
  - {name: flat, type: flatten}
  - {name: fc, type: dense, units: 3}
"""


@pytest.fixture(scope="module")
def built():
    """The spec's CPU module through cnnc's pipeline, its plan and optimised graph."""
    from cnncompiler.backends.cpu import relax_pipeline
    from cnncompiler.backends.cpu.emit import build_cpu_module
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.compiler import _front_end

    _, optimized, *_ = _front_end(SPEC, "checked.yaml", 2, None)
    module, plan = build_cpu_module(optimized, parse_target("cpu").vector_lanes, (2,))
    target = tvm.target.Target(parse_target("cpu").config)
    with target:
        executable = tvm.compile(module, target=target, relax_pipeline=relax_pipeline())
        lowered = relax_pipeline()(module)
    return optimized, plan, lowered, executable


def _checked(func) -> list[str]:
    """The parameters a lowered function's VM code checks, in order (``main`` checks the shape
    of a value it allocates too: not a parameter)."""
    from tvm import relax

    from cnncompiler.backends.cpu.arg_checks import ARGUMENT_CHECKS

    names = []
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, relax.ExternFunc) and \
                    str(v.op.global_symbol) in ARGUMENT_CHECKS and \
                    any(v.args[0].same_as(p) for p in func.params):
                names.append(v.args[0].name)
    return names


@pytest.mark.parametrize("function", ["main", "main_b2"])
def test_only_the_inputs_are_checked_on_every_call(built, function):
    _, _, lowered, _ = built
    func = lowered[function]
    assert len(func.params) == 5  # the input, then the conv's and the dense layer's weights
    # the type and the shape check of the input; none of a weight
    assert _checked(func) == ["input", "input"]


def test_a_wrong_input_is_still_refused_by_the_function(built):
    from tvm.runtime import vm as tvm_vm

    from cnncompiler.backends.cpu.emit import kernel_layouts
    from cnncompiler.reference import init_params
    from cnncompiler.runtime.signature import kernel_arguments

    optimized, plan, _, executable = built
    vm = tvm_vm.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in kernel_arguments(
        optimized, init_params(optimized, 0), kernel_layouts(plan))]
    x = np.ones((2, 2, 8, 8), np.float32)
    assert vm["main_b2"](tvm.runtime.tensor(x), *args).numpy().shape == (2, 3)
    with pytest.raises(Exception, match="(?i)shape"):
        vm["main_b2"](tvm.runtime.tensor(np.ones((2, 2, 8, 9), np.float32)), *args)


def test_a_weight_not_as_the_function_declared_it_is_refused_at_load(built, monkeypatch):
    """A layout whose packing disagrees with the shape the build declared for it (what the
    VM's per-call checks would have caught) is refused once, when the weights are prepared,
    naming the layer and the argument."""
    import cnncompiler.runtime.signature as signature
    from cnncompiler.backends.cpu.emit import kernel_layouts
    from cnncompiler.reference import init_params

    optimized, plan, _, _ = built
    params = init_params(optimized, 0)
    layouts = kernel_layouts(plan)
    assert len(signature.kernel_arguments(optimized, params, layouts)) == 4
    packed = signature.apply_layout
    monkeypatch.setattr(signature, "apply_layout",
                        lambda layout, a: packed(layout, a)[..., :-1] if a.ndim == 4 else
                        packed(layout, a))
    with pytest.raises(ArtifactError, match=r"layer 'conv': its prepared argument 'weight' "
                                            r"has shape .* where the compiled function takes"):
        signature.kernel_arguments(optimized, params, layouts)

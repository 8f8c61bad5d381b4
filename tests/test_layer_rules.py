"""Every layer type's backend facts are declared, keyed by its class (backends/rules.py), and
nothing falls back quietly: a type without a compute, a gradient or a kernel family fails
here, and compiling one raises a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnncompiler.errors import CompileError
from cnncompiler.graph import load_checked, topo_layers
from cnncompiler.graph.signature import prepared_shapes
from cnncompiler.layers import LAYER_TYPES, Layer
from cnncompiler.layers.base import register
from cnncompiler.passes import optimize

rules = pytest.importorskip("cnncompiler.backends.rules", reason="the TVM compiler is not installed")
pytestmark = pytest.mark.tvm

SPECS = sorted(Path(__file__).resolve().parent.parent.joinpath("specs").glob("*.yaml"))
TYPES = sorted(name for name in LAYER_TYPES if name != "input")


@pytest.mark.parametrize("name", TYPES)
def test_every_layer_type_declares_its_backend_facts(name):
    found = rules.find_rules(LAYER_TYPES[name])
    assert found is not None, f"'{name}' has no entry in backends/rules.py"
    assert callable(found.compute), name
    assert callable(found.gradient) or found.gradient in (rules.TRAINING_FORM, rules.NOT_TRAINED)
    assert found.cpu in rules.CPU_FAMILIES and found.cuda in rules.CUDA_FAMILIES
    if not LAYER_TYPES[name].internal:
        assert found.gradient != rules.NOT_TRAINED, f"spec layer '{name}' cannot be trained"


def test_every_cpu_family_has_a_chooser():
    from cnncompiler.backends.cpu.plan import FAMILIES

    # a fused layer takes its base's family
    assert set(FAMILIES) == set(rules.CPU_FAMILIES) - {"fused"}


def test_a_kernel_family_is_never_defaulted():
    with pytest.raises(TypeError, match="cpu"):
        rules.Rules(lambda *a: None, rules.NOT_TRAINED)


def test_the_rules_table_names_no_family_it_does_not_know():
    with pytest.raises(ValueError, match="unknown CPU kernel family 'blocked'"):
        rules.Rules(compute=lambda *a: None, gradient=rules.NOT_TRAINED, cpu="blocked",
                    cuda="dlight")


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("level", [0, 2])
def test_argument_shapes_by_arithmetic_agree_with_prepare(spec, level):
    """Kernel argument shapes come from shape rules (``kernel_arg_shapes``); preparing real
    weights must give exactly those."""
    g, _ = load_checked(spec)
    g, _ = optimize(g, level=level)
    for node in topo_layers(g):
        specs = g.nodes[node].get("param_specs", {})
        zeros = {k: np.zeros(s.shape, np.float32) for k, s in specs.items()}
        prepared = g.nodes[node]["layer"].prepare(zeros) if specs else {}
        assert {k: v.shape for k, v in prepared.items()} == prepared_shapes(g, node), node


def test_a_layer_type_without_a_lowering_is_refused_by_name(tmp_path):
    @register("rules_test_negate")
    class Negate(Layer):
        def infer_shape(self, in_shapes, notes):
            return in_shapes[0]

        def reference(self, xs, params):
            return -xs[0]

    import cnncompiler as cc

    spec = tmp_path / "neg.yaml"
    spec.write_text("name: neg\ninput: [2, 3]\nlayers:\n  - {name: n, type: rules_test_negate}\n")
    try:
        with pytest.raises(CompileError, match=r"layer 'n' \(rules_test_negate\): no lowering "
                                               r"to TVM for this layer type"):
            cc.compile(spec, output_dir=tmp_path / "out")
    finally:
        del LAYER_TYPES["rules_test_negate"]
    assert not (tmp_path / "out").exists()


def test_a_select_of_two_numbers_is_allowed_in_both_math_namespaces():
    """``m.where(x > 0, 1.0, 0.0)`` (a step function) is valid in a layer's forward: numpy
    gives an array the reference casts, TVM a float32 select."""
    from tvm import te

    from cnncompiler.backends.te_ops import TE_MATH
    from cnncompiler.layers.pointwise import NUMPY

    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(NUMPY.where(x > 0, 1.0, 0.0), [0.0, 1.0])
    xt = te.placeholder((2,), "float32", name="x")
    y = te.compute((2,), lambda i: TE_MATH.where(xt[i] > 0, 1.0, 0.0), name="step")
    assert str(y.dtype) == "float32"

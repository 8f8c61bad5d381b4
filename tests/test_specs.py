"""The classic networks of specs/ against their PyTorch twins in tests/torch_models.py.

Every spec checks with no errors, and with no warnings but those its header documents. For
each one, its twin (written by hand from the paper or torchvision, never from the YAML) must
have the same number of trainable parameters, the same state_dict names and shapes, and, with
the twin's weights loaded into the numpy reference executor, the same outputs in float64;
``cnnc summary --json`` must report the same parameter count.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from conftest import SPECS, classic_specs, needs_torch
from cnncompiler.graph import load_checked
from cnncompiler.graph.summary import summarize
from cnncompiler.reference import init_params, run_reference

NAMES = [p.stem for p in classic_specs()]

# Samples per batch: a few for the small nets, one for the 224x224 ones (the numpy reference
# runs a VGG-16 sample in about 2 s).
LARGE_SAMPLE = 3 * 64 * 64


@pytest.mark.parametrize("path", classic_specs(), ids=lambda p: p.stem)
def test_spec_checks_clean(path):
    _, warnings = load_checked(path)  # raises SpecError, listing them, on any error
    assert not warnings, "\n".join(w.format() for w in warnings)


# specs whose twin PyTorch cannot express here, and how their layers are checked instead
NO_TWIN = {
    "fast_rcnn_shapes": "its roi_align is torchvision's (torchvision.ops), which does not load "
                        "with the CPU build of torch here; RoI layers are checked against a "
                        "loop over bins and ONNX Runtime's RoiAlign (tests/test_roi_kernels.py), "
                        "the rest are layers every other twin covers",
}


@needs_torch
def test_every_spec_has_a_torch_twin():
    from torch_models import BUILDERS

    missing = sorted(set(NAMES) - set(BUILDERS) - set(NO_TWIN))
    assert not missing, f"add PyTorch builders to tests/torch_models.py for: {missing}"


@dataclass
class Twin:
    """A checked spec, its PyTorch twin (float64, eval mode) and an input batch for both."""

    name: str
    graph: object
    model: object
    x: np.ndarray

    def state(self) -> dict:
        return {k: v for k, v in self.model.state_dict().items()
                if not k.endswith("num_batches_tracked")}


def calibrate_batchnorm(model, x, generator) -> None:
    """Give every batch norm random scales and shifts and the statistics of ``x``, so that
    activations stay near unit size through the depth and the outputs depend on the input
    (with the default weights, means 0 and variances 1, a deep net's logits are mostly bias)."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=generator) - 0.5)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch gives exactly its statistics
        model.train()
        model(x)
    model.eval()


@pytest.fixture(scope="module", params=NAMES)
def twin(request) -> Twin:
    """Module-scoped, so pytest runs every test of one network before building the next and
    holds one large model at a time."""
    import torch
    from torch_models import BUILDERS

    name = request.param
    if name in NO_TWIN:
        pytest.skip(f"specs/{name}.yaml has no PyTorch twin: {NO_TWIN[name]}")
    if name not in BUILDERS:
        pytest.skip(f"specs/{name}.yaml has no PyTorch twin (see test_every_spec_has_a_torch_twin)")
    g, _ = load_checked(SPECS / f"{name}.yaml")
    shape = g.graph["input_shape"]
    batch = 1 if math.prod(shape) > LARGE_SAMPLE else 4
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = BUILDERS[name]()
    x = torch.randn((batch, *shape), generator=gen)
    calibrate_batchnorm(model, x, gen)
    return Twin(name, g, model.double().eval(), x.double().numpy())


@needs_torch
@pytest.mark.torch
def test_parameter_count_matches_torch(twin):
    expected = sum(p.numel() for p in twin.model.parameters())
    assert summarize(twin.graph)["total_params"] == expected


@needs_torch
@pytest.mark.torch
def test_parameter_names_and_shapes_match_torch(twin):
    theirs = {k: tuple(v.shape) for k, v in twin.state().items()}
    ours = {k: tuple(v.shape) for k, v in init_params(twin.graph).items()}
    assert sorted(set(theirs) - set(ours)) == [], "in torch's state_dict, not in the spec"
    assert sorted(set(ours) - set(theirs)) == [], "in the spec, not in torch's state_dict"
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}, "shapes differ from torch's"


@needs_torch
@pytest.mark.torch
def test_reference_outputs_match_torch(twin):
    import torch

    params = {k: v.numpy() for k, v in twin.state().items()}
    (ours,) = run_reference(twin.graph, twin.x, params).values()
    with torch.no_grad():
        theirs = twin.model(torch.from_numpy(twin.x)).numpy()
    assert ours.dtype == np.float64 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


@needs_torch
@pytest.mark.torch
def test_cli_summary_json_matches_torch(twin):
    proc = subprocess.run(
        [sys.executable, "-m", "cnncompiler.cli", "summary", str(SPECS / f"{twin.name}.yaml"),
         "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["total_params"] == sum(p.numel() for p in twin.model.parameters())
    assert summary["total_flops"] > 0


@needs_torch
@pytest.mark.torch
@pytest.mark.parametrize("name,size", [("alexnet", 195), ("vgg11_bn", 96)])
def test_classifier_nets_take_other_input_sizes_as_torchvision(name, size):
    """An adaptive average pool before the classifier (torchvision's avgpool) keeps its input
    size, so the same weights run on another image size, as in the PyTorch twin."""
    import torch
    from torch_models import BUILDERS

    from cnncompiler.graph import check_spec
    from cnncompiler.spec import parse_spec_text

    path = SPECS / f"{name}.yaml"
    original, _ = load_checked(path)
    text = path.read_text().replace(f"input: {list(original.graph['input_shape'])}",
                                    f"input: [3, {size}, {size}]")
    g, warnings = check_spec(parse_spec_text(text, str(path)))
    assert g.graph["input_shape"] == (3, size, size) and not warnings
    torch.manual_seed(0)
    model = BUILDERS[name]().double().eval()
    params = {k: v.numpy() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size))
    (ours,) = run_reference(g, x, params).values()
    with torch.no_grad():
        theirs = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())

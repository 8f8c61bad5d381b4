"""Every classic network in specs/, compiled for the CPU at the default -O2, against the numpy
reference of the spec's own (unoptimised) graph and against its PyTorch twin in
tests/torch_models.py, all with the same weights.

Each spec is compiled once (a module-scoped fixture per spec) and run on one batch: two samples
for the small nets, one for the 224x224 ones. The batch norms are calibrated on that batch
(see ``lively_params``) so that a deep net's outputs depend on its input.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import cnncompiler as cc

from compile_helpers import as_dict, assert_close, lively_params, spec_inputs, spec_path
from conftest import HAVE_TORCH, classic_specs

pytestmark = pytest.mark.tvm

STEMS = [p.stem for p in classic_specs()]
HAVE_TWINS = HAVE_TORCH and importlib.util.find_spec("torch_models") is not None


class CompiledSpec:
    def __init__(self, stem: str):
        self.stem = stem
        self.model = cc.compile(spec_path(stem), target="cpu")
        g = self.model.graph
        self.x = spec_inputs(g)
        self.params, self.want = lively_params(g, self.x)
        self.model.load_params(self.params)
        self.got = as_dict(self.model.predict(self.x), self.model.output_names)


@pytest.fixture(scope="module", params=STEMS)
def compiled(request):
    return CompiledSpec(request.param)


def test_spec_matches_reference(compiled):
    assert set(compiled.got) == set(compiled.want)
    for name, want in compiled.want.items():
        if len(want) > 1:  # the input reaches the output: samples differ
            assert want.std(axis=0).max() > 1e-3 * np.abs(want).max(), \
                f"{name}: every sample gives the same output"
        assert_close(compiled.got[name], want, what=f"{compiled.stem}: output '{name}'")


@pytest.mark.torch
@pytest.mark.skipif(not HAVE_TWINS, reason="PyTorch or tests/torch_models.py is missing")
def test_spec_matches_torch_twin(compiled):
    import torch
    from torch_models import BUILDERS

    if compiled.stem not in BUILDERS:
        pytest.skip(f"tests/torch_models.py has no twin of {compiled.stem}")
    with torch.device("meta"):  # no time spent drawing weights that are replaced at once
        twin = BUILDERS[compiled.stem]().eval()
    state = {k: torch.from_numpy(v) for k, v in compiled.params.items()}
    for name, buffer in twin.named_buffers():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=buffer.dtype)
    twin.load_state_dict(state, strict=True, assign=True)
    with torch.no_grad():
        want = twin(torch.from_numpy(compiled.x)).numpy()
    (name,) = compiled.model.output_names
    assert_close(compiled.got[name], want, what=f"{compiled.stem} vs its PyTorch twin")


def test_spec_artifact_describes_the_model(compiled):
    m = compiled.model.manifest
    assert m["target"]["kind"] == "cpu"
    assert m["input"]["shape"] == ["N", *compiled.model.input_shape]
    assert [i["name"] for i in m["inputs"]] == \
        ["x" if n == "input" else n for n in compiled.model.input_names]
    assert [o["name"] for o in m["outputs"]] == compiled.model.output_names
    report = cc.runtime.model.load_report(compiled.model.directory)
    assert report["kernels"], "report.json lists no kernels"
    computed = {layer for k in report["kernels"] for layer in k["computes"]}
    # a layer no kernel computes is one a pass removed, and its report says so
    removed = {line.split("'")[1] for p in report["passes"] for line in p["applied"]
               if line.startswith("removed ")}
    for name in compiled.model.graph:
        if name not in compiled.model.input_names:
            assert name in computed or name in removed, f"no kernel computes layer '{name}'"

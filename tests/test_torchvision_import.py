"""torchvision's ImageNet classifiers brought in through ONNX: each network (the twins of
tests/torch_models.py, as torchvision cannot be imported here) exported by ``torch.onnx.export``,
imported by cnnc, compiled for the CPU and compared with ONNX Runtime on the same file.

Random weights, batch-norm statistics and affines randomised so that no batch norm is the
identity; a batch of 2. Each network runs at the smallest input its adaptive pools export at
(an ONNX AveragePool needs whole windows: AlexNet and VGG at 224, the rest at 64), which keeps
the whole module to about two minutes on two cores.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from conftest import needs_torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import cnncompiler  # noqa: E402
from cnncompiler.graph.summary import summarize  # noqa: E402
from cnncompiler.interop.onnx_import import import_onnx  # noqa: E402
from cnncompiler.runtime.weights import write_weights  # noqa: E402
from test_onnx_export import assert_matches, checked, onnx_outputs  # noqa: E402
from test_onnx_import import randomise_batchnorm, torch_export  # noqa: E402

# torchvision's own parameter counts (torchvision.models.<name>().parameters())
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "alexnet": 61_100_840, "vgg11_bn": 132_868_840,
    "googlenet": 6_624_904, "mobilenet_v2": 3_504_872, "squeezenet1_1": 1_235_496,
    "densenet121": 7_978_856,
}

# a layer line each imported spec must hold: the pattern its architecture is known by
SIGNATURE_LINES = {
    "resnet18": "{name: layer2.0.add, type: add, inputs: [layer2.0.bn2, layer2.0.downsample.1]}",
    "alexnet": "{name: avgpool, type: avgpool2d, kernel: 1}",
    "vgg11_bn": "{name: features.1, type: batchnorm}",
    "googlenet": "{name: inception3a.branch4.0, type: maxpool2d, kernel: 3, stride: 1, "
                 "padding: 1, ceil_mode: true",
    "mobilenet_v2": "{name: features.0.2, type: relu6}",
    "squeezenet1_1": "{name: features.2, type: maxpool2d, kernel: 3, stride: 2, ceil_mode: true}",
    "densenet121": "{name: features.denseblock1.denselayer1.norm1, type: batchnorm}",
}


def build_twin(name: str, seed: int):
    """The twin network in eval mode with random weights and batch norms, and its input."""
    import torch
    from torch_models import TORCHVISION

    build, shape = TORCHVISION[name]
    torch.manual_seed(seed)
    net = build().eval()
    randomise_batchnorm(net, seed)
    return net, shape


@needs_torch
@pytest.mark.torch
@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_network_imports_and_compiles_as_onnx_runtime_computes(tmp_path, name):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    net, shape = build_twin(name, seed=sorted(TORCHVISION_PARAMS).index(name))
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_PARAMS[name]
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{name}.onnx"
    torch_export(net, shape, path)
    del net
    gc.collect()

    text, params = import_onnx(path)
    assert SIGNATURE_LINES[name] in text
    assert summarize(checked(text))["total_params"] == TORCHVISION_PARAMS[name]
    assert {k: v.shape for k, v in params.items()} == state  # torchvision's names and shapes
    (tmp_path / "spec.yaml").write_text(text)
    write_weights(tmp_path / "weights.safetensors", params)
    del params
    model = cnncompiler.compile(tmp_path / "spec.yaml", weights=tmp_path / "weights.safetensors",
                                output_dir=tmp_path / "build")

    x = np.random.default_rng(7).standard_normal((2, *shape)).astype(np.float32)
    (want,) = onnx_outputs(path.read_bytes(), x).values()
    assert want.shape == (2, 1000)
    assert_matches(model.predict(x), want, rel=1e-4, what=f"{name} compiled")

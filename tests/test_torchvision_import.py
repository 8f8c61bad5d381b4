"""torchvision's ImageNet classifiers brought in through ONNX: each network (the twins of
tests/torch_models.py, as torchvision cannot be imported here) exported by ``torch.onnx.export``,
imported by cnnc, compiled for the CPU and compared with ONNX Runtime on the same file.

Random weights, batch-norm statistics and affines randomised so that no batch norm is the
identity; a batch of 2. Each network runs at the smallest input its adaptive pools export at
(an ONNX AveragePool needs whole windows: AlexNet and VGG at 224, the rest at 64), which keeps
the whole module to about two minutes on two cores. Each network runs in a process of its own
(tests/torchvision_check.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

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


HERE = Path(__file__).resolve().parent


@needs_torch
@pytest.mark.torch
@pytest.mark.tvm
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_network_imports_and_compiles_as_onnx_runtime_computes(tmp_path, name):
    pytest.importorskip("tvm", reason="the TVM compiler is not installed")
    # a process per network: VGG-11's 133M weights are held several times over (torch, the
    # ONNX file, the import, the compiled model, ONNX Runtime) and all go when it ends
    seed = sorted(TORCHVISION_PARAMS).index(name)
    proc = subprocess.run([sys.executable, str(HERE / "torchvision_check.py"), name,
                           str(tmp_path), str(seed)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["torch_params"] == TORCHVISION_PARAMS[name]
    assert found["spec_params"] == TORCHVISION_PARAMS[name]
    assert found["same_names_and_shapes"]  # torchvision's parameter names and shapes
    assert SIGNATURE_LINES[name] in found["text"]
    assert found["shape"] == found["got_shape"] == [2, 1000]
    assert found["error"] <= 1e-4 * max(found["scale"], 1e-3), \
        f"{name}: max error {found['error']:.3g} at scale {found['scale']:.3g}"

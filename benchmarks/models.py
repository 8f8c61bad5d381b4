"""The benchmarked networks: their cnnc spec, their PyTorch twin, and one set of weights for all.

The PyTorch twins are tests/torch_models.py's (written from the papers, independently of the
specs). Batch-norm statistics are randomised, so folding them is exercised and the outputs are
not trivially the same; the weights go to cnnc through ``model.load_params(state_dict)`` and to
ONNX Runtime through ``torch.onnx.export`` of the same module.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bench:
    key: str            # the spec's file stem in specs/
    title: str
    batches: tuple
    seed: int = 0
    target: float = 1.0  # the default build's latency target, as a ratio to ONNX Runtime's

    @property
    def spec(self) -> Path:
        return ROOT / "specs" / f"{self.key}.yaml"


# targets: at most 0.8x ONNX Runtime's latency on ResNet-18, VGG and GoogLeNet, 1.0x elsewhere
MODELS = {b.key: b for b in (
    Bench("lenet5", "LeNet-5 (1x32x32)", (1, 64)),
    Bench("mobilenet_v1_cifar", "MobileNet-v1 CIFAR (3x32x32)", (1, 64)),
    Bench("resnet18_cifar", "ResNet-18 CIFAR (3x32x32)", (1, 64), target=0.8),
    Bench("resnet18", "ResNet-18 ImageNet (3x224x224)", (1, 8), target=0.8),
    # the other classic networks: layers the four above lack (LRN, grouped convs, inception
    # concats, 1-D dilated convs, big dense layers); run them with --models all
    Bench("alexnet", "AlexNet (3x227x227)", (1, 8)),
    Bench("googlenet", "GoogLeNet (3x224x224)", (1, 8), target=0.8),
    Bench("vgg11_bn", "VGG-11-BN (3x224x224)", (1, 8), target=0.8),
    Bench("vgg16_bn", "VGG-16-BN (3x224x224)", (1, 8), target=0.8),
    Bench("mobilenet_v1", "MobileNet-v1 (3x224x224)", (1, 8)),
    Bench("resnet34_cifar", "ResNet-34 CIFAR (3x32x32)", (1, 64)),
    Bench("tdnn", "x-vector TDNN (30x200)", (1, 64)),
)}
DEFAULT = ("lenet5", "mobilenet_v1_cifar", "resnet18_cifar", "resnet18")  # the four


def torch_builders() -> dict:
    """tests/torch_models.py's BUILDERS (spec stem -> nn.Module factory)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    try:
        from torch_models import BUILDERS
    except ImportError as exc:
        raise SystemExit(f"benchmarks need the PyTorch twins in tests/torch_models.py ({exc})")
    return BUILDERS


def torch_model(key: str, state: dict | None = None, seed: int = 0):
    """The PyTorch twin in eval mode, with ``state`` loaded, or seeded weights and randomised
    batch-norm statistics."""
    import torch

    torch.manual_seed(seed)
    model = torch_builders()[key]()
    if state is None:
        g = torch.Generator().manual_seed(seed + 1)
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                c = m.num_features
                m.weight.data = 0.5 + torch.rand(c, generator=g)
                m.bias.data = 0.1 * torch.randn(c, generator=g)
                m.running_mean = 0.1 * torch.randn(c, generator=g)
                m.running_var = 0.5 + torch.rand(c, generator=g)
    else:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    return model.eval()


def state_arrays(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def export_onnx(model, input_shape, path: Path) -> None:
    """The module as ONNX (opset 17) with a dynamic batch axis."""
    import torch

    x = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})


def input_batch(input_shape, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)

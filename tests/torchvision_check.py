"""One torchvision twin exported, imported, compiled and compared with ONNX Runtime, in a process
of its own, so that the hundreds of megabytes of VGG's or AlexNet's weights are gone when it
ends: ``python tests/torchvision_check.py NAME FOLDER`` prints a JSON line of what
tests/test_torchvision_import.py checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def check(name: str, folder: Path, seed: int) -> dict:
    import torch
    from torch_models import TORCHVISION

    import cnncompiler
    from cnncompiler.graph.summary import summarize
    from cnncompiler.interop.onnx_import import import_onnx
    from cnncompiler.runtime.weights import write_weights
    from test_onnx_export import checked, onnx_outputs
    from test_onnx_import import randomise_batchnorm, torch_export

    build, shape = TORCHVISION[name]
    torch.manual_seed(seed)
    net = build().eval()
    randomise_batchnorm(net, seed)
    torch_params = sum(p.numel() for p in net.parameters())
    state = {k: list(v.shape) for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = folder / f"{name}.onnx"
    torch_export(net, shape, path)
    del net

    text, params = import_onnx(path)
    (folder / "spec.yaml").write_text(text)
    write_weights(folder / "weights.safetensors", params)
    imported = {k: list(v.shape) for k, v in params.items()}
    del params
    # no tuning records of this machine: the tests build what cnnc builds by itself
    model = cnncompiler.compile(folder / "spec.yaml", weights=folder / "weights.safetensors",
                                output_dir=folder / "build", tuning_cache=False)
    x = np.random.default_rng(7).standard_normal((2, *shape)).astype(np.float32)
    (want,) = onnx_outputs(path.read_bytes(), x).values()
    got = model.predict(x)
    return {"torch_params": torch_params, "spec_params": summarize(checked(text))["total_params"],
            "same_names_and_shapes": imported == state, "text": text,
            "shape": list(want.shape), "got_shape": list(got.shape),
            "error": float(np.abs(got.astype(np.float64) - want).max()),
            "scale": float(np.abs(want).max())}


if __name__ == "__main__":
    print(json.dumps(check(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))

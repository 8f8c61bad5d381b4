"""Helpers shared by the compiler's tests: specs written on the fly, weights under which a deep
net's activations stay alive, and the one comparison the compiled code must pass.

    params, outputs = lively_params(graph, x)      # batch norms calibrated on x
    assert_close(model.predict(x), outputs["fc"])  # 1e-4 relative
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from conftest import SPECS
from cnncompiler.graph import by_input_name, param_names, topo_layers
from cnncompiler.reference import init_params, layer_params

RTOL = 1e-4
# One sample for the 224x224 nets (the numpy reference runs a VGG-16 sample in seconds).
LARGE_SAMPLE = 3 * 64 * 64


def write_spec(directory: Path, name: str, text: str) -> Path:
    path = Path(directory) / f"{name}.yaml"
    path.write_text(text)
    return path


def spec_path(stem: str) -> Path:
    return SPECS / f"{stem}.yaml"


def batch_for(input_shape) -> int:
    return 1 if math.prod(input_shape) > LARGE_SAMPLE else 2


def sample_input(input_shape, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *input_shape)).astype(np.float32)


def random_boxes(rng, count: int, images: int, corner: tuple, size: tuple,
                 scale=(1.0, 1.0)) -> np.ndarray:
    """``count`` boxes (batch_index, x1, y1, x2, y2) of ``images`` images, as a RoI layer reads
    them: corners and sizes drawn from the ranges ``corner`` and ``size`` (times ``scale`` per
    axis), so that some cross the border and some are smaller than a bin."""
    xy = rng.uniform(*corner, (count, 2)) * scale
    wh = rng.uniform(*size, (count, 2)) * scale
    index = rng.integers(0, images, (count, 1))
    return np.concatenate([index, xy, xy + wh], axis=1)


def spec_inputs(g, seed: int = 0):
    """A batch for the spec's inputs: the array of a one-input spec, else a dict by input
    name, boxes (R, 5) for an input without the batch axis: (batch index, x1, y1, x2, y2) in
    the first image input's coordinates, some crossing its border."""
    names = g.graph["inputs"]
    batch = batch_for(g.graph["input_shape"])
    if names == ["input"]:
        return sample_input(g.graph["input_shape"], batch, seed)
    rng = np.random.default_rng(seed)
    height, width = next(g.nodes[n]["shape"][-2:] for n in names if g.nodes[n]["layer"].batched)
    out = {}
    for name in names:
        node = g.nodes[name]
        if node["layer"].batched:
            out[name] = rng.standard_normal((batch, *node["shape"])).astype(np.float32)
            continue
        out[name] = random_boxes(rng, 6, batch, (-0.1, 0.8), (0.1, 0.6),
                                 (width, height)).astype(np.float32)
    return out


def assert_close(got, want, rtol: float = RTOL, what: str = "") -> None:
    """Equal within ``rtol`` relative, elements near zero measured against the output's scale
    (a sum that cancels to 1e-9 has no meaningful relative error)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values in the compiled output"
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-6),
                               err_msg=what)


def as_dict(outputs, names) -> dict:
    """``predict`` returns an array for one output and a dict for several."""
    return outputs if isinstance(outputs, dict) else {names[0]: outputs}


def lively_params(g, x: np.ndarray, seed: int = 0) -> tuple[dict, dict]:
    """New weights whose batch norms are calibrated on ``x``, and the reference outputs.

    With PyTorch's default weights (batch-norm means 0, variances 1) a deep net's activations
    shrink layer after layer until its outputs are its last bias, and a comparison proves
    little. Here each batch norm gets its input's per-channel statistics and a random scale and
    shift, so activations stay near unit size. The layers are run once, in order, with the
    reference; its outputs under the returned weights come back too.
    """
    params = init_params(g, seed)
    rng = np.random.default_rng(seed + 1)
    values = {k: np.asarray(v, np.float32) for k, v in by_input_name(g, x).items()}
    for name in topo_layers(g):
        if name in values:
            continue
        node = g.nodes[name]
        layer = node["layer"]
        xs = [values[s] for s in node["inputs"]]
        if layer.type_name == "batchnorm":
            v = xs[0].astype(np.float64)
            axes = (0,) + tuple(range(2, v.ndim))
            c = v.shape[1]
            names = param_names(g, name)
            # a floor on the variance: one sample's dense features have none
            var = v.var(axis=axes) + 0.1 * (v * v).mean(axis=axes) + 1e-3
            params[names["running_mean"]] = v.mean(axis=axes).astype(np.float32)
            params[names["running_var"]] = var.astype(np.float32)
            params[names["weight"]] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            params[names["bias"]] = rng.uniform(-0.5, 0.5, c).astype(np.float32)
        if layer.type_name == "prelu":  # a slope per channel that differs, not 0.25 everywhere
            weight = param_names(g, name)["weight"]
            params[weight] = rng.uniform(-0.5, 1.0, params[weight].shape).astype(np.float32)
        values[name] = node["layer"].reference(xs, layer_params(g, name, params, np.float32))
    return params, {o: values[o] for o in g.graph["outputs"]}

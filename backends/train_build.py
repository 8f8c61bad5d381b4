"""Compile the training step of a graph for a target, with an on-disk cache.

On the CPU, a float32 step is made of cnnc's own scheduled kernels (``backends.cpu.train_emit``)
and built with the CPU backend's Relax pipeline; other builds lower the plain computes of
``train_lower`` as they are.

The cache key covers everything the compiled code depends on (the spec's layers, the loss,
the optimizer family, the dtype, the target, the cnnc and TVM versions, and the source of the
lowering itself), so a second training run of the same spec starts at once. A cached library
runs only if its record vouches for its bytes (see ``cnncompiler.cache``); else it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from cnncompiler import __version__, layers
from cnncompiler.cache import cache_root, read_library, write_library
from cnncompiler.layers.custom import custom_layer_files

from .train_lower import build_train_module, train_signature

HERE = Path(__file__).parent
CACHE_KIND = "train"


def cache_dir() -> Path:
    return cache_root() / CACHE_KIND


def _lowering_digest() -> str:
    """The source of the code that writes the training step: a changed lowering (even within
    one cnnc version) must not reuse a library built by the old one. The CPU kernels and
    their schedules count too, and the layers (point-wise ones are computed from their own
    forward and backward)."""
    h = hashlib.sha256()
    for path in [*(HERE / n for n in ("te_ops.py", "te_grad.py", "train_lower.py", "rules.py")),
                 *sorted((HERE / "cpu").glob("*.py")),
                 *sorted(Path(layers.__file__).parent.glob("*.py")),
                 *map(Path, custom_layer_files())]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def scheduled_on_cpu(choice, dtype: str) -> bool:
    """Does this build use the scheduled CPU kernels?"""
    return choice.kind == "cpu" and dtype == "float32"


def compile_train_module(g, loss: str, optimizer: str, choice, dtype="float32",
                         label_smoothing: float = 0.0, unscheduled: list | None = None,
                         parallel=None):
    """(the compiled VM executable, TrainSignature) of the training step, not cached;
    ``parallel`` (``train_lower.Parallel``) makes it a data-parallel step."""
    import tvm

    if scheduled_on_cpu(choice, dtype):
        from .cpu import relax_pipeline
        from .cpu.train_emit import cpu_lowering

        mod, sig = build_train_module(g, loss, optimizer, dtype, label_smoothing,
                                      lowering=cpu_lowering(choice.vector_lanes, unscheduled),
                                      parallel=parallel)
        target = tvm.target.Target(choice.config)
        with target:
            return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline()), sig
    mod, sig = build_train_module(g, loss, optimizer, dtype, label_smoothing, parallel=parallel)
    if choice.kind == "cuda":
        from .cuda import relax_pipeline as cuda_pipeline

        # the checked schedules of inference builds: each family's own (RoI), dlight's rules
        # where they lower, and no kernel left to run on the host
        target = tvm.target.Target(choice.config, host=choice.host)
        with target:
            return tvm.compile(mod, target=target, relax_pipeline=cuda_pipeline(target)), sig
    target = tvm.target.Target(choice.config)
    with target:
        return tvm.compile(mod, target=target), sig


def build_train_library(g, spec_key: str, loss: str, optimizer: str, choice, dtype="float32",
                        label_smoothing: float = 0.0, parallel=None) -> tuple[bytes, object]:
    """(the compiled library's bytes, checked against the cache's record, TrainSignature)."""
    import tvm

    about = {"spec": spec_key, "loss": loss, "optimizer": optimizer, "dtype": dtype,
             "smoothing": label_smoothing, "target": choice.to_json(), "cnnc": __version__,
             "tvm": tvm.__version__, "lowering": _lowering_digest()}
    if parallel:
        about["parallel"] = parallel.to_json()
    key = hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()[:24]
    sig = train_signature(g, optimizer)
    data = read_library(CACHE_KIND, key)
    if data is not None:
        return data, sig
    executable, sig = compile_train_module(g, loss, optimizer, choice, dtype, label_smoothing,
                                           parallel=parallel)
    with tempfile.TemporaryDirectory(prefix="cnnc-train-") as tmp:
        path = Path(tmp) / "train_step.so"
        executable.export_library(str(path))
        data = path.read_bytes()
    write_library(CACHE_KIND, key, data, about)
    return data, sig

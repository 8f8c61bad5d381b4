"""Training checkpoints: weights, optimizer state, step, schedule position and random state.

    ckpt/weights.safetensors     parameters and batch-norm statistics (PyTorch names)
    ckpt/optimizer.safetensors   optimizer state ('<param>#momentum', '#exp_avg', ...)
    ckpt/checkpoint.json         counters, optimizer and schedule, seed, every file's sha256,
                                 and a digest of itself

Each file is written to a temporary name, fsynced and renamed, and the directory replaces the
old checkpoint only when complete, so an interrupted save leaves the previous checkpoint. A
checkpoint whose files do not match their hashes is refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from ..errors import ArtifactError
from ..runtime.artifact import file_entry, json_digest, sha256_file, swap_in_directory, write_atomic
from ..runtime.weights import read_weights, write_weights

FORMAT = "cnnc-checkpoint"
VERSION = 1
META = "checkpoint.json"
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"


def save_checkpoint(trainer, directory) -> Path:
    from . import optim

    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        params = trainer.pull_params() if trainer.dirty else dict(trainer.model._params)
        trainer.model._params = params
        write_weights(staging / WEIGHTS, params)
        write_weights(staging / OPTIMIZER, trainer.optimizer_state())
        meta = {
            "format": FORMAT, "version": VERSION,
            "spec": trainer.model.spec_key(), "spec_name": trainer.model.graph.graph["name"],
            "step": trainer.step, "epoch": trainer.epoch, "seed": trainer.seed,
            "state_start": trainer.state_start,
            "loss": trainer.loss, "optimizer": optim.describe(trainer.optimizer),
            "base_lr": trainer.base_lr,
            "schedule": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in dataclasses.asdict(trainer.schedule).items()},
            # shuffling and masks are drawn from generators seeded by (seed, epoch, step):
            # these counters and the seed are the whole random state
            "random_state": {"seed": trainer.seed, "epoch": trainer.epoch, "step": trainer.step},
            "files": {name: file_entry(staging / name) for name in (WEIGHTS, OPTIMIZER)},
        }
        meta["digest"] = json_digest(meta)
        write_atomic(staging / META, (json.dumps(meta, indent=2) + "\n").encode())
        swap_in_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_checkpoint(directory) -> tuple[dict, dict, dict]:
    """(meta, weights, optimizer state) after checking every file against its hash."""
    d = Path(directory)
    meta_path = d / META
    if not meta_path.is_file():
        raise ArtifactError(f"'{d}' is not a cnnc checkpoint: {META} is missing")
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{meta_path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: not a cnnc checkpoint")
    if meta.get("version") != VERSION:
        raise ArtifactError(f"{meta_path}: checkpoint version {meta.get('version')} is not "
                            f"supported (this cnnc reads version {VERSION})")
    if meta.get("digest") != json_digest(meta):
        raise ArtifactError(f"{meta_path}: checkpoint metadata does not match its digest: it was "
                            "modified or is corrupt; use an earlier checkpoint")
    for name in (WEIGHTS, OPTIMIZER):
        entry = meta.get("files", {}).get(name)
        path = d / name
        if entry is None or not path.is_file():
            raise ArtifactError(f"{d}: checkpoint file '{name}' is missing")
        if path.stat().st_size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
            raise ArtifactError(f"{d}: checkpoint file '{name}' does not match its hash: the "
                                "checkpoint is corrupt or was modified; use an earlier one")
    return meta, read_weights(d / WEIGHTS), read_weights(d / OPTIMIZER)


def load_checkpoint(trainer, directory) -> dict:
    """Restore weights, optimizer state, counters and schedule into ``trainer``."""
    from . import optim
    from ..runtime.weights import validate_weights

    meta, weights, state = read_checkpoint(directory)
    if meta["spec"] != trainer.model.spec_key():
        raise ArtifactError(f"{directory}: checkpoint of spec '{meta.get('spec_name')}' does not "
                            f"match this model ('{trainer.model.graph.graph['name']}': its layers "
                            "differ)")
    trainer.model._params = validate_weights(trainer.model.graph, weights, trainer.model._params)
    trainer.model._args = None
    trainer.optimizer = optim.optimizer_from(meta["optimizer"])
    trainer.base_lr = meta["base_lr"]
    trainer.schedule = optim.schedule_from(meta["schedule"])
    trainer.loss = meta["loss"]
    trainer.step, trainer.epoch, trainer.seed = meta["step"], meta["epoch"], meta["seed"]
    trainer.state_start = meta.get("state_start", 0)
    trainer._compiled.clear()
    trainer._device = None
    trainer._pending_state = state
    trainer.dirty = False
    return meta

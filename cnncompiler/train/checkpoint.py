"""Training checkpoints: weights, optimizer state, step, schedule position and random state.

    ckpt/weights.safetensors     parameters and batch-norm statistics (PyTorch names)
    ckpt/optimizer.safetensors   optimizer state ('<param>#momentum', '#exp_avg', ...)
    ckpt/checkpoint.json         counters, optimizer and schedule, seed, the run's own state
                                 (best metric so far), every file's sha256, a digest of itself

A save stages the three files inside the checkpoint folder and commits them together
(:mod:`cnncompiler.storage`), so a kill at any point leaves the previous checkpoint or the new
one, loadable at the same path. A checkpoint whose files or fields do not check is refused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ArtifactError, CnncError
from ..runtime.record import (FILE_ENTRY, check_record, count, number, optional, parse_json,
                              sha256)
from ..runtime.weights import parse_weights, write_weights
from ..storage import DirectoryWriter, file_entry, json_digest, read_verified, reading, \
    visible_entries, write_atomic

FORMAT = "cnnc-checkpoint"
VERSION = 1
META = "checkpoint.json"
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
MAX_META_BYTES = 1 << 20
USE_EARLIER = "use an earlier checkpoint"

META_SCHEMA = {
    "spec": sha256, "spec_name": str, "step": count, "epoch": count, "seed": count,
    "state_start": optional(count), "loss": str,
    "loss_terms": optional([{"output": str, "loss": str, "weight": number, "options": dict}]),
    "optimizer": dict, "base_lr": number, "schedule": dict,
    "run": optional(dict), "files": {WEIGHTS: FILE_ENTRY, OPTIMIZER: FILE_ENTRY},
}


def save_checkpoint(trainer, directory) -> Path:
    """Write the checkpoint atomically; in a data-parallel run only rank 0 writes (every
    process holds the same weights and state), the others return its path."""
    from . import optim

    out = Path(directory)
    if not trainer.writes:
        return out
    if out.is_dir() and visible_entries(out) and not (out / META).exists():
        raise ArtifactError(f"'{out}' is not empty and not a cnnc checkpoint; refusing to "
                            "overwrite it")
    with DirectoryWriter(out, "checkpoint") as writer:
        staging = writer.staging()
        trainer.model._sync_from_training()  # the device holds the newest weights
        write_weights(staging / WEIGHTS, trainer.model._params)
        write_weights(staging / OPTIMIZER, trainer.optimizer_state())
        meta = {
            "format": FORMAT, "version": VERSION,
            "spec": trainer.model.spec_key(), "spec_name": trainer.model.graph.graph["name"],
            "step": trainer.step, "epoch": trainer.epoch, "seed": trainer.seed,
            "state_start": trainer.state_start,
            "loss": trainer.terms[0].loss,
            "loss_terms": [t.to_json() for t in trainer.terms],
            "optimizer": optim.describe(trainer.optimizer),
            "base_lr": trainer.base_lr,
            "schedule": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in dataclasses.asdict(trainer.schedule).items()},
            # shuffling and masks are drawn from generators seeded by (seed, epoch, step):
            # these counters and the seed are the whole random state
            "random_state": {"seed": trainer.seed, "epoch": trainer.epoch, "step": trainer.step},
            "run": trainer.run_state,
            "files": {name: file_entry(staging / name) for name in (WEIGHTS, OPTIMIZER)},
        }
        meta["digest"] = json_digest(meta)
        write_atomic(staging / META, (json.dumps(meta, indent=2) + "\n").encode())
        writer.commit(staging, [WEIGHTS, OPTIMIZER, META])
    return out


def find_checkpoint(path) -> Path:
    """The checkpoint ``path`` means: a checkpoint itself, a folder of them (its ``last``), or
    a training run's output folder (its ``checkpoints/last``)."""
    p = Path(path)
    for candidate in (p, p / "last", p / "checkpoints" / "last"):
        if (candidate / META).is_file():
            return candidate
    if not p.exists():
        raise ArtifactError(f"no checkpoint at '{p}': it does not exist")
    raise ArtifactError(f"'{p}' is not a cnnc checkpoint: {META} is missing (looked in "
                        f"'{p}', '{p / 'last'}' and '{p / 'checkpoints' / 'last'}')")


def read_meta(directory) -> dict:
    """A checkpoint's metadata, checked (format, version, digest, fields), files not read."""
    d = Path(directory)
    meta_path = d / META
    if not meta_path.is_file():
        raise ArtifactError(f"'{d}' is not a cnnc checkpoint: {META} is missing")
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise ArtifactError(f"{meta_path}: implausibly large checkpoint metadata; {USE_EARLIER}")
    meta = parse_json(meta_path.read_bytes(), str(meta_path), "checkpoint metadata",
                      USE_EARLIER)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: not a cnnc checkpoint")
    if meta.get("version") != VERSION:
        raise ArtifactError(f"{meta_path}: checkpoint version {meta.get('version')} is not "
                            f"supported (this cnnc reads version {VERSION})")
    if meta.get("digest") != json_digest(meta):
        raise ArtifactError(f"{meta_path}: checkpoint metadata does not match its digest: it was "
                            "modified or is corrupt; use an earlier checkpoint")
    files = meta.get("files")
    for name in (WEIGHTS, OPTIMIZER):
        if not isinstance(files, dict) or name not in files:
            raise ArtifactError(f"{d}: checkpoint file '{name}' is missing from its record")
    check_record(meta, META_SCHEMA, str(meta_path), USE_EARLIER)
    return meta


def read_checkpoint(directory) -> tuple[dict, dict, dict]:
    """(meta, weights, optimizer state) after checking every file against its hash."""
    d = Path(directory)
    with reading(d):
        meta = read_meta(d)
        data = {}
        for name in (WEIGHTS, OPTIMIZER):
            if not (d / name).is_file():
                raise ArtifactError(f"{d}: checkpoint file '{name}' is missing")
            data[name] = read_verified(d / name, meta["files"][name], str(d),
                                       "the checkpoint is corrupt; use an earlier one")
    return (meta, parse_weights(data[WEIGHTS], str(d / WEIGHTS)),
            parse_weights(data[OPTIMIZER], str(d / OPTIMIZER)))


def _restore(what: str, meta: dict, where: Path, build):
    try:
        return build(meta[what])
    except (CnncError, TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{where / META}: field '{what}' does not describe a valid "
                            f"{what} ({exc}); {USE_EARLIER}") from None


STATE_SLOTS = ("momentum", "exp_avg", "exp_avg_sq")


def _check_state(state: dict, graph, directory: Path) -> None:
    """Optimizer state is '<param>#<slot>' arrays shaped as their parameter."""
    from ..runtime.weights import expected_params

    expected = expected_params(graph)
    for name, value in state.items():
        param, _, slot = name.partition("#")
        if slot not in STATE_SLOTS or param not in expected:
            raise ArtifactError(f"{directory / OPTIMIZER}: optimizer state '{name}' belongs to no "
                                f"parameter of this model; {USE_EARLIER}")
        if tuple(value.shape) != expected[param]:
            raise ArtifactError(f"{directory / OPTIMIZER}: optimizer state '{name}' has shape "
                                f"{tuple(value.shape)}; its parameter has {expected[param]}; "
                                f"{USE_EARLIER}")


def load_checkpoint(trainer, directory) -> dict:
    """Restore weights, optimizer state, counters and schedule into ``trainer``; nothing
    changes unless all of it checks."""
    from . import optim
    from ..runtime.weights import validate_weights
    from ..spec.losses import LossTerm
    from ..spec.train_config import LOSSES

    directory = Path(directory)
    meta, weights, state = read_checkpoint(directory)
    if meta["spec"] != trainer.model.spec_key():
        raise ArtifactError(f"{directory}: checkpoint of spec '{meta.get('spec_name')}' does not "
                            f"match this model ('{trainer.model.graph.graph['name']}': its layers "
                            "differ)")
    terms = meta.get("loss_terms") or [{"output": trainer.model.output_names[0],
                                         "loss": meta["loss"]}]
    if meta["loss"] not in LOSSES or meta["loss"] != terms[0]["loss"]:
        raise ArtifactError(f"{directory / META}: field 'loss' is '{meta['loss']}'; expected one "
                            f"of {', '.join(LOSSES)}, the first of 'loss_terms'; {USE_EARLIER}")
    for term in terms:
        if term["loss"] not in LOSSES or term["output"] not in trainer.model.output_names:
            raise ArtifactError(f"{directory / META}: field 'loss_terms' names loss "
                                f"'{term['loss']}' of output '{term['output']}'; expected one "
                                f"of {', '.join(LOSSES)} of an output of this model; "
                                f"{USE_EARLIER}")
    optimizer = _restore("optimizer", meta, directory, optim.optimizer_from)
    schedule = _restore("schedule", meta, directory, optim.schedule_from)
    try:
        params = validate_weights(trainer.model.graph, weights, trainer.model._params)
    except CnncError as exc:
        raise ArtifactError(f"{directory / WEIGHTS}: {exc}; {USE_EARLIER}") from None
    _check_state(state, trainer.model.graph, directory)
    trainer.model._params = params
    trainer.model._args = None
    trainer.optimizer = optimizer
    trainer.base_lr = meta["base_lr"]
    trainer.schedule = schedule
    trainer.loss = [LossTerm.from_json(t) for t in terms]
    trainer.step, trainer.epoch, trainer.seed = meta["step"], meta["epoch"], meta["seed"]
    trainer.state_start = meta.get("state_start") or 0
    trainer.run_state = dict(meta.get("run") or {})
    trainer._compiled.clear()
    trainer._device = None
    trainer._pending_state = state
    trainer.dirty = False
    return meta

"""The compiled artifact on disk, and the checks made before anything in it is trusted.

A directory written by ``cnnc compile SPEC -o DIR``:

    model.so              the compiled library (host code; CUDA device code as a fatbin inside)
    weights.safetensors   the weights, PyTorch names and layouts
    spec.yaml             the spec it was compiled from
    report.json           the optimisation report
    manifest.json         versions, target, input/output signature, kernel arguments, and the
                          sha256 and size of every other file

:func:`open_verified` reads the manifest, checks its fields and every file against it, and
hands back the checked bytes, which are all that is used afterwards: a tampered, truncated,
missing, mismatched or wrong-target artifact is refused with an :class:`ArtifactError`, and
the library is never loaded. Artifacts are written through :mod:`cnncompiler.storage`: one
writer at a time, committed whole, the directory's other contents (checkpoints) untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArtifactError
from ..storage import (DirectoryWriter, file_entry, json_digest, read_verified, reading,
                       sha256_file, umask, visible_entries, write_atomic)
from . import record
from .record import FILE_ENTRY, check_record, map_of, one_of, optional, positive_int

FORMAT = "cnnc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
WEIGHTS = "weights.safetensors"
SPEC = "spec.yaml"
REPORT = "report.json"
FILES = (LIBRARY, WEIGHTS, SPEC, REPORT)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
RECOMPILE = "recompile the model"

# The fields the runtime reads, with what each must hold (others are informational).
MANIFEST_SCHEMA = {
    "cnnc_version": str,
    "spec": {"name": str},
    "target": {"kind": one_of("cpu", "cuda"), "tvm": dict, "host": optional(dict),
               "cpu_flags": optional([str]), "vector_lanes": optional(int),
               "arch": optional(str)},
    "optimization": {"passes": [str]},
    "input": {"shape": list},
    "inputs": optional([{"name": str, "shape": list}]),  # every input, in the function's order
    "outputs": [dict],
    "batch_sizes": [positive_int],
    "kernel_args": [{"name": str, "shape": [record.count], "layout": optional(str)}],
    "files": map_of(FILE_ENTRY),
    "build": optional(dict),
    # how the weights were trained, when cnnc train wrote them: which epoch's were kept and why
    "training": optional({"keep": one_of("best", "last"), "epoch": positive_int,
                          "epochs": positive_int, "selected_by": optional(str),
                          "validation": optional(map_of(record.number)),
                          "test": optional(map_of(record.number)), "data": str}),
}

manifest_digest = json_digest
_umask = umask
__all__ = ["file_entry", "sha256_file", "write_atomic"]


def write_manifest(directory: Path, manifest: dict) -> None:
    """Record every artifact file's hash in the manifest and write it last, atomically."""
    directory = Path(directory)
    files = {name: file_entry(directory / name) for name in sorted(manifest.get("files") or FILES)}
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files=files)
    manifest["digest"] = manifest_digest(manifest)
    write_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def commit(writer: DirectoryWriter, staging: Path) -> None:
    """Put a completely written artifact (``staging``) in place of the writer's directory's
    artifact files, all at once; the directory's other contents stay."""
    writer.commit(staging, [*FILES, MANIFEST])


def check_output_dir(out: Path, allow=()) -> None:
    """Only a new directory or an earlier artifact may be written (or one holding only the
    entries in ``allow``, such as a training run's checkpoints): an artifact's files are
    replaced, and nothing else in the directory is touched."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ArtifactError(f"output '{out}' exists and is a file; choose a directory")
        others = [e for e in visible_entries(out) if e.name not in allow]
        if others and not (out / MANIFEST).exists():
            raise ArtifactError(f"output directory '{out}' is not empty and not a cnnc artifact; "
                                "refusing to overwrite it")


def read_manifest(directory: Path) -> dict:
    """The manifest, after its format, version, digest and fields are checked."""
    directory = Path(directory)
    if not directory.exists():
        raise ArtifactError(f"no artifact at '{directory}': the directory does not exist")
    if not directory.is_dir():
        raise ArtifactError(f"'{directory}' is a file, not an artifact directory "
                            "(cnnc compile -o DIR writes a directory)")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"'{directory}' is not a cnnc artifact: {MANIFEST} is missing")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: manifest is implausibly large; refused")
    manifest = record.parse_json(path.read_bytes(), str(path), "manifest", RECOMPILE)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a cnnc artifact manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {manifest.get('format_version')} "
                            f"is not supported (this cnnc reads version {FORMAT_VERSION}); "
                            "recompile the model with this cnnc")
    if manifest.get("digest") != manifest_digest(manifest):
        raise ArtifactError(f"{path}: the manifest does not match its digest: it was edited "
                            "after compilation; recompile the model")
    _check_files_field(manifest, directory)
    check_record(manifest, MANIFEST_SCHEMA, str(path), RECOMPILE)
    return manifest


def _check_files_field(manifest: dict, directory: Path) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or LIBRARY not in files or WEIGHTS not in files:
        raise ArtifactError(f"{directory}: manifest lists no library or weights; "
                            "the artifact is incomplete")
    for name, entry in files.items():
        if "/" in name or "\\" in name or name.startswith(".") or name not in FILES:
            raise ArtifactError(f"{directory}: manifest names a file outside the artifact: '{name}'")
        if not isinstance(entry, dict):
            raise ArtifactError(f"{directory}: the manifest's entry for '{name}' is not a "
                                "mapping of sha256 and size; recompile the model")


def open_verified(directory: Path, device: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """(manifest, every listed file's bytes) once all of it is checked: what is parsed and
    loaded afterwards is these bytes, never the files again.

    ``device`` ('cpu' or 'cuda'), when given, must match the artifact's target.
    """
    directory = Path(directory)
    with reading(directory):
        manifest = read_manifest(directory)
        kind = manifest["target"]["kind"]
        if device is not None and kind != device:
            raise ArtifactError(f"{directory}: compiled for target '{kind}', but asked to run on "
                                f"'{device}'; compile it with --target {device}")
        fix = "the artifact is incomplete or was modified after compilation; recompile the model"
        data = {name: read_verified(directory / name, entry, str(directory), fix)
                for name, entry in manifest["files"].items()}
    return manifest, data


def verify(directory: Path, device: str | None = None) -> dict:
    """Check the manifest and every file's size and hash; returns the manifest."""
    return open_verified(directory, device)[0]


def check_host_cpu(manifest: dict, directory: Path) -> None:
    """Refuse a CPU library that needs instruction sets this processor lacks (it would crash
    with an illegal instruction instead of a message)."""
    needed = set(manifest["target"].get("cpu_flags") or ())
    if not needed:
        return
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
            break
    missing = sorted(needed - flags)
    if flags and missing:
        raise ArtifactError(f"{directory}: compiled for a CPU with {', '.join(missing)}, which this "
                            f"processor lacks; recompile here (--target cpu detects the host)")

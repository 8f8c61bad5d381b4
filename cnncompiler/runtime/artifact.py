"""The compiled artifact on disk, and the checks made before anything in it is trusted.

A directory written by ``cnnc compile SPEC -o DIR``:

    model.so              the compiled library (host code; CUDA device code as a fatbin inside)
    weights.safetensors   the weights, PyTorch names and layouts
    spec.yaml             the spec it was compiled from
    report.json           the optimisation report
    manifest.json         versions, target, input/output signature, kernel arguments, and the
                          sha256 and size of every other file

:func:`verify` reads the manifest and checks every file against it before the library is
opened: a tampered, truncated, missing, mismatched or wrong-target artifact is refused with an
:class:`ArtifactError`, and the library is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ArtifactError

FORMAT = "cnnc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
WEIGHTS = "weights.safetensors"
SPEC = "spec.yaml"
REPORT = "report.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file, fsync, and rename: a crash leaves the old file or the
    new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def write_manifest(directory: Path, manifest: dict) -> None:
    """Record every file's hash in the manifest and write it last, atomically."""
    directory = Path(directory)
    files = {}
    for name in sorted(manifest.get("files", {})) or sorted(
            p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST):
        files[name] = file_entry(directory / name)
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files=files)
    manifest["digest"] = manifest_digest(manifest)
    write_atomic(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def json_digest(document: dict) -> str:
    """sha256 of a JSON document's own content (its ``digest`` key left out), so an edited
    manifest or checkpoint record is noticed too."""
    body = {k: v for k, v in document.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


manifest_digest = json_digest


def swap_in_directory(staging: Path, out: Path) -> None:
    """Put a completely written directory in place of ``out`` (which may exist): a crash
    leaves the old directory or the new one."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def read_manifest(directory: Path) -> dict:
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
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: manifest is corrupt ({exc}); recompile the model") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a cnnc artifact manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {manifest.get('format_version')} "
                            f"is not supported (this cnnc reads version {FORMAT_VERSION}); "
                            "recompile the model with this cnnc")
    if manifest.get("digest") != manifest_digest(manifest):
        raise ArtifactError(f"{path}: the manifest does not match its digest: it was edited "
                            "after compilation; recompile the model")
    return manifest


def verify(directory: Path, device: str | None = None) -> dict:
    """Check the manifest and every file's size and hash; returns the manifest.

    ``device`` ('cpu' or 'cuda'), when given, must match the artifact's target.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = manifest.get("files")
    if not isinstance(files, dict) or LIBRARY not in files or WEIGHTS not in files:
        raise ArtifactError(f"{directory}: manifest lists no library or weights; "
                            "the artifact is incomplete")
    for name, entry in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise ArtifactError(f"{directory}: manifest names a file outside the artifact: '{name}'")
        if not isinstance(entry, dict):
            raise ArtifactError(f"{directory}: the manifest's entry for '{name}' is not a "
                                "mapping of sha256 and size; recompile the model")
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: '{name}' is missing; the artifact is incomplete")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise ArtifactError(f"{directory}: '{name}' is {size} bytes, the manifest says "
                                f"{entry.get('size')}: truncated or replaced; recompile the model")
        if sha256_file(path) != entry.get("sha256"):
            raise ArtifactError(f"{directory}: '{name}' does not match its sha256 in the manifest: "
                                "it was modified after compilation; recompile the model")
    target = manifest.get("target")
    kind = target.get("kind") if isinstance(target, dict) else None
    if kind not in ("cpu", "cuda"):
        raise ArtifactError(f"{directory}: the manifest names no target (cpu or cuda) the "
                            "library was compiled for; recompile the model")
    if device is not None and kind != device:
        raise ArtifactError(f"{directory}: compiled for target '{kind}', but asked to run on "
                            f"'{device}'; compile it with --target {device}")
    return manifest


def check_host_cpu(manifest: dict, directory: Path) -> None:
    """Refuse a CPU library that needs instruction sets this processor lacks (it would crash
    with an illegal instruction instead of a message)."""
    needed = set(manifest.get("target", {}).get("cpu_flags", []))
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

"""Where cnnc keeps what it can rebuild: ``$CNNC_CACHE``, else ``$XDG_CACHE_HOME/cnnc``, else
``~/.cache/cnnc``. Each kind of entry has its own folder under it:

    train/       compiled training steps (backends/train_build.py)
    tuning/      tuning records, one per (kernel workload, target) (backends/tuning/cache.py)
    cuda-stub/   the compile-only libcuda stand-in for GPU-less machines (backends/cuda.py)

Deleting any of them only costs the time to rebuild it. A cached library is used only when
the record written after it vouches for every byte (sha256 and size), and it is loaded from
those checked bytes; anything else is rebuilt.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV = "CNNC_CACHE"


def cache_root() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "cnnc"
    try:
        return Path.home() / ".cache" / "cnnc"
    except RuntimeError:  # no HOME and no passwd entry (some containers): a per-user temp dir
        return Path(tempfile.gettempdir()) / f"cnnc-cache-{os.getuid()}"


def private_folder(kind: str) -> Path:
    """The cache folder for ``kind``, created private (mode 0700). cnnc runs native code it
    finds in its caches, so a folder that is another user's, or that others may write, is
    refused rather than trusted."""
    from .errors import CnncError

    folder = cache_root() / kind
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        whose = "another user's" if st.st_uid != os.getuid() else "writable by other users"
        raise CnncError(f"cache folder '{folder}' is {whose}: a library planted there would run "
                        "in this process; make it private "
                        f"(chmod 700 '{folder}') or point {ENV} at a folder of your own")
    return folder


def read_library(kind: str, key: str) -> bytes | None:
    """The cached library ``key``, when its record vouches for every byte; None when it is
    missing, truncated, damaged or replaced (the caller rebuilds it)."""
    from .errors import ArtifactError
    from .runtime.record import FILE_ENTRY, check_record, parse_json
    from .storage import read_verified

    folder = private_folder(kind)
    try:
        record = parse_json((folder / f"{key}.json").read_bytes(), str(folder), "cache record",
                            "rebuild")
        check_record(record, FILE_ENTRY, "cache record", "rebuild")
        return read_verified(folder / f"{key}.so", record, "cache", "rebuild")
    except (OSError, ArtifactError):
        return None


def write_library(kind: str, key: str, data: bytes, about: dict) -> None:
    """Keep a built library and, after it, the record that vouches for it."""
    import json

    from .storage import sha256_bytes, write_atomic

    folder = private_folder(kind)
    write_atomic(folder / f"{key}.so", data)
    record = {"sha256": sha256_bytes(data), "size": len(data), "key": about}
    write_atomic(folder / f"{key}.json", (json.dumps(record, indent=2) + "\n").encode())

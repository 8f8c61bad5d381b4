"""Where cnnc keeps what it can rebuild: ``$CNNC_CACHE``, else ``$XDG_CACHE_HOME/cnnc``, else
``~/.cache/cnnc``. Each kind of entry has its own folder under it:

    train/       compiled training steps (backends/train_build.py)
    tuning/      tuning records, one per (kernel workload, target) (backends/tuning/cache.py)
    cuda-stub/   the compile-only libcuda stand-in for GPU-less machines (backends/cuda.py)

Deleting any of them only costs the time to rebuild it.
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

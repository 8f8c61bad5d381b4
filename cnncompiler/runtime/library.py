"""Opening compiled libraries from bytes that were checked, never again from a path.

A library is native code: whatever is at its path when it is opened runs its constructors in
this process. So cnnc reads a library's bytes once, checks them (an artifact's manifest, a
cache record), and opens exactly those bytes: they are written to a fresh private folder of
this process (mode 0700, a new random name), loaded, and the copy is removed at once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def open_library(tvm, data: bytes, name: str = "model.so"):
    """``tvm.runtime.load_module`` of ``data``."""
    folder = Path(tempfile.mkdtemp(prefix="cnnc-lib-"))
    try:
        path = folder / name
        with open(path, "wb") as f:
            f.write(data)
        return tvm.runtime.load_module(str(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_shared_object(data: bytes, name: str, mode: int):
    """``ctypes.CDLL`` of ``data`` (a helper library cnnc built and checked)."""
    import ctypes

    folder = Path(tempfile.mkdtemp(prefix="cnnc-lib-"))
    try:
        path = folder / name
        with open(path, "wb") as f:
            f.write(data)
        return ctypes.CDLL(str(path), mode=mode)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

"""Opening compiled libraries from bytes that were checked, never again from a path.

A library is native code: whatever is at its path when it is opened runs its constructors in
this process. So cnnc reads a library's bytes once, checks them (an artifact's manifest, a
cache record), and opens exactly those bytes: they are written to a fresh private folder of
this process (mode 0700, a new random name), loaded, and the copy is removed at once.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def private_copy(data: bytes, name: str):
    """A path holding ``data`` in a fresh folder only this process knows, removed afterwards
    (a loaded library stays mapped)."""
    folder = Path(tempfile.mkdtemp(prefix="cnnc-lib-"))
    try:
        path = folder / name
        with open(path, "wb") as f:
            f.write(data)
        yield str(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def open_library(tvm, data: bytes, name: str = "model.so"):
    """``tvm.runtime.load_module`` of ``data``."""
    with private_copy(data, name) as path:
        return tvm.runtime.load_module(path)


def load_shared_object(data: bytes, name: str, mode: int):
    """``ctypes.CDLL`` of ``data`` (a helper library cnnc built and checked)."""
    import ctypes

    with private_copy(data, name) as path:
        return ctypes.CDLL(path, mode=mode)

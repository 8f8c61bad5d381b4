"""Shared test helpers: paths, optional dependencies, and markers that skip with a reason."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
INVALID = SPECS / "invalid"

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_NVCC = shutil.which("nvcc") is not None


def have_gpu() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()


needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
needs_gpu = pytest.mark.skipif(not have_gpu(), reason="no NVIDIA GPU on this machine")


def classic_specs() -> list[Path]:
    return sorted(p for p in SPECS.glob("*.yaml"))


@pytest.fixture(autouse=True, scope="session")
def private_cache_root(tmp_path_factory):
    """Every cache (compiled training steps, the CUDA driver stub) goes to a root of the test
    session's own, shared by its tests and never the user's (tests that need a cold cache set
    their own)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNC_CACHE", str(tmp_path_factory.getbasetemp() / "cnnc-cache"))
        yield


@pytest.fixture(autouse=True, scope="session")
def private_tuning_cache(tmp_path_factory):
    """Builds read no tuning records that ``cnnc tune`` or a benchmark left on this machine:
    the default tuning cache is an empty folder of the test session's own (tests that tune
    pass their own cache)."""
    try:
        from cnncompiler.backends.tuning import cache
    except ImportError:  # no TVM: nothing builds
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache, "default_cache_dir", lambda: tmp_path_factory.mktemp("tuning"))
        yield


@pytest.fixture
def no_nvcc(monkeypatch, tmp_path):
    """A machine without the CUDA toolkit: nothing on PATH, no CUDA_HOME, and the standard
    install location empty."""
    from cnncompiler.backends import cuda

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)

    class WithoutNvcc(type(Path())):
        def is_file(self):
            return self.name != "nvcc" and super().is_file()

    monkeypatch.setattr(cuda, "Path", WithoutNvcc)

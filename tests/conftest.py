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

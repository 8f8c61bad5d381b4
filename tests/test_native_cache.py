"""Cached libraries run only when their record vouches for every byte: a truncated, emptied,
damaged or planted training-step library is rebuilt (never loaded), and a cache folder that
other users may write is refused."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("tvm", reason="the TVM compiler is not installed")

import cnncompiler as cc  # noqa: E402
from cnncompiler import cache  # noqa: E402
from cnncompiler.errors import CnncError  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

SPEC = """\
name: cached
input: [1, 6, 6]
layers:
  - {name: c, type: conv2d, filters: 2, kernel: 3}
  - {type: relu}
  - {type: flatten}
  - {name: f, type: dense, units: 3}
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("cached")
    (root / "net.yaml").write_text(SPEC)
    cc.compile(root / "net.yaml", output_dir=root / "artifact")
    return root / "artifact"


@pytest.fixture(scope="module")
def warm_cache(artifact, tmp_path_factory):
    """A cache holding the training step's library, and the weights after one step."""
    root = tmp_path_factory.mktemp("warm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNC_CACHE", str(root))
        return root, one_step(artifact)


@pytest.fixture
def builds(monkeypatch, tmp_path, warm_cache):
    """A copy of the warm cache for this test; counts real builds of the training step."""
    import shutil

    from cnncompiler.backends import train_build

    shutil.copytree(warm_cache[0], tmp_path / "cache")
    monkeypatch.setenv("CNNC_CACHE", str(tmp_path / "cache"))
    count = []
    real = train_build.compile_train_module

    def counted(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_build, "compile_train_module", counted)
    return count


def one_step(artifact) -> dict:
    model = cc.load(artifact)
    x = np.linspace(-1, 1, 2 * 36, dtype=np.float32).reshape(2, 1, 6, 6)
    model.train_step(x, np.array([0, 2]))
    return model.params


def cached_library(tmp_path):
    libraries = list((tmp_path / "cache" / "train").glob("*.so"))
    assert len(libraries) == 1
    return libraries[0]


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip", "plant", "record"])
def test_a_damaged_cached_library_is_rebuilt_not_run(artifact, warm_cache, builds, tmp_path,
                                                     damage):
    want = warm_cache[1]
    assert one_step(artifact) and builds == [], "an intact cache entry is used as it is"
    lib = cached_library(tmp_path)
    data = lib.read_bytes()
    if damage == "truncate":
        lib.write_bytes(data[: len(data) // 3])
    elif damage == "empty":
        lib.write_bytes(b"")
    elif damage == "flip":
        lib.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    elif damage == "plant":  # another valid library of the same size
        planted = (artifact / "model.so").read_bytes()
        lib.write_bytes((planted + b"\0" * len(data))[:len(data)])
    else:
        lib.with_suffix(".json").write_text('{"sha256": "0", "size": 1}')
    got = one_step(artifact)
    assert len(builds) == 1, "the damaged library was not rebuilt"
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert one_step(artifact) and len(builds) == 1, "the rebuilt library is kept"


def test_a_cache_folder_others_may_write_is_refused(artifact, builds, tmp_path):
    os.chmod(tmp_path / "cache" / "train", 0o777)
    with pytest.raises(CnncError, match="writable by other users.*chmod 700"):
        one_step(artifact)
    assert builds == []


def test_new_cache_folders_are_private(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNC_CACHE", str(tmp_path / "root"))
    assert cache.private_folder("train").stat().st_mode & 0o777 == 0o700

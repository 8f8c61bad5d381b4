"""The safetensors reader and writer against the safetensors package itself: the same bytes
written, the same arrays read, the same damaged files refused; arrays read in place; the
finiteness test and the hashing read the loader relies on."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cnncompiler.runtime import tensorfile
from cnncompiler.runtime.weights import all_finite
from cnncompiler.storage import _read_hashing

RNG = np.random.default_rng(0)

FLOAT32_SETS = [
    {},
    {"w": RNG.standard_normal((6, 1, 5, 5)).astype(np.float32)},
    {"b": np.zeros(3, np.float32), "a.x": RNG.standard_normal((2, 7)).astype(np.float32),
     "layer1.0.bn1.running_var": np.ones(64, np.float32)},
    {"scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 4), np.float32),
     "odd": np.arange(3, dtype=np.float32)},
    {"é\"x": np.ones(1, np.float32)},
]


def _written(arrays, metadata=None) -> bytes:
    return b"".join(bytes(p) for p in tensorfile.pieces(arrays, metadata))


# (safetensors orders several metadata keys by a hash, and writes a broken header for no
# tensors with empty metadata: those cases are compared by what they read back as)
@pytest.mark.parametrize("arrays", FLOAT32_SETS)
@pytest.mark.parametrize("metadata", [None, {"format": "np"}])
def test_written_bytes_are_the_safetensors_package_bytes(arrays, metadata):
    assert _written(arrays, metadata) == st_save(arrays, metadata=metadata)


@pytest.mark.parametrize("arrays", FLOAT32_SETS)
@pytest.mark.parametrize("metadata", [{}, {"z": "1", "a": "2", "format": "np"}])
def test_written_files_read_back_with_the_safetensors_package(arrays, metadata):
    data = _written(arrays, metadata)
    for name, array in st_load(data).items():
        np.testing.assert_array_equal(array, arrays[name])
    assert st_load(data).keys() == arrays.keys()
    assert tensorfile.parse(data)[1] == metadata


def test_the_writer_takes_float32_only():
    with pytest.raises(ValueError, match="'w' is not a C-contiguous little-endian float32"):
        tensorfile.pieces({"w": np.zeros(3, np.float64)})
    with pytest.raises(ValueError, match="'w'"):
        tensorfile.pieces({"w": np.zeros((3, 4), np.float32).T})


MIXED = {"f64": RNG.standard_normal((3, 2)), "f16": np.arange(5, dtype=np.float16),
         "i64": np.arange(4, dtype=np.int64), "u8": np.arange(9, dtype=np.uint8),
         "bool": np.array([True, False]), "i8": np.arange(-3, 3, dtype=np.int8),
         "f32": RNG.standard_normal(17).astype(np.float32), "empty": np.zeros((2, 0), np.int32)}


@pytest.mark.parametrize("arrays", [*FLOAT32_SETS, MIXED])
def test_read_arrays_are_the_safetensors_package_arrays(arrays):
    data = st_save(arrays, metadata={"k": "v"})
    got, metadata = tensorfile.parse(bytearray(data))
    want = st_load(data)
    assert metadata == {"k": "v"}
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])


def test_arrays_are_views_of_a_bytearray_and_writable_copies_of_bytes():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    data = bytearray(st_save(arrays))
    views, _ = tensorfile.parse(data)
    assert all(np.shares_memory(v, np.frombuffer(data, np.uint8)) for v in views.values())
    copies, _ = tensorfile.parse(bytes(data))
    for array in copies.values():
        assert array.flags.writeable
        array += 1  # what the loaded weights allowed before
    np.testing.assert_array_equal(copies["a"], arrays["a"] + 1)


def _header_file(header: dict, data: bytes = b"", pad: bool = True) -> bytes:
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _f32(shape, offsets):
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


DAMAGED = [
    (b"\x10\x00\x00", "too short"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}  ", "not JSON"),
    ((2**40).to_bytes(8, "little") + b"{}", "does not fit"),
    ((200).to_bytes(8, "little") + b"{}", "does not fit"),
    (_header_file([1, 2]), "start with"),
    (b"\x08\x00\x00\x00\x00\x00\x00\x00" + b'"abc"   ', "start with"),
    (_header_file({"w": _f32([2], [0, 8])}, b"\0" * 7), "cover"),
    (_header_file({"w": _f32([2], [0, 8])}, b"\0" * 9), "cover"),
    (_header_file({"w": _f32([3], [0, 8])}, b"\0" * 8), "cannot occupy"),
    (_header_file({"w": _f32([2], [4, 12])}, b"\0" * 12), "previous tensor ends at 0"),
    (_header_file({"w": _f32([2], [0, 8]), "v": _f32([2], [4, 12])}, b"\0" * 12),
     "previous tensor ends at 8"),
    (_header_file({"w": _f32([2], [8, 0])}, b"\0" * 8), "occupies"),
    (_header_file({"w": {"dtype": "X99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "no dtype"),
    (_header_file({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "shape"),
    (_header_file({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4),
     "shape"),
    (_header_file({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
                  b"\0" * 4), "shape"),
    (_header_file({"w": "F32"}), "no dtype"),
    (_header_file({"__metadata__": {"k": 1}}), "mapping of strings"),
    (_header_file({}) [:8] + b"{" * 20 + b" " * 4, "not JSON"),
    (len(b"{\xff}   ").to_bytes(8, "little") + b"{\xff}   ", "not JSON"),
]


@pytest.mark.parametrize("data,match", DAMAGED)
def test_damaged_files_are_refused_as_the_package_refuses_them(data, match):
    with pytest.raises(tensorfile.FormatError, match=match):
        tensorfile.parse(bytearray(data))
    with pytest.raises((SafetensorError, ValueError)):
        st_load(data)


def test_deeply_nested_header_is_refused():
    text = b"{" + b'"a":' * 100_000 + b"{}"
    with pytest.raises(tensorfile.FormatError, match="nested too deeply|not JSON"):
        tensorfile.parse(len(text).to_bytes(8, "little") + text)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 1234, -1])
def test_all_finite_finds_one_bad_value_anywhere(bad, where):
    a = RNG.standard_normal(5000).astype(np.float32)
    assert all_finite(a)
    a[where] = bad
    assert not all_finite(a)


def test_all_finite_when_the_sum_overflows():
    big = np.full(10, np.finfo(np.float32).max, np.float32)
    assert all_finite(big) and all_finite(-big)
    big[3] = np.inf
    assert not all_finite(big)


@pytest.mark.parametrize("size", [0, 1, 256 * 1024, 256 * 1024 + 17, 3 * 256 * 1024])
def test_read_hashing_reads_and_hashes_every_byte(tmp_path, size):
    path = tmp_path / "f"
    content = RNG.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(content)
    data, digest = _read_hashing(path, size)
    assert bytes(data) == content and digest == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize("expected", [99, 101])
def test_read_hashing_gives_no_hash_for_a_file_of_another_size(tmp_path, expected):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert _read_hashing(path, expected)[1] is None

"""The safetensors file format, read in place and written in pieces.

    8 bytes      n, the header's length (unsigned, little-endian)
    n bytes      JSON, padded with spaces to a multiple of 8:
                 {"__metadata__": {"k": "v"},
                  "conv1.bias": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}, ...}
    the rest     every tensor's bytes (little-endian), back to back in the order of their offsets

:func:`parse` gives numpy arrays that are views of the bytes it was handed: an artifact's
weights are parsed where they were read and checked, never copied (safetensors' own loader
copied VGG-16-BN's 553 MB in 0.56 s). :func:`pieces` gives a file's contents as a header and
each array's own buffer, for a writer to write one after the other (safetensors' serializer
first joined them into one bytes object, 0.62 s for the same weights). What it writes is
what safetensors writes, byte for byte; what it reads is what safetensors accepts.
"""

from __future__ import annotations

import json
import math

import numpy as np

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own bound
ALIGN = 8
METADATA = "__metadata__"


class FormatError(ValueError):
    """The bytes are not a safetensors file; the message says where they stop being one."""


def parse(data) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """(name -> array, metadata) of a safetensors file's bytes.

    The arrays are views of ``data`` where it is writable (a ``bytearray``); of read-only
    ``bytes`` they are copies, so that they can be written to either way.
    """
    header, start = _header(data)
    metadata = header.pop(METADATA, None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise FormatError(f"'{METADATA}' is not a mapping of strings")
    entries = sorted((_entry(name, info) for name, info in header.items()),
                     key=lambda e: e[3])
    end = 0
    for name, dtype, shape, (begin, stop) in entries:
        if begin != end or stop < begin:
            raise FormatError(f"tensor '{name}' occupies bytes {begin}..{stop} of the data; the "
                              f"previous tensor ends at {end}")
        if stop - begin != math.prod(shape) * dtype.itemsize:
            raise FormatError(f"tensor '{name}' of shape {list(shape)} ({dtype}) cannot occupy "
                              f"{stop - begin} bytes")
        end = stop
    if start + end != len(data):
        raise FormatError(f"the tensors cover {end} bytes, the data holds {len(data) - start}")
    return {name: _array(data, dtype, shape, start + begin)
            for name, dtype, shape, (begin, _) in entries}, metadata


def _header(data) -> tuple[dict, int]:
    if len(data) < 8:
        raise FormatError(f"{len(data)} bytes are too short to hold a header size")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise FormatError(f"a header of {n} bytes does not fit in {len(data)} bytes")
    text = bytes(data[8:8 + n])
    if not text.startswith(b"{"):
        raise FormatError("the header does not start with '{'")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"the header is not JSON ({exc})") from None
    except RecursionError:
        raise FormatError("the header is nested too deeply") from None
    if not isinstance(header, dict):
        raise FormatError("the header is not a JSON object")
    return header, 8 + n


def _entry(name: str, info) -> tuple[str, np.dtype, tuple[int, ...], tuple[int, int]]:
    def counts(value, length=None) -> bool:
        return (isinstance(value, list) and (length is None or len(value) == length)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                        for v in value))

    if not isinstance(info, dict) or info.get("dtype") not in DTYPES:
        raise FormatError(f"tensor '{name}' has no dtype this reader knows "
                          f"({', '.join(DTYPES)})")
    if not counts(info.get("shape")) or not counts(info.get("data_offsets"), 2):
        raise FormatError(f"tensor '{name}' has no valid shape and data_offsets")
    return (name, np.dtype(DTYPES[info["dtype"]]), tuple(info["shape"]),
            tuple(info["data_offsets"]))


def _array(data, dtype: np.dtype, shape: tuple[int, ...], offset: int) -> np.ndarray:
    count = math.prod(shape)
    if count == 0:
        return np.zeros(shape, dtype)
    array = np.frombuffer(data, dtype, count, offset).reshape(shape)
    if not (array.flags.writeable and array.flags.aligned):
        array = array.copy()
    return array


def pieces(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> list:
    """A safetensors file of float32 ``arrays``, as a header and then each array's buffer:
    the file is their concatenation, made by whoever writes them."""
    names = sorted(arrays)  # safetensors' order for one dtype: by name
    header = {} if metadata is None else {METADATA: dict(sorted(metadata.items()))}
    offset = 0
    for name in names:
        array = arrays[name]
        if array.dtype != np.dtype("<f4") or not array.flags.c_contiguous:
            raise ValueError(f"'{name}' is not a C-contiguous little-endian float32 array")
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % ALIGN)
    return [len(text).to_bytes(8, "little") + text,
            *(memoryview(arrays[name].reshape(-1)).cast("B") for name in names
              if arrays[name].size)]

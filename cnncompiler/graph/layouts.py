"""Weight layouts a backend may ask for, applied with numpy once, when weights are loaded.

A backend can ask for a kernel argument in another layout than the layer prepares it in (a
blocked layout that matches the vector width, say). The artifact's manifest records the layout
of each argument as a string such as ``blocked_oihw:16:16``; the runtime applies it with numpy,
so no per-call transform runs and no compiler is needed to load the model.

Blocked layouts pad a channel count that the block does not divide with zeros, up to a whole
number of blocks: the CPU kernels carry such padding channels and rely on their weights being
zero.

    apply_layout("blocked_oihw:16:16", w)    # (64, 64, 3, 3) -> (4, 4, 3, 3, 16, 16)
    apply_layout("blocked_oihw:1:16", w)     # (6, 1, 5, 5) -> (1, 1, 5, 5, 1, 16), zero-padded
    apply_layout("blocked_vector:16", b)     # (120,) -> (8, 16), zero-padded
    apply_layout("blocked_rows:16", w)       # dense (1000, 512) -> (63, 512, 16), zero-padded
    apply_layout("blocked_local:16:16", w)   # (8, 8, 32, 16, 3, 3) -> (8, 8, 2, 1, 3, 3, 16, 16)
    apply_layout("winograd:4:16:16", w)      # (64, 64, 3, 3) -> (36, 4, 4, 16, 16): G g G^T
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ArtifactError
from . import winograd


@dataclass(frozen=True)
class Layout:
    name: str
    shape: Callable[..., tuple[int, ...]]
    apply: Callable[..., np.ndarray]
    doc: str


def _blocks(n: int, b: int) -> int:
    return -(-n // b)


def _pad_axis(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``a`` with zeros appended along ``axis`` up to ``size``."""
    if a.shape[axis] == size:
        return a
    width = [(0, 0)] * a.ndim
    width[axis] = (0, size - a.shape[axis])
    return np.pad(a, width)


def _blocked_oihw_shape(shape, ib, ob):
    o, i, *k = shape
    return (_blocks(o, ob), _blocks(i, ib), *k, ib, ob)


def _blocked_oihw(w, ib, ob):
    """(O, I, *K) -> (O/ob, I/ib, *K, ib, ob): output and input channels in blocks."""
    o, i, *k = w.shape
    nk = len(k)
    w = _pad_axis(_pad_axis(w, 0, _blocks(o, ob) * ob), 1, _blocks(i, ib) * ib)
    blocked = w.reshape(_blocks(o, ob), ob, _blocks(i, ib), ib, *k)
    order = (0, 2, *range(4, 4 + nk), 3, 1)
    return blocked.transpose(order)


def _blocked_vector_shape(shape, b):
    return (_blocks(shape[0], b), b, *shape[1:])


def _blocked_vector(v, b):
    """(C, ...) -> (C/b, b, ...): a per-channel vector in channel blocks."""
    v = _pad_axis(v, 0, _blocks(v.shape[0], b) * b)
    return v.reshape(v.shape[0] // b, b, *v.shape[1:])


def _blocked_rows_shape(shape, b):
    o, k = shape
    return (_blocks(o, b), k, b)


def _blocked_rows(w, b):
    """Dense (O, K) -> (O/b, K, b): ``b`` output rows side by side, one vector per input."""
    o, k = w.shape
    w = _pad_axis(w, 0, _blocks(o, b) * b)
    return w.reshape(-1, b, k).transpose(0, 2, 1)


def _blocked_local_shape(shape, ib, ob):
    oh, ow, f, c, *k = shape
    return (oh, ow, _blocks(f, ob), _blocks(c, ib), *k, ib, ob)


def _blocked_local(w, ib, ob):
    """Locally connected (OH, OW, F, C, *K) -> (OH, OW, F/ob, C/ib, *K, ib, ob): each output
    position's filters blocked as a conv's (``blocked_oihw``)."""
    oh, ow, f, c, *k = w.shape
    nk = len(k)
    w = _pad_axis(_pad_axis(w, 2, _blocks(f, ob) * ob), 3, _blocks(c, ib) * ib)
    blocked = w.reshape(oh, ow, _blocks(f, ob), ob, _blocks(c, ib), ib, *k)
    return blocked.transpose(0, 1, 2, 4, *range(6, 6 + nk), 5, 3)


def _winograd_shape(shape, m, ib, ob):
    o, i, *k = shape
    if tuple(k) != (3, 3) or m not in winograd.TILES:
        raise ArtifactError(f"weight layout 'winograd:{m}:{ib}:{ob}' needs a 3x3 conv weight and "
                            f"a tile size in {winograd.TILES}; received a weight of shape "
                            f"{tuple(shape)}; recompile the model with this cnnc")
    return ((m + 2) ** 2, _blocks(o, ob), _blocks(i, ib), ib, ob)


def _winograd(w, m, ib, ob):
    """(O, I, 3, 3) -> ((m+2)^2, O/ob, I/ib, ib, ob): each filter's Winograd transform
    ``G g G^T`` (F(m x m, 3 x 3)), its (m+2)^2 positions outermost, then blocked channels."""
    o, i = w.shape[:2]
    e = _winograd_shape(w.shape, m, ib, ob)[0]
    u = winograd.transform_weight(w, m).reshape(o, i, e).transpose(2, 0, 1)
    u = _pad_axis(_pad_axis(u, 1, _blocks(o, ob) * ob), 2, _blocks(i, ib) * ib)
    u = u.reshape(e, _blocks(o, ob), ob, _blocks(i, ib), ib).transpose(0, 1, 3, 4, 2)
    return u.astype(np.float32)


LAYOUTS = {layout.name: layout for layout in (
    Layout("blocked_oihw", _blocked_oihw_shape, _blocked_oihw,
           "conv weight (O, I, *K) as (O/ob, I/ib, *K, ib, ob); args ib, ob"),
    Layout("blocked_vector", _blocked_vector_shape, _blocked_vector,
           "per-channel vector (C,) as (C/b, b); arg b"),
    Layout("blocked_rows", _blocked_rows_shape, _blocked_rows,
           "dense weight (O, K) as (O/b, K, b); arg b"),
    Layout("blocked_local", _blocked_local_shape, _blocked_local,
           "locally connected weight (OH, OW, F, C, *K) as (OH, OW, F/ob, C/ib, *K, ib, ob); "
           "args ib, ob"),
    Layout("winograd", _winograd_shape, _winograd,
           "3x3 conv weight as G g G^T, ((m+2)^2, O/ob, I/ib, ib, ob); args m, ib, ob"),
)}


def parse(spec: str) -> tuple[Layout, tuple[int, ...]]:
    name, *args = spec.split(":")
    if name not in LAYOUTS or not all(a.isdigit() and int(a) > 0 for a in args):
        raise ArtifactError(f"unknown weight layout '{spec}' (this cnnc knows "
                            f"{', '.join(LAYOUTS)}); recompile the model with this cnnc")
    return LAYOUTS[name], tuple(int(a) for a in args)


def layout_shape(spec: str | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    if not spec:
        return tuple(shape)
    layout, args = parse(spec)
    return tuple(layout.shape(tuple(shape), *args))


def apply_layout(spec: str | None, array: np.ndarray) -> np.ndarray:
    if not spec:
        return array
    layout, args = parse(spec)
    return layout.apply(array, *args)

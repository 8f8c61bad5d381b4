"""Weight layouts a backend may ask for, applied with numpy once, when weights are loaded.

A backend can ask for a kernel argument in another layout than the layer prepares it in (a
blocked layout that matches the vector width, say). The artifact's manifest records the layout
of each argument as a string such as ``blocked_oihw:16:16``; the runtime applies it with numpy,
so no per-call transform runs and no compiler is needed to load the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Layout:
    name: str
    shape: Callable[..., tuple[int, ...]]
    apply: Callable[..., np.ndarray]
    doc: str


def _blocked_oihw_shape(shape, ib, ob):
    o, i, *k = shape
    return (o // ob, i // ib, *k, ib, ob)


def _blocked_oihw(w, ib, ob):
    """(O, I, *K) -> (O/ob, I/ib, *K, ib, ob): output and input channels in blocks."""
    o, i, *k = w.shape
    nk = len(k)
    blocked = w.reshape(o // ob, ob, i // ib, ib, *k)
    order = (0, 2, *range(4, 4 + nk), 3, 1)
    return blocked.transpose(order)


def _blocked_vector_shape(shape, b):
    return (shape[0] // b, b, *shape[1:])


def _blocked_vector(v, b):
    """(C, ...) -> (C/b, b, ...): a per-channel vector in channel blocks."""
    return v.reshape(v.shape[0] // b, b, *v.shape[1:])


LAYOUTS = {layout.name: layout for layout in (
    Layout("blocked_oihw", _blocked_oihw_shape, _blocked_oihw,
           "conv weight (O, I, *K) as (O/ob, I/ib, *K, ib, ob); args ib, ob"),
    Layout("blocked_vector", _blocked_vector_shape, _blocked_vector,
           "per-channel vector (C,) as (C/b, b); arg b"),
)}


def parse(spec: str) -> tuple[Layout, tuple[int, ...]]:
    name, *args = spec.split(":")
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

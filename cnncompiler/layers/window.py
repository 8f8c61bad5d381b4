"""Sliding-window arithmetic shared by every convolution and pooling layer.

One pure function gives the output size of a window sliding over an axis,

    out = floor((W + P_before + P_after - D*(K-1) - 1) / S) + 1

which is the familiar (W - K + 2P)/S + 1 when D = 1 and the padding is symmetric. The numpy
helpers below build the windows the reference implementations reduce over.
"""

from __future__ import annotations

import numpy as np

Pad = tuple[int, int]


def span(kernel: int, dilation: int = 1) -> int:
    """How many input positions one window covers, holes included."""
    return dilation * (kernel - 1) + 1


def out_size(size: int, kernel: int, stride: int, pad: Pad, dilation: int = 1,
             ceil_mode: bool = False) -> int:
    """Number of window positions along one axis (may be < 1: the caller reports that)."""
    total = size + pad[0] + pad[1] - span(kernel, dilation)
    if not ceil_mode:
        return total // stride + 1
    n = -(-total // stride) + 1
    # As in PyTorch: the last window must start inside the input or the leading padding.
    if n > 0 and (n - 1) * stride >= size + pad[0]:
        n -= 1
    return n


def resolve_padding(padding, sizes, kernel, stride, dilation) -> tuple[Pad, ...]:
    """Turn 'valid', 'same' or explicit pairs into one (before, after) pair per axis.

    'same' keeps ceil(W / S) outputs and puts an odd extra pad at the end, as PyTorch (stride 1)
    and TensorFlow do.
    """
    if padding == "valid":
        return tuple((0, 0) for _ in sizes)
    if padding == "same":
        pads = []
        for w, k, s, d in zip(sizes, kernel, stride, dilation):
            out = -(-w // s)
            total = max((out - 1) * s + span(k, d) - w, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return tuple(padding)


def unread_tail(size: int, kernel: int, stride: int, pad: Pad, dilation: int = 1,
                ceil_mode: bool = False):
    """The input indices (first, last) past the last window, which no window reads.

    Returns None when the last window reaches the end of the input, or only padding is left
    over. Judged by the windows there really are, because ceil_mode and 'same' padding leave
    such a tail too when the window spans less than the stride (kernel 1, stride 2, even size).
    """
    n = out_size(size, kernel, stride, pad, dilation, ceil_mode)
    if n < 1:
        return None
    first_unread = (n - 1) * stride + span(kernel, dilation) - pad[0]
    if first_unread > size - 1:
        return None
    return max(first_unread, 0), size - 1


def pad_spatial(x: np.ndarray, pads: tuple[Pad, ...], value: float = 0.0,
                mode: str = "constant") -> np.ndarray:
    """Pad the trailing spatial axes of an (N, C, *spatial) array."""
    width = [(0, 0), (0, 0)] + [tuple(p) for p in pads]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=value)
    return np.pad(x, width, mode=mode)


def windows(xp: np.ndarray, kernel, stride, dilation) -> np.ndarray:
    """Windows of a padded (N, C, *spatial) array: (N, C, *out_spatial, *kernel), a view."""
    nd = len(kernel)
    spans = tuple(span(k, d) for k, d in zip(kernel, dilation))
    v = np.lib.stride_tricks.sliding_window_view(xp, spans, axis=tuple(range(2, 2 + nd)))
    out_sel = tuple(slice(None, None, s) for s in stride)
    k_sel = tuple(slice(None, None, d) for d in dilation)
    return v[(slice(None), slice(None)) + out_sel + k_sel]

"""Winograd's minimal filtering F(m x m, 3 x 3): its transform matrices and the weight transform.

A 3x3 stride-1 convolution computes each output tile of m x m pixels from an input tile of
(m + 2) x (m + 2) as ``A^T [(G g G^T) * (B^T d B)] A``: the element-wise product replaces
9 m^2 multiplications by (m + 2)^2. ``G g G^T`` is the weight transform, done once with
numpy when the weights are loaded (the ``winograd`` layout of ``graph.layouts``); the CPU
kernel (backends/cpu/winograd.py) does the input and output transforms.

The matrices are Lavin and Gray's (arXiv:1509.09308): F(2, 3) on the points 0, 1, -1, and
F(4, 3) on 0, 1, -1, 2, -2; both with the point at infinity. Their rounding error grows with
the tile: see tests/test_winograd.py.
"""

from __future__ import annotations

import numpy as np

MATRICES = {
    2: (np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}
TILES = tuple(MATRICES)


def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m x m, 3 x 3)."""
    return MATRICES[m]


def transform_weight(w: np.ndarray, m: int) -> np.ndarray:
    """(O, I, 3, 3) -> (O, I, m + 2, m + 2): ``G g G^T`` of every filter, in float64."""
    _, g, _ = matrices(m)
    return np.einsum("ar,oirs,bs->oiab", g, w.astype(np.float64), g)


def winograd_conv_reference(x: np.ndarray, w: np.ndarray, m: int, pads) -> np.ndarray:
    """The Winograd algorithm itself in float64 numpy, (N, C, H, W) * (O, C, 3, 3): what the
    kernel computes, for tests that separate the algorithm's error from the kernel's."""
    bt, _, at = matrices(m)
    (pt, pb), (pl, pr) = pads
    n, _, h, wd = x.shape
    oh, ow = h + pt + pb - 2, wd + pl + pr - 2
    th, tw = -(-oh // m), -(-ow // m)
    xp = np.zeros((n, x.shape[1], th * m + 2, tw * m + 2))
    xp[:, :, pt:pt + h, pl:pl + wd] = x[:, :, :th * m + 2 - pt, :tw * m + 2 - pl]
    a = m + 2
    idx_h = (np.arange(th) * m)[:, None] + np.arange(a)
    idx_w = (np.arange(tw) * m)[:, None] + np.arange(a)
    tiles = xp[:, :, idx_h[:, None, :, None], idx_w[None, :, None, :]]  # n c th tw a a
    v = np.einsum("ar,nctwrs,bs->nctwab", bt, tiles, bt)
    u = transform_weight(w, m)
    prod = np.einsum("nctwab,ocab->notwab", v, u)
    y = np.einsum("ia,notwab,jb->notiwj", at, prod, at).reshape(n, -1, th * m, tw * m)
    return y[:, :, :oh, :ow]

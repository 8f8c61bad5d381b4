"""Region-of-interest pooling for detection heads: RoI max pooling (Fast R-CNN) and RoI align
(Mask R-CNN), with the semantics of ``torchvision.ops.roi_pool`` and ``roi_align``, as numpy
references and their gradients with respect to the features.

Both layers take two inputs: ``features`` (N, C, H, W) and ``rois`` (R, 5), one box a row as
(batch_index, x1, y1, x2, y2) in input-image coordinates; ``spatial_scale`` maps them onto the
feature map (1/16 for a stride-16 backbone). The output is (R, C, *output_size), one pooled map
per box. Boxes get no gradient (as in torchvision).

Box arithmetic is done in the features' float type, operation by operation as torchvision does
it, since bin edges are floors and ceilings of it; the sums are accumulated in float64. A box
whose batch index is not in [0, N) pools nothing: zeros, and no gradient (torchvision reads
outside its input there). Boxes are expected to be finite; with adaptive sampling, a bin of
``MAX_ADAPTIVE_BIN`` positions or more takes no samples (torchvision's count would overflow).
"""

from __future__ import annotations

import math

import numpy as np

# torchvision's RoI max pool starts every bin from -FLT_MAX, for float64 features too
FLT_MAX = float(np.finfo(np.float32).max)


def output_pair(output_size) -> tuple[int, int]:
    """``output_size`` as (height, width): an int for a square, or a pair of ints, each >= 1."""
    pair = (output_size, output_size) if isinstance(output_size, (int, np.integer)) \
        else tuple(output_size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v >= 1 for v in pair):
        raise ValueError(f"output_size must be a positive int or [height, width] of positive "
                         f"ints; received {output_size!r}")
    return int(pair[0]), int(pair[1])


def box_batches(rois: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box's batch index (truncated toward zero, as C's int cast) and whether it names
    an image of the batch; the index of a box that does not is 0."""
    index = np.trunc(rois[:, 0])
    valid = (index >= 0) & (index < batch_size)
    return np.where(valid, index, 0).astype(np.int64), valid


def round_half_away(v):
    """C's ``round``: halves away from zero (numpy's ``round`` takes them to even). Exact for
    every float: ``v - trunc(v)`` is, where ``floor(v + 0.5)`` is not (0.49999997f + 0.5f
    rounds to 1)."""
    whole = np.trunc(v)
    return whole + np.where(np.abs(v - whole) >= 0.5, np.sign(v), 0)


# -- RoI max pooling -------------------------------------------------------------------------

def pool_bins(lo, hi, pooled: int, size: int, spatial_scale: float, dtype) -> tuple:
    """One axis of one box of RoI max pooling: the [start, end) of each of its ``pooled`` bins
    on an input axis of ``size``, from the box's edges ``lo`` and ``hi`` in image coordinates.

    The edges are scaled and rounded to whole positions; the box spans at least one; bin p
    covers [floor(p * b), ceil((p + 1) * b)) from the box's start, b = span / pooled, clipped
    to the input (so bins overlap where b is not whole, and may be empty)."""
    t = np.dtype(dtype).type
    start, end = (int(round_half_away(t(e) * t(spatial_scale))) for e in (lo, hi))
    bin_size = t(max(end - start + 1, 1)) / t(pooled)
    p = np.arange(pooled, dtype=dtype)
    first = np.floor(p * bin_size).astype(np.int64) + start
    last = np.ceil((p + 1) * bin_size).astype(np.int64) + start
    return np.clip(first, 0, size), np.clip(last, 0, size)


def _first_max(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The largest of ``values`` along ``axis`` that exceeds -FLT_MAX (else -FLT_MAX), NaN
    skipped, and where it first occurs (-1 where nothing exceeds -FLT_MAX): torchvision's
    ``if (v > maxval)`` scan."""
    top = np.fmax.reduce(values, axis=axis, initial=-FLT_MAX)
    at = np.argmax(values == np.expand_dims(top, axis), axis=axis)
    return top, np.where(top > -FLT_MAX, at, -1)


def _roi_pool_one(feature: np.ndarray, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """Max of each bin of one box over (C, H, W), and the flat position h * W + w of its first
    maximum in row-major order (-1 where none). A bin is a rectangle: the maximum of each
    bin row's columns first, then of those over the bin's rows, within the box's region."""
    channels, height, width = feature.shape
    out = np.zeros((channels, len(rows[0]), len(cols[0])), feature.dtype)
    at = np.full(out.shape, -1)
    top, bottom, left, right = rows[0].min(), rows[1].max(), cols[0].min(), cols[1].max()
    if bottom <= top or right <= left:  # every bin empty
        return out, at
    region = feature[:, top:bottom, left:right]
    h, w = np.arange(top, bottom), np.arange(left, right)
    in_rows = (h >= rows[0][:, None]) & (h < rows[1][:, None])
    in_cols = (w >= cols[0][:, None]) & (w < cols[1][:, None])
    # (C, h, PW, w): each row's values in each column bin
    row_max, row_at = _first_max(np.where(in_cols, region[:, :, None, :], -FLT_MAX), axis=3)
    # (C, PH, h, PW): those row maxima in each row bin
    top_max, h_at = _first_max(np.where(in_rows[:, :, None], row_max[:, None], -FLT_MAX), axis=2)
    w_at = np.take_along_axis(row_at, np.maximum(h_at, 0), axis=1)
    found = np.where(h_at >= 0, (h_at + top) * width + w_at + left, -1)
    empty = (rows[1] <= rows[0])[:, None] | (cols[1] <= cols[0])[None, :]
    return np.where(empty, 0.0, top_max), np.where(empty, -1, found)


def roi_pool_argmax(x: np.ndarray, rois: np.ndarray, output_size, spatial_scale: float):
    """RoI max pooling's output (R, C, PH, PW) and, per output, the flat position h * W + w of
    the input it took: its bin's first maximum in row-major order, or -1 where it took none
    (an empty bin, or one of nothing above -FLT_MAX)."""
    ph, pw = output_pair(output_size)
    n, c, height, width = x.shape
    out = np.zeros((len(rois), c, ph, pw), x.dtype)
    at = np.full(out.shape, -1, np.int64)
    batch, valid = box_batches(rois, n)
    for r in np.flatnonzero(valid):
        _, x1, y1, x2, y2 = rois[r]
        rows = pool_bins(y1, y2, ph, height, spatial_scale, x.dtype)
        cols = pool_bins(x1, x2, pw, width, spatial_scale, x.dtype)
        out[r], at[r] = _roi_pool_one(x[batch[r]], rows, cols)
    return out, at


def roi_pool_reference(x: np.ndarray, rois: np.ndarray, output_size,
                       spatial_scale: float) -> np.ndarray:
    """RoI max pooling, ``torchvision.ops.roi_pool``: each box's region of the features cut
    into output_size bins (see :func:`pool_bins`), each bin's maximum; an empty bin gives 0.
    NaN is skipped, as torchvision's ``>`` comparison does.

    YAML: ``{type: roi_pool, inputs: [features, rois], output_size: 7, spatial_scale: 0.0625}``
    """
    return roi_pool_argmax(x, rois, output_size, spatial_scale)[0]


def roi_pool_gradient(x: np.ndarray, rois: np.ndarray, dy: np.ndarray, output_size,
                      spatial_scale: float) -> np.ndarray:
    """d(loss)/d(features) of :func:`roi_pool_reference`: each output's gradient goes to the
    input it took (the first maximum of its bin); positions taken by several bins or boxes
    get the sum."""
    _, at = roi_pool_argmax(x, rois, output_size, spatial_scale)
    n, c, height, width = x.shape
    batch, _ = box_batches(rois, n)
    r, ch, _, _ = np.nonzero(at >= 0)
    dx = np.zeros((n, c, height * width))
    np.add.at(dx, (batch[r], ch, at[at >= 0]), dy[at >= 0])
    return dx.reshape(x.shape).astype(x.dtype)


# -- RoI align -------------------------------------------------------------------------------

# Adaptive sampling of bins this long or longer (or of a non-finite box) takes no samples,
# where torchvision's grid count would overflow or its loops run practically forever.
MAX_ADAPTIVE_BIN = float(2**24)


def align_grid(extent, pooled: int, sampling_ratio: int) -> int:
    """Samples per bin along one axis: ``sampling_ratio`` when positive, else (adaptive)
    ceil(extent / pooled), and none for a box of no or negative extent."""
    if sampling_ratio > 0:
        return sampling_ratio
    per_bin = extent / type(extent)(pooled)
    return math.ceil(per_bin) if 0 < per_bin < MAX_ADAPTIVE_BIN else 0


def align_weights(lo, hi, pooled: int, size: int, spatial_scale: float, sampling_ratio: int,
                  aligned: bool, dtype) -> np.ndarray:
    """One axis of one box of RoI align, as a (pooled, size) matrix: row p holds the weight
    each input position gets in bin p, its samples' linear-interpolation weights averaged.

    RoI align is separable: its output for a box is ``wy @ features @ wx.T`` with one such
    matrix per axis (torchvision averages the bilinear samples of a grid; a bilinear weight is
    the product of the two axes' linear weights, and a sample outside the map on either axis
    contributes nothing, which a zero row weight also does).

    torchvision's rules along one axis of ``size``: the box is scaled and, when ``aligned``,
    shifted by half a position; unaligned boxes span at least 1; bin p's samples are at
    start + p * b + (i + 0.5) * b / grid; a sample below -1 or above ``size`` contributes
    nothing, one at or below 0 reads position 0, one at or past size - 1 reads size - 1
    alone; between, the two positions around it by linear weights."""
    t = np.dtype(dtype).type
    offset = t(0.5) if aligned else t(0)
    start, end = (t(e) * t(spatial_scale) - offset for e in (lo, hi))
    extent = end - start if aligned else max(end - start, t(1))
    bin_size = extent / t(pooled)
    grid = align_grid(extent, pooled, sampling_ratio)
    weights = np.zeros((pooled, size))
    if grid == 0:
        return weights
    p = np.arange(pooled, dtype=dtype)[:, None]
    i = np.arange(grid, dtype=dtype)[None, :]
    pos = start + p * bin_size + (i + t(0.5)) * bin_size / t(grid)  # (pooled, grid)
    inside = (pos >= -1) & (pos <= size)
    pos = np.where(inside & (pos > 0), pos, t(0))
    low = np.floor(pos).astype(np.int64)
    edge = low >= size - 1
    low = np.where(edge, size - 1, low)
    high = np.where(edge, size - 1, low + 1)
    frac = np.where(edge, t(0), pos - low.astype(dtype))
    bins = np.broadcast_to(np.arange(pooled)[:, None], pos.shape)
    np.add.at(weights, (bins[inside], low[inside]), (t(1) - frac)[inside])
    np.add.at(weights, (bins[inside], high[inside]), frac[inside])
    return weights / grid


def _align_boxes(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """(box, batch index, wy, wx) for each box that names an image of the batch."""
    ph, pw = output_pair(output_size)
    n, _, height, width = x.shape
    batch, valid = box_batches(rois, n)
    for r in np.flatnonzero(valid):
        _, x1, y1, x2, y2 = rois[r]
        wy = align_weights(y1, y2, ph, height, spatial_scale, sampling_ratio, aligned, x.dtype)
        wx = align_weights(x1, x2, pw, width, spatial_scale, sampling_ratio, aligned, x.dtype)
        yield r, batch[r], wy, wx


def roi_align_reference(x: np.ndarray, rois: np.ndarray, output_size, spatial_scale: float,
                        sampling_ratio: int = 0, aligned: bool = False) -> np.ndarray:
    """RoI align, ``torchvision.ops.roi_align``: each bin the average of a grid of bilinear
    samples of the features (``sampling_ratio`` per axis, or adaptive when 0 or negative:
    ceil(box size / output size)); ``aligned`` shifts the box by half a position, so that
    pixel centres are at .5 (Detectron2's choice, recommended).

    YAML: ``{type: roi_align, inputs: [features, rois], output_size: 7, spatial_scale: 0.0625,
    sampling_ratio: 2, aligned: true}``
    """
    ph, pw = output_pair(output_size)
    out = np.zeros((len(rois), x.shape[1], ph, pw))
    for r, b, wy, wx in _align_boxes(x, rois, output_size, spatial_scale, sampling_ratio,
                                     aligned):
        out[r] = wy @ x[b] @ wx.T
    return out.astype(x.dtype)


def roi_align_gradient(x: np.ndarray, rois: np.ndarray, dy: np.ndarray, output_size,
                       spatial_scale: float, sampling_ratio: int = 0,
                       aligned: bool = False) -> np.ndarray:
    """d(loss)/d(features) of :func:`roi_align_reference`: each output's gradient spread back
    by its samples' bilinear weights, wy.T @ dy @ wx for each box (RoI align is linear in the
    features)."""
    dx = np.zeros(x.shape)
    for r, b, wy, wx in _align_boxes(x, rois, output_size, spatial_scale, sampling_ratio,
                                     aligned):
        dx[b] += wy.T @ dy[r] @ wx
    return dx.astype(x.dtype)


__all__ = ["FLT_MAX", "MAX_ADAPTIVE_BIN", "align_grid", "align_weights", "box_batches",
           "output_pair", "pool_bins", "roi_align_gradient", "roi_align_reference",
           "roi_pool_argmax", "roi_pool_gradient", "roi_pool_reference", "round_half_away"]

"""TE computes of RoI max pooling and RoI align (``layers.roi``: torchvision.ops' semantics),
forward and backward, in NCHW, with their CPU and CUDA schedules.

``features`` is (N, C, H, W) with H and W fixed (N may be symbolic), ``rois`` (R, 5) rows of
(batch_index, x1, y1, x2, y2) (R may be symbolic); the outputs are (R, C, *output_size).

Each kernel first works out every box's geometry once, in small tables: its image, and per
axis its bins' [first, last) (RoI pool) or the weights of its bilinear samples (RoI align).
The box arithmetic follows torchvision operation by operation in the boxes' float type, so
bin edges (floors and ceilings of it) and sample positions are the same. The per-channel
stages then read the tables, over extents read from them.

RoI align is separable (``layers.roi.align_weights``): per box and axis, an (R, bins, size)
table of the weight each position gets in each bin, its samples' linear weights averaged
(computed sample by sample). The forward sums each bin over the run of positions its
samples read; the backward gathers the same weights.

The backward passes gather rather than scatter (one writer per input element, no atomics):
per input position, the run of each box's bins that cover it, then for each input element a
sum over the boxes of its image and over the bins that cover it. That visits every box for
every input element (N * C * H * W * R steps, most of them empty) besides the covered terms.

NOTE: the tables are not only for speed. Written inline, the box arithmetic repeats every
subexpression in each index of each load, and TVM's buffer-region analysis of those indices
grows exponentially (a 9x11 RoI pool did not compile in ten minutes). And TVM 0.27's
create_prim_func fails on a comparison of another stage's values inside a reduction's extent
("StructuralHash is not supported" for te.ComputeOp): the tables fold every condition in (a
box outside the batch has no bins and no samples), so extents are min/max arithmetic.

Every compute is written for any float dtype, as te_grad's. A box outside the batch, or with
non-finite or huge coordinates, makes no index outside the features.
"""

from __future__ import annotations

from tvm import te, tirx

from cnncompiler.layers.roi import FLT_MAX, MAX_ADAPTIVE_BIN, output_pair

ROWS, COLS = (2, 4), (1, 3)  # a box row's y edges and x edges
# Whole numbers computed from box coordinates are clamped to this before becoming indices: a
# wild box must not overflow int32 (or meet a NaN cast, undefined in LLVM)
INDEX_LIMIT = float(2**24)
START, BIN, GRID = 0, 1, 2  # the columns of an RoI align geometry table


def _const(value, dtype):
    return tirx.const(value, dtype)


def _int(value: int):
    return tirx.const(value, "int32")


def _dtype(expr) -> str:
    return str(expr.ty)


def _at_least_one(extent):
    """A data-dependent reduction extent, made at least one step: TVM initialises such a
    reduction at its first step, so one over nothing would leave its output unwritten. The
    extra step is masked, or reads a zero weight."""
    return tirx.max(extent, _int(1))


def _to_index(v):
    """A whole-valued float as int32, clamped to +-INDEX_LIMIT. TVM's float min and max are a
    compare and a select, so a NaN becomes one of the limits, never an undefined cast."""
    limit = _const(INDEX_LIMIT, _dtype(v))
    return tirx.max(tirx.min(v, limit), -limit).astype("int32")


def _round_half_away(v):
    """C's ``round`` (layers.roi.round_half_away): the whole part, plus the sign where the
    fraction is half or more, which trunc(2 * fraction) is (doubling is exact)."""
    whole = tirx.trunc(v)
    return whole + tirx.trunc((v - whole) * _const(2.0, _dtype(v)))


# -- per-box tables --------------------------------------------------------------------------

def box_images(rois, batch_size, name: str):
    """(R,) int32: each box's image (its batch index truncated toward zero), -1 where the
    batch has no such image (layers.roi.box_batches)."""
    def value(r):
        index = tirx.trunc(rois[r, 0])
        inside = tirx.all(index >= _const(0.0, rois.dtype),
                          index < tirx.Cast(rois.dtype, batch_size))
        return tirx.Select(inside, _to_index(index), _int(-1))

    return te.compute((rois.shape[0],), value, name=name)


def pool_edges(rois, edges, spatial_scale: float, name: str):
    """(R, 2) int32: each box's first and last position along one axis for RoI max pooling,
    its edges scaled and rounded."""
    def value(r, end):
        edge = tirx.Select(end == 0, rois[r, edges[0]], rois[r, edges[1]])
        return _to_index(_round_half_away(edge * _const(spatial_scale, rois.dtype)))

    return te.compute((rois.shape[0], 2), value, name=name)


def pool_bins(box, pooled: int, size: int, dtype, name: str):
    """(R, pooled, 2) int32: [first, last) of each bin of RoI max pooling along one axis
    (layers.roi.pool_bins), from the box's edges (:func:`pool_edges`), its arithmetic in
    ``dtype``; empty where last <= first."""
    def value(r, p, end):
        start = box[r, 0]
        bin_size = tirx.max(box[r, 1] - start + 1, _int(1)).astype(dtype) / _const(pooled, dtype)
        at = tirx.Select(end == 0, tirx.floor(p.astype(dtype) * bin_size),
                         tirx.ceil((p + 1).astype(dtype) * bin_size))
        return tirx.min(tirx.max(_to_index(at) + start, _int(0)), _int(size))

    return te.compute((box.shape[0], pooled, 2), value, name=name)


def align_geometry(rois, images, edges, pooled: int, spatial_scale: float, sampling_ratio: int,
                   aligned: bool, name: str):
    """(R, 3) in the boxes' dtype: per box along one axis its start, bin size and samples per
    bin, a whole number (layers.roi.align_weights and align_grid); no samples for a box of
    no extent, a non-finite one, or one outside the batch, and with adaptive sampling none
    for bins of MAX_ADAPTIVE_BIN positions or more (layers.roi.align_grid)."""
    dtype = rois.dtype
    zero = _const(0.0, dtype)

    def value(r, column):
        offset = _const(0.5 if aligned else 0.0, dtype)
        start, end = (rois[r, e] * _const(spatial_scale, dtype) - offset for e in edges)
        extent = end - start
        if not aligned:
            extent = tirx.max(extent, _const(1.0, dtype))
        bin_size = extent / _const(pooled, dtype)
        if sampling_ratio > 0:
            grid = _const(sampling_ratio, dtype)
        else:  # torchvision's ceil(extent / pooled): the same quotient as the bin size
            sized = tirx.all(bin_size > zero, bin_size < _const(MAX_ADAPTIVE_BIN, dtype))
            grid = tirx.Select(sized, _to_index(tirx.ceil(bin_size)).astype(dtype), zero)
        grid = tirx.Select(images[r] >= 0, grid, zero)
        return tirx.Select(column == START, start,
                           tirx.Select(column == BIN, bin_size, grid))

    return te.compute((rois.shape[0], 3), value, name=name)


def _runs(shape, extent: int, hit, name: str):
    """For each index of ``shape``, the first and the last k in [0, extent) with
    ``hit(*index, k)``; last < first where there is none. Bins and the positions they cover
    both move forward, so what lies between the two is a run (where an element inside it
    does not hit, its terms are zero)."""
    def bound(reduce, fill, suffix):
        def value(*index):
            k = te.reduce_axis((0, extent), name="k")
            return reduce(tirx.Select(hit(*index, k), k, _int(fill)), axis=k)
        return te.compute(shape, value, name=f"{name}_{suffix}")

    return bound(te.min, extent, "first"), bound(te.max, -1, "last")


def _covering(x, images, rows: int, cols: int, row_covers, col_covers, name: str):
    """The runs of bins covering each input position, the boxes last (contiguous for the
    gather's loop over them): (N, H, R) for the rows, on image n only, and (W, R) for the
    columns. ``row_covers(r, p, i)``: bin p of box r covers row i."""
    count = images.shape[0]

    def on_image(n, i, r, p):
        return tirx.all(images[r] == n.astype("int32"), row_covers(r, p, i))

    return (_runs((x.shape[0], x.shape[2], count), rows, on_image, f"{name}_row_cover"),
            _runs((x.shape[3], count), cols, lambda j, r, q: col_covers(r, q, j),
                  f"{name}_col_cover"))


def _gather(x, images, rows, cols, term, name: str):
    """dx[n, c, i, j]: the sum of ``term(r, c, p, q, i, j)`` over the boxes r of image n and
    the bins (p, q) of r that cover (i, j), given by ``rows`` and ``cols`` (:func:`_covering`)."""
    (row_first, row_last), (col_first, col_last) = rows, cols

    def value(n, c, i, j):
        r = te.reduce_axis((0, images.shape[0]), name="r")
        p0, q0 = row_first[n, i, r], col_first[j, r]
        kp = te.reduce_axis((0, tirx.max(row_last[n, i, r] - p0 + 1, _int(0))), name="kp")
        kq = te.reduce_axis((0, tirx.max(col_last[j, r] - q0 + 1, _int(0))), name="kq")
        return te.sum(term(r, c, p0 + kp, q0 + kq, i, j), axis=[r, kp, kq])

    return te.compute(x.shape, value, name=name)


# -- RoI max pooling -------------------------------------------------------------------------

def _pool_tables(x, rois, output_size, spatial_scale: float, name: str):
    """The boxes' images, and their bins' [first, last) along the rows and along the columns."""
    ph, pw = output_pair(output_size)
    height, width = int(x.shape[2]), int(x.shape[3])

    def bins(edges, pooled, size, axis):
        box = pool_edges(rois, edges, spatial_scale, f"{name}_{axis}_edges")
        return pool_bins(box, pooled, size, rois.dtype, f"{name}_{axis}")

    return (box_images(rois, x.shape[0], f"{name}_images"), bins(ROWS, ph, height, "rows"),
            bins(COLS, pw, width, "cols"))


def _pool_reduction(x, tables, reduce, element, name: str):
    """``reduce`` over each bin of each box of ``element(taken, v, r, c, ph, pw, h, w)``, v the
    feature at (h, w). An empty bin, or a box outside the batch, is reduced over one position
    with ``taken`` false."""
    images, rows, cols = tables
    height, width = int(x.shape[2]), int(x.shape[3])

    def value(r, c, ph, pw):
        h0, h1, w0, w1 = rows[r, ph, 0], rows[r, ph, 1], cols[r, pw, 0], cols[r, pw, 1]
        rh = te.reduce_axis((0, _at_least_one(h1 - h0)), name="rh")
        rw = te.reduce_axis((0, _at_least_one(w1 - w0)), name="rw")
        h, w = tirx.min(h0 + rh, _int(height - 1)), tirx.min(w0 + rw, _int(width - 1))
        v = x[tirx.max(images[r], _int(0)), c, h, w]
        taken = tirx.all(images[r] >= 0, h0 < h1, w0 < w1)
        return reduce(element(taken, v, r, c, ph, pw, h, w), axis=[rh, rw])

    shape = (images.shape[0], x.shape[1], rows.shape[1], cols.shape[1])
    return te.compute(shape, value, name=name)


def _pool_max(x, tables, name: str):
    lowest, zero = _const(-FLT_MAX, x.dtype), _const(0.0, x.dtype)

    def element(taken, v, *_):
        return tirx.Select(taken, tirx.Select(v > lowest, v, lowest), zero)

    return _pool_reduction(x, tables, te.max, element, name)


def roi_pool(x, rois, output_size, spatial_scale: float, name: str = "roi_pool"):
    """RoI max pooling (layers.roi.roi_pool_reference): the maximum of each bin, 0 for an
    empty bin. torchvision's scan takes a value only above -FLT_MAX, so NaN and -inf never
    win, and a bin of nothing else gives -FLT_MAX."""
    return _pool_max(x, _pool_tables(x, rois, output_size, spatial_scale, name), name)


def _pool_argmax(x, tables, y, name: str):
    """Per output ``y`` of RoI max pooling, the flat position h * W + w of the first maximum
    of its bin in row-major order (torchvision's argmax), or H * W where it took none (an
    empty bin, or nothing above -FLT_MAX)."""
    height, width = int(x.shape[2]), int(x.shape[3])
    none, lowest = _int(height * width), _const(-FLT_MAX, x.dtype)

    def element(taken, v, r, c, ph, pw, h, w):
        hit = tirx.all(taken, v == y[r, c, ph, pw], v > lowest)
        return tirx.Select(hit, h * width + w, none)

    return _pool_reduction(x, tables, te.min, element, name)


def roi_pool_backward(x, rois, dy, output_size, spatial_scale: float, y=None,
                      name: str = "roi_pool_dx"):
    """d(loss)/d(features) of :func:`roi_pool` (layers.roi.roi_pool_gradient): each output's
    gradient to the input it took. ``y`` is the forward's output, computed here if not given."""
    width = int(x.shape[3])
    tables = _pool_tables(x, rois, output_size, spatial_scale, name)
    images, rows, cols = tables
    if y is None:
        y = _pool_max(x, tables, f"{name}_y")
    taken = _pool_argmax(x, tables, y, f"{name}_argmax")

    def covers(bins):
        return lambda r, p, i: tirx.all(bins[r, p, 0] <= i, i < bins[r, p, 1])

    zero = _const(0.0, dy.dtype)

    def term(r, c, p, q, i, j):
        return tirx.Select(taken[r, c, p, q] == i * width + j, dy[r, c, p, q], zero)

    runs = _covering(x, images, int(rows.shape[1]), int(cols.shape[1]), covers(rows),
                     covers(cols), name)
    return _gather(x, images, *runs, term, name)


# -- RoI align -------------------------------------------------------------------------------

def _sample(geometry, r, p, k):
    """Position of sample k of bin p of box r, in torchvision's order of operations."""
    dtype = geometry.dtype
    bin_size = geometry[r, BIN]
    return (geometry[r, START] + p.astype(dtype) * bin_size
            + (k.astype(dtype) + _const(0.5, dtype)) * bin_size / geometry[r, GRID])


def _grid(geometry, r):
    return geometry[r, GRID].astype("int32")


def _let(value, name: str, body):
    """``body(v)`` with ``v`` bound to ``value`` once: a sample's position appears in both of
    its weights and both of its positions (see the NOTE above)."""
    var = tirx.Var(name, value.ty)
    return tirx.Let(var, value, body(var))


def _interpolate(pos, size: int, use):
    """``use(low, high, w_low, w_high)``: the two positions a sample at ``pos`` reads on an axis
    of ``size`` and their weights, zero outside [-1, size] (NaN too); at or below 0 it reads
    position 0, at or past size - 1 that one alone (layers.roi.align_weights)."""
    dtype = _dtype(pos)
    zero, one, last = _const(0.0, dtype), _const(1.0, dtype), _int(size - 1)

    def at(pos):
        inside = tirx.all(pos >= _const(-1.0, dtype), pos <= _const(size, dtype))
        clamped = tirx.Select(tirx.all(inside, pos > zero), pos, zero)  # in [0, size]
        floor = tirx.floor(clamped).astype("int32")
        # NOTE: only the position is let-bound; TVM's region analysis of the loads would keep
        # a let-bound index as a free variable, and the function would not be well formed
        low, high = tirx.min(floor, last), tirx.min(floor + 1, last)
        frac = tirx.Select(floor >= last, zero, clamped - floor.astype(dtype))
        return use(low, high, tirx.Select(inside, one - frac, zero),
                   tirx.Select(inside, frac, zero))

    return _let(pos, "pos", at)


def _align_weights(x, rois, output_size, spatial_scale, sampling_ratio, aligned, name):
    """The boxes' images and their (R, bins, size) weight tables along the rows and along the
    columns."""
    ph, pw = output_pair(output_size)
    args = (spatial_scale, sampling_ratio, aligned)
    images = box_images(rois, x.shape[0], f"{name}_images")
    rows = align_geometry(rois, images, ROWS, ph, *args, name=f"{name}_rows")
    cols = align_geometry(rois, images, COLS, pw, *args, name=f"{name}_cols")
    return (images, align_weights(rows, ph, int(x.shape[2]), f"{name}_wy"),
            align_weights(cols, pw, int(x.shape[3]), f"{name}_wx"))


def align_weights(geometry, pooled: int, size: int, name: str):
    """(R, pooled, size): per box, the weight input position i gets in bin p along one axis,
    averaged over the bin's samples on that axis (layers.roi.align_weights)."""
    dtype = geometry.dtype
    zero = _const(0.0, dtype)

    def value(r, p, i):
        k = te.reduce_axis((0, _at_least_one(_grid(geometry, r))), name="k")

        def weight(low, high, w_low, w_high):
            return tirx.Select(low == i, w_low, zero) + tirx.Select(high == i, w_high, zero)

        w = _interpolate(_sample(geometry, r, p, k), size, weight)
        return te.sum(tirx.Select(k < _grid(geometry, r), w / geometry[r, GRID], zero), axis=k)

    return te.compute((geometry.shape[0], pooled, size), value, name=name)


def roi_align(x, rois, output_size, spatial_scale: float, sampling_ratio: int = 0,
              aligned: bool = False, name: str = "roi_align"):
    """RoI align (layers.roi.roi_align_reference): each bin the average of its grid of
    bilinear samples, summed as wy[p, i] * wx[q, j] * x[i, j] over the positions the bin's
    samples read (a run along each axis)."""
    ph, pw = output_pair(output_size)
    height, width = int(x.shape[2]), int(x.shape[3])
    images, wy, wx = _align_weights(x, rois, output_size, spatial_scale, sampling_ratio,
                                    aligned, name)
    zero = _const(0.0, rois.dtype)
    count = rois.shape[0]
    row_first, row_last = _runs((count, ph), height, lambda r, p, i: wy[r, p, i] != zero,
                                f"{name}_row_run")
    col_first, col_last = _runs((count, pw), width, lambda r, q, j: wx[r, q, j] != zero,
                                f"{name}_col_run")

    def value(r, c, p, q):
        i0, j0 = row_first[r, p], col_first[r, q]
        ki = te.reduce_axis((0, _at_least_one(row_last[r, p] - i0 + 1)), name="ki")
        kj = te.reduce_axis((0, _at_least_one(col_last[r, q] - j0 + 1)), name="kj")
        i, j = tirx.min(i0 + ki, _int(height - 1)), tirx.min(j0 + kj, _int(width - 1))
        weight = (wy[r, p, i] * wx[r, q, j]).astype(x.dtype)
        return te.sum(weight * x[tirx.max(images[r], _int(0)), c, i, j], axis=[ki, kj])

    return te.compute((count, x.shape[1], ph, pw), value, name=name)


def roi_align_backward(x, rois, dy, output_size, spatial_scale: float, sampling_ratio: int = 0,
                       aligned: bool = False, name: str = "roi_align_dx"):
    """d(loss)/d(features) of :func:`roi_align` (layers.roi.roi_align_gradient):
    dx[n, c, i, j] = sum over the boxes of image n of wy[p, i] * wx[q, j] * dy[r, c, p, q]."""
    ph, pw = output_pair(output_size)
    images, wy, wx = _align_weights(x, rois, output_size, spatial_scale, sampling_ratio,
                                    aligned, name)
    zero = _const(0.0, rois.dtype)

    def term(r, c, p, q, i, j):
        return (wy[r, p, i] * wx[r, q, j]).astype(dy.dtype) * dy[r, c, p, q]

    runs = _covering(x, images, ph, pw, lambda r, p, i: wy[r, p, i] != zero,
                     lambda r, q, j: wx[r, q, j] != zero, name)
    return _gather(x, images, *runs, term, name)


# -- schedules -------------------------------------------------------------------------------

def _stages(sch):
    """The top-level blocks of a PrimFunc, each with its leading spatial loops and the loops
    after them (its reductions, when it has any)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        lead = 0
        while lead < min(len(loops), len(kinds)) and kinds[lead] == 0:
            lead += 1
        yield block, loops[:lead], loops[lead:]


def _initialise_first(sch, block, reduction) -> None:
    """Zero (or otherwise initialise) each output before its reduction loops rather than at
    their first iteration: a reduction whose loops run zero times (no boxes at all) still
    writes its initial value."""
    if reduction:
        sch.decompose_reduction(block, reduction[0])


def schedule_cpu(func):
    """Each stage parallel over its two leading spatial loops: (box, channel) for the
    pooling and the argmax, (image, channel) for the gradient's gather, (box, bin) or
    (image, box) for the tables. The reductions stay serial inside; their extents come
    from the boxes."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for block, lead, reduction in list(_stages(sch)):
        if lead:
            sch.parallel(sch.fuse(*lead[:2]) if len(lead) > 1 else lead[0])
        _initialise_first(sch, block, reduction)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def schedule_cuda(func, threads: int = 128):
    """Each stage one thread per output element (its spatial loops fused and split into
    blocks of ``threads``); the data-dependent reductions run serially in each thread.

    NOTE: dlight's rules, Fallback included, leave these functions unscheduled (stages whose
    reduction extents are read from other stages), and TVM then builds them as host code
    without a word: they need this schedule."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for block, lead, reduction in list(_stages(sch)):
        fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        bx, tx = sch.split(fused, [None, threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        _initialise_first(sch, block, reduction)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)

"""Train a small Fast R-CNN head on synthetic shapes: for each proposal box, say which shape it
holds (or background) and how to move the box onto the shape. Everything is made here with
numpy from a seed: no download.

    python examples/train_detector_shapes.py                 # about a minute on two cores,
                                                             # a minute more the first time
    python examples/train_detector_shapes.py --epochs 4 --images 400 -o build/shapes-detector
    python examples/train_detector_shapes.py --save-data shapes.npz     # the same data, then
    cnnc train specs/fast_rcnn_shapes.yaml --data shapes.npz -o build/detector

Each 64x64 image holds one to three filled squares, circles or triangles of random colour, size
and place on a noisy background, with their boxes known. The proposals stand in for a region
proposal network: jittered copies of each ground-truth box (labelled with its shape, and with
the deltas that move them back onto it as box targets) and random boxes that overlap no shape
much (background, label 0, box targets NaN, which the smooth L1 loss ignores). The model is
specs/fast_rcnn_shapes.yaml. A box belongs to the image its batch index names, so the batches
are formed here, images with their proposals and indices counted within the batch, and given
to ``model.fit`` as a function of the epoch (fresh proposals and order each epoch). At the end
the held-out
images' proposals are classified and their boxes refined, and the refined boxes' overlap with
the shapes is compared with the proposals'.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPEC = Path(__file__).resolve().parent.parent / "specs" / "fast_rcnn_shapes.yaml"

SIZE = 64
CLASSES = ("background", "square", "circle", "triangle")
# The box targets are divided by these, as Fast R-CNN's implementations do (py-faster-rcnn's
# BBOX_NORMALIZE_STDS): the raw deltas of proposals near their box are a few hundredths, so
# without it the smooth L1 loss would sit deep in its quadratic part, its gradients tiny next to
# the classifier's, and the regression would barely learn. Scaled, the deltas are about unit
# size, as the logits' targets are.
DELTA_SCALE = np.array([0.1, 0.1, 0.2, 0.2], np.float32)


# -- the data ------------------------------------------------------------------------------------

@dataclass
class Shapes:
    """Images (N, 3, SIZE, SIZE) in [0, 1]; per image its boxes (k, 4) as (x1, y1, x2, y2) in
    pixels, pixel i covering [i, i + 1), and their class indices (k,) in 1..3."""

    images: np.ndarray
    boxes: list
    labels: list

    def __len__(self) -> int:
        return len(self.images)


def shape_mask(kind: int, x0: int, y0: int, side: int) -> np.ndarray:
    """The SIZE x SIZE mask of a shape whose bounding square starts at (x0, y0)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    u, v = (xx - x0) / side, (yy - y0) / side      # 0..1 across the shape's square
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    if kind == 2:                                  # circle
        inside &= (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif kind == 3:                                # triangle, apex up
        inside &= np.abs(u - 0.5) <= v / 2
    return inside


def mask_box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def make_shapes(count: int, seed: int, noise: float = 0.08) -> Shapes:
    """``count`` images of one to three shapes each, their boxes apart."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, SIZE, SIZE), np.float32)
    all_boxes, all_labels = [], []
    for i in range(count):
        background = rng.uniform(0.0, 1.0, 3)
        image = np.broadcast_to(background[:, None, None], (3, SIZE, SIZE)).copy()
        boxes, labels = [], []
        for _ in range(rng.integers(1, 4)):
            for _attempt in range(20):
                kind, side = int(rng.integers(1, 4)), int(rng.integers(12, 29))
                x0, y0 = rng.integers(0, SIZE - side + 1, 2)
                mask = shape_mask(kind, x0, y0, side)
                box = mask_box(mask)
                if all(iou(box[None], b[None])[0, 0] == 0 for b in boxes):  # apart
                    break
            else:
                continue
            colour = rng.uniform(0.0, 1.0, 3)
            while np.abs(colour - background).sum() < 0.6:  # keep every shape visible
                colour = rng.uniform(0.0, 1.0, 3)
            image[:, mask] = colour[:, None]
            boxes.append(box)
            labels.append(kind)
        image += rng.normal(0.0, noise, image.shape)
        images[i] = np.clip(image, 0.0, 1.0)
        all_boxes.append(np.array(boxes, np.float32))
        all_labels.append(np.array(labels, np.int64))
    return Shapes(images, all_boxes, all_labels)


# -- boxes ---------------------------------------------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (n, 4) with every box of ``b`` (m, 4)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _centre_size(boxes: np.ndarray):
    size = boxes[:, 2:] - boxes[:, :2]
    return boxes[:, :2] + 0.5 * size, size


def encode_deltas(proposals: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """R-CNN's box deltas from each proposal to its target, divided by DELTA_SCALE:
    dx = (gx - px) / pw, dy = (gy - py) / ph, dw = log(gw / pw), dh = log(gh / ph), with
    (x, y) a box's centre and (w, h) its size."""
    (pc, ps), (gc, gs) = _centre_size(proposals), _centre_size(targets)
    deltas = np.concatenate([(gc - pc) / ps, np.log(gs / ps)], axis=1)
    return (deltas / DELTA_SCALE).astype(np.float32)


def decode_deltas(proposals: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """The boxes that ``deltas`` (as ``encode_deltas`` gives them) make of ``proposals``."""
    deltas = deltas * DELTA_SCALE
    pc, ps = _centre_size(proposals)
    centre = pc + deltas[:, :2] * ps
    size = ps * np.exp(np.minimum(deltas[:, 2:], 4.0))  # no overflow from a wild prediction
    return np.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=1).astype(np.float32)


@dataclass
class Proposals:
    """One image's proposals: boxes (R, 4), labels (R,) with 0 for background, box targets
    (R, 4) (NaN for background) and the ground-truth box each foreground proposal belongs to
    (NaN for background)."""

    boxes: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    gt: np.ndarray


def _jittered(gt: np.ndarray, rng, count: int) -> np.ndarray:
    """``count`` boxes near ``gt`` with IoU >= 0.5 with it, as a good proposal has."""
    out = []
    while len(out) < count:
        centre, size = _centre_size(gt[None])
        centre = centre[0] + rng.normal(0.0, 0.12, 2) * size[0]
        size = size[0] * np.exp(rng.normal(0.0, 0.15, 2))
        box = np.clip(np.concatenate([centre - size / 2, centre + size / 2]), 0, SIZE)
        if np.all(box[2:] - box[:2] >= 4) and iou(box[None], gt[None])[0, 0] >= 0.5:
            out.append(box)
    return np.array(out, np.float32)


def _background(gts: np.ndarray, rng, count: int) -> np.ndarray:
    """``count`` random boxes of IoU < 0.3 with every shape."""
    out = []
    while len(out) < count:
        size = rng.uniform(8, 36, 2)
        x1, y1 = rng.uniform(0, SIZE - size)
        box = np.array([x1, y1, x1 + size[0], y1 + size[1]], np.float32)
        if iou(box[None], gts).max() < 0.3:
            out.append(box)
    return np.array(out, np.float32)


def make_proposals(boxes: np.ndarray, labels: np.ndarray, rng, per_shape: int = 4,
                   background: int = 4) -> Proposals:
    fg = [_jittered(g, rng, per_shape) for g in boxes]
    fg_boxes = np.concatenate(fg)
    fg_gt = np.repeat(boxes, per_shape, axis=0)
    bg_boxes = _background(boxes, rng, background)
    nan = np.full((background, 4), np.nan, np.float32)
    return Proposals(
        boxes=np.concatenate([fg_boxes, bg_boxes]),
        labels=np.concatenate([np.repeat(labels, per_shape), np.zeros(background, np.int64)]),
        targets=np.concatenate([encode_deltas(fg_boxes, fg_gt), nan]),
        gt=np.concatenate([fg_gt, nan]))


def propose(data: Shapes, seed: int, **counts) -> list[Proposals]:
    rng = np.random.default_rng(seed)
    return [make_proposals(b, l, rng, **counts) for b, l in zip(data.boxes, data.labels)]


def batch(data: Shapes, proposals: list[Proposals], index) -> tuple[dict, dict]:
    """The model's inputs and labels for the images ``index``: their proposals as RoIs
    (batch_index, x1, y1, x2, y2), the batch index counting within this batch."""
    chosen = [proposals[i] for i in index]
    rois = np.concatenate([np.column_stack([np.full(len(p.boxes), j, np.float32), p.boxes])
                           for j, p in enumerate(chosen)]).astype(np.float32)
    x = {"image": data.images[index], "rois": rois}
    y = {"cls": np.concatenate([p.labels for p in chosen]),
         "bbox": np.concatenate([p.targets for p in chosen])}
    return x, y


# -- training and evaluation ---------------------------------------------------------------------

def named_arrays(data: Shapes, proposals: list[Proposals], prefix: str = "") -> dict:
    """The images, their proposals and labels as ``cnnc train --data`` reads them for a spec of
    several inputs and outputs: an array per input and per output, by name, the boxes' first
    column the index of their image."""
    x, y = batch(data, proposals, np.arange(len(data)))
    return {f"{prefix}{k}": v for k, v in {**x, **y}.items()}


def epoch_batches(data: Shapes, batch_size: int, seed: int):
    """What ``fit`` takes: a function of the epoch giving that epoch's batches, the images in
    a seeded order with fresh proposals (more variety from the same images)."""
    def batches(epoch: int):
        rng = np.random.default_rng([seed, epoch])
        proposals = propose(data, seed=int(rng.integers(2**31)))
        order = rng.permutation(len(data))
        for start in range(0, len(order), batch_size):
            yield batch(data, proposals, order[start:start + batch_size])

    return batches


def evaluate(model, data: Shapes, proposals: list[Proposals], batch_size: int = 32) -> dict:
    """RoI classification accuracy (all proposals, and the foreground ones), and the mean IoU
    with their shapes of the foreground proposals before and after the predicted deltas."""
    predicted, labels, refined, boxes, gts = [], [], [], [], []
    for start in range(0, len(data), batch_size):
        index = np.arange(start, min(start + batch_size, len(data)))
        x, y = batch(data, proposals, index)
        out = model.predict(x)
        predicted.append(out["cls"].argmax(axis=1))
        labels.append(y["cls"])
        refined.append(decode_deltas(x["rois"][:, 1:], out["bbox"]))
        boxes.append(x["rois"][:, 1:])
        gts.append(np.concatenate([proposals[i].gt for i in index]))
    predicted, labels = np.concatenate(predicted), np.concatenate(labels)
    fg = labels > 0
    gt = np.concatenate(gts)[fg]

    def mean_iou(b):
        return float(np.mean([iou(p[None], g[None])[0, 0] for p, g in zip(b[fg], gt)]))

    return {"accuracy": float(np.mean(predicted == labels)),
            "foreground_accuracy": float(np.mean(predicted[fg] == labels[fg])),
            "proposal_iou": mean_iou(np.concatenate(boxes)),
            "refined_iou": mean_iou(np.concatenate(refined))}


def save_data(args) -> int:
    """``cnnc train specs/fast_rcnn_shapes.yaml --data shapes.npz -o build/detector``: the
    training images with one set of proposals, and the held-out ones as its test part."""
    train = make_shapes(args.images, seed=args.seed)
    test = make_shapes(args.test_images, seed=args.seed + 1)
    arrays = {**named_arrays(train, propose(train, seed=args.seed + 3)),
              **named_arrays(test, propose(test, seed=args.seed + 2), prefix="test_")}
    np.savez(args.save_data, **arrays)
    print(f"wrote {len(train)} training and {len(test)} test images with their proposals to "
          f"{args.save_data}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--images", type=int, default=1000, help="training images")
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="write the trained artifact here")
    parser.add_argument("--save-data", help="write the images, proposals and labels to this "
                        ".npz for cnnc train, and stop")
    args = parser.parse_args(argv)
    if args.save_data:
        return save_data(args)

    import cnncompiler as cc

    start = time.perf_counter()
    train = make_shapes(args.images, seed=args.seed)
    test = make_shapes(args.test_images, seed=args.seed + 1)
    test_proposals = propose(test, seed=args.seed + 2)
    model = cc.compile(SPEC, seed=args.seed)
    print(f"{len(train)} training and {len(test)} held-out images; compiled "
          f"{model.graph.graph['name']} in {time.perf_counter() - start:.1f} s")

    # one line per epoch: the total loss, each head's, and the classifier's accuracy
    model.fit(epoch_batches(train, args.batch_size, args.seed + 3), epochs=args.epochs)

    result = evaluate(model, test, test_proposals)
    count = sum(len(p.boxes) for p in test_proposals)
    print(f"held out: RoI classification accuracy {result['accuracy']:.2%} over {count} "
          f"proposals ({result['foreground_accuracy']:.2%} of those on a shape)")
    print(f"mean IoU of the foreground proposals with their shapes: "
          f"{result['proposal_iou']:.3f} as proposed, {result['refined_iou']:.3f} refined")
    if args.output:
        model.save(args.output)
        print(f"saved the trained model to {args.output}")
    return 0


if __name__ == "__main__":
    from cnncompiler.errors import CnncError

    try:
        sys.exit(main())
    except CnncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

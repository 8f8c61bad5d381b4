"""Train a CIFAR-style ResNet on CIFAR-10 from a folder you downloaded yourself.

    python examples/train_resnet_cifar.py ~/data/cifar-10-batches-py
    python examples/train_resnet_cifar.py ~/data/cifar-10-batches-py \\
        --spec specs/resnet_tiny.yaml --epochs 5 --subset 5000 -o build/resnet-cifar
    python examples/train_resnet_cifar.py ~/data/cifar-10-batches-py --resume build/resnet-cifar-checkpoints/last

The folder is the "CIFAR-10 python version" (https://www.cs.toronto.edu/~kriz/cifar.html,
unpacked: data_batch_1..5, test_batch, batches.meta); nothing is downloaded here. Training
follows the usual recipe: per-channel normalisation, random crops with 4 pixels of padding and
horizontal flips drawn afresh each epoch, SGD with momentum 0.9 and weight decay 5e-4 under a
cosine schedule. The best and the last epoch are kept as checkpoints, so an interrupted run
resumes where it stopped. The saved model expects images normalised as here (MEAN, STD).

ResNet-18 is heavy for a CPU (about 0.56 GFLOPs per image forward): on a laptop an epoch of
50,000 images takes tens of minutes to hours. ``--spec specs/resnet_tiny.yaml`` and ``--subset``
give a quick run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)[None, :, None, None]
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)[None, :, None, None]

NO_PATH = """\
usage: python examples/train_resnet_cifar.py CIFAR10_FOLDER [options]

This example needs the CIFAR-10 dataset, which it does not download. Get the "CIFAR-10 python
version" from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it, and give the folder:

    tar xzf cifar-10-python.tar.gz
    python examples/train_resnet_cifar.py cifar-10-batches-py

Run with --help for the options."""


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 32x32 crops of the image padded by 4 (zeros), and random horizontal flips."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    out = padded[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, :, ::-1]
    return np.ascontiguousarray(out, np.float32)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", help="the CIFAR-10 python folder (cifar-10-batches-py)")
    parser.add_argument("--spec", default=str(ROOT / "specs" / "resnet18_cifar.yaml"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--subset", type=int, help="train on the first N training images only")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--target", default="cpu", help="cpu or cuda")
    parser.add_argument("--checkpoints", default="build/resnet-cifar-checkpoints")
    parser.add_argument("--resume", help="a checkpoint directory to continue from")
    parser.add_argument("-o", "--output", help="write the trained artifact here")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data:
        print(NO_PATH, file=sys.stderr)
        return 2

    import cnncompiler as cc
    from cnncompiler.train import BestCheckpoint

    model = cc.compile(args.spec, target=args.target, seed=args.seed)
    data = cc.datasets.load(args.data, model.input_shape)
    # epochs are chosen on a validation split of the training images; the test set is
    # evaluated once, at the end
    x_train, y_train, x_val, y_val = data.validation_split(0.1, seed=args.seed)
    if args.subset:
        x_train, y_train = x_train[:args.subset], y_train[:args.subset]
    x_train = (x_train - MEAN) / STD
    x_val = np.ascontiguousarray((x_val - MEAN) / STD, np.float32)
    x_test = np.ascontiguousarray((data.x_test - MEAN) / STD, np.float32)
    print(f"{data.describe()}; training on {len(x_train)}", file=sys.stderr)

    model.set_optimizer({"type": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4},
                        schedule={"type": "cosine", "t_max": args.epochs})
    if args.resume:
        meta = model.load_checkpoint(args.resume)
        print(f"resumed at epoch {meta['epoch']}", file=sys.stderr)
    best = BestCheckpoint(args.checkpoints, monitor="val_accuracy", mode="max")
    start = time.perf_counter()
    # one fit call per epoch, each on freshly augmented images; the schedule counts epochs
    # across the calls (t_max is fixed above, so it does not depend on the call's length)
    while model.trainer.epoch < args.epochs:
        epoch = model.trainer.epoch
        x = x_train if args.no_augment else augment(x_train, np.random.default_rng(
            [args.seed, epoch]))
        model.fit(x, y_train, epochs=1, batch_size=args.batch_size, seed=args.seed,
                  validation_data=(x_val, y_val), callbacks=[best])
    result = model.evaluate(x_test, data.y_test)
    best_text = f" (best validation {best.best:.2%} after epoch {best.best_epoch + 1})" \
        if best.best_epoch is not None else ""
    print(f"{model.trainer.epoch} epochs in {time.perf_counter() - start:.0f} s; test accuracy "
          f"{result['accuracy']:.2%}{best_text}")
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

"""Train LeNet-5 on scikit-learn's handwritten digits (8x8 images resized to 32x32), end to end:
compile the spec, train with SGD and a cosine schedule while watching a validation split of the
training digits, report the test accuracy once at the end, save the model.

    python examples/train_lenet_digits.py                  # about a minute on two cores
    python examples/train_lenet_digits.py --epochs 10 -o build/lenet5-digits
    cnnc run build/lenet5-digits --input x.npy -o y.npy    # the saved model runs without training

Nothing is downloaded: the digits ship with scikit-learn (pip install scikit-learn).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cnncompiler as cc
from cnncompiler.errors import CnncError

SPEC = Path(__file__).resolve().parent.parent / "specs" / "lenet5.yaml"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("-o", "--output", help="write the trained artifact here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = cc.compile(SPEC, seed=args.seed)
    data = cc.datasets.load("digits", model.input_shape, seed=args.seed)
    x_train, y_train, x_val, y_val = data.validation_split(0.1, seed=args.seed)
    print(f"{data.describe()}; compiled {model.graph.graph['name']} in "
          f"{time.perf_counter() - start:.1f} s")

    model.set_optimizer({"type": "sgd", "lr": args.lr, "momentum": 0.9}, schedule="cosine")
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed, validation_data=(x_val, y_val))
    seconds = time.perf_counter() - start

    result = model.evaluate(data.x_test, data.y_test)
    print(f"trained {len(history.epochs)} epochs in {seconds:.1f} s "
          f"({history['samples_per_second'][-1]:,.0f} samples/s in the last one)")
    print(f"test accuracy {result['accuracy']:.2%} (loss {result['loss']:.4f}) on "
          f"{len(data.x_test)} held-out digits")
    if args.output:
        model.save(args.output)
        print(f"saved the trained model to {args.output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CnncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

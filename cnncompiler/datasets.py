"""Training data from Python: what ``cnnc train --data`` reads, as arrays.

    import cnncompiler as cc
    model = cc.compile("specs/lenet5.yaml")
    data = cc.datasets.load("digits", model.input_shape)     # scikit-learn's digits, 32x32
    x_train, y_train, x_val, y_val = data.validation_split(0.1, seed=0)
    model.fit(x_train, y_train, epochs=5, validation_data=(x_val, y_val))
    model.evaluate(data.x_test, data.y_test)                  # once, at the end

A source is ``"digits"`` (no download), an ``.npz`` file (``x_train``, ``y_train``, ``x_test``,
``y_test``, or ``x``, ``y``), or a folder of MNIST/Fashion-MNIST IDX files, CIFAR-10 python
batches, or class subfolders of images. Images come out float32 in [0, 1], (N, C, H, W),
resized (bilinear) and converted between grayscale and RGB to fit ``input_shape``. Sources
without a test split are split with ``test_fraction`` (seeded by ``seed``). Nothing is
downloaded, and pickled CIFAR batches are read without running their code.
"""

from __future__ import annotations

from .train.data import Dataset, load_data


def load(source: str, input_shape, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """A :class:`Dataset` (``x_train``, ``y_train``, ``x_test``, ``y_test``, ``classes``) read
    from ``source`` and shaped for ``input_shape`` (a model's ``input_shape``, e.g.
    ``(1, 32, 32)``)."""
    return load_data(source, tuple(input_shape), test_fraction, seed)


__all__ = ["Dataset", "load"]

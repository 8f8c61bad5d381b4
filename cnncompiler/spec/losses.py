"""The training losses, each declared once: its name in specs, what its labels are, and its
numpy reference (the loss and the metric the trainer reports). Its tensor expression, which
the compiled training step runs, is keyed by the same class in ``backends/te_grad.py``
(``LOSS_FORMS``); a test checks every loss has one and that the two agree.

    train:
      loss: softmax_cross_entropy          # or sigmoid_cross_entropy, euclidean, smooth_l1
      label_smoothing: 0.1

A model of several outputs names a loss per output, each term weighted (default 1), and
trains on their weighted sum::

    train:
      loss: {cls: softmax_cross_entropy, bbox: {type: smooth_l1, beta: 0.5}}
      loss_weights: {bbox: 2.0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import InputError


class Loss:
    """A loss of the model's one output ``z`` (N, *shape) against labels ``y``."""

    name: ClassVar[str] = ""
    integer_labels: ClassVar[bool] = False  # class indices (N,), not targets shaped like z
    metric: ClassVar[str | None] = "accuracy"
    applies: ClassVar[str | None] = None    # the activation the loss applies to the logits itself

    def output_problem(self, out_node: str, out_shape: tuple) -> str | None:
        """Why the model's output cannot feed this loss, or None."""
        return None

    def check_labels(self, y, n: int, out_shape: tuple) -> np.ndarray:
        """The labels of a batch of ``n`` samples, checked, in the dtype the step takes."""
        y = np.ascontiguousarray(y, dtype=np.float32)
        if y.shape != (n, *out_shape):
            raise InputError(f"targets must have shape {(n, *out_shape)}; received {y.shape}")
        return y

    def reference(self, z: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> dict:
        """{"loss": the mean loss, and the metric where there is one}, in float64."""
        raise NotImplementedError


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of integer class labels with the softmax of (N, classes) logits, with
    optional label smoothing: PyTorch's ``cross_entropy``."""

    name = "softmax_cross_entropy"
    integer_labels = True
    applies = "softmax"

    def output_problem(self, out_node, out_shape):
        if len(out_shape) != 1:
            return (f"{self.name} needs (N, classes) logits; the output '{out_node}' is "
                    f"(N, {', '.join(map(str, out_shape))}); add flatten and a dense layer")
        return None

    def check_labels(self, y, n, out_shape):
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise InputError(f"labels must be class indices of shape ({n},); received shape "
                             f"{y.shape}")
        if y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError("labels must be integer class indices")
        y = y.astype(np.int64)
        classes = out_shape[0]
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise InputError(f"labels must be in 0..{classes - 1} for {classes} classes; "
                             f"received {y.min()}..{y.max()}")
        return y.astype(np.int32)

    def reference(self, z, y, smoothing=0.0):
        z = np.asarray(z, np.float64)
        y = np.asarray(y).astype(np.int64)
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        k = z.shape[1]
        target = np.full(z.shape, smoothing / k)
        target[np.arange(len(y)), y] += 1.0 - smoothing
        return {"loss": float(-(target * logp).sum(axis=1).mean()),
                "accuracy": float((z.argmax(axis=1) == y).mean())}


class SigmoidCrossEntropy(Loss):
    """Binary cross-entropy of K independent targets in [0, 1] with logits, averaged over
    every element: PyTorch's ``BCEWithLogitsLoss``; accuracy per element at 0.5."""

    name = "sigmoid_cross_entropy"
    applies = "sigmoid"

    def check_labels(self, y, n, out_shape):
        y_in = np.asarray(y)
        if y_in.shape == (n,) and len(out_shape) == 1 and out_shape[0] > 1:
            raise InputError(f"targets must have shape {(n, *out_shape)}, {out_shape[0]} "
                             f"targets in [0, 1] per sample; received one value per sample "
                             f"{y_in.shape}: class labels are for softmax_cross_entropy (or give "
                             "one-hot or multi-label targets)")
        y = super().check_labels(y, n, out_shape)
        if y.size and not (np.all(y >= 0) and np.all(y <= 1)):
            raise InputError(f"targets of {self.name} are probabilities in [0, 1]; received "
                             f"values from {y.min():g} to {y.max():g}")
        return y

    def reference(self, z, y, smoothing=0.0):
        z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
        per = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        return {"loss": float(per.mean()), "accuracy": float(((z > 0) == (y > 0.5)).mean())}


class Euclidean(Loss):
    """Mean squared error over every element: PyTorch's ``MSELoss``."""

    name = "euclidean"
    metric = None

    def reference(self, z, y, smoothing=0.0):
        z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
        return {"loss": float(((z - y) ** 2).mean())}


class SmoothL1(Loss):
    """PyTorch's ``SmoothL1Loss``: per element 0.5 d^2 / beta where |d| < beta, else
    |d| - 0.5 beta, averaged over the targets that are not NaN. A NaN target marks an entry to
    ignore (a background box has no box to regress to); ``beta`` (default 1) is given as
    ``{type: smooth_l1, beta: 0.5}``."""

    name = "smooth_l1"
    metric = None

    def __init__(self, beta: float = 1.0):
        self.beta = beta

    def per_element(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = np.abs(z - y)
        return np.where(d < self.beta, 0.5 * d * d / self.beta, d - 0.5 * self.beta)

    def reference(self, z, y, smoothing=0.0):
        z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
        keep = ~np.isnan(y)
        per = self.per_element(z, np.where(keep, y, z))
        return {"loss": float(per[keep].sum() / max(int(keep.sum()), 1))}


LOSSES: dict[str, Loss] = {cls.name: cls() for cls in (SoftmaxCrossEntropy, SigmoidCrossEntropy,
                                                        Euclidean, SmoothL1)}


@dataclass(frozen=True)
class LossTerm:
    """One output's part of the objective: the loss ``loss`` of output ``output``, weighted.
    ``options`` are the loss's own keys (smooth_l1's beta)."""

    output: str
    loss: str
    weight: float = 1.0
    options: tuple = ()      # (key, value) pairs

    @property
    def kind(self) -> Loss:
        return type(LOSSES[self.loss])(**dict(self.options))

    def to_json(self) -> dict:
        return {"output": self.output, "loss": self.loss, "weight": self.weight,
                "options": dict(self.options)}

    @staticmethod
    def from_json(entry: dict) -> "LossTerm":
        return LossTerm(entry["output"], entry["loss"], float(entry.get("weight", 1.0)),
                        tuple(sorted(entry.get("options", {}).items())))


def loss_terms(loss, outputs: list[str], weights: dict | None = None) -> list[LossTerm]:
    """The objective's terms: from a loss name (the model's one output), a mapping of output
    names to loss names or ``{type: name, <option>: value}``, or terms already made."""
    weights = weights or {}
    if isinstance(loss, (list, tuple)):
        return [t if isinstance(t, LossTerm) else LossTerm.from_json(t) for t in loss]
    if isinstance(loss, str):
        if len(outputs) != 1:
            raise InputError(f"this model has {len(outputs)} outputs ({', '.join(outputs)}); "
                             f"name a loss for each one to train: loss: "
                             f"{{{outputs[0]}: {loss}, ...}}")
        return [LossTerm(outputs[0], loss, float(weights.get(outputs[0], 1.0)))]
    terms = []
    for output, spec in loss.items():
        name, options = (spec, {}) if isinstance(spec, str) else \
            (spec["type"], {k: v for k, v in spec.items() if k != "type"})
        terms.append(LossTerm(output, name, float(weights.get(output, 1.0)),
                              tuple(sorted(options.items()))))
    return terms

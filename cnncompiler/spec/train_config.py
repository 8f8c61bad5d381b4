"""The ``train:`` section of a spec: loss, optimizer, learning-rate schedule, epochs, batch size.

```yaml
train:
  loss: softmax_cross_entropy          # or sigmoid_cross_entropy, euclidean
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 5.0e-4}
  schedule: {type: multistep, milestones: [30, 60], gamma: 0.1, warmup: 2}
  epochs: 90
  batch_size: 128
```

Schedules count epochs unless ``unit: step``. Every schedule takes ``warmup: N``, a linear
warm-up from ``warmup_factor * lr`` (default 1/3, in (0, 1], as PyTorch's LinearLR's
``start_factor``: the first unit never trains at learning rate 0) to ``lr`` over the first N
units; the schedule itself
(milestones included) counts from the end of the warm-up, as PyTorch's SequentialLR does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from ..errors import FieldError
from ..layers.fields import (boolean, choice, describe, non_negative_int, non_negative_number,
                             number, option, positive_int, positive_number, show_number)
from .losses import LOSSES as LOSS_TYPES

LOSSES = tuple(LOSS_TYPES)  # their names


def fraction(value):
    """A number in [0, 1): momentum, dampening, Adam's betas, label smoothing."""
    v = number(value, "a number in [0, 1)")
    if not 0.0 <= v < 1.0:
        raise FieldError(f"received {show_number(value)}", "expected a number in [0, 1)",
                         "e.g. momentum: 0.9, betas: [0.9, 0.999], label_smoothing: 0.1")
    return v


def start_factor(value):
    """A warm-up's first learning rate as a fraction of ``lr``: in (0, 1], as LinearLR."""
    v = number(value, "a number in (0, 1]")
    if not 0.0 < v <= 1.0:
        raise FieldError(f"received {show_number(value)}", "expected a number in (0, 1]",
                         "a warm-up starts at warmup_factor * lr; 0 would train its first "
                         "unit at learning rate 0; e.g. warmup_factor: 0.1")
    return v


def _betas(value):
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise FieldError(f"received {describe(value)}", "expected [beta1, beta2]",
                         "write e.g. betas: [0.9, 0.999]")
    return tuple(fraction(v) for v in value)


def _milestones(value):
    if not isinstance(value, (list, tuple)) or not value:
        raise FieldError(f"received {describe(value)}", "expected a list of positive integers")
    out = tuple(positive_int(v) for v in value)
    if list(out) != sorted(set(out)):
        raise FieldError(f"received {list(out)}", "expected increasing milestones")
    return out


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""

    lr: float = option(positive_number, default=0.01)
    momentum: float = option(fraction, default=0.0)
    nesterov: bool = option(boolean, default=False)
    weight_decay: float = option(non_negative_number, default=0.0)
    dampening: float = option(fraction, default=0.0)


@dataclass(frozen=True)
class Adam:
    """Adam with L2 weight decay added to the gradient (as torch.optim.Adam)."""

    lr: float = option(positive_number, default=0.001)
    betas: tuple = option(_betas, default=(0.9, 0.999))
    eps: float = option(positive_number, default=1e-8)
    weight_decay: float = option(non_negative_number, default=0.0)


@dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay (as torch.optim.AdamW, default decay 0.01)."""

    weight_decay: float = option(non_negative_number, default=0.01)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


class Hyper(IntEnum):
    """Positions in the runtime hyperparameter vector the compiled training step reads
    (``cnncompiler.train.optim.hyper_vector`` fills it, ``backends/te_grad.py`` reads it), so
    a learning rate or schedule change needs no recompilation."""

    LR = 0
    MOMENTUM = 1
    DAMPENING = 2
    NESTEROV = 3           # 1.0 or 0.0
    WEIGHT_DECAY = 4       # L2, added to the gradient (SGD, Adam)
    DECOUPLED_DECAY = 5    # AdamW's, applied to the weights
    BETA1 = 6
    BETA2 = 7
    EPS = 8
    BIAS_CORRECTION1 = 9   # 1 - beta1^t
    BIAS_CORRECTION2 = 10  # 1 - beta2^t
    FIRST_STEP = 11        # 1.0 where SGD's momentum buffer starts as the gradient


HYPER_SIZE = len(Hyper)


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule; which keys matter depends on ``type``."""

    type: str = option(choice("constant", "step", "multistep", "exponential", "cosine",
                              "polynomial"), default="constant")
    unit: str = option(choice("epoch", "step"), default="epoch")
    step_size: int = option(positive_int, default=1)
    milestones: tuple = option(lambda v: None if v is None else _milestones(v), default=None)
    gamma: float = option(positive_number, default=0.1)
    t_max: int = option(lambda v: None if v is None else positive_int(v), default=None)
    eta_min: float = option(non_negative_number, default=0.0)
    power: float = option(positive_number, default=1.0)
    total: int = option(lambda v: None if v is None else positive_int(v), default=None)
    end_lr: float = option(non_negative_number, default=0.0)
    warmup: int = option(non_negative_int, default=0)
    warmup_factor: float = option(start_factor, default=1 / 3)


def _loss_name(value) -> str:
    return choice(*LOSSES)(value)


def _one_loss(value):
    """A loss name, or ``{type: smooth_l1, beta: 0.5}`` with the loss's own keys."""
    if isinstance(value, dict):
        if "type" not in value:
            raise FieldError(f"received {describe(value)}", "a mapping with the loss's 'type'",
                             "write e.g. {type: smooth_l1, beta: 0.5}")
        name = _loss_name(value["type"])
        allowed = LOSS_OPTIONS.get(name, {})
        options = {}
        for key, v in value.items():
            if key == "type":
                continue
            if key not in allowed:
                raise FieldError(f"{name} takes no key '{key}'",
                                 f"keys: {', '.join(allowed) or 'none'}")
            options[key] = allowed[key](v)
        return {"type": name, **options}
    return _loss_name(value)


def _loss(value):
    """``softmax_cross_entropy`` for the model's one output, or a loss per output name:
    ``{cls: softmax_cross_entropy, bbox: {type: smooth_l1, beta: 0.5}}``."""
    if isinstance(value, dict):
        if not value:
            raise FieldError("received an empty mapping", "a loss per output name")
        return {str(k): _one_loss(v) for k, v in value.items()}
    return _one_loss(value)


def _loss_weights(value):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(f"received {describe(value)}", "a weight per output name",
                         "write e.g. loss_weights: {bbox: 2.0}")
    return {str(k): non_negative_number(v) for k, v in value.items()}


# the keys a loss takes beyond its name (each a field parser)
LOSS_OPTIONS = {"smooth_l1": {"beta": positive_number}}


@dataclass(frozen=True)
class TrainConfig:
    loss: object = option(_loss, default="softmax_cross_entropy")
    loss_weights: dict = option(_loss_weights, default=None)
    optimizer: object = None
    schedule: Schedule = Schedule()
    epochs: int = option(positive_int, default=10)
    batch_size: int = option(positive_int, default=32)
    label_smoothing: float = option(fraction, default=0.0)
    # data-parallel runs: batch statistics over the global batch (else each process's own)
    sync_batchnorm: bool = option(boolean, default=False)
    # where the spec wrote its train section and its loss (None: not written, defaults used),
    # so that advice about training points at the line
    loc: object = field(default=None, compare=False)
    loss_loc: object = field(default=None, compare=False)


TRAIN_KEYS = ("loss", "loss_weights", "optimizer", "schedule", "epochs", "batch_size",
              "label_smoothing", "sync_batchnorm")


__all__ = ["HYPER_SIZE", "LOSSES", "OPTIMIZERS", "SGD", "Adam", "AdamW", "Hyper", "Schedule",
           "TrainConfig", "TRAIN_KEYS"]

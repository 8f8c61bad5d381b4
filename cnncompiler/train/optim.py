"""Optimizers and learning-rate schedules on the host side of the compiled training step.

The compiled step reads every hyperparameter from a small runtime vector laid out by
``Hyper`` (``cnncompiler/spec/train_config.py``), so the learning rate, its schedule, momentum and weight decay can
change between steps without recompiling; only the optimizer family (SGD's one state slot,
Adam's two) is part of the compiled code.

```yaml
optimizer: {type: adamw, lr: 1.0e-3, betas: [0.9, 0.999], weight_decay: 0.01}
schedule: {type: cosine, unit: epoch, t_max: 30, eta_min: 1.0e-5, warmup: 2}
```
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import TrainingError
from ..layers.fields import parse_fields
from ..spec.train_config import HYPER_SIZE, OPTIMIZERS, SGD, Adam, AdamW, Hyper, Schedule
from ..suggest import did_you_mean



def family(optimizer) -> str:
    """'sgd' or 'adam': which compiled update (and state slots) an optimizer uses."""
    return "sgd" if isinstance(optimizer, SGD) else "adam"


def optimizer_from(config) -> object:
    """An optimizer from a spec-style dict (``{"type": "sgd", "lr": 0.1, ...}``), a name, or an
    optimizer object."""
    if isinstance(config, (SGD, Adam, AdamW)):
        return config
    if isinstance(config, str):
        config = {"type": config}
    if not isinstance(config, dict) or "type" not in config:
        raise TrainingError("an optimizer is a dict with a 'type', e.g. "
                            "{'type': 'sgd', 'lr': 0.1, 'momentum': 0.9}")
    kind = str(config["type"]).lower()
    cls = OPTIMIZERS.get(kind)
    if cls is None:
        hint = did_you_mean(kind, OPTIMIZERS)
        raise TrainingError(f"unknown optimizer '{kind}'" + (f"; {hint}" if hint else "")
                            + "; use sgd, adam or adamw")
    return cls(**_fields("optimizer", cls, config, ("type",)))


def schedule_from(config) -> Schedule:
    if isinstance(config, Schedule):
        return config
    if config is None:
        return Schedule()
    if isinstance(config, str):
        config = {"type": config}
    return Schedule(**_fields("schedule", Schedule, config, ()))


def _fields(what: str, cls, config: dict, skip: tuple) -> dict:
    """The keyword arguments of ``cls`` from a config dict, or one error naming every bad key."""
    kwargs, problems = parse_fields(cls, config, skip)
    if problems:
        raise TrainingError("; ".join(
            f"{what}: {exc.message}" + (f" ({exc.expected})" if exc.expected else "")
            for _, exc in problems))
    return kwargs


def learning_rate(base: float, schedule: Schedule, position: int, total: int | None) -> float:
    """The learning rate at ``position`` (epochs or steps done, per ``schedule.unit``).

    ``total`` is the length of the run in the same unit (for cosine and polynomial when
    ``t_max``/``total`` are not given). Matches PyTorch's schedulers stepped once per unit.
    """
    s = schedule
    if s.warmup and position < s.warmup:
        start = s.warmup_factor
        return base * (start + (1.0 - start) * position / s.warmup)
    t = position - s.warmup
    if s.type == "constant":
        return base
    if s.type == "step":
        return base * s.gamma ** (t // s.step_size)
    if s.type == "multistep":
        passed = sum(1 for m in s.milestones if t >= m)
        return base * s.gamma ** passed
    if s.type == "exponential":
        return base * s.gamma ** t
    span = (s.t_max if s.type == "cosine" else s.total) or (
        (total - s.warmup) if total else None)
    if not span:
        raise TrainingError(f"the {s.type} schedule needs its length: give "
                            f"{'t_max' if s.type == 'cosine' else 'total'} or the number of epochs")
    if s.type == "cosine":
        return s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * min(t, span) / span)) / 2
    # polynomial decay to end_lr over ``span``
    frac = min(t, span) / span
    return (base - s.end_lr) * (1 - frac) ** s.power + s.end_lr


def hyper_vector(optimizer, lr: float, step: int, dtype=np.float32) -> np.ndarray:
    """The runtime hyperparameters of update number ``step`` (0-based), laid out by Hyper."""
    h = np.zeros(HYPER_SIZE, np.float64)
    h[Hyper.LR] = lr
    if isinstance(optimizer, SGD):
        h[Hyper.MOMENTUM] = optimizer.momentum
        h[Hyper.DAMPENING] = optimizer.dampening
        h[Hyper.NESTEROV] = 1.0 if optimizer.nesterov else 0.0
        h[Hyper.WEIGHT_DECAY] = optimizer.weight_decay
        # PyTorch: the momentum buffer starts as the first gradient; with no momentum there is
        # no buffer at all, which "first" on every step reproduces.
        h[Hyper.FIRST_STEP] = 1.0 if step == 0 or optimizer.momentum == 0 else 0.0
        # Adam's slots are unused by SGD's update; harmless values keep the vector finite
        h[Hyper.BETA1], h[Hyper.BETA2], h[Hyper.EPS] = 0.9, 0.999, 1e-8
        h[Hyper.BIAS_CORRECTION1] = h[Hyper.BIAS_CORRECTION2] = 1.0
        return h.astype(dtype)
    b1, b2 = optimizer.betas
    t = step + 1
    decay = Hyper.DECOUPLED_DECAY if isinstance(optimizer, AdamW) else Hyper.WEIGHT_DECAY
    h[decay] = optimizer.weight_decay
    h[Hyper.BETA1], h[Hyper.BETA2], h[Hyper.EPS] = b1, b2, optimizer.eps
    h[Hyper.BIAS_CORRECTION1], h[Hyper.BIAS_CORRECTION2] = 1 - b1 ** t, 1 - b2 ** t
    return h.astype(dtype)


def describe(optimizer) -> dict:
    import dataclasses

    name = {SGD: "sgd", Adam: "adam", AdamW: "adamw"}[type(optimizer)]
    return {"type": name, **{k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in dataclasses.asdict(optimizer).items()}}

"""The training loop around the compiled training step.

    model = cc.compile("specs/lenet5.yaml")
    history = model.fit(x, y, epochs=5, batch_size=64, validation_data=(xv, yv))
    model.evaluate(xv, yv)            # {'loss': ..., 'accuracy': ...}

Parameters, batch-norm statistics and optimizer state live on the device between steps; only
the loss, the number of correct predictions and one squared-gradient norm per parameter come
back each step, to report progress and to stop on divergence. Shuffling and dropout masks are
drawn from generators seeded by (seed, epoch) and (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import InputError, TrainingError
from ..graph import layer_node
from ..layers import BATCH
from ..passes import optimize
from ..spec.losses import LOSSES
from . import optim


class History:
    """What ``fit`` returns: per-epoch metrics in ``history`` (loss, accuracy, val_*, lr)."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def record(self, epoch: int, logs: dict) -> None:
        self.epochs.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self) -> str:
        return f"History({self.history})"


class Trainer:
    """Owns a model's training state: compiled step, device tensors, counters, generators."""

    def __init__(self, model, optimizer=None, schedule=None, loss=None, seed: int = 0):
        cfg = model.graph.graph["train"]
        self.model = model
        self.loss = loss or cfg.loss
        self.label_smoothing = cfg.label_smoothing
        self.optimizer = optim.optimizer_from(optimizer or cfg.optimizer)
        self.schedule = optim.schedule_from(schedule if schedule is not None else cfg.schedule)
        self.base_lr = self.optimizer.lr
        self.seed = seed
        self.step = 0                 # optimizer updates done
        self.state_start = 0          # the step the optimizer state started at (Adam's t = 1)
        self.epoch = 0                # epochs done
        self.total_epochs = None      # length of the current fit, for cosine/polynomial
        self.spec_epochs = cfg.epochs  # the length outside fit (bare train_step calls)
        self.steps_per_epoch = None
        self.dirty = False            # device weights newer than model._params
        self.run_state = {}           # what a run keeps in its checkpoints (best metric, ...)
        self.graph, _ = optimize(model.graph, passes=["eliminate-dead"])
        self._compiled = {}           # optimizer family -> (vm, signature)
        self._device = None           # name -> device tensor (params, buffers, state)
        self._pending_state = None    # optimizer state read from a checkpoint, not yet uploaded

    # -- compiled step and device state ------------------------------------------------------
    def step_compiled(self) -> bool:
        """Whether the current optimizer family's step is built (the next step runs at once)."""
        return optim.family(self.optimizer) in self._compiled

    def prepare(self) -> None:
        """Build (or load from the cache) the training step and upload the weights."""
        self._step_function()

    def _step_function(self):
        kind = optim.family(self.optimizer)
        if kind not in self._compiled:
            from cnncompiler.backends import require_compiler
            from cnncompiler.backends.targets import TargetChoice
            from ..native import open_library

            require_compiler("training")
            from cnncompiler.backends.train_build import build_train_library
            import tvm
            from tvm.runtime import vm as tvm_vm

            choice = TargetChoice.from_json(self.model.manifest["target"])
            library, sig = build_train_library(self.graph, self.model.spec_key(), self.loss,
                                               kind, choice, "float32", self.label_smoothing)
            dev = tvm.cuda(0) if choice.kind == "cuda" else tvm.cpu(0)
            vm = tvm_vm.VirtualMachine(open_library(tvm, library, "train_step.so"), dev)
            self._compiled[kind] = (vm, sig, dev)
            self._upload(sig, dev)
        return self._compiled[kind]

    def _upload(self, sig, dev):
        """Weights from the model, optimizer state kept (or restored from a checkpoint)."""
        import tvm

        params = self.model._params
        kept = {} if self._device is None else {k: v for k, v in self._device.items() if "#" in k}
        restored = self._pending_state or {}
        self._device = {name: tvm.runtime.tensor(np.ascontiguousarray(params[name]), dev)
                        for name in sig.params + sig.buffers}
        for s in sig.state:
            if s in kept:
                self._device[s] = kept[s]
            else:
                value = restored.get(s, np.zeros(sig.shapes[s], np.float32))
                self._device[s] = tvm.runtime.tensor(np.ascontiguousarray(value, np.float32), dev)
        self._pending_state = None

    def push_params(self) -> None:
        """The model's weights were replaced (load_params): send them to the device."""
        if self._compiled:
            vm, sig, dev = next(iter(self._compiled.values()))
            self._upload(sig, dev)
        self.dirty = False

    def pull_params(self) -> dict[str, np.ndarray]:
        """The current weights from the device, merged over the model's (dead layers keep
        theirs)."""
        params = dict(self.model._params)
        if self._device:
            for name, tensor in self._device.items():
                if "#" not in name:
                    params[name] = tensor.numpy()
        self.dirty = False
        return params

    def optimizer_state(self) -> dict[str, np.ndarray]:
        if not self._device:  # nothing uploaded yet: what a checkpoint restored, if anything
            return dict(self._pending_state or {})
        return {k: v.numpy() for k, v in self._device.items() if "#" in k}

    def set_optimizer(self, optimizer=None, schedule=None) -> None:
        new = optim.optimizer_from(optimizer) if optimizer is not None else self.optimizer
        if optim.family(new) != optim.family(self.optimizer):
            # the state slots differ (SGD momentum vs Adam moments): start them afresh, as a new
            # torch optimizer would (Adam's bias correction counts from here)
            if self._device:
                self._device = {k: v for k, v in self._device.items() if "#" not in k}
                self._compiled.clear()
                self.model._params = self.pull_params()
            self._pending_state = None
            self.state_start = self.step
        self.optimizer = new
        self.base_lr = new.lr
        if schedule is not None:
            self.schedule = optim.schedule_from(schedule)

    # -- one step ---------------------------------------------------------------------------------
    def current_lr(self) -> float:
        s = self.schedule
        epochs = self.total_epochs or self.spec_epochs
        if s.unit == "step":
            total = epochs * self.steps_per_epoch if self.steps_per_epoch else None
            return optim.learning_rate(self.base_lr, s, self.step, total)
        return optim.learning_rate(self.base_lr, s, self.epoch, epochs)

    def check_batch(self, x, y):
        """The inputs (a list, one array per model input) and labels of one batch, checked:
        one label per row of the output (per sample, or per box after a RoI layer)."""
        xs = self.model.check_inputs(x)
        rows = self.rows(xs)
        out_lead = layer_node(self.model.graph, self.model.output_names[0]).lead
        return xs, self.check_labels(y, rows[out_lead])

    def rows(self, xs: list) -> dict:
        """The length of each kind of leading axis in these inputs: the batch's samples, and
        each unbatched input's rows."""
        model = self.model
        rows = {BATCH: model.batch_size(xs)}
        rows.update({name: len(x) for name, x in zip(model.input_names, xs)
                     if name in model.unbatched})
        return rows

    def check_labels(self, y, n: int):
        """The labels of ``n`` samples, checked against the loss and the model's output."""
        model = self.model
        out_shape = layer_node(model.graph, model.output_names[0]).shape
        return LOSSES[self.loss].check_labels(y, n, out_shape)

    def _masks(self, sig, rows: dict) -> list[np.ndarray]:
        if not sig.masks:
            return []
        rng = np.random.default_rng([self.seed, 1, self.step])
        out = []
        for node, shape in sig.masks:
            data = layer_node(self.graph, node)
            rate = data.layer.rate
            keep = rng.random((rows[data.lead], *shape)) >= rate
            out.append((keep / (1.0 - rate)).astype(np.float32))
        return out

    def train_step(self, x, y) -> tuple[float, float]:
        """One update on one batch; returns (loss, number of correct predictions)."""
        import tvm

        xs, y = self.check_batch(x, y)
        vm, sig, dev = self._step_function()
        hyper = optim.hyper_vector(self.optimizer, self.current_lr(),
                                   self.step - self.state_start)
        args = [tvm.runtime.tensor(a, dev) for a in [*xs, y, hyper]]
        args += [self._device[k] for k in sig.params + sig.buffers + sig.state]
        args += [tvm.runtime.tensor(m, dev) for m in self._masks(sig, self.rows(xs))]
        out = vm["train_step"](*args)
        loss = float(out[0].numpy()[0])
        grad_sq, new_sq = out[2].numpy()
        if not math.isfinite(loss) or not np.all(np.isfinite(grad_sq) & np.isfinite(new_sq)):
            raise TrainingError(f"training diverged at step {self.step + 1} (epoch "
                                f"{self.epoch + 1}): loss is {loss}"
                                f"{_first_non_finite(sig.params, grad_sq, new_sq)}; the weights "
                                "are kept from the step before; lower the learning rate")
        names = sig.params + sig.buffers + sig.state
        for i, name in enumerate(names):
            self._device[name] = out[3 + i]
        self.step += 1
        self.dirty = True
        return loss, float(out[1].numpy()[0])


def _first_non_finite(params, grad_sq, new_sq) -> str:
    for name, g, p in zip(params, grad_sq, new_sq):
        if not np.isfinite(g):
            return f"; first non-finite parameter: '{name}' (its gradient)"
        if not np.isfinite(p):
            return f"; first non-finite parameter: '{name}' (its updated value)"
    return ""


def batches(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int):
    order = np.random.default_rng([seed, 0, epoch]).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def fit(trainer: Trainer, x, y, epochs=None, batch_size=None, validation_data=None,
        validation_split: float = 0.0, shuffle: bool = True, callbacks=(),
        verbose: int = 1) -> History:
    """Train for ``epochs`` more epochs (after a checkpoint is loaded: more than it holds);
    see TrainableModel.fit."""
    from .callbacks import CallbackList, ProgressBar

    cfg = trainer.model.graph.graph["train"]
    epochs = cfg.epochs if epochs is None else epochs
    batch_size = cfg.batch_size if batch_size is None else batch_size
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise InputError(f"epochs must be a non-negative integer; received {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; received {batch_size!r}")
    if trainer.model.unbatched:
        raise InputError(f"fit cuts the data into batches of samples, and the rows of "
                         f"{', '.join(trainer.model.unbatched)} (batched: false) point at samples "
                         "by index: form the batches yourself and call train_step(x, y) for "
                         "each (its rows' indices counting within the batch)")
    xs = trainer.model.check_inputs(x)
    y = np.asarray(y)
    if len(y) != len(xs[0]):
        raise InputError(f"x has {len(xs[0])} samples but y has {len(y)}")
    if validation_split:
        if validation_data is not None:
            raise InputError("give validation_data or validation_split, not both")
        xs, y, validation_data = split_off_validation(xs, y, validation_split)
    trainer.check_labels(y, len(y))  # wrong labels are found before the step compiles
    n = len(y)
    trainer.steps_per_epoch = -(-n // batch_size)
    trainer.total_epochs = trainer.epoch + epochs
    if epochs:
        _compile_step(trainer, verbose)  # before the clock starts: throughput is training's
    cbs = CallbackList(list(callbacks) + ([ProgressBar()] if verbose else []), trainer)
    history = History()
    cbs.on_train_begin({})
    try:
        _train_epochs(trainer, xs, y, n, epochs, batch_size, validation_data, shuffle, cbs,
                      history)
    finally:
        cbs.on_train_end({})  # also after an error: callbacks release what they hold
    return history


def split_off_validation(xs: list, y, fraction: float):
    """Keras's ``validation_split``: the last ``fraction`` of the samples, before shuffling,
    held out (shuffle the data first if it is ordered by class)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
            not 0.0 < fraction < 1.0:
        raise InputError(f"validation_split must be a fraction in (0, 1); received {fraction!r}")
    n = len(y)
    cut = n - int(round(n * fraction))
    if cut < 1 or cut == n:
        raise InputError(f"validation_split {fraction} of {n} samples leaves "
                         f"{n - cut} for validation and {cut} for training; both need one")
    return [x[:cut] for x in xs], y[:cut], (model_input([x[cut:] for x in xs]), y[cut:])


def model_input(xs: list):
    """What ``predict`` and ``train_step`` take for these arrays: the array of a one-input
    model, the list of a model with several."""
    return xs[0] if len(xs) == 1 else xs


def _compile_step(trainer: Trainer, verbose: int) -> None:
    import sys

    if verbose and not trainer.step_compiled():
        print("compiling the training step (once per model and optimizer family)...",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    trainer.prepare()
    if verbose and time.perf_counter() - start > 0.5:
        print(f"training step ready in {time.perf_counter() - start:.1f} s", file=sys.stderr,
              flush=True)


def _train_epochs(trainer, xs, y, n, epochs, batch_size, validation_data, shuffle, cbs,
                  history) -> None:
    for _ in range(epochs):
        epoch = trainer.epoch
        lr = trainer.current_lr()
        cbs.on_epoch_begin(epoch, {"lr": lr, "samples": n})
        total_loss, total_correct, seen, start = 0.0, 0.0, 0, time.perf_counter()
        for idx in batches(n, batch_size, shuffle, trainer.seed, epoch):
            batch = [np.ascontiguousarray(x[idx]) for x in xs]
            loss, correct = trainer.train_step(model_input(batch), y[idx])
            total_loss += loss * len(idx)
            total_correct += correct
            seen += len(idx)
            cbs.on_batch_end(trainer.step, {"loss": total_loss / seen, "seen": seen, "total": n,
                                            "accuracy": total_correct / seen,
                                            "seconds": time.perf_counter() - start})
        trainer.epoch += 1
        logs = {"loss": total_loss / max(seen, 1), "lr": lr,
                "samples_per_second": seen / max(time.perf_counter() - start, 1e-9)}
        if trainer.loss != "euclidean":
            logs["accuracy"] = total_correct / max(seen, 1)
        if validation_data is not None:
            val = evaluate(trainer.model, *validation_data, batch_size=batch_size,
                           loss=trainer.loss, label_smoothing=trainer.label_smoothing)
            logs.update({f"val_{k}": v for k, v in val.items()})
        history.record(epoch, logs)
        if cbs.on_epoch_end(epoch, logs) is False:
            break


def _first_output(model, result):
    """The output the loss reads (training takes one output)."""
    return result[model.output_names[0]] if isinstance(result, dict) else result


def evaluate(model, x, y, batch_size: int = 256, loss: str | None = None,
             label_smoothing: float | None = None) -> dict:
    """Loss (and accuracy for classification) of the model on (x, y), at inference."""
    cfg = model.graph.graph["train"]
    loss = loss or cfg.loss
    if loss not in LOSSES:
        raise TrainingError(f"unknown loss '{loss}'; use one of {', '.join(LOSSES)}")
    smoothing = cfg.label_smoothing if label_smoothing is None else label_smoothing
    xs = model.check_inputs(x)
    y = np.asarray(y)
    if model.unbatched:  # rows point at samples by index: the batch runs whole
        outs = np.asarray(_first_output(model, model.predict(model_input(xs))), np.float64)
        if len(y) != len(outs):
            raise InputError(f"the output has {len(outs)} rows but y has {len(y)}")
        return LOSSES[loss].reference(outs, y, smoothing)
    n = len(xs[0])
    if len(y) != n:
        raise InputError(f"x has {n} samples but y has {len(y)}")
    outs = np.concatenate([_first_output(model, model.predict(model_input(
        [np.ascontiguousarray(x[i:i + batch_size]) for x in xs])))
        for i in range(0, n, batch_size)]).astype(np.float64)
    return LOSSES[loss].reference(outs, y, smoothing)

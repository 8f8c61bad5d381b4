"""Callbacks for ``fit``: a progress bar, early stopping, and keeping the best checkpoint.

A callback is any object with some of ``on_train_begin(logs)``, ``on_epoch_begin(epoch,
logs)``, ``on_batch_end(step, logs)``, ``on_epoch_end(epoch, logs)``, ``on_train_end(logs)``,
or a plain function called as ``f(epoch, logs)`` at the end of each epoch. Returning False
from ``on_epoch_end`` stops training.
"""

from __future__ import annotations

import math
import sys


class Callback:
    trainer = None

    def on_train_begin(self, logs): ...
    def on_epoch_begin(self, epoch, logs): ...
    def on_batch_end(self, step, logs): ...
    def on_epoch_end(self, epoch, logs): ...
    def on_train_end(self, logs): ...


class _FunctionCallback(Callback):
    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, epoch, logs):
        return self.fn(epoch, logs)


class CallbackList:
    def __init__(self, callbacks, trainer):
        self.items = [c if hasattr(c, "on_epoch_end") or not callable(c) else _FunctionCallback(c)
                      for c in callbacks]
        for c in self.items:
            c.trainer = trainer

    def _call(self, name, *args):
        results = [getattr(c, name)(*args) for c in self.items if hasattr(c, name)]
        return False if any(r is False for r in results) else None

    def on_train_begin(self, logs):
        return self._call("on_train_begin", logs)

    def on_epoch_begin(self, epoch, logs):
        return self._call("on_epoch_begin", epoch, logs)

    def on_batch_end(self, step, logs):
        return self._call("on_batch_end", step, logs)

    def on_epoch_end(self, epoch, logs):
        return self._call("on_epoch_end", epoch, logs)

    def on_train_end(self, logs):
        return self._call("on_train_end", logs)


class ProgressBar(Callback):
    """One line per epoch, redrawn as batches finish: loss, accuracy, samples per second."""

    def __init__(self, stream=None, width: int = 24):
        self.stream = stream or sys.stderr
        self.width = width
        self.total_epochs = None

    def on_epoch_begin(self, epoch, logs):
        self.epoch = epoch
        self.total_epochs = self.trainer.total_epochs

    def _bar(self, done, total):
        filled = int(self.width * done / max(total, 1))
        return "[" + "=" * filled + "." * (self.width - filled) + "]"

    def on_batch_end(self, step, logs):
        rate = logs["seen"] / max(logs["seconds"], 1e-9)
        acc = f" acc {logs['accuracy']:.4f}" if self.trainer.loss != "euclidean" else ""
        self.stream.write(f"\repoch {self.epoch + 1}/{self.total_epochs} "
                          f"{self._bar(logs['seen'], logs['total'])} loss {logs['loss']:.4f}"
                          f"{acc} {rate:,.0f} samples/s")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs):
        extra = "".join(f" {k} {v:.4f}" for k, v in logs.items() if k.startswith("val_"))
        self.stream.write(f" lr {logs['lr']:.3g}{extra}\n")
        self.stream.flush()


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, mode: str = "min"):
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.best, self.wait = math.inf if mode == "min" else -math.inf, 0

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            return None
        better = value < self.best if self.mode == "min" else value > self.best
        if better:
            self.best, self.wait = value, 0
            return None
        self.wait += 1
        return False if self.wait >= self.patience else None


class BestCheckpoint(Callback):
    """Write a checkpoint whenever ``monitor`` improves (and the last one, with ``keep_last``).

    The best value so far travels in the checkpoints, so a run resumed from ``last`` keeps
    comparing against it. The folder is held for the whole run: a second run writing the same
    checkpoints is refused instead of overwriting them.
    """

    def __init__(self, directory, monitor: str = "val_accuracy", mode: str = "max",
                 keep_last: bool = True):
        self.directory, self.monitor, self.mode, self.keep_last = directory, monitor, mode, keep_last
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch = None
        self._writer = None

    def on_train_begin(self, logs):
        from ..storage import DirectoryWriter

        state = self.trainer.run_state.get("best")
        if isinstance(state, dict) and state.get("monitor") == self.monitor:
            self.best, self.best_epoch = state["value"], state["epoch"]
        self._writer = DirectoryWriter(self.directory, "checkpoints").__enter__()

    def on_train_end(self, logs):
        if self._writer is not None:
            self._writer.__exit__(None, None, None)
            self._writer = None

    def on_epoch_end(self, epoch, logs):
        from pathlib import Path

        value = logs.get(self.monitor, logs.get("loss") if self.monitor.endswith("loss") else None)
        model = self.trainer.model
        if value is not None and ((value > self.best) if self.mode == "max" else (value < self.best)):
            self.best, self.best_epoch = value, epoch
            self.trainer.run_state["best"] = {"monitor": self.monitor, "value": value,
                                              "epoch": epoch}
            model.save_checkpoint(Path(self.directory) / "best")
        # after 'best': a kill between the two resumes from the older 'last', which
        # repeats this epoch and its comparison exactly
        if self.keep_last:
            model.save_checkpoint(Path(self.directory) / "last")
        return None

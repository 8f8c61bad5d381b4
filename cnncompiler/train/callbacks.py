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
    """Progress of ``fit`` (``verbose=1``, the default): on a terminal a tqdm bar per epoch,
    redrawn as batches finish; elsewhere (a pipe, a log file, a notebook's captured stream) one
    plain line per epoch and nothing in between, so a log holds one line per epoch rather than
    thousands of carriage-return redraws. The line ends with the epoch's metrics, learning rate
    and throughput (which leaves out the one-time compile of the training step)::

        epoch 3/10: loss 0.1532 accuracy 0.9561 val_loss 0.1610 val_accuracy 0.9500 lr 0.1 | 4,210 samples/s
    """

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = live            # None: a bar only when the stream is a terminal
        self.bar = None
        self.done = 0

    def on_train_begin(self, logs):
        if self.live is None:
            isatty = getattr(self.stream, "isatty", None)
            self.live = bool(isatty and isatty())

    def on_epoch_begin(self, epoch, logs):
        self.epoch, self.done = epoch, 0
        self.total_epochs = self.trainer.total_epochs
        if self.live:
            from tqdm import tqdm

            self.bar = tqdm(total=logs.get("samples"), unit=" samples", file=self.stream,
                            desc=f"epoch {epoch + 1}/{self.total_epochs}", leave=False,
                            dynamic_ncols=True)

    def on_batch_end(self, step, logs):
        if self.bar is not None:
            self.bar.update(logs["seen"] - self.done)
            self.done = logs["seen"]
            shown = {k: f"{logs[k]:.4f}" for k in ("loss", "accuracy") if k in logs}
            self.bar.set_postfix(shown, refresh=False)

    def on_epoch_end(self, epoch, logs):
        self._close()
        metrics = " ".join(f"{k} {v:.4f}" for k, v in logs.items()
                           if k not in ("lr", "samples_per_second"))
        rate = logs.get("samples_per_second")
        self.stream.write(f"epoch {epoch + 1}/{self.total_epochs}: {metrics} lr "
                          f"{logs['lr']:.3g}" + (f" | {rate:,.0f} samples/s" if rate else "")
                          + "\n")
        self.stream.flush()

    def on_train_end(self, logs):
        self._close()

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
        if self.trainer.writes:  # in a data-parallel run, rank 0 holds and writes the folder
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

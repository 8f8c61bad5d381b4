"""A compiled model that also trains: what ``cnncompiler.compile`` and ``cnncompiler.load``
return. The runtime loads and runs (``runtime.model.CompiledModel``); training builds on it
here, and the runtime never imports training.

    model = cc.compile("specs/lenet5.yaml")
    model.set_optimizer({"type": "sgd", "lr": 0.1, "momentum": 0.9})
    history = model.fit(x, y, epochs=5, batch_size=64)
    model.save_checkpoint("build/lenet5/checkpoints/last")
"""

from __future__ import annotations

from pathlib import Path

from ..runtime import model as runtime


class TrainableModel(runtime.CompiledModel):
    """A CompiledModel with an optimizer: its training step is compiled on first use (it needs
    TVM's compiler); parameters and optimizer state then stay on the device between steps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._trainer = None          # training state, made by the first training call

    @property
    def trainer(self):
        if self._trainer is None:
            from .trainer import Trainer

            self._trainer = Trainer(self)
        return self._trainer

    # -- the weights live on the device while training --------------------------------------
    def _sync_from_training(self) -> None:
        """After training steps the device holds the newest weights: bring them back."""
        trainer = self._trainer
        if trainer is not None and trainer.dirty:
            with self._lock:
                if trainer.dirty:
                    self._params = trainer.pull_params()
                    self._args = None

    def _weights_changed(self) -> None:
        self._forget_training_record()
        if self._trainer is not None:
            self._trainer.push_params()

    def _forget_training_record(self) -> None:
        """The manifest's ``training`` record describes weights that are being replaced: a
        later save must not claim it for the new ones."""
        self.manifest.pop("training", None)

    # -- training ----------------------------------------------------------------------------
    def set_optimizer(self, optimizer=None, schedule=None) -> None:
        """Change the optimizer (``{"type": "adam", "lr": 1e-3}``) and/or the learning-rate
        schedule; learning rate and schedule changes need no recompilation."""
        self.trainer.set_optimizer(optimizer, schedule)

    def train_step(self, x, y) -> float:
        """One optimizer update on one batch; returns the batch's loss."""
        self._forget_training_record()
        return self.trainer.train_step(x, y)[0]

    def fit(self, x, y=None, epochs=None, batch_size=None, validation_data=None,
            validation_split=0.0, shuffle=True, seed=None, callbacks=(), verbose=1):
        """Train for ``epochs`` epochs (default: the spec's ``train.epochs``); returns a History
        with per-epoch loss, accuracy, lr, samples/s and validation metrics.

        ``fit(x, y)`` cuts arrays into shuffled batches of ``batch_size``; ``fit(batches)``
        trains on batches you form, a list of ``(x, y)`` pairs or a function of the epoch
        that returns them (the way for boxes that point at their batch's samples).
        ``validation_data=(xv, yv)`` (or a list of batches), or ``validation_split=0.1`` to
        hold out the last tenth of ``x`` (as Keras). ``verbose=1`` (the default) prints a line
        per epoch to stderr (a live bar on a terminal); ``verbose=0`` is silent."""
        from .trainer import fit

        if seed is not None:
            self.trainer.seed = seed
        self._forget_training_record()
        return fit(self.trainer, x, y, epochs, batch_size, validation_data, validation_split,
                   shuffle, callbacks, verbose)

    def evaluate(self, x, y, batch_size: int = 256) -> dict:
        """{'loss': ..., 'accuracy': ...} (accuracy for classification losses), at inference."""
        from .trainer import evaluate

        return evaluate(self, x, y, batch_size)

    def save_checkpoint(self, directory) -> Path:
        """Weights, optimizer state, step, schedule position and random state, atomically."""
        from .checkpoint import save_checkpoint

        return save_checkpoint(self.trainer, directory)

    def load_checkpoint(self, directory) -> dict:
        """Resume from a checkpoint of this spec (refused if corrupt or of another spec)."""
        from .checkpoint import load_checkpoint

        meta = load_checkpoint(self.trainer, directory)
        self._forget_training_record()
        with self._lock:
            self._args = None
        return meta


def load(directory, device: str | None = None, _keep=None) -> TrainableModel:
    """``runtime.model.load`` (an artifact checked and opened), as a model that also trains."""
    return runtime.load(directory, device, _keep, cls=TrainableModel)

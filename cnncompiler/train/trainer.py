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

import contextlib
import itertools
import math
import time

import numpy as np

from ..errors import InputError, TrainingError
from ..graph import layer_node
from ..layers import BATCH
from ..passes import optimize
from ..spec.losses import loss_terms
from . import distributed, optim


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
        self.loss = loss or cfg.loss            # a name, or a loss per output
        self.loss_weights = cfg.loss_weights
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
        self.term_losses: list[float] = []  # the last step's loss of each term
        self.last_samples = 0         # the last step's samples
        self.last_rows = 0            # and the rows its correct count is of

    @property
    def terms(self) -> list:
        """The objective: each output's loss and weight (``spec.losses.LossTerm``)."""
        return loss_terms(self.loss, self.model.output_names, self.loss_weights)

    @property
    def has_metric(self) -> bool:
        """Whether a term reports accuracy (a classification loss)."""
        return any(t.kind.metric for t in self.terms)

    @property
    def replicas(self):
        """This process's ``distributed.Replicas`` in a data-parallel run, else None."""
        return distributed.current()

    @property
    def writes(self) -> bool:
        """Whether this process writes checkpoints (rank 0 of a data-parallel run)."""
        return self.replicas is None or self.replicas.leader

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
            terms = [t.to_json() for t in self.terms]
            replicas = self.replicas
            parallel = self._parallel()
            # rank 0 builds into the shared cache first; the others then load its library
            with replicas.leader_first() if replicas else _nothing():
                library, sig = build_train_library(self.graph, self.model.spec_key(), terms,
                                                   kind, choice, "float32",
                                                   self.label_smoothing, parallel=parallel)
            dev = tvm.cuda(replicas.local_rank if replicas else 0) \
                if choice.kind == "cuda" else tvm.cpu(0)
            vm = tvm_vm.VirtualMachine(open_library(tvm, library, "train_step.so"), dev)
            self._compiled[kind] = (vm, sig, dev)
            self._upload(sig, dev)
        return self._compiled[kind]

    def _parallel(self):
        """The data-parallel form of the step this process runs (None: it trains alone)."""
        if self.replicas is None:
            return None
        from cnncompiler.backends.train_lower import Parallel

        return Parallel(sync_batchnorm=self.model.graph.graph["train"].sync_batchnorm)

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
        if self.replicas:  # every process starts from rank 0's weights and state
            self.replicas.broadcast([self._device[k] for k in sig.params + sig.buffers +
                                     sig.state])

    def agree_buffers(self) -> None:
        """Rank 0's batch-norm running statistics on every process (each moved its own on its
        part of the batches: PyTorch DDP's broadcast_buffers), before they are evaluated or
        saved; with sync_batchnorm they already agree."""
        replicas = self.replicas
        if replicas is None or not self._compiled or \
                self.model.graph.graph["train"].sync_batchnorm:
            return
        vm, sig, dev = next(iter(self._compiled.values()))
        replicas.broadcast([self._device[b] for b in sig.buffers])

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
        return xs, self.check_labels(y, self.rows(xs))

    def rows(self, xs: list) -> dict:
        """The length of each kind of leading axis in these inputs: the batch's samples, and
        each unbatched input's rows."""
        model = self.model
        rows = {BATCH: model.batch_size(xs)}
        rows.update({name: len(x) for name, x in zip(model.input_names, xs)
                     if name in model.unbatched})
        return rows

    def check_labels(self, y, rows) -> list[np.ndarray]:
        """The labels of each term, checked against its loss and output: ``y`` an array for
        one term, a dict by output name for several. ``rows``: the number of samples, or the
        length of each kind of leading axis (``rows(xs)``)."""
        terms = self.terms
        given = label_dict(y, terms)
        rows = rows if isinstance(rows, dict) else {BATCH: rows}
        out = []
        for term in terms:
            node = layer_node(self.model.graph, term.output)
            try:
                out.append(term.kind.check_labels(given[term.output], rows[node.lead],
                                                  node.shape))
            except InputError as exc:
                raise InputError(str(exc) if len(terms) == 1 else
                                 f"labels of '{term.output}': {exc}") from None
        return out

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

    def train_step(self, x, y, present: bool = True) -> tuple[float, float]:
        """One update on one batch; returns (loss, number of correct predictions). In a
        data-parallel run the batch is this process's part of the global batch, and the
        results are the global batch's (``present=False``: a stand-in batch that adds
        nothing, for a process without samples in this one)."""
        import tvm

        xs, ys = self.check_batch(x, y)
        vm, sig, dev = self._step_function()
        hyper = optim.hyper_vector(self.optimizer, self.current_lr(),
                                   self.step - self.state_start)
        samples = self.model.batch_size(xs)
        replica = self._replica_vector(samples, present)
        args = [tvm.runtime.tensor(a, dev) for a in [*xs, *ys, hyper, *replica]]
        args += [self._device[k] for k in sig.params + sig.buffers + sig.state]
        args += [tvm.runtime.tensor(m, dev) for m in self._masks(sig, self.rows(xs))]
        out = self._run_step(vm, args)
        metric = next((i for i, t in enumerate(self.terms) if t.kind.metric), 0)
        loss, correct, samples, rows, terms = self._step_totals(out, replica, samples,
                                                                len(ys[metric]))
        grad_sq, new_sq = out[2].numpy()
        if not math.isfinite(loss) or not np.all(np.isfinite(grad_sq) & np.isfinite(new_sq)):
            raise TrainingError(f"training diverged at step {self.step + 1} (epoch "
                                f"{self.epoch + 1}): loss is {loss}"
                                f"{_first_non_finite(sig.params, grad_sq, new_sq)}; the weights "
                                "are kept from the step before; lower the learning rate")
        names = sig.params + sig.buffers + sig.state
        for i, name in enumerate(names):
            self._device[name] = out[3 + i]
        self.term_losses = terms
        self.last_samples = samples
        # the rows the correct count is of: the first classification term's labels
        self.last_rows = rows
        self.step += 1
        self.dirty = True
        return loss, correct

    def _replica_vector(self, samples: int, present: bool) -> list:
        """[] for a process training alone; else the step's [share, present] argument, this
        process's share of the global batch (its samples over every process's)."""
        if self.replicas is None:
            if not present:
                raise InputError("present=False is for a process of a data-parallel run")
            return []
        mine = samples if present else 0
        total = self.replicas.sum([mine])[0]
        return [np.array([mine / total, float(present)], np.float32)]

    def _run_step(self, vm, args):
        try:
            with self._collective_stream(args[0].device):
                return vm["train_step"](*args)
        except Exception as exc:
            if distributed.failure is None:
                raise
            failure, distributed.failure = distributed.failure, None
            raise TrainingError(distributed.lost_contact(
                self.replicas.rank, self.replicas.world, failure)) from exc

    def _collective_stream(self, device):
        """On a GPU of a data-parallel run, TVM's kernels on torch's current stream, where
        the step's all-reduces (NCCL) run: they then read the gradients after the kernels
        that write them, with no host synchronisation."""
        if self.replicas is None or device.dlpack_device_type() != 2:  # 2: kDLCUDA
            return _nothing()
        import tvm_ffi

        return tvm_ffi.use_torch_stream()

    def _step_totals(self, out, replica: list, samples: int, rows: int):
        """(loss, correct, samples, rows, each term's loss) of the step: this process's, or the
        global batch's summed over the processes (the loss weighted by the shares)."""
        loss, correct = float(out[0].numpy()[0]), float(out[1].numpy()[0])
        terms = out[-1].numpy().astype(float).tolist()
        if not replica:
            return loss, correct, samples, rows, terms
        share, present = (float(v) for v in replica[0])
        total = self.replicas.sum([loss * share, correct * present, samples * present,
                                   rows * present, *(t * share for t in terms)])
        return (float(total[0]), float(total[1]), int(total[2]), int(total[3]),
                total[4:].tolist())


@contextlib.contextmanager
def _nothing():
    yield


def label_dict(y, terms) -> dict:
    """{output: labels}: ``y`` itself for the one term, a dict by output name for several."""
    if len(terms) == 1 and not (isinstance(y, dict) and list(y) == [terms[0].output]):
        return {terms[0].output: y}
    if not isinstance(y, dict):
        raise InputError(f"this model trains {len(terms)} outputs; give the labels as a dict by "
                         f"output name: {{{', '.join(repr(t.output) for t in terms)}}}")
    missing = [t.output for t in terms if t.output not in y]
    if missing:
        raise InputError(f"labels for {', '.join(map(repr, missing))} are missing; the "
                         f"outputs trained are {', '.join(repr(t.output) for t in terms)}")
    return y


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
    if distributed.launched():  # a process torchrun started joins the others
        distributed.init_from_env(trainer.model.manifest["target"].get("kind", "cpu"))
    replicas = trainer.replicas
    if replicas is not None and not replicas.leader:
        verbose = 0  # rank 0 reports (the global batch's numbers)
    if y is None:
        source = GivenBatches(x, replicas)
        if validation_split:
            raise InputError("validation_split cuts arrays; with batches given, give "
                             "validation_data as batches too")
    else:
        source = _array_source(trainer, x, y, batch_size, shuffle, validation_split)
        if validation_split:
            if validation_data is not None:
                raise InputError("give validation_data or validation_split, not both")
            validation_data = source.held_out
    trainer.steps_per_epoch = source.steps
    trainer.total_epochs = trainer.epoch + epochs
    if replicas is not None and verbose:
        import sys

        print(replicas.describe(batch_size, cfg.sync_batchnorm), file=sys.stderr, flush=True)
    if epochs:
        _compile_step(trainer, verbose)  # before the clock starts: throughput is training's
    cbs = CallbackList(list(callbacks) + ([ProgressBar()] if verbose else []), trainer)
    history = History()
    cbs.on_train_begin({})
    try:
        _train_epochs(trainer, source, epochs, validation_data, batch_size, cbs, history)
    finally:
        cbs.on_train_end({})  # also after an error: callbacks release what they hold
    return history


class ArrayBatches:
    """Batches cut from arrays: a seeded shuffle per epoch, ``batch_size`` samples each. In a
    data-parallel run every process draws the same shuffle and takes its part of each global
    batch of ``batch_size`` x world samples, so each sample is seen once per epoch."""

    def __init__(self, xs: list, y: dict, batch_size: int, shuffle: bool, seed: int,
                 replicas=None):
        self.xs, self.y, self.shuffle, self.seed = xs, y, shuffle, seed
        self.replicas = replicas
        self.batch_size = batch_size * (replicas.world if replicas else 1)  # the global batch
        self.samples = len(xs[0])
        self.steps = -(-self.samples // self.batch_size)
        self.held_out = None

    def batches(self, epoch: int):
        for idx in batches(self.samples, self.batch_size, self.shuffle, self.seed, epoch):
            idx, present = self.replicas.part(idx) if self.replicas else (idx, True)
            yield (model_input([np.ascontiguousarray(x[idx]) for x in self.xs]),
                   {k: v[idx] for k, v in self.y.items()}, present)


class GivenBatches:
    """Batches the caller forms: a list of ``(x, y)`` pairs (the same each epoch), or a
    function of the epoch that returns an iterable of them. The way to train a model whose
    boxes point at the samples of their batch (an input with ``batched: false``)."""

    def __init__(self, source, replicas=None):
        if not callable(source) and not isinstance(source, (list, tuple)):
            raise InputError("fit(x, y) takes arrays; fit(batches) takes a list of (x, y) "
                             "batches or a function epoch -> iterable of (x, y); received "
                             f"{type(source).__name__} without y")
        self.source, self.replicas = source, replicas
        self.samples = None
        self.steps = None if callable(source) else -(-len(source) // self.world)

    @property
    def world(self) -> int:
        return self.replicas.world if self.replicas else 1

    def batches(self, epoch: int):
        """(x, y, present): in a data-parallel run each process takes every world-th batch
        (a global batch is one from each); one left without a batch in the last round steps
        on a stand-in that adds nothing."""
        items = iter(self.source(epoch) if callable(self.source) else self.source)
        rank = self.replicas.rank if self.replicas else 0
        # a round at a time: a generator's batches are not all held at once
        while round_ := [_checked_pair(item) for item in itertools.islice(items, self.world)]:
            yield (*round_[rank], True) if rank < len(round_) else (*round_[0], False)


def _checked_pair(item):
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise InputError(f"a batch is a pair (x, y); received {type(item).__name__}")
    return item


def _array_source(trainer, x, y, batch_size, shuffle, validation_split) -> ArrayBatches:
    if trainer.model.unbatched:
        raise InputError(f"fit(x, y) cuts arrays into batches of samples, and the rows of "
                         f"{', '.join(trainer.model.unbatched)} (batched: false) point at "
                         "samples by index: give the batches, fit([(x, y), ...]) or "
                         "fit(lambda epoch: ...), with each batch's indices counting within it")
    xs = trainer.model.check_inputs(x)
    y = {k: np.asarray(v) for k, v in label_dict(y, trainer.terms).items()}
    n = len(xs[0])
    for output, labels in y.items():
        if len(labels) != n:
            raise InputError(f"x has {n} samples but y has {len(labels)}" if len(y) == 1 else
                             f"x has {n} samples but the labels of '{output}' have "
                             f"{len(labels)}")
    held_out = None
    if validation_split:
        xs, y, held_out = split_off_validation(xs, y, validation_split)
    trainer.check_labels(y, len(xs[0]))  # wrong labels are found before the step compiles
    source = ArrayBatches(xs, y, batch_size, shuffle, trainer.seed, trainer.replicas)
    source.held_out = held_out
    return source


def split_off_validation(xs: list, y: dict, fraction: float):
    """Keras's ``validation_split``: the last ``fraction`` of the samples, before shuffling,
    held out (shuffle the data first if it is ordered by class)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
            not 0.0 < fraction < 1.0:
        raise InputError(f"validation_split must be a fraction in (0, 1); received {fraction!r}")
    n = len(xs[0])
    cut = n - int(round(n * fraction))
    if cut < 1 or cut == n:
        raise InputError(f"validation_split {fraction} of {n} samples leaves "
                         f"{n - cut} for validation and {cut} for training; both need one")
    held = {k: v[cut:] for k, v in y.items()}
    return [x[:cut] for x in xs], {k: v[:cut] for k, v in y.items()}, \
        (model_input([x[cut:] for x in xs]), held if len(held) > 1 else next(iter(held.values())))


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


def _train_epochs(trainer, source, epochs, validation_data, batch_size, cbs, history) -> None:
    for _ in range(epochs):
        epoch = trainer.epoch
        lr = trainer.current_lr()
        cbs.on_epoch_begin(epoch, {"lr": lr, "samples": source.samples})
        total_loss, total_correct, seen, rows, start = 0.0, 0.0, 0, 0, time.perf_counter()
        term_totals = np.zeros(len(trainer.terms))
        for x, y, present in source.batches(epoch):
            loss, correct = trainer.train_step(x, y, present)
            count = trainer.last_samples
            total_loss += loss * count
            term_totals += np.asarray(trainer.term_losses) * count
            total_correct += correct
            seen += count
            rows += trainer.last_rows
            cbs.on_batch_end(trainer.step, {"loss": total_loss / seen, "seen": seen,
                                            "total": source.samples,
                                            "accuracy": total_correct / max(rows, 1),
                                            "seconds": time.perf_counter() - start})
        trainer.epoch += 1
        trainer.agree_buffers()
        logs = {"loss": total_loss / max(seen, 1), "lr": lr,
                "samples_per_second": seen / max(time.perf_counter() - start, 1e-9)}
        if trainer.has_metric:
            logs["accuracy"] = total_correct / max(rows, 1)
        if len(trainer.terms) > 1:
            logs.update({f"{t.output}_loss": float(v) / max(seen, 1)
                         for t, v in zip(trainer.terms, term_totals)})
        if validation_data is not None:
            val = _validate(trainer, validation_data, batch_size)
            logs.update({f"val_{k}": v for k, v in val.items()})
        history.record(epoch, logs)
        if cbs.on_epoch_end(epoch, logs) is False:
            break


def _validate(trainer, validation_data, batch_size: int) -> dict:
    """Metrics on ``(x, y)`` arrays, or over a list of ``(x, y)`` batches; in a data-parallel
    run each process evaluates its part and the metrics are combined by samples."""
    replicas = trainer.replicas
    if isinstance(validation_data, tuple) and len(validation_data) == 2:
        x, y = validation_data
        if replicas is None or len(_first_array(x)) < replicas.world:
            return evaluate(trainer.model, x, y, batch_size=batch_size, terms=trainer.terms,
                            label_smoothing=trainer.label_smoothing)
        part = replicas.evaluation_part(len(_first_array(x)))
        metrics = evaluate(trainer.model, _cut(x, part), _cut(y, part), batch_size=batch_size,
                           terms=trainer.terms, label_smoothing=trainer.label_smoothing)
        return _combined(replicas, metrics, part.stop - part.start)
    batches = list(validation_data)
    if replicas is None or len(batches) < replicas.world:
        return evaluate_batches(trainer.model, batches, terms=trainer.terms,
                                label_smoothing=trainer.label_smoothing)
    mine = batches[replicas.rank::replicas.world]
    metrics = evaluate_batches(trainer.model, mine, terms=trainer.terms,
                               label_smoothing=trainer.label_smoothing)
    count = sum(trainer.model.batch_size(trainer.model.check_inputs(x)) for x, _ in mine)
    return _combined(replicas, metrics, count)


def _first_array(x):
    return x[0] if isinstance(x, (list, tuple)) else next(iter(x.values())) \
        if isinstance(x, dict) else x


def _cut(value, part: slice):
    """Samples ``part`` of an array, or of each array in a list or dict."""
    if isinstance(value, dict):
        return {k: v[part] for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [v[part] for v in value]
    return value[part]


def _combined(replicas, metrics: dict, count: int) -> dict:
    """Each process's averages over its ``count`` samples, as averages over all of them."""
    keys = sorted(metrics)
    totals = replicas.sum([count, *(metrics[k] * count for k in keys)])
    return {k: float(v / max(totals[0], 1)) for k, v in zip(keys, totals[1:])}


def evaluate_batches(model, batches, terms=None, label_smoothing: float | None = None) -> dict:
    """``evaluate`` over a list of ``(x, y)`` batches: each metric averaged over the batches,
    weighted by their samples."""
    totals, count = {}, 0
    for x, y in batches:
        n = model.batch_size(model.check_inputs(x))
        for k, v in evaluate(model, x, y, terms=terms, label_smoothing=label_smoothing).items():
            totals[k] = totals.get(k, 0.0) + v * n
        count += n
    return {k: v / max(count, 1) for k, v in totals.items()}


def _outputs(model, result) -> dict:
    """The model's outputs by name."""
    return result if isinstance(result, dict) else {model.output_names[0]: result}


def evaluate(model, x, y, batch_size: int = 256, terms=None,
             label_smoothing: float | None = None) -> dict:
    """The loss (and accuracy, for classification) of the model on (x, y), at inference: with
    several loss terms, the weighted total as ``loss``, each term's as ``<output>_loss`` and
    ``<output>_accuracy``, and the first classification term's as ``accuracy``."""
    cfg = model.graph.graph["train"]
    terms = terms or loss_terms(cfg.loss, model.output_names, cfg.loss_weights)
    smoothing = cfg.label_smoothing if label_smoothing is None else label_smoothing
    xs = model.check_inputs(x)
    y = {k: np.asarray(v) for k, v in label_dict(y, terms).items()}
    outs = _predicted(model, xs, batch_size)
    result, total = {}, 0.0
    for term in terms:
        z = np.asarray(outs[term.output], np.float64)
        if len(y[term.output]) != len(z):
            raise InputError(f"the output '{term.output}' has {len(z)} rows but its labels "
                             f"have {len(y[term.output])}")
        metrics = term.kind.reference(z, y[term.output], smoothing)
        if len(terms) == 1:
            return metrics
        total += term.weight * metrics["loss"]
        result.update({f"{term.output}_{k}": v for k, v in metrics.items()})
        if "accuracy" in metrics and "accuracy" not in result:
            result["accuracy"] = metrics["accuracy"]
    return {"loss": total, **result}


def _predicted(model, xs: list, batch_size: int) -> dict:
    """Every output on these inputs, run in batches (whole, when rows of an unbatched input
    point at samples by index)."""
    if model.unbatched:
        return _outputs(model, model.predict(model_input(xs)))
    parts = [_outputs(model, model.predict(model_input(
        [np.ascontiguousarray(x[i:i + batch_size]) for x in xs])))
        for i in range(0, len(xs[0]), batch_size)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

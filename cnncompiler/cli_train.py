"""``cnnc train``: train a spec on a dataset into a run directory, which keeps the run's
checkpoints, history and, at the end, the trained artifact.

    cnnc train specs/lenet5.yaml --data digits -o build/lenet5 [--keep best|last]
    cnnc train specs/fast_rcnn_shapes.yaml --data shapes.npz -o build/detector
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np

from .errors import CnncError, InputError


def cmd_train(args) -> int:
    """Train into ``-o DIR``: the run holds DIR while it trains, keeps its checkpoints in
    DIR/checkpoints, and writes the trained artifact into DIR at the end (replacing an earlier
    artifact's files there, nothing else). ``--epochs`` is the run's total: a resumed run
    continues to it, with the schedule and data order the uninterrupted run would have had.

    ``--nproc N`` starts N processes under torchrun, each running this command; under torchrun
    each joins the process group, and rank 0 alone writes (checkpoints, history, artifact)."""
    from .runtime import artifact as art
    from .storage import DirectoryWriter
    from .train import distributed

    out = Path(args.output)
    checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else out / "checkpoints"
    inside = {checkpoints.name} if checkpoints.parent.resolve() == out.resolve() else set()
    if args.nproc is not None and not distributed.launched():
        if args.nproc < 1:
            raise CnncError(f"--nproc must be a positive number of processes; received "
                            f"{args.nproc}")
        if args.nproc > 1:
            return _launch(args, inside)
    replicas = distributed.init_from_env("cuda" if args.target.startswith("cuda") else "cpu")
    if args.nproc is not None and replicas is not None and args.nproc != replicas.world:
        raise CnncError(f"--nproc {args.nproc} under torchrun, which started "
                        f"{replicas.world} processes: give the count to torchrun only")
    try:
        if replicas is not None and not replicas.leader:
            _say(f"rank {replicas.rank} of {replicas.world} (pid {os.getpid()}, "
                 f"{socket.gethostname()}): training its part of each global batch; rank 0 "
                 "reports and writes", always=True)
            return _train(args, out, checkpoints, inside)
        art.check_output_dir(out, allow=inside)
        with DirectoryWriter(out, "training run"):
            art.check_output_dir(out, allow=inside)
            return _train(args, out, checkpoints, inside)
    finally:
        distributed.shutdown()


def _launch(args, inside: set) -> int:
    """Run this command in ``--nproc`` local processes under torchrun (which passes each its
    rank, and stops the others when one fails)."""
    import subprocess

    from . import threads
    from .graph import load_checked
    from .runtime import artifact as art

    # what every process would refuse is refused once, here
    load_checked(args.spec)
    if not args.resume:
        art.check_output_dir(Path(args.output), allow=inside)
    argv = _without_nproc(args.argv)
    env = dict(os.environ)
    if threads.GIVEN is None:  # each process takes its share of the cores (threads.py)
        env.pop(threads.ENV, None)
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc}", "-m", "cnncompiler", *argv]
    print(f"starting {args.nproc} training processes: torchrun --standalone "
          f"--nproc_per_node={args.nproc} -m cnncompiler {' '.join(argv)}", file=sys.stderr,
          flush=True)
    code = subprocess.call(command, env=env)
    if code:
        out = Path(args.output)
        raise CnncError(f"a training process failed (exit status {code}; torchrun's report "
                        "above names the rank); the run's checkpoints are intact: continue "
                        f"it with --resume {out}")
    return 0


def _without_nproc(argv: list) -> list:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _leader() -> bool:
    from .train import distributed

    replicas = distributed.current()
    return replicas is None or replicas.leader


def _say(message: str, always: bool = False) -> None:
    """A line of the run's log on stderr: rank 0's alone in a data-parallel run."""
    if always or _leader():
        print(message, file=sys.stderr, flush=True)


def _train(args, out: Path, checkpoints: Path, inside: set) -> int:
    from .compiler import compile as compile_spec
    from .graph import load_checked
    from .train import distributed
    from .train.callbacks import BestCheckpoint
    from .train.checkpoint import find_checkpoint, read_meta

    resume = find_checkpoint(args.resume) if args.resume else None
    meta = read_meta(resume) if resume else None
    run = dict(meta.get("run") or {}) if meta else {}
    if resume is None and _leader():
        _refuse_earlier_run(checkpoints, out)
    seed = _run_seed(args, meta)
    graph, _ = load_checked(args.spec)
    cfg = graph.graph["train"]
    epochs = _first_given(args.epochs, run.get("epochs"), cfg.epochs)
    batch_size = _first_given(args.batch_size, run.get("batch_size"), cfg.batch_size)
    validation = _first_given(args.validation_fraction, run.get("validation_fraction"), 0.1)
    keep = _keep(args.keep, validation)
    # the data is read and its labels checked against the loss before anything compiles
    data = _training_data(args, graph, validation, seed, batch_size)
    with _leader_first():  # rank 0 compiles into the cache, the others then load it
        model = compile_spec(args.spec, target=args.target, seed=seed)  # a private folder
    if resume:
        meta = model.load_checkpoint(resume)
        _say(f"resumed from {resume} at epoch {meta['epoch']} of {epochs}, step "
             f"{meta['step']}")
        _warn_if_changed(run, args.data, args.test_fraction, validation)
    _apply_optimizer_overrides(model, args)
    model.trainer.run_state.update(epochs=epochs, batch_size=batch_size, data=args.data,
                                   test_fraction=args.test_fraction,
                                   validation_fraction=validation)
    remaining = epochs - model.trainer.epoch
    if remaining < 0:
        raise CnncError(f"the checkpoint {resume} is at epoch {model.trainer.epoch}, past "
                        f"--epochs {epochs} (the run's total); give a larger --epochs")
    replicas = model.trainer.replicas
    if replicas is not None and args.quiet:  # else fit states it
        _say(replicas.describe(batch_size, cfg.sync_batchnorm))
    classify = model.trainer.has_metric
    monitor = "val_accuracy" if classify else "val_loss"
    best = BestCheckpoint(checkpoints, monitor=monitor if validation else "loss",
                          mode="max" if classify and validation else "min")
    history = model.fit(*data.fit_args(), epochs=remaining, batch_size=batch_size,
                        validation_data=data.validation_data, callbacks=[best],
                        verbose=0 if args.quiet else 1, seed=seed)
    leader = _leader()
    # training is over: the processes part, and rank 0 alone chooses the epoch, evaluates
    # the test set and writes the artifact (loading 'best' must not wait for the others)
    distributed.shutdown()
    if not leader:
        return 0
    kept = epochs
    if keep == "best" and best.best_epoch is not None:
        model.load_checkpoint(checkpoints / "best")
        kept = best.best_epoch + 1
    record = _training_record(model, data, args.data, keep, kept, epochs,
                              monitor if keep == "best" else None)
    model.save(out, allow=inside, training=record)
    _write_history(out, history, resume is not None, record)
    why = f"the best {monitor}" if keep == "best" else "the last"
    val = f"; validation {_shown(record['validation'])}" if "validation" in record else ""
    print(f"trained {model.graph.graph['name']} to epoch {epochs} ({len(history.epochs)} in "
          f"this run); kept epoch {kept} ({why}, --keep {keep}){val}; test "
          f"{_shown(record['test'])} (evaluated once, at the end); artifact -> {args.output}")
    return 0


def _training_data(args, graph, validation: float, seed: int, batch_size: int):
    """The run's data: arrays for a spec of one input and one loss (``load_data``'s sources),
    else an .npz of every input and trained output by name (``train.named_data``)."""
    from .spec.losses import loss_terms

    cfg = graph.graph["train"]
    try:
        terms = loss_terms(cfg.loss, graph.graph["outputs"], cfg.loss_weights)
    except InputError as exc:
        raise CnncError(f"{cfg.loss_loc or args.spec}: {exc}") from None
    inputs = graph.graph["inputs"]
    if len(inputs) == 1 and len(terms) == 1:
        return ArrayRun(args, graph, terms[0], validation, seed)
    return NamedRun(args, graph, terms, validation, seed, batch_size)


class ArrayRun:
    """One input, one loss: a dataset of ``cc.datasets``, a seeded validation split of its
    training part."""

    def __init__(self, args, graph, term, validation: float, seed: int):
        from .graph import layer_node
        from .train.data import load_data

        (name,) = graph.graph["inputs"]
        self.data = load_data(args.data, layer_node(graph, name).shape, args.test_fraction, seed)
        _say(self.data.describe())
        _check_labels(term, layer_node(graph, term.output).shape,
                      (("training", self.data.y_train), ("test", self.data.y_test)),
                      graph.graph["train"].loss_loc or args.spec)
        self.x, self.y, self.x_val, self.y_val = _hold_out(self.data, validation, seed)
        self.validation_data = None if self.x_val is None else (self.x_val, self.y_val)

    def fit_args(self) -> tuple:
        return self.x, self.y

    def metrics(self, model, part: str) -> dict:
        if part == "validation":
            return model.evaluate(self.x_val, self.y_val)
        return model.evaluate(self.data.x_test, self.data.y_test)


class NamedRun:
    """Several inputs or outputs: an .npz by name, batches of samples with their rows (the
    boxes of each image), a seeded validation split of the training samples."""

    def __init__(self, args, graph, terms, validation: float, seed: int, batch_size: int):
        from .train.named_data import load_named_npz

        self.train, train_index, self.test, self.test_index = load_named_npz(
            args.data, graph, terms, args.test_fraction, seed)
        self.batch_size, self.seed = batch_size, seed
        order = np.random.default_rng([seed, 1]).permutation(train_index)
        held = int(round(len(order) * validation)) if validation else 0
        if validation and not 0 < held < len(order):
            raise InputError(f"{args.data}: a validation fraction of {validation} leaves {held} "
                             f"of {len(order)} training samples for validation")
        self.train_index, self.val_index = np.sort(order[held:]), np.sort(order[:held])
        _say(f"{args.data}: {len(self.train_index)} training, {len(self.val_index)} "
             f"validation and {len(self.test_index)} test samples; inputs "
             f"{', '.join(graph.graph['inputs'])}; outputs trained "
             f"{', '.join(t.output for t in terms)}")
        self.validation_data = self.train.batches(self.val_index, batch_size) if held else None

    def fit_args(self) -> tuple:
        def epoch_batches(epoch: int):
            order = np.random.default_rng([self.seed, 0, epoch]).permutation(self.train_index)
            return self.train.batches(order, self.batch_size)

        return (epoch_batches,)

    def metrics(self, model, part: str) -> dict:
        from .train.trainer import evaluate_batches

        if part == "validation":
            return evaluate_batches(model, self.validation_data)
        return evaluate_batches(model, self.test.batches(self.test_index, self.batch_size))


def _keep(keep: str | None, validation: float) -> str:
    """Which epoch's weights the artifact gets: the best on the validation split, or the last."""
    if keep is None:
        return "best" if validation else "last"
    if keep == "best" and not validation:
        raise CnncError("--keep best chooses the epoch by the validation split; with "
                        "--validation-fraction 0 there is none: give --keep last or a "
                        "validation fraction such as 0.1 (choosing by the test set would make "
                        "the test result optimistic)")
    return keep


def _hold_out(data, validation: float, seed: int):
    if not validation:
        return data.x_train, data.y_train, None, None
    x_train, y_train, x_val, y_val = data.validation_split(validation, seed)
    _say(f"validation: {len(x_val)} of the {len(data.x_train)} training samples held out "
         f"(--validation-fraction {validation}) to choose the epoch by")
    return x_train, y_train, x_val, y_val


def _check_labels(term, out_shape, parts, where) -> None:
    """The dataset's labels fit the spec's loss and output, or a located error says why."""
    for part, y in parts:
        try:
            term.kind.check_labels(y, len(y), out_shape)
        except InputError as exc:
            raise CnncError(f"{where}: the {part} labels of the data do not fit the loss "
                            f"{term.loss}: {exc}") from None


def _training_record(model, data, source: str, keep: str, epoch: int, epochs: int,
                     selected_by) -> dict:
    """The manifest's account of the weights: which epoch, chosen how, and how they score."""
    record = {"keep": keep, "epoch": epoch, "epochs": epochs, "data": source}
    if selected_by:
        record["selected_by"] = selected_by
    if data.validation_data is not None:
        record["validation"] = data.metrics(model, "validation")
    record["test"] = data.metrics(model, "test")
    return record


def _write_history(out: Path, history, resumed: bool, record: dict) -> None:
    from .train.plot import merge_history, read_history, write_history

    path = out / "history.json"
    if resumed and path.is_file():
        history = merge_history(read_history(path), history)
    write_history(history, out, extra={k: record[k] for k in ("keep", "epoch")})


def _shown(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _refuse_earlier_run(checkpoints: Path, out: Path) -> None:
    """A new run never overwrites the checkpoints of an earlier one."""
    from .train.checkpoint import META

    if checkpoints.is_dir() and any((c / META).is_file() for c in checkpoints.iterdir()):
        raise CnncError(f"'{checkpoints}' holds the checkpoints of an earlier run; continue it "
                        f"with --resume {out}, or train into another -o directory (or "
                        "--checkpoint-dir); cnnc does not delete them")


def _run_seed(args, meta) -> int:
    """The seed of the run: a resumed run keeps its checkpoint's (data split, shuffling)."""
    if meta is None:
        return _first_given(args.seed, 0)
    if args.seed is not None and args.seed != meta["seed"]:
        raise CnncError(f"--seed {args.seed} differs from the resumed run's seed {meta['seed']}: "
                        "its data split and order would change; drop --seed to continue the run")
    return meta["seed"]


def _leader_first():
    import contextlib

    from .train import distributed

    replicas = distributed.current()
    return replicas.leader_first() if replicas else contextlib.nullcontext()


def _first_given(*values):
    return next(v for v in values if v is not None)


def _warn_if_changed(run: dict, data: str, test_fraction: float, validation: float) -> None:
    then = (run.get("data"), run.get("test_fraction"), run.get("validation_fraction"))
    now = (data, test_fraction, validation)
    if any(a not in (None, b) for a, b in zip(then, now)):
        print(f"warning: the resumed run trained on --data {then[0]} with --test-fraction "
              f"{then[1]} and --validation-fraction {then[2]}; this one uses {data}, "
              f"{test_fraction} and {validation}", file=sys.stderr)


def _apply_optimizer_overrides(model, args) -> None:
    overrides = {k: v for k, v in (("lr", args.lr), ("type", args.optimizer)) if v is not None}
    if not overrides:
        return
    from .train.optim import describe

    current = describe(model.trainer.optimizer)
    if "type" in overrides and overrides["type"] != current["type"]:
        current = {"type": overrides["type"]}
    model.set_optimizer({**current, **overrides})

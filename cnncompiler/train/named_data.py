"""Training data for a model of several inputs or outputs, by name, from one ``.npz``: what
``cnnc train --data`` reads for such a spec (a detector's images, boxes and two heads' labels).

    image       (N, 3, 64, 64)   a batched input: one row per sample
    rois        (R, 5)           an input without the batch axis: rows whose first column is
                                 the index of their sample in the file (boxes of a RoI layer)
    cls, bbox   (R,), (R, 4)     labels of each trained output, one per row of that output
    test_image, test_rois, ...   the test part, the same way (else --test-fraction of the samples)

A batch is a set of samples: it takes their rows of every input without the batch axis, with
the first column renumbered to count within the batch, and the labels of those rows. Splits
(test, validation) are by sample, seeded, so a sample's boxes stay with it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..graph import layer_node
from ..layers import BATCH

TEST = "test_"


class NamedData:
    """The arrays of one part (training or test) and how to cut batches of samples from them."""

    def __init__(self, arrays: dict, graph, terms, where: str):
        self.graph, self.terms, self.where = graph, terms, where
        self.inputs = {n: arrays[n] for n in graph.graph["inputs"]}
        self.labels = {t.output: arrays[t.output] for t in terms}
        self.rows_of = {n: layer_node(graph, n).lead for n in graph.graph["inputs"]}
        self.samples = self._check()

    def _check(self) -> int:
        batched = [n for n, lead in self.rows_of.items() if lead == BATCH]
        counts = {len(self.inputs[n]) for n in batched}
        if len(counts) != 1:
            raise InputError(f"{self.where}: the batched inputs have different numbers of "
                             f"samples: {', '.join(f'{n} {len(self.inputs[n])}' for n in batched)}")
        samples = counts.pop()
        for name, lead in self.rows_of.items():
            rows = self.inputs[name]
            if lead != BATCH and (rows.ndim != 2 or len(rows) and (
                    not np.all(np.isfinite(rows[:, 0])) or rows[:, 0].min() < 0
                    or rows[:, 0].max() >= samples or np.any(rows[:, 0] % 1))):
                raise InputError(f"{self.where}: '{name}' holds rows whose first column is the "
                                 f"index of their sample, 0..{samples - 1}")
        for term in self.terms:
            want = self.rows(layer_node(self.graph, term.output).lead, np.arange(samples))
            if len(self.labels[term.output]) != len(want):
                raise InputError(f"{self.where}: '{term.output}' has {len(self.labels[term.output])} "
                                 f"labels for {len(want)} rows of its output")
        return samples

    def rows(self, lead: str, index: np.ndarray) -> np.ndarray:
        """The rows (of an input or a label array) that belong to the samples ``index``."""
        if lead == BATCH:
            return index
        owner = self.inputs[lead][:, 0].astype(np.int64)
        return np.flatnonzero(np.isin(owner, index))

    def batch(self, index) -> tuple[dict, dict]:
        """(inputs, labels) of the samples ``index``, as train_step and predict take them."""
        index = np.asarray(index)
        position = {int(s): i for i, s in enumerate(index)}
        x = {}
        for name, lead in self.rows_of.items():
            if lead == BATCH:
                x[name] = np.ascontiguousarray(self.inputs[name][index])
                continue
            rows = self.inputs[name][self.rows(lead, index)].astype(np.float32)
            rows[:, 0] = [position[int(s)] for s in rows[:, 0]]
            x[name] = rows
        y = {out: self.labels[out][self.rows(layer_node(self.graph, out).lead, index)]
             for out in self.labels}
        return x, y

    def batches(self, index, batch_size: int) -> list:
        return [self.batch(index[i:i + batch_size]) for i in range(0, len(index), batch_size)]


def load_named_npz(path, graph, terms, test_fraction: float, seed: int):
    """(training part, test part) of an .npz holding every input and trained output by name
    (see the module docstring)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        raise InputError(f"'{path}': a spec of several inputs or outputs trains on an .npz "
                         f"holding each input and each trained output by name "
                         f"({', '.join(list(graph.graph['inputs']) + [t.output for t in terms])}"
                         "), or from Python: model.fit({input: array, ...}, "
                         "{output: labels, ...})")
    names = list(graph.graph["inputs"]) + [t.output for t in terms]
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{path}: no array for {', '.join(missing)}; it needs "
                         f"{', '.join(names)} (and the same with {TEST} for a test part)")
    train = NamedData(arrays, graph, terms, str(path))
    if all(TEST + n in arrays for n in names):
        test = NamedData({n: arrays[TEST + n] for n in names}, graph, terms, f"{path} ({TEST}*)")
        return train, np.arange(train.samples), test, np.arange(test.samples)
    order = np.random.default_rng(seed).permutation(train.samples)
    cut = train.samples - int(round(train.samples * test_fraction))
    return train, np.sort(order[:cut]), train, np.sort(order[cut:])

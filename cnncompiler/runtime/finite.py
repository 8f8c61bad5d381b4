"""Where a NaN or an infinity came from: the check behind ``predict(x, check_finite=True)``.

    check_finite(model, xs, y)  # returns when the inputs and y are finite, else raises and says where

A compiled model propagates NaN and infinities as PyTorch does, so a bad value in its output
comes from a bad input, or from a layer that overflowed or divided badly. A non-finite input
is the caller's: InputError names the samples. Otherwise NonFiniteError names the first layer
whose output is not finite, found in the compiled model itself: the samples whose outputs are
bad are run again through the compiled function with the virtual machine's instrument hook,
which sees each kernel call and its tensors, and the first kernel whose output holds a NaN or
an infinity is the place. A kernel that computes several spec layers (a conv with its batch
norm, residual add and activation fused) is opened up with the float32 numpy reference, run
layer by layer on the inputs that kernel received. Where the kernel calls cannot be matched to
the graph, the whole model runs in the float32 numpy reference instead. The message says which
way it was found.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import InputError, NonFiniteError
from ..graph import layer_node, topo_layers
from ..reference import layer_params, run_reference
from ..graph.signature import kernel_signature

CONVERSION = re.compile(r"_layout\d+$")  # the emitters' layout conversion kernels
SKIP_RUN = 1                             # tvm.runtime.vm.VMInstrumentReturnKind.SKIP_RUN
MAX_SAMPLES = 16                         # samples run again when looking for the layer


def check_finite(model, xs: list[np.ndarray], output) -> None:
    """Raise unless the inputs ``xs`` (one array per model input, in ``model.input_names``
    order) and the model's ``output`` for them (an array, a list of arrays in
    ``model.output_names`` order, or a dict by output name) are all finite.

    InputError when an input holds NaN or an infinity: which samples, how many values.
    NonFiniteError when only the output does: the first layer, in the order the compiled
    model runs its layers (a topological order of the spec), whose output is not finite, with
    its name, type and count of non-finite values, and how it was found.
    """
    xs = [xs] if isinstance(xs, np.ndarray) else list(xs)  # the array of a one-input model
    for input_name, x in zip(model.input_names, xs):
        if not np.isfinite(x).all():
            label = "input" if input_name == "input" else f"input '{input_name}'"
            raise InputError(f"{label}: {_count(x)} in {_samples(x)} of the batch of {len(x)}; "
                             "a model computes nothing meaningful from them; drop or repair "
                             "those samples (np.isfinite(x).reshape(len(x), -1).all(axis=1) "
                             "marks the good ones)")
    outputs = _named(model, output)
    bad = {name: y for name, y in outputs.items() if not np.isfinite(y).all()}
    if not bad:
        return
    rows = np.flatnonzero(np.any([_bad_rows(y) for y in bad.values()], axis=0))
    rerun = "" if len(rows) <= MAX_SAMPLES else \
        f" (the first {MAX_SAMPLES} samples with a non-finite output were run again)"
    rows = rows[:MAX_SAMPLES]
    # rows of an input without the batch axis point at samples by index: run the whole batch
    found = _locate(model, xs if model.unbatched else
                    [np.ascontiguousarray(x[rows]) for x in xs])
    name, y = next(iter(bad.items()))
    summary = f"output '{name}' has {_count(y)} in {_samples(y)} of the batch of {len(y)}"
    if found is None:
        raise NonFiniteError(f"{summary}, but no layer's output is non-finite when those "
                             "samples run again, in the compiled kernels or in the numpy "
                             "reference; the output was overwritten or the run is not "
                             "repeatable (another thread using the same arrays?)")
    layer, value, how = found
    node = layer_node(model.graph, layer)
    where = f"{node.loc}: " if node.loc else ""
    raise NonFiniteError(
        f"{summary}; {where}layer '{layer}' ({node.layer.type_name}) is the first whose "
        f"output is not finite: {_count(value)} in {_samples(value, rows)} (the input is "
        f"finite). Found by {how}{rerun}. Look at the layer's weights and at the range of "
        "the values it receives")


# -- locating the layer ----------------------------------------------------------------------

def _locate(model, xs: list[np.ndarray]):
    """(spec layer, its output on ``xs``, how it was found) for the first non-finite layer,
    or None when every layer's output is finite."""
    try:
        trace = KernelTrace(model)
        trace.run(xs)
    except Mismatch as exc:
        why = f"the compiled kernel calls could not be matched to the layers ({exc})"
    else:
        if trace.bad is None:
            why = "the compiled kernels gave finite outputs when run again"
        else:
            return trace.explain()
    return _locate_in_reference(model, xs, why)


def _locate_in_reference(model, xs: list[np.ndarray], why: str):
    g = model.graph
    with np.errstate(all="ignore"):
        values = run_reference(g, dict(zip(model.input_names, xs)), model.params,
                               dtype=np.float32, keep=True)
    for name in topo_layers(g):
        if name not in model.input_names and not np.isfinite(values[name]).all():
            return name, values[name], (
                "running the float32 numpy reference (cnncompiler.reference) layer by layer "
                f"on those samples and the same weights, since {why}")
    return None


class Mismatch(Exception):
    """The kernel calls seen do not follow the optimised graph as expected."""


class KernelTrace:
    """Runs the compiled function on a batch and follows its kernel calls.

    Each call's tensors say which layer it computes: a layer with weights is named by them
    (the very weight tensors the model passes); one without is the next layer, in the
    emitters' order, whose inputs the call reads. A layer that no kernel computes (one the
    Relax build turned into a reshape, a dropout or identity) is a view of its input. Layout
    conversions only move a value into another layout. Each kernel's output is copied and
    checked as it is written, before the memory planner reuses its buffer, and kept while a
    layer still to run reads it; after the first non-finite one the remaining kernels are
    skipped.
    """

    def __init__(self, model):
        self.model = model
        self.g = model.optimized
        self.pending = [n for n in topo_layers(self.g) if n not in model.input_names]
        self.where: dict[int, str] = {}       # data pointer -> layer whose value it holds
        self.alias: dict[str, str] = {}       # layer computed by no kernel -> its input's
        self.values: dict[str, np.ndarray] = {}
        self.weights: dict[int, str] = {}
        self.assembled: set[str] = set()      # concats their inputs' kernels wrote
        # conv -> the pool its kernel computes too (the CPU build's ``absorbed`` pools)
        absorbed = model.manifest.get("build", {}).get("absorbed", {})
        self.pooled = {conv: pool for pool, conv in absorbed.items()}
        # a layer whose value a kernel of several layers' worth wrote -> (the kernel, the
        # spec layers it computes)
        self.spans: dict[str, tuple[str, tuple]] = {}
        self.bad: str | None = None

    def run(self, xs: list[np.ndarray]) -> None:
        tvm, lib, dev = self.model._open()
        from tvm.runtime import vm as tvm_vm

        args = self.model._device_args()
        self.weights = {a.data_ptr(): arg.node
                        for a, arg in zip(args, kernel_signature(self.g))}
        vm = tvm_vm.VirtualMachine(lib, dev)
        vm.set_instrument(self._instrument)
        data = [tvm.runtime.tensor(x, dev) for x in xs]
        for name, x, tensor in zip(self.model.input_names, xs, data):
            self.where[tensor.data_ptr()] = name
            self.values[name] = x
        n = self.model.batch_size(xs)
        fn = f"main_b{n}" if n in self.model.batch_sizes else "main"
        try:
            vm[fn](*data, *args)
        except Exception as exc:  # noqa: BLE001 (the instrument's Mismatch, wrapped by the FFI)
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise Mismatch(lines[-1][:300]) from None

    def _instrument(self, func, symbol, before_run, ret_value, *args):
        if str(symbol).startswith("vm.") or not args or \
                not all(getattr(a, "dtype", None) == "float32" for a in args):
            return 0  # the VM's own builtins and shape functions
        if before_run:
            return SKIP_RUN if self.bad is not None else 0
        if self.bad is None:
            self._kernel_ran(str(symbol), args)
        return 0

    def _kernel_ran(self, symbol: str, args) -> None:
        ptrs = [a.data_ptr() for a in args]
        if CONVERSION.search(symbol) and len(args) == 2 and \
                tuple(args[0].shape) != tuple(args[1].shape) and ptrs[0] in self.where:
            self.where[ptrs[1]] = self.where[ptrs[0]]
            return
        node = self._absorb(self._match(ptrs))
        value, concat = self._own_slice(args[-1].numpy(), node)
        self.where[ptrs[-1]] = concat or node
        if concat is not None:
            self.assembled.add(concat)
        value = self._plain(value, node)
        self.values[node] = value
        if not np.isfinite(value).all():
            self.bad = node
        else:
            self._forget_unread()

    def _match(self, ptrs: list[int]) -> str:
        owners = {self.weights[p] for p in ptrs if p in self.weights}
        if len(owners) > 1:
            raise Mismatch(f"one kernel call reads the weights of {sorted(owners)}")
        read = {self.resolve(self.where[p]) for p in ptrs[:-1]
                if p in self.where and p not in self.weights}
        for i, node in enumerate(self.pending):
            inputs = {self.resolve(s) for s in layer_node(self.g, node).inputs}
            if (owners and node in owners) or (not owners and read <= inputs):
                for skipped in self.pending[:i]:
                    self._view(skipped)
                self.pending = self.pending[i + 1:]
                return node
        raise Mismatch(f"no layer left to compute reads {sorted(read)}")

    def _absorb(self, node: str) -> str:
        """The layer whose value the kernel of ``node`` wrote: the pool that alone reads it,
        where the kernel computes that too (its span the layers of both)."""
        pool = self.pooled.get(node)
        if pool is None:
            return node
        if pool not in self.pending:
            raise Mismatch(f"the kernel for '{node}' computes '{pool}', which ran before it")
        self.pending.remove(pool)
        self.spans[pool] = (node, tuple(layer_node(self.g, node).merged) +
                            tuple(layer_node(self.g, pool).merged))
        return pool

    def _own_slice(self, value: np.ndarray, node: str):
        """(``node``'s part of a kernel's blocked output, the concat it was written into, or
        None): a layer whose only reader is a concat may write its channel blocks straight
        into the concat's output (the CPU build does), which then holds more blocks than the
        layer has channels for."""
        shape = tuple(layer_node(self.g, node).shape)
        readers = list(self.g.successors(node))
        if value.ndim != len(shape) + 2 or len(readers) != 1 or \
                value.shape[1] == -(-shape[0] // value.shape[-1]):
            return value, None
        (concat,) = readers
        block = value.shape[-1]
        inputs = layer_node(self.g, concat).inputs
        first = sum(layer_node(self.g, s).shape[0] for s in inputs[:inputs.index(node)]) // block
        return value[:, first:first + -(-shape[0] // block)], concat

    def _view(self, node: str) -> None:
        """A layer no kernel computed must be a view of its one input (no weights, the same
        size), or a concat whose inputs' kernels wrote its output."""
        data = layer_node(self.g, node)
        inputs = data.inputs
        if node in self.assembled:
            self.values[node] = np.concatenate([self.values[self.resolve(s)] for s in inputs],
                                               axis=1)
            return
        if node in self.weights.values() or len(inputs) != 1 or \
                np.prod(data.shape) != np.prod(layer_node(self.g, inputs[0]).shape):
            raise Mismatch(f"no kernel call computed layer '{node}'")
        self.alias[node] = self.resolve(inputs[0])

    def _forget_unread(self) -> None:
        """Drop the copies that no layer still to run reads: a few layers' worth are kept."""
        read = {self.resolve(s) for p in self.pending for s in layer_node(self.g, p).inputs}
        for node in [n for n in self.values if n not in read]:
            del self.values[node]

    def resolve(self, node: str) -> str:
        while node in self.alias:
            node = self.alias[node]
        return node

    def _plain(self, value: np.ndarray, node: str) -> np.ndarray:
        """A kernel's output in the plain (N, C, *spatial) layout, padding channels dropped."""
        shape = tuple(layer_node(self.g, node).shape)
        n = value.shape[0]
        if value.ndim == len(shape) + 2:  # blocked (N, C/b, *spatial, b)
            value = np.moveaxis(value, -1, 2).reshape(n, -1, *value.shape[2:-1])[:, :shape[0]]
        if value.size != n * int(np.prod(shape)):
            raise Mismatch(f"the kernel for '{node}' wrote shape {value.shape}, not (N, "
                           f"{', '.join(map(str, shape))})")
        return value.reshape(n, *shape)

    # -- the answer ------------------------------------------------------------------------
    def explain(self):
        """(spec layer, its value, how it was found) for the first non-finite kernel."""
        node = self.bad
        kernel, merged = self.spans.get(node, (node, tuple(layer_node(self.g, node).merged)))
        how = ("running those samples again through the compiled kernels and checking each "
               "kernel's output as it was written")
        if len(merged) == 1:
            return node, self.values[node], how
        spec = self.model.graph
        parts = ", ".join(f"'{m}' ({layer_node(spec, m).layer.type_name})" for m in merged)
        how += (f": kernel '{kernel}', which computes {parts}, is the first to write a "
                "non-finite value")
        for layer, value in self._inside(merged):
            if not np.isfinite(value).all():
                return layer, value, how + (
                    "; the float32 numpy reference, run layer by layer on the inputs that "
                    f"kernel received, places it at '{layer}'")
        return merged[-1], self.values[node], how + (
            "; the float32 numpy reference on the inputs that kernel received stays finite "
            "up to its last layer, so it is the kernel's own arithmetic (its folded weights)")

    def _inside(self, merged):
        """Each spec layer of the fused kernel, computed by the reference from what the
        compiled kernels before it wrote."""
        spec, params = self.model.graph, self.model.params
        known = {}
        for node, value in self.values.items():
            if node != self.bad:
                known[self._exposed(node)] = value
        for node, source in self.alias.items():
            if source in self.values:
                value = self.values[source]
                known[self._exposed(node)] = value.reshape(len(value),
                                                           *layer_node(self.g, node).shape)

        def value_of(name):
            if name not in known:
                data = layer_node(spec, name)
                xs = [value_of(s) for s in data.inputs]
                with np.errstate(all="ignore"):
                    known[name] = np.asarray(data.layer.reference(
                        xs, layer_params(spec, name, params, np.float32)), np.float32)
            return known[name]

        for layer in merged:
            yield layer, value_of(layer)

    def _exposed(self, node: str) -> str:
        """The spec layer whose value an optimised layer computes (the last it absorbed)."""
        return layer_node(self.g, node).merged[-1]


# -- counting --------------------------------------------------------------------------------

def _named(model, output) -> dict[str, np.ndarray]:
    if isinstance(output, dict):
        return {k: np.asarray(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return {k: np.asarray(v) for k, v in zip(model.output_names, output)}
    return {model.output_names[0]: np.asarray(output)}


def _bad_rows(a: np.ndarray) -> np.ndarray:
    return ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)


def _count(a: np.ndarray) -> str:
    kinds = [(int(np.isnan(a).sum()), "NaN"), (int(np.isposinf(a).sum()), "+inf"),
             (int(np.isneginf(a).sum()), "-inf")]
    total = sum(k for k, _ in kinds)
    return (f"{total} of {a.size} values non-finite ("
            + ", ".join(f"{k} {what}" for k, what in kinds if k) + ")")


def _samples(a: np.ndarray, numbers=None) -> str:
    """Which samples of ``a`` are not finite (``numbers``: each row's sample number)."""
    rows = np.flatnonzero(_bad_rows(a))
    numbers = rows if numbers is None else np.asarray(numbers)[rows]
    shown = ", ".join(str(int(r)) for r in numbers[:10])
    more = f" and {len(numbers) - 10} more" if len(numbers) > 10 else ""
    return f"sample{'s' if len(numbers) > 1 else ''} {shown}{more}"

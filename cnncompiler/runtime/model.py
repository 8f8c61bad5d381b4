"""A compiled model, loaded from its artifact and run with TVM's runtime alone.

    model = cc.load("build/lenet5")             # checks the manifest before opening the library
    y = model.predict(x)                        # float32 (N, 1, 32, 32) -> (N, 10)
    model.load_params("lenet5.safetensors")     # PyTorch names and layouts
    model.save("build/lenet5-finetuned")

Nothing here imports TVM's compiler: with ``TVM_USE_RUNTIME_LIB=1`` set before ``import tvm``
only ``libtvm_runtime`` is loaded. ``predict`` may be called from several threads at once:
each thread gets its own virtual machine over the shared library and weights.
"""

from __future__ import annotations

import hashlib
import json
import threading
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, CnncError, InputError, NonFiniteError, SpecError
from ..graph import layer_node
from ..graph.precision import fp16_overflow, fp16_overflow_message
from ..layers import BATCH
from ..graph.signature import kernel_signature, leading_axis
from ..native import open_library
from ..storage import DirectoryWriter
from . import artifact as art
from .signature import kernel_arguments
from .weights import parse_weights, read_weights, validate_weights, write_weights

# ``predict`` runs a batch larger than this much activation memory in pieces, so memory stays
# bounded whatever the batch (a 100,000-sample LeNet-5 batch at once took 4.9 GiB).
CHUNK_BYTES = 256 * 2**20


def load_cuda_runtime(tvm) -> None:
    """Make sure TVM's CUDA runtime library is loaded.

    NOTE: TVM loads ``libtvm_runtime_cuda.so`` from a backend hook that imports compiler-side
    modules; with ``TVM_USE_RUNTIME_LIB=1`` that hook fails quietly and CUDA devices look
    absent. Loading the library registers the CUDA device API, so do it here.
    """
    import ctypes

    try:
        if "libtvm_runtime_cuda" in Path("/proc/self/maps").read_text():
            return
    except OSError:
        pass
    runtime = getattr(tvm.base, "_LOADED_LIBS", {}).get("tvm_runtime")
    if runtime is None:
        return
    library = Path(runtime._name).resolve().parent / "libtvm_runtime_cuda.so"
    try:
        ctypes.CDLL(str(library), mode=ctypes.RTLD_LOCAL)
    except OSError:
        pass  # no CUDA driver or toolkit here: the device check below says so


def _graphs(directory: Path, manifest: dict, spec_bytes: bytes):
    """The spec's graph and the optimised graph, rebuilt from the artifact's spec (pure
    Python, deterministic) and checked against the compiled kernel signature."""
    from ..graph import check_spec
    from ..passes import optimize
    from ..spec import parse_spec_text

    try:
        spec = parse_spec_text(spec_bytes.decode("utf-8"), str(directory / art.SPEC))
        graph, _ = check_spec(spec)
        optimized, _ = optimize(graph, passes=manifest["optimization"]["passes"])
    except (SpecError, CnncError, KeyError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{directory}: its spec no longer builds the compiled graph "
                            f"({exc}); recompile the model") from None
    want = [(a["name"], tuple(a["shape"])) for a in manifest.get("kernel_args", [])]
    got = [(a.name, a.shape) for a in kernel_signature(optimized)]
    if want != got:
        raise ArtifactError(f"{directory}: the library's weight arguments do not match its spec "
                            "(built by another cnnc version?); recompile the model")
    return graph, optimized


def as_real_array(x, want: str) -> np.ndarray:
    """A numpy view (or copy) of an array of any library with real values."""
    if not isinstance(x, np.ndarray):
        try:
            # DLPack first: a PyTorch tensor's __array__ would copy; a GPU tensor refuses both
            x = np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)
        except (TypeError, ValueError, BufferError, RuntimeError) as exc:
            hint = (" (a tensor that requires grad: pass x.detach())" if "grad" in str(exc)
                    else " (a tensor on a GPU: pass x.cpu())" if "device" in str(exc).lower()
                    else "")
            raise InputError(f"received {type(x).__name__}, which does not convert to a "
                             f"numpy array{hint}: {str(exc).splitlines()[0][:200]}; {want}") \
                from None
    if x.dtype.kind not in "fiub":
        raise InputError(f"received dtype {x.dtype}, not real numbers; {want}")
    return x


def planned_activation_bytes(manifest: dict, batch: int) -> int | None:
    """Peak activation memory the compiled function for ``batch`` plans (from the build's
    memory planning: the specialised ``main_b<N>``, else ``main``'s per-sample figure).
    A report this cnnc did not write (a field missing or not a count) gives None: the figure
    only sizes the pieces ``predict`` runs a big batch in."""
    specialised = _memory_report(manifest).get(f"main_b{batch}")
    if isinstance(specialised, dict):
        return _count(specialised.get("total"))
    line = planned_per_sample(manifest)
    return None if line is None else line[0] + line[1] * batch


def planned_per_sample(manifest: dict) -> tuple[int, int] | None:
    """(fixed, per sample) activation bytes the any-batch function ``main`` plans; None where
    the report has no such counts."""
    generic = _memory_report(manifest).get("main")
    if not isinstance(generic, dict):
        return None
    fixed, per_sample = _count(generic.get("fixed")), _count(generic.get("per_sample"))
    return None if fixed is None or per_sample is None else (fixed, per_sample)


def _memory_report(manifest: dict) -> dict:
    build = manifest.get("build")
    memory = build.get("memory") if isinstance(build, dict) else None
    return memory if isinstance(memory, dict) else {}


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


class CompiledModel:
    """A model compiled for one target: run it, swap its weights, save it."""

    def __init__(self, directory: Path, manifest: dict, graph, optimized, params: dict,
                 files: dict[str, bytes], keep=None):
        self.directory = Path(directory)
        self.manifest = manifest
        self._files = files           # the verified library, spec and report: what runs and is saved
        self.graph = graph            # the spec's layers: weight names and shapes
        self.optimized = optimized    # what was compiled
        self.target = manifest["target"]["kind"]
        self.input_names = list(graph.graph["inputs"])
        self.input_shapes = {n: tuple(layer_node(graph, n).shape) for n in self.input_names}
        self.input_shape = self.input_shapes[self.input_names[0]]
        # inputs without the batch axis: rows of their own (R boxes), any number per call
        self.unbatched = [n for n in self.input_names if layer_node(graph, n).lead != BATCH]
        self.output_names = list(graph.graph["outputs"])
        self.batch_sizes = tuple(manifest.get("batch_sizes", ()))
        # every layer's output for one sample: what the activation plan holds at most
        self._sample_bytes = 4 * sum(int(np.prod(layer_node(optimized, n).shape))
                                     for n in optimized.nodes)
        self._params = params
        self._keep = keep             # a TemporaryDirectory that must live as long as the model
        self._lock = threading.Lock()
        self._local = threading.local()
        self._runtime = None          # (tvm module, library, device), opened on first use
        self._args = None             # kernel arguments on the device
        self._activations: dict[int, int] = {}  # batch size -> activation_bytes

    # -- description ---------------------------------------------------------------------
    def signature(self) -> str:
        outs = ", ".join(f"'{o}': float32[{leading_axis(self.graph, o)}"
                         f"{''.join(', ' + str(d) for d in layer_node(self.graph, o).shape)}]"
                         for o in self.output_names)
        return f"predict({self._expected_inputs()}) -> {{{outs}}}"

    def _expected_inputs(self) -> str:
        """``x: float32[N, 1, 32, 32]``, or each named input for a spec with several."""
        names = ["x"] if self.input_names == ["input"] else self.input_names
        return ", ".join(
            f"{shown}: float32[{leading_axis(self.graph, name)}"
            f"{''.join(', ' + str(d) for d in shape)}]"
            for shown, (name, shape) in zip(names, self.input_shapes.items()))

    @cached_property
    def _want(self) -> str:
        """What an input error says is expected. No method is named: predict, fit, train_step
        and evaluate all say this. Made once: every call checks its inputs with it, and
        making it each time cost 2 of LeNet-5's 29 us per call."""
        return f"expected {self._expected_inputs()}"

    def __repr__(self) -> str:
        return (f"<CompiledModel '{self.graph.graph['name']}' target={self.target} "
                f"at {self.directory}: {self.signature()}>")

    # -- the runtime -----------------------------------------------------------------------
    def _open(self):
        runtime = self._runtime  # set once, never unset: opened, it needs no lock
        if runtime is not None:
            return runtime
        with self._lock:
            if self._runtime is None:
                import tvm

                if self.target == "cuda":
                    load_cuda_runtime(tvm)
                    dev = tvm.cuda(0)
                    if not dev.exist:
                        raise CnncError(f"{self.directory} is compiled for CUDA, but this machine "
                                        "has no CUDA GPU; run it on one, or compile with "
                                        "--target cpu")
                else:
                    art.check_host_cpu(self.manifest, self.directory)
                    dev = tvm.cpu(0)
                from tvm.runtime import vm as tvm_vm

                lib = open_library(tvm, self._files[art.LIBRARY])
                vm = self._local.vm = tvm_vm.VirtualMachine(lib, dev)
                missing = [b for b in self.batch_sizes
                           if not vm.module.implements_function(f"main_b{b}")]
                if missing:
                    raise ArtifactError(f"{self.directory}: the manifest's field 'batch_sizes' "
                                        f"lists {missing[0]}, but the library has no function "
                                        f"main_b{missing[0]}; recompile the model")
                self._runtime = (tvm, lib, dev)
            return self._runtime

    def _vm(self):
        vm = getattr(self._local, "vm", None)
        if vm is None:
            tvm, lib, dev = self._open()
            from tvm.runtime import vm as tvm_vm

            vm = self._local.vm = tvm_vm.VirtualMachine(lib, dev)
        return vm

    def _function(self, n: int):
        """This thread's VM function for a batch of ``n``: ``main_b<n>`` where the build has
        one, else ``main``. Looked up once (a lookup per call cost 1 of LeNet-5's 21 us)."""
        vm = self._vm()
        functions = getattr(self._local, "functions", None)
        if functions is None or functions[0] is not vm:
            functions = self._local.functions = (vm, {})
        fn = functions[1].get(n)
        if fn is None:
            fn = functions[1][n] = vm[f"main_b{n}" if n in self.batch_sizes else "main"]
        return fn

    def _sync_from_training(self) -> None:
        """Where a subclass trains on the device (train.model.TrainableModel), the newest
        weights are there: it brings them back here. A model that only runs has none."""

    def _weights_changed(self) -> None:
        """Called after new weights are loaded (a trainer hands them to its device)."""

    def _fp16_overflow(self, params: dict):
        """Under precision ``mixed`` the kernels cast conv and dense weights to float16: the
        first layer (and magnitude) whose folded weight it cannot hold, else None."""
        if self.manifest.get("precision") != "mixed":
            return None
        return fp16_overflow(self.optimized, params)

    def _device_args(self):
        self._sync_from_training()
        args = self._args
        if args is None:
            overflow = self._fp16_overflow(self._params)
            if overflow:  # weights trained here: a step took one past float16's range
                raise NonFiniteError(f"{self.directory}: {fp16_overflow_message(*overflow)}; "
                                     "it would run as an infinity. Save the weights and load "
                                     "them into a build compiled with --precision fp32, or "
                                     "train with a smaller learning rate")
            tvm, _, dev = self._open()
            with self._lock:
                if self._args is None:
                    layouts = {a["name"]: a.get("layout") for a in self.manifest["kernel_args"]}
                    self._args = tuple(tvm.runtime.tensor(a, dev) for a in kernel_arguments(
                        self.optimized, self._params, layouts))
                args = self._args
        return args

    # -- inference ---------------------------------------------------------------------------
    def prepare(self) -> "CompiledModel":
        """Open the library, put the weights on the device and make this thread's VM: what
        the first ``predict`` would do, done before a latency-sensitive first call."""
        self._device_args()
        self._vm()
        return self

    def check_input(self, x) -> np.ndarray:
        """``x`` as the C-contiguous float32 (N, *input_shape) array the kernels read, or an
        InputError that says what was received and what is expected (a one-input model)."""
        if len(self.input_names) > 1:
            raise InputError(f"this model takes {len(self.input_names)} inputs; "
                             f"expected {self._expected_inputs()}")
        return self.check_inputs(x)[0]

    def check_inputs(self, x) -> list[np.ndarray]:
        """The model's inputs as C-contiguous float32 arrays in spec order, each (N, *shape)
        with one N, or an InputError that says what was received and what is expected.

        ``x`` is the array of a one-input model, or for several inputs a dict by input name or
        a list in spec order. Any real-valued array converts (float64, integers, a
        non-contiguous view), as do arrays of other libraries (PyTorch, JAX: through DLPack or
        ``__array__``); predict, fit, train_step and evaluate all take their inputs through
        here."""
        names = self.input_names
        if len(names) == 1 and type(x) is np.ndarray and x.dtype == np.float32 and \
                x.shape[1:] == self.input_shapes[names[0]] and len(x) > 0 and \
                x.flags.c_contiguous:
            return [x]  # what _check_one returns for it, in a third of the time
        want = self._want
        if len(names) == 1:
            given = [x["input"] if isinstance(x, dict) and list(x) == ["input"] else x]
        elif isinstance(x, dict):
            missing = [n for n in names if n not in x]
            extra = [str(k) for k in x if k not in names]
            if missing or extra:
                raise InputError(f"received inputs {sorted(map(str, x))}"
                                 + (f"; missing {missing}" if missing else "")
                                 + (f"; unknown {extra}" if extra else "") + f"; {want}")
            given = [x[n] for n in names]
        elif isinstance(x, (list, tuple)) and len(x) == len(names):
            given = list(x)
        else:
            raise InputError(f"received {type(x).__name__}; this model takes "
                             f"{len(names)} inputs: a dict by name or a list in this order; "
                             f"{want}")
        xs = [self._check_one(v, n, want) for v, n in zip(given, names)]
        batched = [(n, v) for n, v in zip(names, xs) if n not in self.unbatched]
        if len({len(v) for _, v in batched}) > 1:
            raise InputError(f"the inputs have different batch sizes "
                             f"({', '.join(f'{n}: {len(v)}' for n, v in batched)}); {want}")
        return xs

    def batch_size(self, xs: list[np.ndarray]) -> int:
        """The number of samples in checked inputs (the first batched input's rows)."""
        if not self.unbatched:  # every input batched: a third of the time (predict asks twice)
            return len(xs[0])
        return next(len(x) for n, x in zip(self.input_names, xs) if n not in self.unbatched)

    def _check_one(self, x, name: str, want: str) -> np.ndarray:
        shape = self.input_shapes[name]
        label = "" if name == "input" else f"input '{name}': "
        x = as_real_array(x, want)
        if x.ndim == len(shape) and tuple(x.shape) == shape:
            raise InputError(f"{label}received one sample of shape {tuple(x.shape)} without a "
                             f"batch axis; {want}; use x[None]")
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise InputError(f"{label}received shape {tuple(x.shape)}; {want}")
        if x.shape[0] < 1:
            what = "no rows" if name in self.unbatched else "an empty batch"
            raise InputError(f"{label}received {what} {tuple(x.shape)}; {want}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, x, check_finite: bool = False):
        """Run the model: numpy float32 (N, ...) -> numpy array (a dict for several outputs).
        A model with several inputs takes a dict by input name (or a list in spec order).

        NaN and infinities propagate as in PyTorch; ``check_finite=True`` refuses them instead,
        naming the first layer whose output is not finite.
        """
        xs = self.check_inputs(x)
        # rows of an unbatched input may point at any sample (a box's batch index): such a
        # batch runs whole
        if self.unbatched or self._runs_whole(self.batch_size(xs)):
            outputs = self._run(xs)
        else:
            outputs = self._run_in_chunks(xs, self.chunk_size())
        if check_finite:
            from .finite import check_finite as check

            check(self, xs, outputs if len(outputs) > 1 else outputs[0])
        if len(self.output_names) == 1:
            return outputs[0]
        return dict(zip(self.output_names, outputs))

    def _runs_whole(self, n: int) -> bool:
        """Do a batch of ``n``'s activations fit CHUNK_BYTES? (Counted once per size.)"""
        need = self._activations.get(n)
        if need is None:
            need = self._activations[n] = self.activation_bytes(n)
        return need <= CHUNK_BYTES

    def activation_bytes(self, n: int) -> int:
        """Activation memory a call of ``n`` samples needs: what the build planned for it
        (``planned_activation_bytes``), else every layer's output for each sample (a bound
        twice the plan or more: VGG-11-BN's 8 samples would count 279 MiB for 124 planned)."""
        planned = planned_activation_bytes(self.manifest, n)
        return planned if planned is not None else n * self._sample_bytes

    def chunk_size(self) -> int:
        """The pieces a batch whose activations would exceed CHUNK_BYTES runs in: the largest
        compiled batch size that fits, else as many samples as fit."""
        fitting = [b for b in self.batch_sizes if self._runs_whole(b)]
        if fitting:
            return max(fitting)
        fixed, per_sample = planned_per_sample(self.manifest) or (0, self._sample_bytes)
        return max(1, (CHUNK_BYTES - fixed) // max(per_sample, 1))

    def _run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        args = self._device_args()
        tvm, _, dev = self._open()
        inputs = [self._input_tensor(tvm, x, dev, i) for i, x in enumerate(xs)]
        result = self._function(self.batch_size(xs))(*inputs, *args)
        if len(self.output_names) == 1:
            return [self._to_numpy(result)]
        return [self._to_numpy(r) for r in result]

    def _run_in_chunks(self, xs: list[np.ndarray], chunk: int) -> list[np.ndarray]:
        outputs = None
        n = xs[0].shape[0]
        for start in range(0, n, chunk):
            part = self._run([x[start:start + chunk] for x in xs])
            if outputs is None:
                outputs = [np.empty((n, *p.shape[1:]), p.dtype) for p in part]
            for out, p in zip(outputs, part):
                out[start:start + chunk] = p
        return outputs

    def _input_tensor(self, tvm, x: np.ndarray, dev, index: int):
        """Input ``index`` on the device. On the CPU it is copied into a tensor this thread
        keeps for its shape (allocating one per call cost more than a small model's kernels)."""
        if self.target == "cuda":
            return tvm.runtime.tensor(x, dev)
        held_inputs = self._held_inputs()
        held = held_inputs.get(index)
        if held is None or held[0].shape != x.shape:
            tensor = tvm.runtime.empty(x.shape, "float32", dev)
            held = held_inputs[index] = (np.from_dlpack(tensor), tensor)
        np.copyto(held[0], x)
        return held[1]

    def _held_inputs(self) -> dict:
        if not hasattr(self._local, "inputs"):
            self._local.inputs = {}
        return self._local.inputs

    def _to_numpy(self, result) -> np.ndarray:
        """The output as numpy: on the CPU the tensor itself, shared (the VM does not reuse it)."""
        if self.target == "cuda":
            return result.numpy()
        out = np.from_dlpack(result)
        # an output that is an input itself (an identity at -O2) is the buffer the next call
        # overwrites: give the caller a copy of it
        for held in self._held_inputs().values():  # a loop: half the time of any(generator)
            if np.may_share_memory(out, held[0]):
                return out.copy()
        return out

    __call__ = predict

    # -- weights -----------------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current weights, PyTorch names and layouts (copies)."""
        self._sync_from_training()
        return {k: v.copy() for k, v in self._params.items()}

    def load_params(self, source, strict: bool = True) -> None:
        """Load weights from a dict of arrays (a PyTorch state_dict works) or a .safetensors
        path; every weight must be given unless ``strict=False``."""
        from_file = isinstance(source, (str, Path))
        given = read_weights(source) if from_file else source
        self._sync_from_training()
        params = validate_weights(self.graph, given, self._params, strict, copy=not from_file)
        overflow = self._fp16_overflow(params)
        if overflow is not None:
            where = f"{source}: " if from_file else ""
            raise InputError(f"{where}{fp16_overflow_message(*overflow)}; the model keeps its "
                             "weights; rescale the new ones, or load them into a build compiled "
                             "with --precision fp32")
        with self._lock:
            self._params = params
            self._args = None
        self._weights_changed()

    def spec_key(self) -> str:
        """Identifies the spec's layers: checkpoints and compiled training steps are keyed by it."""
        return hashlib.sha256(self._files[art.SPEC]).hexdigest()

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory, allow=(), training: dict | None = None) -> Path:
        """Write the artifact, with the current weights, to ``directory``: a new directory or
        an earlier artifact, whose artifact files are replaced all at once (a kill leaves the
        old artifact or the new one) while anything else in it, such as a run's checkpoints,
        stays. ``allow`` names entries that may be there without an artifact yet (a training
        run's ``checkpoints``). ``training``: the manifest's record of how the weights were
        trained (``cnnc train`` writes it; weights changed since drop it)."""
        self._sync_from_training()
        out = Path(directory)
        art.check_output_dir(out, allow)
        with DirectoryWriter(out, "artifact") as writer:
            staging = writer.staging()
            for name in (art.LIBRARY, art.SPEC, art.REPORT):
                (staging / name).write_bytes(self._files[name])
            write_weights(staging / art.WEIGHTS, self._params)
            manifest = {k: v for k, v in self.manifest.items() if k not in ("files", "digest")}
            if training is not None:
                manifest["training"] = training
            art.write_manifest(staging, manifest)
            saved = json.loads((staging / art.MANIFEST).read_text())
            art.commit(writer, staging)
        if out.resolve() == self.directory.resolve():
            self.manifest = saved
        return out


def load(directory, device: str | None = None, _keep=None, cls=None) -> CompiledModel:
    """Open an artifact after checking its manifest and every file's hash; everything used
    afterwards (library, weights, spec) is the bytes that were checked. A CPU library is
    opened here; a CUDA one at the first run, on a machine with a GPU. ``cls``: the class of
    the model made (``cnncompiler.load`` makes a TrainableModel, which also trains)."""
    directory = Path(directory)
    manifest, files = art.open_verified(directory, device)
    graph, optimized = _graphs(directory, manifest, files[art.SPEC])
    weights = parse_weights(files.pop(art.WEIGHTS), str(directory / art.WEIGHTS))
    try:
        params = validate_weights(graph, weights, {}, strict=True, copy=False)
    except InputError as exc:  # the artifact's own weights: its fault, not the caller's
        raise ArtifactError(f"{directory / art.WEIGHTS}: the artifact's weights do not fit its "
                            f"spec ({exc}); recompile the model") from None
    model = (cls or CompiledModel)(directory, manifest, graph, optimized, params, files, _keep)
    if model.target == "cpu":
        model._open()
    return model


def load_report(directory) -> dict:
    return json.loads((Path(directory) / art.REPORT).read_text())

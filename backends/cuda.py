"""CUDA code generation, also on a build machine without a GPU.

TVM emits device code (a fatbin inside the exported library) only when its CUDA runtime
sidecar, ``libtvm_runtime_cuda.so``, loads, and that needs a ``libcuda.so.1``. On a machine with
an NVIDIA driver the real one is used. Without one, cnnc builds a stub ``libcuda.so.1`` whose
driver functions all return CUDA_ERROR_NO_DEVICE, loads it before TVM, and compiles with nvcc;
the stub is only ever loaded into compiling processes, never into one that runs a model.
Because the sidecar is chosen when TVM is imported, a process that imported TVM without it
compiles CUDA in a fresh worker process instead (``cnncompiler.compile_worker``).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cnncompiler.cache import read_library, write_library
from cnncompiler.errors import CompileError
from cnncompiler.native import load_shared_object

FATBIN_MAGIC = b"\x50\xed\x55\xba"
STUB_CACHE = "cuda-stub"
# The driver entry points libtvm_runtime_cuda.so imports (read with nm when available).
KNOWN_DRIVER_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName",
                        "cuGetErrorString", "cuLaunchKernelEx", "cuModuleGetFunction",
                        "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled")


def find_nvcc() -> str:
    for candidate in (shutil.which("nvcc"),
                      *(Path(os.environ[v]) / "bin" / "nvcc" for v in ("CUDA_HOME", "CUDA_PATH")
                        if os.environ.get(v)),
                      "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise CompileError("cannot compile for CUDA: no CUDA compiler found (nvcc is not on PATH, "
                       "nor in $CUDA_HOME/bin or /usr/local/cuda/bin); install the CUDA toolkit "
                       "or put nvcc on PATH")


def _tvm_lib_dir() -> Path:
    spec = importlib.util.find_spec("tvm")
    return Path(spec.origin).parent / "lib"


def sidecar_loaded() -> bool:
    """Is TVM's CUDA runtime loaded in this process (so device code gets emitted)?"""
    try:
        return "libtvm_runtime_cuda" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _driver_symbols() -> list[str]:
    lib = _tvm_lib_dir() / "libtvm_runtime_cuda.so"
    nm = shutil.which("nm")
    if nm and lib.exists():
        out = subprocess.run([nm, "-D", "--undefined-only", str(lib)], capture_output=True,
                             text=True).stdout
        syms = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.split()}
        found = sorted(s for s in syms if s[:2] == "cu" and s[2:3].isupper())
        if found:
            return found
    return list(KNOWN_DRIVER_SYMBOLS)


def stub_driver() -> bytes:
    """The stand-in libcuda.so.1 for GPU-less machines: built once per symbol set and cached;
    its bytes, checked against the cache's record."""
    symbols = _driver_symbols()
    lines = ["/* cnnc: stand-in CUDA driver for compiling without a GPU; every call fails */"]
    for s in symbols:
        if s in ("cuGetErrorName", "cuGetErrorString"):
            lines.append(f'int {s}(int e, const char **p) {{ if (p) *p = "no CUDA driver '
                         f'(compile-only stub)"; return 0; }}')
        else:
            lines.append(f"int {s}(void) {{ return 100; /* CUDA_ERROR_NO_DEVICE */ }}")
    source = "\n".join(lines) + "\n"
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    data = read_library(STUB_CACHE, key)
    if data is not None:
        return data
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise CompileError("cannot compile for CUDA on a machine without a GPU driver: a C "
                           "compiler (cc/gcc) is needed to build the compile-only driver stub")
    with tempfile.TemporaryDirectory(prefix="cnnc-stub-") as tmp:
        src = Path(tmp) / "stub.c"
        src.write_text(source)
        out = Path(tmp) / "libcuda.so.1"
        proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1",
                               "-o", str(out), str(src)], capture_output=True, text=True)
        if proc.returncode:
            raise CompileError(f"building the CUDA driver stub failed: {proc.stderr.strip()}")
        data = out.read_bytes()
    write_library(STUB_CACHE, key, data, {"symbols": symbols})
    return data


def real_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def prepare_process() -> bool:
    """Before TVM is imported: make sure its CUDA runtime will load. Returns False when TVM is
    already imported without it (then compile in a worker)."""
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    if sidecar_loaded():
        return True
    if "tvm" in sys.modules:
        return False
    if not real_driver_present():
        load_shared_object(stub_driver(), "libcuda.so.1", ctypes.RTLD_GLOBAL)
    return True


def gpu_rules():
    """dlight's GPU rules, in the order TVM's default CUDA pipeline tries them."""
    from tvm.s_tir import dlight as dl

    return (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback())


def schedule_checked(mod, target, precision: str = "fp32", tensor_core: list | None = None):
    """Each PrimFunc scheduled by dlight's rules, then checked by lowering its cross-thread
    reductions; where that fails, scheduled by the Fallback rule alone (one thread per output
    element: correct, slower). Under precision ``mixed`` a conv or dense kernel gets its
    tensor-core schedule instead (``cuda_tensorcore``); its name is appended to
    ``tensor_core``.

    NOTE: dlight's Reduction rules accept a grouped convolution (groups > 1, more than one
    channel per group) and give a schedule whose cross-thread reduction TVM cannot lower
    ("reduction-related loops ... are not the deepest"), and fail with an assertion on some
    blurpool2d kernels: either failed the whole build."""
    import tvm
    from tvm import s_tir, tirx
    from tvm.s_tir import dlight as dl

    from .cuda_tensorcore import schedule_tensor_core
    from .lower import CUDA_FAMILY_ATTR

    # the first two passes of the s_tir lowering (s_tir.pipeline), where that check is made
    check = tvm.transform.Sequential([s_tir.transform.CanonicalizeLoop(),
                                      s_tir.transform.LowerCrossThreadReduction()])
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
            continue
        family = func.attrs.get(CUDA_FAMILY_ATTR)
        if family is not None and str(family) in CUDA_SCHEDULES:
            mod[gv] = _binding_threads(gv, CUDA_SCHEDULES[str(family)]()(func))
            continue
        if precision == "mixed":
            scheduled = schedule_tensor_core(gv, func)
            if scheduled is not None:
                mod[gv] = _binding_threads(gv, scheduled)
                if tensor_core is not None:
                    tensor_core.append(gv.name_hint)
                continue
        # a module of its own each time: dlight may rewrite the one it is given in place
        try:
            scheduled = dl.ApplyDefaultSchedule(*gpu_rules())(tvm.IRModule({gv: func}))
            check(tvm.IRModule({gv: scheduled[gv]}))
        except Exception:  # noqa: BLE001 (tvm raises several kinds; Fallback is always right)
            scheduled = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(tvm.IRModule({gv: func}))
        mod[gv] = _binding_threads(gv, scheduled[gv])
    return mod


def _roi_schedule():
    from .te_roi import schedule_cuda

    return schedule_cuda


# CUDA kernel families (rules.py) with a schedule of their own, applied instead of dlight's
# rules: the RoI kernels' reduction extents are read from other stages, which dlight's rules
# leave unscheduled, without an error
CUDA_SCHEDULES = {"roi": _roi_schedule}


def _binding_threads(gv, func):
    """``func``, refused when no loop of it is bound to GPU threads: TVM would build it as
    host code without a word, and it would not run on the device."""
    if "threadIdx" not in func.script():
        raise CompileError(f"kernel '{gv.name_hint}' has no GPU schedule (no loop is bound "
                           "to GPU threads); it would run as host code")
    return func


def relax_pipeline(target, precision: str = "fp32", tensor_core: list | None = None):
    """TVM's default CUDA pipeline, with dlight's schedules checked kernel by kernel
    (``schedule_checked``), and tensor-core schedules under precision ``mixed``."""
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda

    @tvm.transform.module_pass(opt_level=0, name="cnnc.CheckedGpuSchedule")
    def checked(mod, _ctx):
        return schedule_checked(mod, target, precision, tensor_core)

    # the default legalization ends with dlight's ApplyDefaultSchedule: ours replaces it
    *legalize, _ = cuda.legalize_passes(target)

    @tvm.transform.module_pass(opt_level=0, name="cnnc.CudaPipeline")
    def pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(
                cuda.library_dispatch_passes(target) + legalize + [checked]
                + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
            return seq(mod)

    return pipeline


def build_cuda(mod, choice, lib_path: Path) -> dict:
    """Compile a Relax module for CUDA (dlight GPU schedules; tensor-core schedules for conv
    and dense under ``choice.precision == "mixed"``) and export it with device code."""
    nvcc = find_nvcc()
    os.environ["PATH"] = str(Path(nvcc).parent) + os.pathsep + os.environ.get("PATH", "")
    if not sidecar_loaded():
        raise CompileError("internal error: TVM's CUDA runtime is not loaded in this process")
    import tvm

    target = tvm.target.Target(choice.config, host=choice.host)
    precision = choice.precision
    tensor_core: list[str] = []
    with target:
        executable = tvm.compile(mod, target=target,
                                 relax_pipeline=relax_pipeline(target, precision, tensor_core))
    executable.export_library(str(lib_path))
    data = Path(lib_path).read_bytes()
    kernels = any(isinstance(f, tvm.tirx.PrimFunc) for _, f in mod.functions_items())
    if not kernels:  # every layer was removed as the identity: the model copies its input
        return {"device_code": "none", "nvcc": nvcc, "precision": precision,
                "tensor_core_kernels": []}
    if FATBIN_MAGIC not in data:
        raise CompileError("CUDA compilation produced no device code (no fatbin in the library)")
    return {"device_code": "fatbin", "nvcc": nvcc, "precision": precision,
            "tensor_core_kernels": sorted(set(tensor_core))}


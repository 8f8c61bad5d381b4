"""Compiling in a fresh process, whose TVM loads its compiler and its CUDA runtime (see
backends/cuda.py): where the calling process imported TVM without one of them.

    compile_in_worker(request)     # build_artifact(**request), in ``python -m`` this module
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import CnncError, CompileError


def compile_in_worker(request: dict) -> None:
    """Run ``compiler.build_artifact(**request)`` in a fresh process; raises CompileError with
    the worker's message on failure."""
    from .layers.custom import custom_layer_files

    # the worker imports the files of layer types declared outside the package, as we did
    request = {**request, "layer_files": custom_layer_files()}
    with tempfile.TemporaryDirectory(prefix="cnnc-worker-") as tmp:
        req = Path(tmp) / "request.json"
        req.write_text(json.dumps(request))
        proc = subprocess.run([sys.executable, "-m", "cnncompiler.compile_worker", str(req)],
                              capture_output=True, text=True)
        if proc.returncode:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            message = lines[-1] if lines else f"exit code {proc.returncode}"
            raise CompileError(message.removeprefix("cnnc: error: "))


def main(path: str) -> int:
    from .backends import compiler_ready
    from .backends.cuda import prepare_process

    compiler_ready()  # drops TVM_USE_RUNTIME_LIB before TVM is imported here
    prepare_process()
    from .compiler import build_artifact
    from .layers.custom import load_layer_file

    request = json.loads(Path(path).read_text())
    try:
        for layer_file in request.pop("layer_files", ()):
            load_layer_file(layer_file)
        build_artifact(**request)
    except CnncError as exc:
        print(f"cnnc: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""``python -m cnncompiler.backends.cuda_worker REQUEST.json``: build an artifact in a fresh
process, whose TVM loads its compiler and its CUDA runtime (see backends/cuda.py); used where
the calling process imported TVM without one of them."""

import json
import sys

from cnncompiler.backends import compiler_ready
from cnncompiler.backends.cuda import prepare_process


def main(path: str) -> int:
    compiler_ready()  # drops TVM_USE_RUNTIME_LIB before TVM is imported here
    prepare_process()
    from cnncompiler.compiler import build_artifact
    from cnncompiler.errors import CnncError
    from cnncompiler.layers.custom import load_layer_file

    request = json.loads(open(path).read())
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

"""``python -m cnncompiler.backends.cuda_worker REQUEST.json``: build a CUDA artifact in a process
whose TVM loads its CUDA runtime (see backends/cuda.py)."""

import json
import sys

from cnncompiler.backends.cuda import prepare_process


def main(path: str) -> int:
    prepare_process()
    from cnncompiler.compiler import build_artifact
    from cnncompiler.errors import CnncError

    try:
        build_artifact(**json.loads(open(path).read()))
    except CnncError as exc:
        print(f"cnnc: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

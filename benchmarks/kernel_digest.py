"""A digest of every scheduled CPU kernel cnnc generates for the classic specs, inference
(``build_cpu_module``, batch sizes 1 and 16) and training (``build_train_module`` with the CPU
lowering): a change that should not touch the generated code (a refactoring) proves it here,
kernel by kernel, where a benchmark could only say "within noise".

    python benchmarks/kernel_digest.py -o before.json          # on the old tree
    python benchmarks/kernel_digest.py --compare before.json   # on the new one: lists changes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

SPECS = Path(__file__).resolve().parent.parent / "specs"
INFERENCE = ["resnet18", "mobilenet_v1", "tdnn", "googlenet", "alexnet", "lenet5", "vgg11_bn"]
TRAINING = ["lenet5", "resnet_tiny", "mobilenet_v1_cifar", "resnet18_cifar"]


def _digests(mod, prefix: str) -> dict[str, str]:
    from tvm import tirx

    return {f"{prefix}:{gv.name_hint}": hashlib.sha256(f.script().encode()).hexdigest()[:16]
            for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def digests(lanes: int) -> dict[str, str]:
    from cnncompiler.backends.cpu.emit import build_cpu_module
    from cnncompiler.backends.cpu.train_emit import cpu_lowering
    from cnncompiler.backends.train_lower import build_train_module
    from cnncompiler.graph import load_checked
    from cnncompiler.passes import optimize

    out = {}
    for name in INFERENCE:
        g, _ = load_checked(SPECS / f"{name}.yaml")
        mod, _ = build_cpu_module(optimize(g, level=2)[0], lanes, (1, 16))
        out |= _digests(mod, f"infer:{name}")
    for name in TRAINING:
        g, _ = load_checked(SPECS / f"{name}.yaml")
        mod, _ = build_train_module(g, "softmax_cross_entropy", "sgd",
                                    lowering=cpu_lowering(lanes))
        out |= _digests(mod, f"train:{name}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", help="write the digests here (JSON)")
    parser.add_argument("--compare", help="digests written earlier: list the kernels that differ")
    parser.add_argument("--lanes", type=int, default=16, help="float32 vector lanes (16: AVX-512)")
    args = parser.parse_args(argv)
    now = digests(args.lanes)
    if args.output:
        Path(args.output).write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    print(f"{len(now)} kernels")
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    for key in changed:
        print(f"  differs: {key} ({'new' if key not in before else 'gone' if key not in now else 'changed'})")
    print(f"{len(changed)} of {len(set(before) | set(now))} kernels differ")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())

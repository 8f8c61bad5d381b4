"""How long ``cc.load`` and ``cnnc compile`` take for one spec, next to hashing its weights.

    python benchmarks/load_time.py                                  # VGG-16-BN, 5 rounds
    python benchmarks/load_time.py --spec specs/resnet18.yaml --rounds 3 --no-compile
    python benchmarks/load_time.py --artifact /tmp/v16 --no-compile # an artifact already built

Everything runs in fresh processes, the weights file already in the page cache, and each
round asks every measurement in turn, so a change in the machine's load hits them alike;
the figures are medians over the rounds:

- hashing the weights file: ``sha256sum`` (coreutils), and Python's ``hashlib`` (OpenSSL);
- ``cc.load(artifact)`` timed around the call, in a process that imported cnncompiler only
  (so TVM's import is part of it), and in one that imported tvm first (load's own work);
- ``cnnc compile SPEC --target cpu -o DIR``, wall time of the whole command.

It prints the ratios of load to hashing, and the load target: 2 x sha256sum + 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HASHLIB = """
import hashlib, json, sys, time
start = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    hashlib.file_digest(f, "sha256")
print(json.dumps(time.perf_counter() - start))
"""

LOAD = """
import json, sys, time
if sys.argv[2] == "tvm":
    import tvm
import cnncompiler as cc
start = time.perf_counter()
cc.load(sys.argv[1])
print(json.dumps(time.perf_counter() - start))
"""


def timed_python(code: str, *args: str) -> float:
    """The figure a fresh Python process prints for ``code``."""
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def compile_spec(spec: str, out: Path) -> float:
    return wall([sys.executable, "-m", "cnncompiler.cli", "compile", spec, "--target", "cpu",
                 "-o", str(out)])


def measure(artifact: Path, spec: str, rounds: int, with_compile: bool) -> dict[str, list]:
    weights = str(artifact / "weights.safetensors")
    have_sha256sum = shutil.which("sha256sum") is not None
    timed_python(HASHLIB, weights)  # the file into the page cache
    times: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="cnnc-bench-") as scratch:
        for r in range(rounds):
            row = {}
            if have_sha256sum:
                row["sha256sum"] = wall(["sha256sum", weights])
            row["hashlib"] = timed_python(HASHLIB, weights)
            row["load"] = timed_python(LOAD, str(artifact), "fresh")
            row["load, tvm imported"] = timed_python(LOAD, str(artifact), "tvm")
            if with_compile:
                out = Path(scratch) / f"round{r}"
                row["compile"] = compile_spec(spec, out)
                shutil.rmtree(out, ignore_errors=True)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()),
                  file=sys.stderr, flush=True)
            for k, v in row.items():
                times.setdefault(k, []).append(v)
    return times


def report(times: dict[str, list]) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{'':22s} {'median':>8s} {'min':>8s} {'max':>8s}")
    for k, v in times.items():
        print(f"{k:22s} {med[k]:7.2f}s {min(v):7.2f}s {max(v):7.2f}s")
    for hasher in ("sha256sum", "hashlib"):
        if hasher in med:
            print(f"load / {hasher}: {med['load'] / med[hasher]:.2f} "
                  f"(tvm imported: {med['load, tvm imported'] / med[hasher]:.2f})")
    if "sha256sum" in med:
        target = 2 * med["sha256sum"] + 0.5
        print(f"load target 2 x sha256sum + 0.5 s = {target:.2f} s: "
              f"{'met' if med['load'] <= target else 'missed'} ({med['load']:.2f} s)")
    if "compile" in med:
        print(f"compile: {med['compile']:.2f} s wall")
    return {"median": med, "all": times}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="specs/vgg16_bn.yaml")
    ap.add_argument("--artifact", type=Path, help="an artifact of the spec (default: compile one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="do not time cnnc compile")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cnnc-bench-artifact-") as tmp:
        artifact = args.artifact
        if artifact is None:
            artifact = Path(tmp) / "model"
            compile_spec(args.spec, artifact)
        result = report(measure(artifact, args.spec, args.rounds, not args.no_compile))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

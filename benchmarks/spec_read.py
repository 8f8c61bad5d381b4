"""How long the front end takes to accept or refuse the worst specs of a legal size.

    python benchmarks/spec_read.py                  # every case, best of 3
    python benchmarks/spec_read.py --cases deep,aliases --rounds 5
    python benchmarks/spec_read.py --profile flat   # cProfile's top functions for one case

Each case is a spec just under the 1 MiB size limit (or a small one that expands to the
20,000-layer limit) built to be expensive: a long flat list of layers, nesting at the depth
bound, hundreds of aliases, one enormous scalar, a mapping of many keys, repeated keys, and
block repeats. For each it times ``parse_spec_text`` and ``check_spec`` together (wall-clock
and CPU time, the best of --rounds) and prints whether the spec was accepted or refused (and
the first line of the refusal).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnncompiler.errors import SpecError  # noqa: E402
from cnncompiler.graph import check_spec  # noqa: E402
from cnncompiler.spec import parse_spec_text  # noqa: E402
from cnncompiler.spec.yaml_source import MAX_ALIASES, MAX_DEPTH, MAX_FILE_BYTES  # noqa: E402

LIMIT = MAX_FILE_BYTES - 1024
HEAD = "name: bench\ninput: [3, 32, 32]\n"


def fill(head: str, line: str, tail: str = "", limit: int = LIMIT) -> str:
    """``head``, then ``line`` (with ``{i}`` replaced by the index) repeated up to ``limit``."""
    parts, size, i = [head], len(head) + len(tail), 0
    while True:
        text = line.replace("{i}", str(i))
        if size + len(text) > limit:
            break
        parts.append(text)
        size += len(text)
        i += 1
    return "".join(parts) + tail


def flat_layers() -> str:
    """65,000 layers in a list: refused at the 20,000-layer bound, after reading it all."""
    return fill(HEAD + "layers:\n", "  - {type: relu}\n")


def flat_20k_layers() -> str:
    """20,000 layers, half of them convolutions: the largest spec the checker accepts."""
    pair = "  - {type: conv2d, filters: 3, kernel: 1, padding: 0}\n  - {type: relu}\n"
    return HEAD + "layers:\n" + pair * 9_999


def many_outputs() -> str:
    """20,000 layers, the last 500 of them outputs of the model (a liveness walk per output
    costs 500 x 20,000 steps)."""
    names = [f"r{i}" for i in range(19_999)]
    layers = "".join(f"  - {{name: {n}, type: relu}}\n" for n in names)
    return HEAD + "layers:\n" + layers + "outputs: [" + ", ".join(names[-500:]) + "]\n"


def deep_nesting() -> str:
    """Many values nested at just under the depth bound."""
    depth = MAX_DEPTH - 3
    value = "[" * depth + "1" + "]" * depth
    return fill(HEAD + "layers: [{type: relu}]\ndescription:\n", f"  - {value}\n")


def block_nesting() -> str:
    """Block-style nesting at just under the depth bound, as deep as the indentation goes."""
    depth = MAX_DEPTH - 3
    item = "".join("  " * (k + 1) + "-\n" for k in range(depth)) + "  " * (depth + 1) + "- 1\n"
    return fill(HEAD + "layers: [{type: relu}]\ndescription:\n", item)


def many_aliases() -> str:
    """The most aliases allowed, each of a list that expands to just under the value bound."""
    anchor = "[" + ", ".join(["1"] * 380) + "]"
    refs = ", ".join(["*a"] * (MAX_ALIASES - 1))
    return HEAD + f"layers: [{{type: relu}}]\nblocks: {{}}\ndescription: [&a {anchor}, {refs}]\n"


def too_many_aliases() -> str:
    """Hundreds of thousands of aliases: refused at the alias bound."""
    return fill(HEAD + "layers: [{type: relu}]\ndescription:\n  - &a 1\n", "  - *a\n")


def aliased_scalar() -> str:
    """One long string, used through aliases as the type, a key and an input of 170 layers."""
    head = HEAD + "description: &s " + "x" * (LIMIT - 40_000) + "\nlayers:\n"
    return head + "  - {type: *s, *s: 1, inputs: [*s]}\n" * (MAX_ALIASES // 3)


def huge_scalar() -> str:
    """One plain scalar of a mebibyte."""
    return HEAD + "layers: [{type: relu}]\ndescription: " + "x" * (LIMIT - 64) + "\n"


def huge_quoted_scalar() -> str:
    """One double-quoted scalar of a mebibyte, every character an escape."""
    return HEAD + 'layers: [{type: relu}]\ndescription: "' + "\\t" * ((LIMIT - 64) // 2) + '"\n'


def huge_number() -> str:
    """A float of a mebibyte of digits."""
    return HEAD + "layers: [{type: dropout, rate: 0." + "1" * (LIMIT - 80) + "}]\n"


def many_keys() -> str:
    """A mapping of about 90,000 keys."""
    return fill(HEAD + "layers: [{type: relu}]\ndescription:\n", "  k{i}: {i}\n")


def duplicate_keys() -> str:
    """A mapping whose last key repeats its first, after 90,000 others."""
    return fill(HEAD + "layers: [{type: relu}]\ndescription:\n", "  k{i}: {i}\n", "  k0: 1\n")


def many_unknown_keys() -> str:
    """Thousands of layers each with a misspelt key: refused after the error bound."""
    return fill(HEAD + "layers:\n", "  - {type: conv2d, filtrs: 3, kernl: 1, name: c{i}}\n")


def long_names() -> str:
    """Layers with long misspelt inputs, each needing a 'did you mean'."""
    name = "n" * 200
    return fill(HEAD + f"layers:\n  - {{name: {name}, type: relu}}\n",
                "  - {type: relu, inputs: [" + name + "x{i}]}\n")


def misspelt_inputs() -> str:
    """Thousands of layers of like names, then a hundred inputs that are none of them: each
    error looks for the closest name."""
    layers = "".join(f"  - {{name: layer{i:05}, type: relu}}\n" for i in range(15_000))
    wrong = "".join(f"  - {{type: relu, inputs: [layr{i:05}]}}\n" for i in range(120))
    return HEAD + "layers:\n" + layers + wrong


def repeat_20k() -> str:
    """A small spec that expands, through a block, to 20,000 layers."""
    return HEAD + """blocks:
  unit:
    params: {filters: 4}
    layers:
      - {name: conv, type: conv2d, filters: $filters, kernel: 3, padding: 1}
      - {name: bn, type: batchnorm}
      - {name: relu, type: relu}
      - {name: add, type: add, inputs: [relu, input]}
layers:
  - {name: stem, type: conv2d, filters: 4, kernel: 1}
  - {name: body, type: unit, repeat: 4999}
"""


def nested_repeat_20k() -> str:
    """Blocks inside blocks, 20,000 layers with long dotted names."""
    return HEAD.replace("[3, 32, 32]", "[4, 8, 8]") + """blocks:
  leaf:
    layers: [{name: act, type: relu}, {name: add, type: add, inputs: [act, input]}]
  mid:
    layers: [{name: leaf, type: leaf, repeat: 10}]
  top:
    layers: [{name: mid, type: mid, repeat: 10}]
layers:
  - {name: net, type: top, repeat: 99}
"""


CASES = {
    "flat": flat_layers, "flat-20k": flat_20k_layers, "outputs": many_outputs,
    "deep": deep_nesting, "deep-block": block_nesting,
    "aliases": many_aliases, "aliases-over": too_many_aliases, "aliased-scalar": aliased_scalar,
    "scalar": huge_scalar, "quoted": huge_quoted_scalar, "number": huge_number,
    "keys": many_keys, "duplicates": duplicate_keys, "unknown-keys": many_unknown_keys,
    "names": long_names, "misspelt": misspelt_inputs,
    "repeat": repeat_20k, "nested-repeat": nested_repeat_20k,
}


def front_end(text: str) -> str:
    """Parse and check; what happened, in a few words."""
    try:
        spec = parse_spec_text(text, "bench.yaml")
        g, _ = check_spec(spec)
        return f"accepted, {g.number_of_nodes() - 1} layers"
    except SpecError as exc:
        first = exc.format().splitlines()[0]
        return "refused: " + (first if len(first) < 110 else first[:107] + "...")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--rounds", type=int, default=3, help="time each case this many times")
    p.add_argument("--profile", metavar="CASE", help="profile one case instead")
    args = p.parse_args(argv)
    if args.profile:
        text = CASES[args.profile]()
        cProfile.runctx("front_end(text)", globals(), {"text": text}, "/tmp/spec_read.prof")
        pstats.Stats("/tmp/spec_read.prof").sort_stats("cumulative").print_stats(25)
        return 0
    worst = 0.0
    for key in args.cases.split(","):
        text = CASES[key]()
        assert len(text.encode()) <= MAX_FILE_BYTES, key
        wall, cpu = [], []
        for _ in range(args.rounds):
            start, start_cpu = time.perf_counter(), time.process_time()
            outcome = front_end(text)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        worst = max(worst, min(cpu))
        print(f"{key:14} {len(text) / 1024:5.0f} KiB {min(wall) * 1000:7.0f} ms "
              f"{min(cpu) * 1000:7.0f} ms CPU  {outcome}", flush=True)
    print(f"slowest: {worst * 1000:.0f} ms CPU (the best of {args.rounds} rounds; on a shared "
          "machine the CPU time is the steadier measure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

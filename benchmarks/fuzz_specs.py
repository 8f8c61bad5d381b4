"""Many cases of the spec fuzzer of tests/test_fuzz_specs.py, in parallel, tallied.

    nice python benchmarks/fuzz_specs.py --cases 100000 --jobs 2
    python benchmarks/fuzz_specs.py --cases 2000 --seed 3 --out /tmp/fuzz-failures

Each case is a spec of specs/ or specs/invalid/ with a few random mutations; parsing and
checking it must accept it or refuse it with a CnncError. Prints how many were accepted,
refused, ended in another exception (an internal error: a bug) or ran longer than --timeout
(a hang), and the slowest case; writes each failing case's text to --out. Exits 1 if any
case failed.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_fuzz_specs import make_case, run_case  # noqa: E402


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang


def run_one(job: tuple[int, int, float]) -> tuple[int, str, float]:
    """(index, outcome, seconds) of one case, stopped after ``timeout`` seconds."""
    index, seed, timeout = job
    _, text = make_case(index, seed)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    try:
        outcome, seconds = run_case(text)
    except _Hang:
        outcome, seconds = "hang", time.perf_counter() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return index, outcome, seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a case is a hang")
    p.add_argument("--out", type=Path, help="write each failing case here")
    args = p.parse_args(argv)

    tally = collections.Counter()
    failures: dict[str, list[int]] = collections.defaultdict(list)
    slowest = (0.0, -1)
    start = time.perf_counter()
    jobs = ((i, args.seed, args.timeout) for i in range(args.cases))
    with multiprocessing.Pool(args.jobs, maxtasksperchild=2000) as pool:
        for done, (index, outcome, seconds) in enumerate(
                pool.imap_unordered(run_one, jobs, chunksize=20), start=1):
            kind = outcome if outcome in ("accepted", "refused", "hang") else "internal error"
            tally[kind] += 1
            slowest = max(slowest, (seconds, index))
            if kind in ("internal error", "hang"):
                failures[outcome].append(index)
                if args.out:
                    args.out.mkdir(parents=True, exist_ok=True)
                    how, text = make_case(index, args.seed)
                    (args.out / f"case{index}.yaml").write_text(
                        f"# {how}\n# {outcome}\n{text}", encoding="utf-8",
                        errors="surrogatepass")
            if done % 5000 == 0:
                print(f"  {done:,} cases, {time.perf_counter() - start:.0f} s: {dict(tally)}",
                      flush=True)
    print(f"cases: {args.cases:,} (seed {args.seed}) in {time.perf_counter() - start:.0f} s")
    for kind in ("accepted", "refused", "internal error", "hang"):
        print(f"  {kind:15} {tally[kind]:,}")
    print(f"  slowest case:   {slowest[0] * 1000:.0f} ms (case {slowest[1]})")
    for outcome, indices in sorted(failures.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(indices):6,} x {outcome}  (e.g. cases {indices[:5]})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

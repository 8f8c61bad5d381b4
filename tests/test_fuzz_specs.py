"""Mutation fuzzing of the front end: the specs of specs/ and specs/invalid/, mutated (odd
numbers, odd strings and names, wrong types, deleted and swapped keys and layer types,
duplicated layers, broken indentation, truncation, flipped characters), must each be accepted
or refused with a CnncError by ``parse_spec_text`` + ``check_spec`` (and by ``cnnc check``,
exit 0 or 1), never with another exception, and never slowly.

The suite runs a few hundred seeded cases; ``CNNC_FUZZ_CASES`` and ``CNNC_FUZZ_SEED`` change
how many and which. ``benchmarks/fuzz_specs.py --cases 100000`` runs many in parallel and
tallies them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import time
import traceback
from pathlib import Path

import pytest
import yaml

from conftest import INVALID, SPECS
from cnncompiler.cli import main
from cnncompiler.errors import CnncError
from cnncompiler.graph import check_spec
from cnncompiler.layers import LAYER_TYPES
from cnncompiler.spec import parse_spec_text

CASES = int(os.environ.get("CNNC_FUZZ_CASES", "300"))
SEED = int(os.environ.get("CNNC_FUZZ_SEED", "0"))
CHUNK = 30
SLOW = 10.0  # seconds; a case this slow has met something quadratic or worse

VALID = [(p.name, p.read_text(encoding="utf-8")) for p in sorted(SPECS.glob("*.yaml"))]
INVALID_SEEDS = [(p.name, p.read_text(encoding="utf-8")) for p in sorted(INVALID.glob("*.yaml"))]
TYPES = sorted(LAYER_TYPES)

ODD_NUMBERS = [
    "1", "2", "3", "7", "64", "1000",  # sizes that still parse, for the shape rules
    "1" + "0" * 400, "-1" + "0" * 400, "1e400", "-1e400", "1e-400", ".inf", "-.inf", ".nan",
    "0", "-1", "-0.0", "3.5", "1e39", "2147483647", "2147483648", "9223372036854775808",
    "0x" + "f" * 300, "0b" + "1" * 900, "0o17", "017", "1:0:0:0", "1_000", "9" * 999,
]
ODD_STRINGS = [
    "", " ", "../x", "/etc/passwd", "a/b", "..", ".x", "-x", "a b", "\u202e", "a\u202eb",
    "\x00", "a\x00b", "\x1b[2J", "\r", "\t", "\u2028", "é", "\ud7ff", "nan", "inf", "null",
    "$filters", "$nope", "$filters ** 99", "$filters * 1e400", "$x // 0", "${filters}",
    "input", "same", "valid", "channels", "softmax_cross_entropy", "x" * 3000,
    "(" * 60 + "1" + ")" * 60,
]
ODD_VALUES = [None, True, False, [], {}, [1, 2], [[1, 2], [3, 4]], {"a": 1}, 10**400,
              -(10**400), float("inf"), float("-inf"), float("nan"), 2**31, -(2**31), 0, -1,
              1.5, 1e-300, list(range(50))]
FRAGMENTS = ["&a ", "*a", "<<: *a", "!!python/object/apply:os.system ['true'] ", "!!set ",
             "!!binary ", "!local ", "[", "]", "{", "}", "- ", ": ", "# ", "|\n", ">\n",
             "? ", "---\n", "...\n", "%YAML 1.1\n", "\t", "'", '"', "\\", ",", "@", "`", "%",
             "\u202e", "\ufeff", "\x85"]
CHARS = "{}[]:,-&*!|>'\"#%@` \n\t.$<abc019\u00e9\u202e\u2028\x07\x1b"


# -- mutations ---------------------------------------------------------------------------------

def _pick(rng: random.Random, items):
    return items[rng.randrange(len(items))]


def _yaml_scalar(text: str) -> str:
    """``text`` as a double-quoted YAML scalar (JSON's escapes are YAML's)."""
    return json.dumps(text, ensure_ascii=True)


def replace_number(rng, text):
    spots = list(re.finditer(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", text))
    if not spots:
        return text
    m = _pick(rng, spots)
    return text[:m.start()] + _pick(rng, ODD_NUMBERS) + text[m.end():]


def resize(rng, text):
    """A number replaced by a plain size, so that the spec still reads and meets the shape
    rules with sizes they may not fit."""
    spots = list(re.finditer(r"(?<![\w.])\d+(?![\w.])", text))
    if not spots:
        return text
    m = _pick(rng, spots)
    return text[:m.start()] + str(_pick(rng, [0, 1, 2, 3, 5, 7, 16, 64, 1000])) + text[m.end():]


def replace_word(rng, text):
    spots = list(re.finditer(r"(?<=: )[A-Za-z_$][\w.$]*", text))
    if not spots:
        return text
    m = _pick(rng, spots)
    return text[:m.start()] + _yaml_scalar(_pick(rng, ODD_STRINGS)) + text[m.end():]


ODD_KEYS = [".nan", ".NaN", ".inf", "1", "1.0", "true", "~", "null", "''", "<<", "[a]",
            "{a: 1}", "!!python/name:os.system", "*a", "&a name", "type", "name", "inputs",
            "repeat", "$x", "\"\\u202e\""]


def replace_key(rng, text):
    spots = list(re.finditer(r"(?<=[{,] )[A-Za-z_]\w*(?=:)|^ *[A-Za-z_]\w*(?=:)", text, re.M))
    if not spots:
        return text
    m = _pick(rng, spots)
    indent = len(m.group()) - len(m.group().lstrip())
    return text[:m.start() + indent] + _pick(rng, ODD_KEYS) + text[m.end():]


def repeat_key(rng, text):
    """A key of a flow mapping written again, with some other value."""
    spots = list(re.finditer(r"(?<=[{,] )([A-Za-z_]\w*): [^,}\n]+", text))
    if not spots:
        return text
    m = _pick(rng, spots)
    value = _pick(rng, ODD_NUMBERS[:12] + ["relu", "x", "[1, 2]", "{a: 1}", "null"])
    return text[:m.end()] + f", {m.group(1)}: {value}" + text[m.end():]


def swap_type(rng, text):
    spots = list(re.finditer(r"(?<=type: )[\w$]+", text))
    if not spots:
        return text
    m = _pick(rng, spots)
    blocks = re.findall(r"^  (\w+):\s*(?:#.*)?$", text, re.M)
    new = _pick(rng, TYPES + blocks + ["conv", "relux", "input", "1"])
    return text[:m.start()] + new + text[m.end():]


def edit_lines(rng, text):
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    i = rng.randrange(len(lines))
    kind = rng.randrange(6)
    if kind == 0:
        del lines[i]
    elif kind == 1:
        lines.insert(i, lines[i])                                # a duplicated layer or key
    elif kind == 2:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == 3:
        lines[i] = " " * rng.randrange(1, 4) + lines[i]           # broken indentation
    elif kind == 4:
        lines[i] = lines[i][rng.randrange(1, 3):]
    else:
        lines[i] = "\t" + lines[i]
    return "\n".join(lines)


def truncate(rng, text):
    return text[:rng.randrange(len(text) + 1)]


def flip_chars(rng, text):
    chars = list(text)
    for _ in range(rng.randrange(1, 4)):
        if chars:
            chars[rng.randrange(len(chars))] = _pick(rng, CHARS)
    return "".join(chars)


def insert_fragment(rng, text):
    at = rng.randrange(len(text) + 1)
    return text[:at] + _pick(rng, FRAGMENTS) + text[at:]


def mutate_structure(rng, text):
    """Load the spec, change one value deep inside it, and write it out again."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(data, dict):
        return text
    parent, key = _random_slot(rng, data)
    if parent is None:
        return text
    kind = rng.randrange(5)
    if kind == 0 and isinstance(parent, dict):
        del parent[key]
    elif kind == 1 and isinstance(parent, list):
        parent.insert(key, parent[key])                           # a duplicated layer
    elif kind == 2 and isinstance(parent, dict):
        parent[_pick(rng, ["filtrs", "repeat", "inputs", "name", "type", "params", "x"])] = \
            _pick(rng, ODD_VALUES + ODD_STRINGS)
    else:
        parent[key] = _pick(rng, ODD_VALUES + ODD_STRINGS)
    try:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=rng.random() < 0.5)
    except (yaml.YAMLError, ValueError, OverflowError):
        return text


def _random_slot(rng, data):
    """A random (container, key or index) inside ``data``."""
    parent, key = None, None
    node = data
    for _ in range(rng.randrange(1, 7)):
        if isinstance(node, dict) and node:
            parent, key = node, _pick(rng, list(node))
        elif isinstance(node, list) and node:
            parent, key = node, rng.randrange(len(node))
        else:
            break
        node = parent[key]
    return parent, key


MUTATIONS = [replace_number, replace_number, replace_word, replace_key, repeat_key, swap_type,
             edit_lines, truncate, flip_chars, insert_fragment, mutate_structure,
             mutate_structure]
BENIGN = [resize, resize, swap_type]


def make_case(index: int, seed: int = SEED) -> tuple[str, str]:
    """The ``index``-th mutated spec: (how it was made, its text). Deterministic."""
    rng = random.Random(f"{seed}:{index}")
    # mostly working specs, mostly one change, a quarter of them only of sizes and types, so
    # that many reach the shape checker
    name, text = _pick(rng, VALID if rng.random() < 0.8 else INVALID_SEEDS)
    mutations = BENIGN if rng.random() < 0.25 else MUTATIONS
    steps = []
    for _ in range(_pick(rng, [1, 1, 1, 2, 2, 3, 4])):
        mutation = _pick(rng, mutations)
        text = mutation(rng, text)
        steps.append(mutation.__name__)
    return f"case {index} (seed {seed}): {name} + {', '.join(steps)}", text


def run_case(text: str) -> tuple[str, float]:
    """'accepted', 'refused', or 'internal: ...' with the traceback's last frames; and the
    seconds parsing and checking took."""
    start = time.perf_counter()
    try:
        check_spec(parse_spec_text(text, "fuzz.yaml"))
        outcome = "accepted"
    except CnncError:
        outcome = "refused"
    except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
        outcome = f"internal: {type(exc).__name__}: {str(exc)[:200]} at {where}"
    return outcome, time.perf_counter() - start


def run_cli(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["check", str(path)])
    return code, out.getvalue()


# -- the tests ---------------------------------------------------------------------------------

def test_cases_are_reproducible():
    assert make_case(7) == make_case(7)
    assert make_case(7) != make_case(8)


@pytest.mark.parametrize("chunk", range((CASES + CHUNK - 1) // CHUNK))
def test_mutated_specs_are_accepted_or_refused(chunk, tmp_path, monkeypatch):
    monkeypatch.delenv("CNNC_DEBUG", raising=False)
    problems = []
    for index in range(chunk * CHUNK, min((chunk + 1) * CHUNK, CASES)):
        how, text = make_case(index)
        outcome, seconds = run_case(text)
        if outcome.startswith("internal") or seconds > SLOW:
            problems.append(f"{how}: {outcome} in {seconds:.1f} s")
        if index % 10 == 0:  # the command line too: exit 0 or 1, never 70
            path = tmp_path / f"case{index}.yaml"
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            code, printed = run_cli(path)
            if code not in (0, 1) or "Traceback" in printed:
                problems.append(f"{how}: cnnc check exited {code}: {printed[-300:]}")
    assert not problems, "\n".join(problems)

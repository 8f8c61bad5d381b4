"""Golden broken specs: every file in specs/invalid/ states in its header the errors
``cnnc check`` must give for it, and the checker must give exactly those.

A header is a run of comment lines at the top of the file::

    # A dense layer straight after a convolution.
    # expect-flags: --strict                          (optional)
    # expect-error: 9: layer 'fc' (dense): ... add {type: flatten}

``expect-error: LINE: TEXT`` means one printed diagnostic starts with ``FILE:LINE:`` and
contains TEXT; ``...`` in TEXT separates pieces that must appear in that order. A file has
one ``expect-error`` per error it must give, and it must give no others.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnncompiler.cli import main
from cnncompiler.spec import yaml_source
from conftest import INVALID, ROOT

# libyaml's parser where PyYAML has it, and the pure-Python one: both must give these errors
PARSERS = ["libyaml", "python"] if yaml_source._FastLoader is not None else ["python"]

EXPECT = re.compile(r"^# expect-error: (\d+): (.+?)\s*$")
FLAGS = re.compile(r"^# expect-flags: (.*?)\s*$")
ERROR_COUNT = re.compile(r"^(\d+) errors? found$", re.M)


@dataclass
class Expectation:
    line: int
    pieces: list[str]

    def matches(self, output: str, shown_path: str) -> bool:
        prefix = f"{shown_path}:{self.line}:"
        return any(line.startswith(prefix) and _in_order(line, self.pieces)
                   for line in output.splitlines())


def _in_order(text: str, pieces: list[str]) -> bool:
    at = 0
    for piece in pieces:
        found = text.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def read_header(path: Path) -> tuple[list[str], list[Expectation]]:
    flags, expectations = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if m := FLAGS.match(line):
            flags += m.group(1).split()
        elif m := EXPECT.match(line):
            pieces = [p.strip() for p in m.group(2).split(" ... ")]
            expectations.append(Expectation(int(m.group(1)), pieces))
    return flags, expectations


SPECS = sorted(INVALID.glob("*.yaml"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def check_output(capsys, monkeypatch, path: Path, flags: list[str]) -> tuple[int, str]:
    """Run ``cnnc check`` in-process from the repository root (so paths print relative)."""
    monkeypatch.chdir(ROOT)
    code = main(["check", *flags, _rel(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_collection_covers_the_contract():
    assert len(SPECS) >= 25
    names = {p.stem for p in SPECS}
    for needed in ("yaml_bad_indent", "yaml_unclosed_bracket", "yaml_tab", "unknown_layer_type",
                   "unknown_key", "duplicate_key", "dense_on_3d", "billion_filters",
                   "python_tag", "alias_bomb", "recursive_block", "empty", "several_problems"):
        assert needed in names
    assert any(len(read_header(p)[1]) > 1 for p in SPECS), "one spec should hold several errors"


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_invalid_spec_gives_exactly_its_stated_errors(path, parser, capsys, monkeypatch):
    if parser == "python":
        monkeypatch.setattr(yaml_source, "_FastLoader", None)
    flags, expectations = read_header(path)
    assert expectations, f"{path.name} has no '# expect-error: LINE: TEXT' header"
    code, output = check_output(capsys, monkeypatch, path, flags)
    assert code == 1, output
    assert "Traceback" not in output
    for e in expectations:
        assert e.matches(output, _rel(path)), \
            f"no diagnostic at {_rel(path)}:{e.line}: containing {e.pieces}:\n{output}"
    count = ERROR_COUNT.search(output)
    assert count and int(count.group(1)) == len(expectations), output


def test_every_diagnostic_line_has_the_place_and_the_layer(capsys, monkeypatch):
    """``FILE:LINE:COL: layer 'NAME' (TYPE): ...`` for a layer's problem."""
    path = INVALID / "dense_on_3d.yaml"
    _, output = check_output(capsys, monkeypatch, path, [])
    first = output.splitlines()[0]
    assert re.match(rf"^{re.escape(_rel(path))}:\d+:\d+: layer 'fc' \(dense\): ", first)
    # the source line and a caret under the column follow
    assert "    |   - {name: fc, type: dense, units: 10}" in output
    assert "    |     ^" in output


def test_stride_remainder_is_only_a_warning_without_strict(capsys, monkeypatch):
    path = INVALID / "stride_remainder_strict.yaml"
    code, output = check_output(capsys, monkeypatch, path, [])
    assert code == 0
    assert "warning: layer 'conv1' (conv2d): stride 2 leaves a remainder" in output
    assert "ok:" in output


@pytest.mark.parametrize("name", ["python_tag", "alias_bomb", "several_problems", "yaml_tab"])
def test_invalid_spec_as_a_subprocess(name):
    """The real command line: exit status 1, the diagnostics on stderr, no traceback."""
    path = INVALID / f"{name}.yaml"
    flags, expectations = read_header(path)
    proc = subprocess.run([sys.executable, "-m", "cnncompiler.cli", "check", *flags, _rel(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for e in expectations:
        assert e.matches(proc.stderr, _rel(path)), proc.stderr

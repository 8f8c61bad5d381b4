"""The README is true because it runs: every fenced code block in it is run or checked here, or
skipped with a stated reason.

- ``python`` blocks run as written, each as a script in a folder of its own where ``specs/`` and
  ``examples/`` are the repository's.
- ``yaml`` blocks are checked by ``cc.check`` with ``strict=True``: a spec as it is; a fragment
  (no ``layers``, such as a ``train:`` section) inside a minimal spec.
- Blocks without a language are shell command lines. The ``cnnc`` commands run, in a working
  folder shared by all such blocks (so ``build/`` is a temporary folder), with any
  ``[optional]`` parts of a usage line included; a command that appears twice runs once, so the
  LeNet-5 training and the ResNet-18 CUDA build are shared. The files a reader brings to a
  command (``x.npy``, ``net.yaml``) are made here. Every other command is listed in NOT_RUN with
  the reason it is not run.

A block of any other kind, or a command neither run nor listed, fails the tests, so a new block
cannot be silently left out. ``test_the_train_section_documents_every_option`` checks that every
key the ``train:`` section accepts, every loss, optimizer and schedule type, is in the README's
tables with the default the code declares.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import HAVE_NVCC, ROOT

README = ROOT / "README.md"
# what a block's folder sees of the repository: the paths the README's commands name
SHARED_PATHS = ("specs", "examples")
TIMEOUT = 600

SETUP = "creating the virtual environment and installing cnnc is what .ci/run does before " \
        "these tests run"
NOT_RUN = {
    "python3 -m venv .venv": SETUP,
    ". .venv/bin/activate": SETUP,
    'pip install -e ".[data]"': SETUP,
    # the CI creates .venv and runs this suite, this test included: run from here, it would
    # recurse and reinstall the environment the tests are running in
    "bash .ci/run": "it is the CI itself, which runs these tests",
}

# files a reader brings to a command: made in the shared working folder before any command
NET_YAML = """\
name: net
input: [3, 16, 16]
layers:
  - {name: conv1, type: conv2d, filters: 8, kernel: 3, padding: 1}
  - {type: softsign}
  - {type: channel_shuffle, groups: 2}
  - {type: global_avgpool}
  - {type: flatten}
  - {name: fc, type: dense, units: 10}
"""


def _reader_files(folder: Path) -> None:
    np.save(folder / "x.npy", np.random.default_rng(0).random((4, 1, 32, 32), np.float32))
    (folder / "net.yaml").write_text(NET_YAML)


# -- the blocks -------------------------------------------------------------------------------------

FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    line: int   # of the opening fence, 1-based
    info: str   # the info string; its first word is the language
    text: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.strip() else ""

    @property
    def id(self) -> str:
        return f"{self.language or 'shell'}-line{self.line}"


def fenced_blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of a CommonMark text, with their info strings."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m.group(1)), m.group(2), m.group(3).strip()
        body, j = [], i + 1
        while j < len(lines) and not re.match(
                rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            # CommonMark: a fence indented by n spaces takes up to n spaces off each line
            body.append(re.sub(rf"^ {{0,{indent}}}", "", lines[j]))
            j += 1
        assert j < len(lines), f"README.md:{i + 1}: the code fence is never closed"
        blocks.append(Block(i + 1, info, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


BLOCKS = fenced_blocks(README.read_text(encoding="utf-8"))


def commands(block: Block) -> list[str]:
    """A shell block's commands: its lines, each split at ``&&``."""
    return [part.strip() for line in block.text.splitlines() if line.strip()
            for part in line.split("&&")]


def why_not_run(command: str) -> str | None:
    """Why a shell command is not run here, or None when it is."""
    if command in NOT_RUN:
        return NOT_RUN[command]
    if not command.startswith("cnnc "):
        raise LookupError(f"'{command}' is neither a cnnc command nor listed in NOT_RUN "
                          "with the reason it is not run")
    if "--target cuda" in command and not HAVE_NVCC:
        return "compiling for CUDA needs nvcc, which is not installed"
    return None


def plan(block: Block) -> list[tuple[str, str | None]]:
    """(what, why it is not run, or None) for each part of a block; raises for a block of a kind
    this module does not know."""
    if block.language == "python":
        return [("python script", None)]
    if block.language == "yaml":
        return [("cc.check", None)]
    if block.language == "":
        return [(c, why_not_run(c)) for c in commands(block)]
    raise LookupError(f"a '{block.language}' block is neither run nor checked here; teach "
                      "tests/test_readme.py what to do with it")


# -- running them ---------------------------------------------------------------------------------

def _workdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHARED_PATHS:
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    return folder


def _cnnc() -> list[str]:
    script = Path(sys.executable).parent / "cnnc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cnncompiler.cli"]


def _shown(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n" \
           f"{proc.stderr[-4000:]}"


class Shell:
    """The working folder all shell blocks share; each distinct command runs once."""

    def __init__(self, folder: Path):
        self.folder = _workdir(folder)
        _reader_files(self.folder)
        self.done: dict[str, subprocess.CompletedProcess] = {}

    def run(self, command: str) -> subprocess.CompletedProcess:
        if command not in self.done:
            # a usage line's [optional] parts are run, so each option is tried
            argv = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", command))
            self.done[command] = subprocess.run(
                _cnnc() + argv[1:], cwd=self.folder, capture_output=True, text=True,
                timeout=TIMEOUT)
        return self.done[command]


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    return Shell(tmp_path_factory.mktemp("readme") / "work")


def run_python(block: Block, folder: Path) -> None:
    script = _workdir(folder) / "readme_block.py"
    script.write_text(block.text)
    proc = subprocess.run([sys.executable, script.name], cwd=script.parent, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"README.md:{block.line}: the block fails\n{_shown(proc)}"


MINIMAL_SPEC = {"name": "fragment", "input": [4], "layers": [{"type": "dense", "units": 2}]}


def check_yaml(block: Block, folder: Path) -> None:
    import cnncompiler as cc

    doc = yaml.safe_load(block.text)
    assert isinstance(doc, dict), f"README.md:{block.line}: a YAML block must be a mapping"
    text = block.text if "layers" in doc else \
        yaml.safe_dump(MINIMAL_SPEC, sort_keys=False) + block.text
    path = folder / "block.yaml"
    path.write_text(text)
    _, warnings = cc.check(path, strict=True)
    assert not warnings, [w.format() for w in warnings]


def run_command(block: Block, command: str, shell: Shell) -> None:
    proc = shell.run(command)
    assert proc.returncode == 0, f"README.md:{block.line}: {command}\n{_shown(proc)}"
    out = re.search(r"(?:^|\s)-o\s+(\S+)", command)
    if out:
        assert (shell.folder / out.group(1)).exists(), \
            f"README.md:{block.line}: {command} wrote no {out.group(1)}"


def steps() -> list:
    """One test per python or yaml block, one per shell command."""
    out = []
    for block in BLOCKS:
        if block.language:
            out.append(pytest.param(block, None, id=block.id))
        else:
            out += [pytest.param(block, c, id=f"{block.id}-{i}")
                    for i, c in enumerate(commands(block), 1)]
    return out


@pytest.mark.tvm
@pytest.mark.parametrize("block, command", steps())
def test_readme_block(block, command, shell, tmp_path):
    if block.language == "python":
        run_python(block, tmp_path / "work")
    elif block.language == "yaml":
        check_yaml(block, tmp_path)
    elif block.language:
        plan(block)  # raises: a kind of block this module does not run
    else:
        reason = why_not_run(command)
        if reason:
            pytest.skip(f"README.md:{block.line}: '{command}' is not run: {reason}")
        run_command(block, command, shell)


# -- nothing is left out ----------------------------------------------------------------------------

def test_every_block_is_run_or_skipped_with_a_reason():
    text = README.read_text(encoding="utf-8")
    fences = sum(1 for line in text.splitlines() if FENCE.match(line))
    assert fences == 2 * len(BLOCKS), "a code fence the block parser did not pair"
    for block in BLOCKS:
        try:
            steps = plan(block)
        except LookupError as exc:
            pytest.fail(f"README.md:{block.line}: {exc}")
        assert steps, f"README.md:{block.line}: an empty block"
        for what, reason in steps:
            assert reason is None or reason.strip(), f"{what}: skipped without a reason"


def test_commands_are_in_fenced_blocks():
    """An indented code block is not run: a command shown in one would escape these tests."""
    fenced = False
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("    ") and \
                re.match(r"\s*(cnnc|python3?|pip|bash)\s", line):
            pytest.fail(f"README.md:{number}: a command in an indented block; fence it")


def test_the_parser_reads_info_strings_and_nested_fences():
    text = textwrap.dedent("""\
        Text.

        ````yaml fragment
        ```
        inner
        ```
        ````

        - item

          ```python
          x = 1
          ```
        """)
    blocks = fenced_blocks(text)
    assert [(b.line, b.language, b.info) for b in blocks] == [(3, "yaml", "yaml fragment"),
                                                             (11, "python", "python")]
    assert blocks[0].text == "```\ninner\n```\n" and blocks[1].text == "x = 1\n"


def test_an_unknown_command_or_kind_is_refused():
    with pytest.raises(LookupError, match="NOT_RUN"):
        plan(Block(1, "", "make install\n"))
    with pytest.raises(LookupError, match="'toml' block"):
        plan(Block(1, "toml", "a = 1\n"))
    assert plan(Block(1, "", "bash .ci/run\n")) == [("bash .ci/run", NOT_RUN["bash .ci/run"])]

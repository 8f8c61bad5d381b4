"""The README is true because it runs: every fenced code block in it is run or checked here, or
skipped with a stated reason.

- ``python`` blocks run as written, each as a script in a folder of its own where ``specs/`` and
  ``examples/`` are the repository's.
- ``yaml`` blocks are checked by ``cc.check`` with ``strict=True``: a spec as it is; a fragment
  (no ``layers``, such as a ``train:`` section) inside a minimal spec.
- Blocks without a language are shell command lines, one test per command. The ``cnnc``
  commands run in one working folder that all such blocks share (so ``build/`` is a temporary
  folder), with a usage line's ``[optional]`` parts included; a command shown twice runs once,
  so the LeNet-5 training serves both blocks that show it and the ``cnnc run`` and ``cnnc
  bench`` lines after it. The files a reader brings (``x.npy``, ``net.yaml``) are made here.
  Every other command is listed in NOT_RUN with the reason it is not run.

A block of any other kind, or a command neither run nor listed, fails the tests, so a new block
cannot be silently left out.

The tests at the end read the README's ``train:`` section: every key a spec may write there (the
``option`` fields of TrainConfig, the optimizers and Schedule), every loss, optimizer and
schedule type must be named in it, and its tables must state the defaults the code declares.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import yaml

import cnncompiler as cc
from cnncompiler.errors import FieldError
from cnncompiler.layers.fields import option, positive_number
from cnncompiler.spec.losses import LOSSES
from cnncompiler.spec.train_config import OPTIMIZERS, TRAIN_KEYS, Schedule, TrainConfig

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
    # tests/test_distributed.py runs two torchrun node agents on localhost the same way
    **{f"torchrun --nnodes 2 --node_rank {rank} --nproc_per_node 1 --rdzv-backend c10d "
       "--rdzv-endpoint HOST:29500 -m cnncompiler train specs/lenet5.yaml --data digits "
       "-o build/lenet5-2n": "one of two machines' commands, each waiting for the other"
       for rank in (0, 1)},
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


# -- the blocks -----------------------------------------------------------------------------------

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


# -- nothing is left out --------------------------------------------------------------------------

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


# -- the train: section documents every option ----------------------------------------------------

def train_section(markdown: str) -> str:
    """The README's ``### The `train:` section``, up to the next heading of its level or above."""
    m = re.search(r"^### The `train:` section\n(.*?)(?=^#{1,3} )", markdown, re.M | re.S)
    assert m, "README.md has no '### The `train:` section'"
    return m.group(1)


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``: each a list of rows of cells, the header first."""
    out, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().split("|")[1:-1]]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif rows:
            out.append(rows)
            rows = []
    return out


def table_with(key: str) -> tuple[list[str], dict[str, list[str]]]:
    """The train: section's table that has a row for ``key``: its header, and its rows by
    their first cell."""
    for header, *body in tables(train_section(README.read_text(encoding="utf-8"))):
        rows = {row[0].strip("`"): row for row in body}
        if key in rows:
            return header, rows
    raise AssertionError(f"no table in README.md's train: section has a row for '{key}'")


def options(cls) -> dict:
    """The keys a spec may write for ``cls``, with their defaults (None for required ones)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if "parser" in f.metadata}


def choices(cls, key: str) -> list[str]:
    """The values a ``choice(...)`` key accepts, as its own error message lists them."""
    with pytest.raises(FieldError) as refused:
        cls.__dataclass_fields__[key].metadata["parser"](None)
    return re.findall(r"'(\w+)'", refused.value.expected)


def documented_names() -> dict[str, list[str]]:
    """Every name the train: section must document, by where it is declared."""
    names = {"train keys": list(TRAIN_KEYS) + list(options(TrainConfig)), "losses": list(LOSSES),
             "optimizers": list(OPTIMIZERS), "schedule types": choices(Schedule, "type"),
             "schedule keys": list(options(Schedule))}
    for name, cls in OPTIMIZERS.items():
        names[f"{name} keys"] = list(options(cls))
    return names


def undocumented(section: str, names: dict[str, list[str]]) -> list[str]:
    return [f"{where}: {name}" for where, some in names.items() for name in some
            if f"`{name}`" not in section]


def value(cell: str):
    """A default as the README writes it: 0.01, 1e-8, 1/3, false, [0.9, 0.999], `epoch`."""
    cell = cell.strip().strip("`")
    if re.fullmatch(r"\d+/\d+", cell):
        return float(Fraction(cell))
    v = yaml.safe_load(cell)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return tuple(v) if isinstance(v, list) else v


def same_default(written: str, declared) -> bool:
    v = value(written)
    if declared is None:  # required, or set from the run: the README says which in words
        return isinstance(v, str) and " " in v
    if isinstance(declared, bool) or isinstance(v, (str, bool)):
        return v == declared
    if isinstance(declared, tuple):
        return len(v) == len(declared) and all(np.isclose(a, b) for a, b in zip(v, declared))
    return np.isclose(v, declared, rtol=1e-12, atol=0)


def test_the_train_section_documents_every_option():
    missing = undocumented(train_section(README.read_text(encoding="utf-8")),
                           documented_names())
    assert not missing, "not in README.md's train: section: " + ", ".join(missing)


def test_a_missing_option_is_found():
    section = train_section(README.read_text(encoding="utf-8"))
    without = "\n".join(line for line in section.splitlines()
                        if not line.startswith("| `dampening` |"))
    assert "sgd keys: dampening" in undocumented(without, documented_names())

    @dataclasses.dataclass(frozen=True)
    class WithANewKey:
        lr: float = option(positive_number, default=0.1)
        clip_norm: float = option(positive_number, default=1.0)

    assert undocumented(section, {"sgd keys": list(options(WithANewKey))}) == \
        ["sgd keys: clip_norm"]


def test_the_train_keys_have_the_defaults_a_spec_without_them_gets(tmp_path):
    spec = tmp_path / "untrained.yaml"
    spec.write_text(yaml.safe_dump(MINIMAL_SPEC))
    cfg = cc.check(spec)[0].graph["train"]
    got = {key: getattr(cfg, key) for key in TRAIN_KEYS}
    got["optimizer"] = next(n for n, cls in OPTIMIZERS.items() if type(cfg.optimizer) is cls)
    got["schedule"] = cfg.schedule.type
    _, rows = table_with("epochs")
    assert list(rows) == list(TRAIN_KEYS), "the train keys' table: one row per key, in order"
    for key, row in rows.items():
        assert same_default(row[1], got[key]), f"train.{key}: README {row[1]}, spec {got[key]!r}"


def test_each_loss_is_described_as_declared():
    _, rows = table_with("euclidean")
    assert sorted(rows) == sorted(LOSSES), "the losses' table: one row per loss"
    for name, loss in LOSSES.items():
        _, _, targets, _, metric = rows[name]
        assert ("integer" in targets) == loss.integer_labels, name
        assert metric.startswith(loss.metric) if loss.metric else metric == "—", name


def test_each_optimizer_key_has_its_declared_default():
    header, rows = table_with("lr")
    names = [h.strip("`") for h in header[1:-1]]
    assert names == list(OPTIMIZERS), "the optimizers' table: one column per optimizer"
    assert sorted(rows) == sorted({k for cls in OPTIMIZERS.values() for k in options(cls)}), \
        "the optimizers' table: one row per key of any optimizer"
    for key, row in rows.items():
        for name, cell in zip(names, row[1:-1]):
            declared = options(OPTIMIZERS[name])
            if key not in declared:
                assert cell == "—", f"{name} has no key '{key}'; README says {cell}"
            else:
                assert same_default(cell, declared[key]), \
                    f"{name}.{key}: README {cell}, declared {declared[key]!r}"


def test_each_schedule_key_has_its_declared_default():
    declared = options(Schedule)
    _, types = table_with("cosine")
    assert sorted(types) == sorted(choices(Schedule, "type")), "the schedules' table: one row " \
        "per type"
    written = {k: d for row in types.values()
               for k, d in re.findall(r"`(\w+)` \(([^)]*)\)", row[2])}
    written.update({k: row[1] for k, row in table_with("warmup")[1].items()})
    assert sorted(written) == sorted(k for k in declared if k != "type"), \
        "each schedule key once, as `key` (default) in its type's row or in the table of " \
        "the keys every type takes"
    for key, cell in written.items():
        if cell.startswith("required"):
            assert declared[key] is None, key
        else:
            assert same_default(cell, declared[key]), \
                f"schedule.{key}: README {cell}, declared {declared[key]!r}"

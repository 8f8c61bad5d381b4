"""Errors and diagnostics that point at the place in the spec where the problem is.

Every problem a user can cause is reported as a :class:`Diagnostic`::

    specs/lenet5.yaml:14:5: layer 'fc1' (dense): input has shape (16, 5, 5), a 3-D tensor;
    dense expects a flat vector (F,); add {type: flatten} before 'fc1'

and raised inside a :class:`CnncError` subclass, which the command line prints without a
traceback. Internal invariants may still use ``assert``; user input never does.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SourceLoc:
    """A position in a spec file, 1-based like editors show it."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a spec: where, in which layer, what, what was expected, how to fix."""

    message: str
    loc: SourceLoc | None = None
    layer: str | None = None
    layer_type: str | None = None
    expected: str | None = None
    fix: str | None = None
    severity: str = "error"
    notes: tuple[str, ...] = ()

    def format(self, source_lines: list[str] | None = None) -> str:
        """``FILE:LINE:COL: layer 'NAME' (TYPE): what; expected ...; fix`` plus the source line
        with a caret under the column."""
        head = f"{self.loc}: " if self.loc else ""
        if self.severity != "error":
            head += f"{self.severity}: "
        if self.layer is not None:
            head += f"layer '{self.layer}' ({self.layer_type}): "
        expected = self.expected
        if expected and "expect" not in expected.lower():
            expected = "expected " + expected
        text = head + "; ".join(p for p in (self.message, expected, self.fix) if p)
        lines = [_visible(text)]
        lines += [_visible(f"    note: {n}") for n in self.notes]
        if source_lines and self.loc and 0 < self.loc.line <= len(source_lines):
            src, col = _excerpt(source_lines[self.loc.line - 1].rstrip("\n"), self.loc.col)
            lines.append(f"    | {_UNSAFE.sub('?', src)}")  # one column each, under the caret
            lines.append("    | " + " " * max(col - 1, 0) + "^")
        return "\n".join(lines)

    def with_layer(self, name: str, layer_type: str) -> "Diagnostic":
        return dataclasses.replace(self, layer=name, layer_type=layer_type)


# Characters that make a terminal show a line other than it is: controls (ESC starts escape
# sequences, CR returns to the start of the line) and the bidirectional controls that
# reorder text (U+202E). A spec quotes them back in names, keys and values.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                     "\u2066-\u2069]")


def _visible(text: str) -> str:
    """``text`` with each unsafe character written as its escape (``\\u202e``)."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _excerpt(line: str, col: int, width: int = 100) -> tuple[str, int]:
    """At most ``width`` characters of a source line around ``col`` (a minified one-line spec
    would otherwise be printed whole), and the column within the excerpt."""
    line = line.replace("\t", " ")  # one column per tab keeps the caret under its character
    if len(line) <= width:
        return line, col
    start = max(min(col - 1 - width // 2, len(line) - width), 0)
    text = line[start:start + width]
    if start > 0:
        text, col = "..." + text, col - start + 3
    if start + width < len(line):
        text += "..."
    return text, col


class CnncError(Exception):
    """Base of every error cnnc raises on purpose; the CLI prints it and exits non-zero."""


class SpecError(CnncError):
    """A spec is wrong. Holds every diagnostic found, not only the first."""

    def __init__(self, diagnostics: list[Diagnostic], source_lines: list[str] | None = None):
        self.diagnostics = list(diagnostics)
        self.source_lines = source_lines
        super().__init__(diagnostics[0].message if diagnostics else "invalid spec")

    def __str__(self) -> str:
        return self.format()

    def format(self) -> str:
        """Every diagnostic in source order, as a compiler lists them."""
        # unplaced diagnostics ("stopped after 100 errors") come last
        ordered = sorted(self.diagnostics, key=lambda d: (0, d.loc.file, d.loc.line, d.loc.col)
                         if d.loc else (1, "", 0, 0))
        return "\n".join(d.format(self.source_lines) for d in ordered)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


class ArtifactError(CnncError):
    """A compiled artifact or checkpoint on disk is missing, corrupt, tampered or for another target."""


class BusyError(CnncError):
    """Another cnnc process (or thread) is writing the same directory."""


class InputError(CnncError):
    """An array handed to a compiled model does not match its signature."""


class NonFiniteError(CnncError):
    """A compiled model's output holds NaN or infinite values although its input does not;
    names the first layer whose output does."""


class CompileError(CnncError):
    """Lowering or code generation failed, or a required tool (a CUDA compiler) is missing."""


class NotBuiltError(CnncError):
    """A feature that cnnc does not implement yet; says so instead of pretending."""


class TrainingError(CnncError):
    """Training stopped: a non-finite loss or gradient, or a bad training configuration."""


class FieldError(ValueError):
    """Raised by a field parser; the spec parser adds the location and layer name."""

    def __init__(self, message: str, expected: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.fix = fix


class ShapeError(ValueError):
    """Raised by a layer's shape rule; the checker adds the location and layer name."""

    def __init__(self, message: str, expected: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.fix = fix


@dataclass
class DiagnosticSink:
    """Collects diagnostics while a stage keeps going, so one run reports every problem."""

    source_lines: list[str] | None = None
    items: list[Diagnostic] = field(default_factory=list)

    def add(self, diag: Diagnostic) -> None:
        self.items.append(diag)

    def error(self, message: str, loc: SourceLoc | None = None, **kw) -> None:
        self.items.append(Diagnostic(message, loc, **kw))

    def warn(self, message: str, loc: SourceLoc | None = None, **kw) -> None:
        self.items.append(Diagnostic(message, loc, severity="warning", **kw))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "warning"]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise SpecError(self.items, self.source_lines)


def display_path(path: str | Path) -> str:
    """The path as the user typed it, relative to the working directory where possible."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError, RuntimeError):  # elsewhere, a NUL, a symlink loop, no cwd
        return str(p)

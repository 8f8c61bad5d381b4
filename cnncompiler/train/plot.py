"""A training run's history on disk: ``history.json`` for programs, ``history.svg`` for people.

    history = model.fit(x, y, epochs=20, validation_data=(xv, yv))
    write_history(history, "runs/lenet", extra={"keep": "best", "best_epoch": 17})
    # -> runs/lenet/history.json, runs/lenet/history.svg

    older = read_history("runs/lenet/history.json")       # a resumed run appends to it
    write_history(merge_history(older, history), "runs/lenet", extra=older["extra"])

``history.json`` counts epochs from 1, as the progress lines do; a value that was NaN or
infinite is ``null``, so any JSON reader takes the file::

    {
      "format": "cnnc-history",
      "version": 1,
      "epochs": [1, 2, 3],
      "metrics": {
        "loss": [2.31, 1.02, null],
        "accuracy": [0.11, 0.64, 0.71]
      },
      "extra": {"best_epoch": 2, "keep": "best"}
    }

In Python a history is a :class:`~cnncompiler.train.trainer.History` or a plain dict of the
same shape, ``{"epochs": [0, 1, 2], "history": {"loss": [...], ...}}`` (epochs from 0, a
missing value None); :func:`read_history` returns one, with the file's ``extra`` beside.

``history.svg`` draws loss (training and validation) per epoch and, where the run has one,
accuracy beside it; a missing value leaves a gap in its line. It is drawn here rather than
with a plotting library, which cnnc would otherwise carry for this one picture.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from ..errors import InputError, display_path
from ..storage import write_atomic

FORMAT = "cnnc-history"
VERSION = 1
JSON_NAME = "history.json"
SVG_NAME = "history.svg"
MAX_EPOCH = 10**9  # far beyond any run; a larger number is a damaged file

# (panel title, its series): a series named val_* is drawn as validation
PANELS = (("loss", ("loss", "val_loss")), ("accuracy", ("accuracy", "val_accuracy")))

PANEL_WIDTH, PANEL_HEIGHT = 420, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 72, 16, 40, 46
INSET = 6  # between the plot area's edge and the box drawn around it
TRAIN = {"label": "train", "colour": "#1f77b4", "dash": "none", "fill": "#1f77b4"}
VALIDATION = {"label": "validation", "colour": "#d62728", "dash": "6 4", "fill": "white"}
MARKED_EPOCHS = 60  # more epochs than this: only isolated points get a marker


# -- the history as columns ------------------------------------------------------------------
def history_columns(history) -> tuple[list[int], dict[str, list[float | None]]]:
    """(epochs from 0, metric name -> one finite value or None per epoch) of a History or of a
    dict with its ``epochs`` and ``history``."""
    if isinstance(history, Mapping):
        epochs, metrics = history["epochs"], history["history"]
    else:
        epochs, metrics = history.epochs, history.history
    epochs = [int(e) for e in epochs]
    if any(e < 0 for e in epochs) or any(a >= b for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"epochs must be increasing numbers from 0; got {epochs}")
    columns = {}
    for name, values in metrics.items():
        if len(values) != len(epochs):
            raise ValueError(f"metric '{name}' has {len(values)} values for {len(epochs)} "
                             f"epochs")
        columns[str(name)] = [_finite_or_none(v) for v in values]
    return epochs, columns


def _finite_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def merge_history(older, newer) -> dict:
    """The epochs of ``older`` before ``newer`` begins, then those of ``newer``: the history of
    a resumed run. An epoch both hold comes from ``newer`` (the run went back to an earlier
    checkpoint); a metric only one of them records is None in the other's epochs."""
    old_epochs, old = history_columns(older)
    new_epochs, new = history_columns(newer)
    kept = [i for i, e in enumerate(old_epochs) if not new_epochs or e < new_epochs[0]]

    def column(name: str) -> list[float | None]:
        before = [old[name][i] for i in kept] if name in old else [None] * len(kept)
        return before + new.get(name, [None] * len(new_epochs))

    names = list(old) + [n for n in new if n not in old]
    return {"epochs": [old_epochs[i] for i in kept] + new_epochs,
            "history": {name: column(name) for name in names}}


# -- writing and reading ---------------------------------------------------------------------
def write_history(history, directory, extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``history.json`` and ``history.svg`` into ``directory`` (made if missing), each
    atomically: a run killed while writing leaves the old file or the new one. Both are
    rendered before either is written, so a failure to render changes neither. ``extra`` is
    kept as given (NaN and infinities as null) under the JSON's ``extra``."""
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict; got a {type(extra).__name__}")
    epochs, metrics = history_columns(history)
    document = history_json(epochs, metrics, extra or {})
    picture = history_svg(epochs, metrics)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, svg_path = directory / JSON_NAME, directory / SVG_NAME
    write_atomic(json_path, document.encode("utf-8"))
    write_atomic(svg_path, picture.encode("utf-8"))
    return json_path, svg_path


def history_json(epochs: list[int], metrics: dict, extra: dict) -> str:
    """The text of ``history.json``: one line a metric, so it reads and diffs well."""
    def dump(value) -> str:
        return json.dumps(_json_safe(value), allow_nan=False, sort_keys=True)

    rows = [f"    {dump(name)}: {dump(values)}" for name, values in metrics.items()]
    table = "{\n" + ",\n".join(rows) + "\n  }" if rows else "{}"
    return (f'{{\n  "format": "{FORMAT}",\n  "version": {VERSION},\n'
            f'  "epochs": {dump([e + 1 for e in epochs])},\n'
            f'  "metrics": {table},\n  "extra": {dump(extra)}\n}}\n')


def _json_safe(value):
    """``value`` with numpy numbers made Python's and NaN or infinities made None."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _finite_or_none(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    raise TypeError(f"cannot write a {type(value).__name__} to {JSON_NAME}: {value!r}")


def read_history(path) -> dict:
    """The history in a ``history.json``, as ``{"epochs": [...], "history": {...}, "extra":
    {...}}`` with epochs from 0 again, ready to merge with a resumed run's. A file that is not
    one is refused with :class:`InputError` naming it."""
    where = display_path(path)
    fix = "move it away to start a new history"
    try:
        document = json.loads(Path(path).read_bytes().decode("utf-8"),
                              parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise InputError(f"{where}: no such file; give the {JSON_NAME} a run wrote") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{where}: not a readable JSON file ({exc}); {fix}") from None
    problem = _history_problem(document)
    if problem:
        raise InputError(f"{where}: not a cnnc training history: {problem}; {fix}")
    return {"epochs": [e - 1 for e in document["epochs"]],
            "history": {name: [None if v is None else float(v) for v in values]
                        for name, values in document["metrics"].items()},
            "extra": document.get("extra", {})}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON; a missing value is null")


def _is_number(value) -> bool:
    """A finite number: JSON's 1e400 reads as infinity, and a long integer overflows a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _history_problem(document) -> str | None:
    """What makes ``document`` other than a history this module writes, or None."""
    if not isinstance(document, dict):
        return f"it holds a {type(document).__name__}, expected an object"
    if document.get("format") != FORMAT:
        return f"'format' is {document.get('format')!r}, expected '{FORMAT}'"
    if document.get("version") != VERSION:
        return f"'version' is {document.get('version')!r}; this cnnc reads version {VERSION}"
    epochs = document.get("epochs")
    if not isinstance(epochs, list) or not all(isinstance(e, int) and not isinstance(e, bool)
                                               and 1 <= e <= MAX_EPOCH for e in epochs):
        return f"'epochs' is not a list of epoch numbers from 1 to {MAX_EPOCH}"
    if any(a >= b for a, b in zip(epochs, epochs[1:])):
        return f"'epochs' do not count up: {epochs}"
    metrics = document.get("metrics")
    if not isinstance(metrics, dict):
        return "'metrics' is not an object of metric name -> values"
    for name, values in metrics.items():
        if not isinstance(values, list) or not all(v is None or _is_number(v) for v in values):
            return f"metric '{name}' is not a list of numbers and nulls"
        if len(values) != len(epochs):
            return f"metric '{name}' has {len(values)} values for {len(epochs)} epochs"
    if not isinstance(document.get("extra", {}), dict):
        return "'extra' is not an object"
    return None


# -- the picture -----------------------------------------------------------------------------
def history_svg(epochs: list[int], metrics: dict[str, list[float | None]]) -> str:
    """An SVG of the history: a panel for loss and one for accuracy where the run has it."""
    panels = [(title, [s for s in series if s in metrics]) for title, series in PANELS]
    panels = [(title, series) for title, series in panels if series] or [(PANELS[0][0], [])]
    shown = [e + 1 for e in epochs]
    x_range, x_ticks = _epoch_axis(shown[0], shown[-1]) if shown else _epoch_axis(1, 1)
    width = PANEL_WIDTH * len(panels)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {PANEL_HEIGHT}" '
             f'width="{width}" height="{PANEL_HEIGHT}" font-family="sans-serif" '
             f'font-size="11">',
             f"<title>{escape('training history: ' + ', '.join(t for t, _ in panels))}"
             f"</title>",
             '<rect width="100%" height="100%" fill="white"/>']
    for i, (title, series) in enumerate(panels):
        columns = {name: metrics[name] for name in series}
        parts += _panel(i * PANEL_WIDTH, title, shown, columns, x_range, x_ticks)
    parts.append("</svg>")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "\n".join(parts) + "\n"


@dataclass(frozen=True)
class _Frame:
    """Where a panel's plot area lies in the picture, and which values its edges stand for."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def x(self, epoch: float) -> float:
        return self.left + self.width * _fraction(epoch, *self.x_range)

    def y(self, value: float) -> float:
        return self.top + self.height * (1 - _fraction(value, *self.y_range))


def _fraction(value: float, lo: float, hi: float) -> float:
    # halved first: hi - lo overflows where the values come near the largest float
    span = hi / 2 - lo / 2
    return (value / 2 - lo / 2) / span if span > 0 else 0.5


def _panel(left: int, title: str, epochs: list[int], columns: dict, x_range, x_ticks
           ) -> list[str]:
    values = [v for vs in columns.values() for v in vs if v is not None]
    if values:
        y_range, y_ticks, y_step = _value_axis(min(values), max(values))
    else:
        y_range, y_ticks, y_step = (0.0, 1.0), [], 1.0
    frame = _Frame(left + MARGIN_LEFT + INSET, MARGIN_TOP + INSET,
                   PANEL_WIDTH - MARGIN_LEFT - MARGIN_RIGHT - 2 * INSET,
                   PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM - 2 * INSET, x_range, y_range)
    parts = [f'<g class="panel" data-title={quoteattr(title)} '
             f'data-plot="{frame.left:.2f} {frame.top:.2f} {frame.width:.2f} '
             f'{frame.height:.2f}" data-x-range="{x_range[0]!r} {x_range[1]!r}" '
             f'data-y-range="{y_range[0]!r} {y_range[1]!r}">',
             f'<text class="title" x="{frame.left - INSET:.2f}" y="{MARGIN_TOP - 16}" '
             f'font-size="14" font-weight="bold">{escape(title)}</text>']
    parts += _axes(frame, x_ticks, y_ticks, _tick_labels(y_ticks, y_step))
    if not values:
        parts.append(f'<text x="{frame.left + frame.width / 2:.2f}" '
                     f'y="{frame.top + frame.height / 2:.2f}" text-anchor="middle" '
                     f'fill="#777">no finite values</text>')
    for name, series in columns.items():
        parts += _series(frame, name, epochs, series)
    parts += _legend(frame, list(columns))
    parts.append("</g>")
    return parts


def _axes(frame: _Frame, x_ticks: list[int], y_ticks: list[float], y_labels: list[str]
          ) -> list[str]:
    """The box around the plot area, a grid line and a label at each value tick, a tick mark
    and a label at each epoch tick. The box stands INSET off the plot area, so that points
    at its edges are not drawn over it."""
    left, top = frame.left - INSET, frame.top - INSET
    right, bottom = frame.left + frame.width + INSET, frame.top + frame.height + INSET
    parts = []
    for tick, label in zip(y_ticks, y_labels):
        y = frame.y(tick)
        parts += [f'<line x1="{left:.2f}" y1="{y:.2f}" x2="{right:.2f}" y2="{y:.2f}" '
                  f'stroke="#e4e4e4"/>',
                  f'<text class="y-tick" x="{left - 6:.2f}" y="{y + 4:.2f}" '
                  f'text-anchor="end">{escape(label)}</text>']
    for tick in x_ticks:
        x = frame.x(tick)
        parts += [f'<line x1="{x:.2f}" y1="{bottom:.2f}" x2="{x:.2f}" y2="{bottom + 5:.2f}" '
                  f'stroke="black"/>',
                  f'<text class="x-tick" x="{x:.2f}" y="{bottom + 18:.2f}" '
                  f'text-anchor="middle">{tick}</text>']
    parts += [f'<rect class="plot-box" x="{left:.2f}" y="{top:.2f}" width="{right - left:.2f}" '
              f'height="{bottom - top:.2f}" fill="none" stroke="black"/>',
              f'<text x="{(left + right) / 2:.2f}" y="{bottom + 34:.2f}" '
              f'text-anchor="middle">epoch</text>']
    return parts


def _style(name: str) -> dict:
    return VALIDATION if name.startswith("val_") else TRAIN


def _series(frame: _Frame, name: str, epochs: list[int], values: list) -> list[str]:
    """One metric's line, broken where a value is missing, and a marker on its points."""
    style = _style(name)
    runs = [[]]
    for epoch, value in zip(epochs, values):
        if value is not None:
            runs[-1].append((frame.x(epoch), frame.y(value)))
        elif runs[-1]:
            runs.append([])
    runs = [run for run in runs if run]
    parts = [f'<g class="series" data-metric={quoteattr(name)} stroke="{style["colour"]}" '
             f'fill="{style["fill"]}">']
    for run in runs:
        if len(run) > 1:
            points = " ".join(f"{x:.2f},{y:.2f}" for x, y in run)
            parts.append(f'<polyline points="{points}" fill="none" stroke-width="1.5" '
                         f'stroke-dasharray="{style["dash"]}"/>')
    for run in runs:
        if len(run) == 1 or len(epochs) <= MARKED_EPOCHS:
            parts += [f'<circle cx="{x:.2f}" cy="{y:.2f}" r="2.5"/>' for x, y in run]
    parts.append("</g>")
    return parts


def _legend(frame: _Frame, names: list[str]) -> list[str]:
    """A sample of each line and its label, right-aligned above the plot area."""
    labels = [_style(n)["label"] for n in names]
    x = frame.left + frame.width + INSET - sum(40 + 6.5 * len(label) for label in labels)
    y = MARGIN_TOP - 20
    parts = ['<g class="legend">']
    for name, label in zip(names, labels):
        style = _style(name)
        parts += [f'<line x1="{x:.2f}" y1="{y:.2f}" x2="{x + 22:.2f}" y2="{y:.2f}" '
                  f'stroke="{style["colour"]}" stroke-width="1.5" '
                  f'stroke-dasharray="{style["dash"]}"/>',
                  f'<circle cx="{x + 11:.2f}" cy="{y:.2f}" r="2.5" stroke="{style["colour"]}" '
                  f'fill="{style["fill"]}"/>',
                  f'<text x="{x + 27:.2f}" y="{y + 4:.2f}">{escape(label)}</text>']
        x += 40 + 6.5 * len(label)
    parts.append("</g>")
    return parts


# -- axes ------------------------------------------------------------------------------------
def _nice_step(span: float, mantissas=(1, 2, 2.5, 5)) -> float:
    """The smallest round step (a mantissa times a power of ten) that cuts ``span`` into at
    most five parts."""
    raw = span / 5
    power = 10.0 ** math.floor(math.log10(raw))
    return next((m * power for m in mantissas if m * power >= raw), 10 * power)


def _epoch_axis(first: int, last: int) -> tuple[tuple[float, float], list[int]]:
    """The epoch axis: from the first epoch to the last, ticks at round whole numbers. A single
    epoch sits in the middle."""
    if first == last:
        return (first - 0.5, last + 0.5), [first]
    step = max(1, int(_nice_step(last - first, (1, 2, 5))))
    return (float(first), float(last)), list(range(math.ceil(first / step) * step, last + 1, step))


def _value_axis(lo: float, hi: float) -> tuple[tuple[float, float], list[float], float]:
    """(ends, ticks, step) of a value axis that covers [lo, hi], with its ends and ticks on
    multiples of a round step. Where the values defeat the arithmetic (a span beyond the
    largest float, steps below the smallest) the axis runs from lo to hi, ticked at both."""
    if lo == hi:
        lo, hi = _around(lo)
    try:
        step = _nice_step(hi - lo)
        start, stop = math.floor(lo / step), math.ceil(hi / step)
        ends = (start * step, stop * step)
    except (OverflowError, ValueError, ZeroDivisionError):
        return (lo, hi), [lo, hi], hi / 2 - lo / 2
    if not all(math.isfinite(e) for e in ends) or stop - start > 12 or ends[0] >= ends[1]:
        return (lo, hi), [lo, hi], hi / 2 - lo / 2
    # the round-off of k * step is not shown: 3 * 0.1 is the tick 0.3, and -1e-17 is 0
    ticks = [0.0 if k == 0 else k * step for k in range(start, stop + 1)]
    return ends, ticks, step


def _around(value: float) -> tuple[float, float]:
    """An interval with a constant in its middle (or at an end where the middle would reach
    past the largest float)."""
    pad = abs(value) / 10 or 1.0
    lo, hi = value - pad, value + pad
    if math.isinf(hi):
        return value - 2 * pad, value
    if math.isinf(lo):
        return value, value + 2 * pad
    return lo, hi


def _tick_labels(ticks: list[float], step: float) -> list[str]:
    """The shortest labels that still tell each tick to within a thousandth of a step: fixed
    point for everyday magnitudes, ``2.5e-7`` for the rest."""
    if not ticks:
        return []
    close = step / 1000
    if step >= 1e-4 and max(abs(t) for t in ticks) < 1e6:
        for decimals in range(8):
            labels = [f"{t:.{decimals}f}" for t in ticks]
            if all(abs(float(s) - t) <= close for s, t in zip(labels, ticks)):
                break
        return labels
    for digits in range(17):
        labels = [_scientific(t, digits) for t in ticks]
        if all(abs(float(s) / 2 - t / 2) <= close / 2 for s, t in zip(labels, ticks)):
            break
    return labels


def _scientific(value: float, digits: int) -> str:
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"

"""A run's history on disk: history.json reads back as it was written, with NaN as null and a
damaged file refused by name; history.svg is valid XML whose lines, read back through the
panel's axes, give the recorded values; both files are replaced whole or not at all."""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET

import pytest

from cnncompiler.errors import InputError, display_path
from cnncompiler.train import plot
from cnncompiler.train.plot import merge_history, read_history, write_history
from cnncompiler.train.trainer import History

SVG = "{http://www.w3.org/2000/svg}"


def classification_history() -> History:
    history = History()
    for epoch, (loss, acc) in enumerate([(2.3, 0.11), (1.4, 0.52), (0.9, 0.71), (0.7, 0.8)]):
        history.record(epoch, {"loss": loss, "accuracy": acc, "val_loss": loss + 0.2,
                               "val_accuracy": acc - 0.05, "lr": 0.1 / (epoch + 1),
                               "samples_per_second": 1000.0 + epoch})
    return history


def regression(values: list, val: list | None = None) -> dict:
    columns = {"loss": values} if val is None else {"loss": values, "val_loss": val}
    return {"epochs": list(range(len(values))), "history": columns}


def picture(history, tmp_path) -> ET.Element:
    _, svg_path = write_history(history, tmp_path)
    return ET.fromstring(svg_path.read_bytes())


def panels(root: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-title"): g for g in root.iter(f"{SVG}g") if g.get("class") == "panel"}


def plotted(panel: ET.Element) -> dict[str, dict]:
    """Each series of a panel read back through the panel's axes: its lines and its markers
    as lists of (epoch, value)."""
    left, top, width, height = map(float, panel.get("data-plot").split())
    x_lo, x_hi = map(float, panel.get("data-x-range").split())
    y_lo, y_hi = map(float, panel.get("data-y-range").split())

    def point(x: float, y: float) -> tuple[float, float]:
        epoch = x_lo + (x - left) / width * (x_hi - x_lo)
        # halved, as the picture is drawn: y_hi - y_lo may overflow
        half = y_lo / 2 + (1 - (y - top) / height) * (y_hi / 2 - y_lo / 2)
        return epoch, 2 * half

    found = {}
    for group in panel.iter(f"{SVG}g"):
        if group.get("class") != "series":
            continue
        lines = [[point(*map(float, xy.split(","))) for xy in line.get("points").split()]
                 for line in group.iter(f"{SVG}polyline")]
        markers = [point(float(c.get("cx")), float(c.get("cy")))
                   for c in group.iter(f"{SVG}circle")]
        found[group.get("data-metric")] = {"lines": lines, "markers": markers}
    return found


def check_points(points, epochs: list[int], values: list, panel: ET.Element) -> None:
    """Every point lies on a whole epoch and shows that epoch's value to within the
    picture's rounding of coordinates to a hundredth of a unit."""
    y_lo, y_hi = map(float, panel.get("data-y-range").split())
    height = float(panel.get("data-plot").split()[3])
    close = (y_hi / 2 - y_lo / 2) * 2 / height * 0.01
    for epoch, value in points:
        assert abs(epoch - round(epoch)) < 0.01
        expected = values[epochs.index(round(epoch) - 1)]
        assert abs(value / 2 - expected / 2) * 2 <= close, (epoch, value, expected)


def tick_labels(panel: ET.Element, kind: str) -> list[str]:
    return [t.text for t in panel.iter(f"{SVG}text") if t.get("class") == kind]


def test_picture_is_valid_xml_with_a_view_box(tmp_path):
    root = picture(classification_history(), tmp_path)
    assert root.tag == f"{SVG}svg"
    assert [float(v) for v in root.get("viewBox").split()] == [0, 0, 2 * plot.PANEL_WIDTH,
                                                                 plot.PANEL_HEIGHT]
    assert root.find(f"{SVG}title").text == "training history: loss, accuracy"
    assert list(panels(root)) == ["loss", "accuracy"]


def test_lines_map_back_to_the_values(tmp_path):
    history = classification_history()
    shown = panels(picture(history, tmp_path))
    for title, names in plot.PANELS:
        series = plotted(shown[title])
        assert list(series) == list(names)
        for name, drawn in series.items():
            [line] = drawn["lines"]
            assert [round(e) for e, _ in line] == [1, 2, 3, 4]
            check_points(line, history.epochs, history[name], shown[title])
            check_points(drawn["markers"], history.epochs, history[name], shown[title])
    # the training line is solid, the validation line dashed and its markers hollow
    groups = {g.get("data-metric"): g for g in shown["loss"].iter(f"{SVG}g")}
    assert groups["loss"].find(f"{SVG}polyline").get("stroke-dasharray") == "none"
    assert groups["val_loss"].find(f"{SVG}polyline").get("stroke-dasharray") != "none"
    assert groups["loss"].get("stroke") != groups["val_loss"].get("stroke")
    assert groups["val_loss"].get("fill") == "white"


def test_missing_values_break_the_line(tmp_path):
    history = regression([1.0, 0.8, math.nan, 0.5, 0.4, None, 0.3],
                         [1.2, math.inf, 0.9, 0.8, 0.7, 0.6, 0.5])
    shown = panels(picture(history, tmp_path))
    series = plotted(shown["loss"])
    epochs = history["epochs"]
    loss, val = series["loss"], series["val_loss"]
    assert [[round(e) for e, _ in line] for line in loss["lines"]] == [[1, 2], [4, 5]]
    assert [round(e) for e, _ in loss["markers"]] == [1, 2, 4, 5, 7]  # epoch 7 stands alone
    assert [[round(e) for e, _ in line] for line in val["lines"]] == [[3, 4, 5, 6, 7]]
    for drawn, values in ((loss, history["history"]["loss"]),
                          (val, history["history"]["val_loss"])):
        for line in drawn["lines"]:
            check_points(line, epochs, values, shown["loss"])


def test_regression_history_has_one_panel(tmp_path):
    root = picture(regression([3.0, 2.0, 1.5], [3.5, 2.5, 2.0]), tmp_path)
    assert list(panels(root)) == ["loss"]
    assert root.get("viewBox").split()[2] == str(plot.PANEL_WIDTH)


def test_one_epoch_history(tmp_path):
    history = History()
    history.record(0, {"loss": 0.7, "accuracy": 0.5, "val_loss": 0.9, "val_accuracy": 0.4})
    shown = panels(picture(history, tmp_path))
    assert list(shown) == ["loss", "accuracy"]
    for panel in shown.values():
        assert tick_labels(panel, "x-tick") == ["1"]
        for name, drawn in plotted(panel).items():
            assert drawn["lines"] == []
            [(epoch, value)] = drawn["markers"]
            assert abs(epoch - 1) < 0.01
            check_points(drawn["markers"], [0], history[name], panel)


def test_empty_history_draws_an_empty_panel(tmp_path):
    root = picture(History(), tmp_path)
    assert list(panels(root)) == ["loss"]
    assert "no finite values" in ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize("values", [
    [0.5, 0.5, 0.5], [0.0, 0.0], [-2.0, -2.0], [1e300, 3e300, 2e300], [1e-300, 4e-300],
    [-1e308, 1e308, 1.7e308], [1.7e308, 1.7e308], [5e-324, 1e-323], [1e-12, 1e-12],
    [123456.0, 123457.0, 123458.5], [0.98, 0.985, 0.99],
], ids=["constant", "zero", "negative", "huge", "tiny", "whole-range", "largest-constant",
        "subnormal", "tiny-constant", "large-offset", "close"])
def test_extreme_values_stay_in_the_plot(tmp_path, values):
    history = regression(values)
    root = picture(history, tmp_path)
    panel = panels(root)["loss"]
    left, top, width, height = map(float, panel.get("data-plot").split())
    drawn = plotted(panel)["loss"]
    points = [p for line in drawn["lines"] for p in line] + drawn["markers"]
    assert len(drawn["markers"]) == len(values)
    check_points(points, history["epochs"], values, panel)
    for circle in root.iter(f"{SVG}circle"):
        if circle.get("fill") is None:  # a data point, not the legend's sample
            assert left - 0.01 <= float(circle.get("cx")) <= left + width + 0.01
            assert top - 0.01 <= float(circle.get("cy")) <= top + height + 0.01
    labels = tick_labels(panel, "y-tick")
    assert len(labels) >= 2 and len(set(labels)) == len(labels)
    assert all(math.isfinite(float(label)) for label in labels)


@pytest.mark.parametrize("values, labels", [
    ([0.13, 2.37], ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5"]),
    ([0.41, 0.93], ["0.4", "0.6", "0.8", "1.0"]),
    ([12.0, 87.0], ["0", "20", "40", "60", "80", "100"]),
    ([2e-7, 9e-7], ["2e-7", "4e-7", "6e-7", "8e-7", "1e-6"]),
    ([0.0, 3.2e9], ["0", "1e9", "2e9", "3e9", "4e9"]),
])
def test_value_ticks_are_round_numbers(tmp_path, values, labels):
    panel = panels(picture(regression(values), tmp_path))["loss"]
    shown = tick_labels(panel, "y-tick")
    assert shown == labels
    ticks = [float(label) for label in shown]
    step = ticks[1] - ticks[0]
    assert all(math.isclose(b - a, step) for a, b in zip(ticks, ticks[1:]))
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    assert ticks[0] <= min(values) and max(values) <= ticks[-1]


def test_json_round_trip(tmp_path):
    history = classification_history()
    extra = {"keep": "best", "best_epoch": 3, "test": {"loss": 0.71, "accuracy": 0.79}}
    json_path, svg_path = write_history(history, tmp_path / "run", extra)
    assert (json_path, svg_path) == (tmp_path / "run" / "history.json",
                                     tmp_path / "run" / "history.svg")
    document = json.loads(json_path.read_text())
    assert document["epochs"] == [1, 2, 3, 4]  # counted as the progress lines count them
    assert document["metrics"]["loss"] == history["loss"]
    read = read_history(json_path)
    assert read == {"epochs": history.epochs, "history": history.history, "extra": extra}
    text = json_path.read_bytes()
    write_history(read, tmp_path / "again", read["extra"])
    assert (tmp_path / "again" / "history.json").read_bytes() == text


def test_non_finite_values_are_written_as_null(tmp_path):
    history = regression([1.0, math.nan, math.inf, -math.inf, None, 0.5])
    json_path, _ = write_history(history, tmp_path, {"test": {"loss": math.nan}})
    text = json_path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def refuse(name):
        raise AssertionError(f"{name} in history.json")

    document = json.loads(text, parse_constant=refuse)
    assert document["metrics"]["loss"] == [1.0, None, None, None, None, 0.5]
    assert document["extra"] == {"test": {"loss": None}}
    assert read_history(json_path)["history"]["loss"] == [1.0, None, None, None, None, 0.5]


def test_merge_history_of_a_resumed_run():
    older = {"epochs": [0, 1, 2, 3], "history": {"loss": [4.0, 3.0, 2.0, 1.0],
                                                "lr": [0.1, 0.1, 0.1, 0.1]}}
    newer = History()  # resumed from the checkpoint after epoch 2, with validation now
    newer.record(2, {"loss": 2.5, "val_loss": 2.6})
    newer.record(3, {"loss": 1.5, "val_loss": 1.6})
    newer.record(4, {"loss": 1.2, "val_loss": 1.3})
    merged = merge_history(older, newer)
    assert merged == {"epochs": [0, 1, 2, 3, 4],
                      "history": {"loss": [4.0, 3.0, 2.5, 1.5, 1.2],
                                  "lr": [0.1, 0.1, None, None, None],
                                  "val_loss": [None, None, 2.6, 1.6, 1.3]}}


GOOD = {"format": "cnnc-history", "version": 1, "epochs": [1, 2],
        "metrics": {"loss": [1.0, 0.5]}, "extra": {}}


@pytest.mark.parametrize("content, problem", [
    (b'{"format": "cnnc-history", ', "not a readable JSON file"),
    (b"\xff\xfe{}", "not a readable JSON file"),
    (b"[" * 100_000, "not a readable JSON file"),
    (b"[1, 2]", "it holds a list"),
    ({**GOOD, "format": "keras"}, "'format' is 'keras'"),
    ({**GOOD, "version": 2}, "this cnnc reads version 1"),
    ({**GOOD, "epochs": [2, 1]}, "do not count up"),
    ({**GOOD, "epochs": [0, 1]}, "epoch numbers from 1"),
    ({**GOOD, "epochs": [1, 2.5]}, "epoch numbers from 1"),
    ({**GOOD, "metrics": [1.0, 0.5]}, "'metrics' is not an object"),
    ({**GOOD, "metrics": {"loss": [1.0]}}, "has 1 values for 2 epochs"),
    ({**GOOD, "metrics": {"loss": ["low", 0.5]}}, "not a list of numbers and nulls"),
    ({**GOOD, "metrics": {"loss": [True, 0.5]}}, "not a list of numbers and nulls"),
    (b'{"format": "cnnc-history", "version": 1, "epochs": [1], "metrics": {"loss": [1e400]}}',
     "not a list of numbers and nulls"),
    (b'{"format": "cnnc-history", "version": 1, "epochs": [1], "metrics": {"loss": [NaN]}}',
     "NaN is not JSON"),
    ({**GOOD, "extra": ["best"]}, "'extra' is not an object"),
])
def test_malformed_history_is_refused_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "history.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(InputError) as caught:
        read_history(path)
    message = str(caught.value)
    assert message.startswith(display_path(path) + ": ")
    assert problem in message


def test_missing_history_file_is_named(tmp_path):
    path = tmp_path / "history.json"
    with pytest.raises(InputError, match="no such file") as caught:
        read_history(path)
    assert display_path(path) in str(caught.value)


def test_failed_write_keeps_the_old_files(tmp_path, monkeypatch):
    write_history(regression([1.0, 0.5]), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_fails(fd):  # the new bytes are in the temporary file, not yet renamed
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_fails)
    with pytest.raises(OSError, match="Input/output error"):
        write_history(regression([9.0, 8.0, 7.0]), tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no leftovers
    assert read_history(tmp_path / "history.json")["history"]["loss"] == [1.0, 0.5]


def test_failed_drawing_writes_neither_file(tmp_path, monkeypatch):
    write_history(regression([1.0, 0.5]), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def drawing_fails(*args):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plot, "history_svg", drawing_fails)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_history(regression([9.0, 8.0, 7.0]), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

"""The ``cnnc`` command line: what check, summary and graph print, write and exit with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import cnncompiler
from cnncompiler.cli import main
from cnncompiler.graph import draw

TINY = """\
name: tiny
input: [1, 8, 8]
layers:
  - {name: conv, type: conv2d, filters: 2, kernel: 3}
  - {type: flatten}
  - {name: fc, type: dense, units: 10}
"""
# conv: 2*1*3*3 + 2 = 20 parameters, 2 * (2*6*6) * (1*3*3) = 1296 FLOPs, output (2, 6, 6)
# fc:   72*10 + 10 = 730 parameters, 2 * 72 * 10 = 1440 FLOPs


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def write(tmp_path, text: str, name: str = "net.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cnnc(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- check ------------------------------------------------------------------------------------

def test_check_ok_says_what_it_checked(spec, capsys):
    code, out, err = cnnc(capsys, "check", spec)
    assert code == 0 and err == ""
    assert out.strip() == (f"{spec}: ok: 3 layers checked, input (1, 8, 8) -> 'fc' (10,); "
                           "750 parameters, 2,736 FLOPs per sample")


def test_check_prints_paths_relative_to_the_working_directory(spec, capsys, monkeypatch):
    monkeypatch.chdir(spec.parent)
    _, out, _ = cnnc(capsys, "check", spec)
    assert out.startswith("tiny.yaml: ok:")


def test_check_warnings_keep_exit_zero_and_strict_makes_them_errors(tmp_path, capsys):
    path = write(tmp_path, "input: [1, 28, 28]\n"
                           "layers: [{name: c, type: conv2d, filters: 2, kernel: 3, stride: 2}]\n")
    code, out, _ = cnnc(capsys, "check", path)
    assert code == 0
    assert f"{path}:2:10: warning: layer 'c' (conv2d): stride 2 leaves a remainder" in out
    assert "input row 27 is never read" in out and "input column 27 is never read" in out
    assert out.rstrip().endswith("; 2 warning(s)")

    code, out, err = cnnc(capsys, "check", "--strict", path)
    assert code == 1 and out == ""
    assert f"{path}:2:10: layer 'c' (conv2d): stride 2" in err
    assert "note: an error because of --strict" in err
    assert err.rstrip().endswith("2 errors found")


def test_check_warns_about_layers_that_reach_no_output(tmp_path, capsys):
    path = write(tmp_path, "input: [3, 4]\nlayers:\n  - {name: a, type: relu}\n"
                           "  - {name: b, type: tanh, inputs: input}\n")
    code, out, _ = cnnc(capsys, "check", path)
    assert code == 0
    assert "warning: layer 'a' (relu): its output reaches no model output" in out


def test_check_errors_go_to_stderr_with_a_count_and_exit_one(tmp_path, capsys):
    path = write(tmp_path, "input: [3, 4]\nlayers: [{type: rellu}, {type: tanhh}]\n")
    code, out, err = cnnc(capsys, "check", path)
    assert code == 1 and out == ""
    assert f"{path}:2:17: layer '0' (rellu): unknown layer type 'rellu'" in err
    assert f"{path}:2:32: layer '1' (tanhh): unknown layer type 'tanhh'" in err
    assert err.rstrip().endswith("2 errors found")


def test_check_missing_file(tmp_path, capsys):
    code, _, err = cnnc(capsys, "check", tmp_path / "nope.yaml")
    assert code == 1 and "no such spec file" in err and "Traceback" not in err


# -- summary ----------------------------------------------------------------------------------

def test_summary_table(spec, capsys):
    code, out, _ = cnnc(capsys, "summary", spec)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"tiny  ({spec})"
    assert lines[2].split() == ["layer", "type", "output", "params", "FLOPs", "RF", "stride",
                                "act.", "mem"]
    rows = {line.split()[0]: line for line in lines[4:8]}
    assert rows.keys() == {"input", "conv", "1", "fc"}
    assert rows["conv"].split()[:6] == ["conv", "conv2d", "(2,", "6,", "6)", "20"]
    assert "3x3" in rows["conv"] and "288 B" in rows["conv"]
    assert "parameters: 750 trainable (2.9 KiB)" in out
    assert "FLOPs per sample: 2,736 (2.74K)" in out


def test_summary_json(spec, capsys):
    code, out, _ = cnnc(capsys, "summary", "--json", spec)
    assert code == 0
    data = json.loads(out)
    assert data["total_params"] == 750 and data["total_flops"] == 2736
    assert data["name"] == "tiny" and data["input_shape"] == [1, 8, 8]
    assert data["output_shapes"] == {"fc": [10]}
    layers = {row["name"]: row for row in data["layers"]}
    for row in data["layers"]:
        for key in ("name", "type", "output_shape", "params", "flops", "receptive_field",
                    "stride", "activation_bytes"):
            assert key in row
    assert layers["conv"] == {**layers["conv"], "type": "conv2d", "output_shape": [2, 6, 6],
                              "params": 20, "flops": 1296, "receptive_field": [3, 3],
                              "stride": [1, 1], "activation_bytes": 288}
    assert layers["fc"]["params"] == 730 and layers["fc"]["flops"] == 1440
    assert layers["fc"]["receptive_field"] == [3, 3] and layers["fc"]["output_shape"] == [10]
    assert layers["input"]["activation_bytes"] == 256
    assert data["warnings"] == []


def test_summary_receptive_field_grows_with_stride(tmp_path, capsys):
    path = write(tmp_path, "input: [1, 16, 16]\nlayers:\n"
                           "  - {name: a, type: conv2d, filters: 1, kernel: 3, stride: 2,"
                           " padding: 1}\n"
                           "  - {name: b, type: conv2d, filters: 1, kernel: 3, padding: 1}\n")
    _, out, _ = cnnc(capsys, "summary", "--json", path)
    rows = {r["name"]: r for r in json.loads(out)["layers"]}
    assert rows["a"]["receptive_field"] == [3, 3] and rows["a"]["stride"] == [2, 2]
    assert rows["b"]["receptive_field"] == [7, 7] and rows["b"]["stride"] == [2, 2]


def test_summary_of_a_broken_spec_exits_one(tmp_path, capsys):
    code, out, err = cnnc(capsys, "summary", "--json", write(tmp_path, "input: [3]\nlayers: 5\n"))
    assert code == 1 and out == "" and "'layers' must be a non-empty list" in err


# -- graph ------------------------------------------------------------------------------------

def test_graph_dot(spec, tmp_path, capsys):
    out_path = tmp_path / "pics" / "tiny.dot"
    code, out, _ = cnnc(capsys, "graph", spec, "-o", out_path)
    assert code == 0 and out.strip() == f"wrote {out_path} (dot text)"
    dot = out_path.read_text()
    assert dot.startswith('digraph "tiny" {')
    assert dot.count("->") == 3
    assert 'label="(2, 6, 6)"' in dot and "conv\\nconv2d\\nfilters=2, kernel=3" in dot


def test_graph_dot_quotes_names(tmp_path, capsys):
    path = write(tmp_path, 'name: my-net.v2\ninput: [3]\nlayers: [{type: relu}]\n')
    cnnc(capsys, "graph", path, "-o", tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text().startswith('digraph "my-net.v2" {')


def test_graph_of_a_name_with_quotes_is_refused_before_drawing(tmp_path, capsys):
    path = write(tmp_path, 'name: "my \\"net\\" v2"\ninput: [3]\nlayers: [{type: relu}]\n')
    code, _, err = cnnc(capsys, "graph", path, "-o", tmp_path / "g.dot")
    assert code == 1 and "the model name" in err
    assert not (tmp_path / "g.dot").exists()


def test_graph_svg_without_graphviz_is_drawn_by_the_built_in_layout(spec, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    out_path = tmp_path / "tiny.svg"
    code, out, _ = cnnc(capsys, "graph", spec, "-o", out_path)
    assert code == 0 and "(built-in layout)" in out
    root = ET.parse(out_path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "conv" in texts and "dense" in texts and "(2, 6, 6)" in texts


def _fake_dot(tmp_path: Path) -> Path:
    """A stand-in for Graphviz's dot: keeps the DOT text it is given, writes a small SVG."""
    script = tmp_path / "dot"
    script.write_text(f"""#!{sys.executable}
import sys
text = sys.stdin.read()
open({str(tmp_path / "given.dot")!r}, "w").write(text)
out = sys.argv[sys.argv.index("-o") + 1]
open(out, "w").write('<svg xmlns="http://www.w3.org/2000/svg"><text>from dot</text></svg>')
""")
    script.chmod(0o755)
    return script


@pytest.mark.skipif(os.name == "nt", reason="the fake dot is a POSIX script")
def test_graph_svg_with_graphviz_uses_dot(spec, tmp_path, capsys, monkeypatch):
    fake = _fake_dot(tmp_path)
    monkeypatch.setattr(draw.shutil, "which", lambda name: str(fake) if name == "dot" else None)
    out_path = tmp_path / "tiny.svg"
    code, out, _ = cnnc(capsys, "graph", spec, "-o", out_path)
    assert code == 0 and "(graphviz)" in out
    ET.parse(out_path)
    assert (tmp_path / "given.dot").read_text().startswith('digraph "tiny" {')


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_graph_with_real_graphviz(spec, tmp_path, capsys, suffix):
    out_path = tmp_path / f"tiny.{suffix}"
    code, out, _ = cnnc(capsys, "graph", spec, "-o", out_path)
    assert code == 0 and "(graphviz)" in out and out_path.stat().st_size > 0
    if suffix == "svg":
        ET.parse(out_path)
    else:
        assert out_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_png_without_graphviz_says_what_to_do(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    out_path = tmp_path / "tiny.png"
    code, out, err = cnnc(capsys, "graph", spec, "-o", out_path)
    assert code == 1
    assert "drawing PNG needs Graphviz's 'dot'" in err and "draw to .svg or .dot" in err
    assert not out_path.exists() and "Traceback" not in err


@pytest.mark.parametrize("name,message", [
    ("tiny.jpg", "unknown picture format '.jpg'; use .svg, .png or .dot"),
    ("tiny", "the name has no extension"),
])
def test_graph_unknown_format(spec, tmp_path, capsys, name, message):
    code, _, err = cnnc(capsys, "graph", spec, "-o", tmp_path / name)
    assert code == 1 and message in err


def test_graph_to_a_place_that_cannot_be_written(spec, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = cnnc(capsys, "graph", spec, "-o", blocker / "g.dot")
    assert code == 1 and "cannot write" in err and "Traceback" not in err


# -- the command itself -----------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cnnc {cnncompiler.__version__}"


def test_no_arguments_prints_help(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: cnnc")
    for command in ("check", "summary", "graph"):
        assert command in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compile-everything"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_as_a_subprocess(spec):
    run = [sys.executable, "-m", "cnncompiler.cli"]
    proc = subprocess.run(run + ["--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cnnc {cnncompiler.__version__}"
    proc = subprocess.run(run + ["check", str(spec)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and ": ok: 3 layers checked" in proc.stdout


def test_every_argument_has_help_text():
    import argparse

    from cnncompiler.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not action.help and action.dest != "help":
                missing.append(" ".join([*path, *(action.option_strings or [action.dest])]))

    walk(build_parser(), ["cnnc"])
    assert not missing, f"arguments without help: {missing}"

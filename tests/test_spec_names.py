"""Names of the model, its blocks, layers and outputs: ASCII letters, digits, '_', '-' and '.',
not starting with '.' or '-'. They end up in file and parameter names and in printed messages,
so a path (``/etc``, ``../../x``), a NUL or a right-to-left override is refused where it is
written, with the usual ``FILE:LINE:COL: layer 'NAME' (TYPE): what; expected; fix``.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import classic_specs
from cnncompiler.cli import main
from cnncompiler.errors import SpecError
from cnncompiler.spec import load_spec, parse_spec_text
from cnncompiler.spec.parse import MAX_NAME, NAME_RE

PATH = "net.yaml"
EXPECTED = ("expected a name of ASCII letters, digits, '_', '-' and '.', not starting with '.' "
            "or '-'")
LAYERS = "input: [3, 8, 8]\nlayers:\n"


def refusal(text: str) -> str:
    """The one printed diagnostic line for ``text``, which must be refused."""
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, PATH)
    lines = [line for line in info.value.format().splitlines() if line.startswith(PATH)]
    assert len(lines) == 1, info.value.format()
    return lines[0]


def yaml_string(name: str) -> str:
    """``name`` as a double-quoted YAML string, with escapes for what YAML cannot hold raw."""
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                         for c in name) + '"'


# -- accepted ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "2001-01-01", "vgg16_bn", "net.v2", "_x", "0"])
def test_model_names_that_are_accepted(name):
    assert parse_spec_text(f"name: {name}\n{LAYERS}  - {{type: relu}}\n", PATH).name == name


def test_an_integer_model_name_is_its_digits():
    assert parse_spec_text(f"name: 18\n{LAYERS}  - {{type: relu}}\n", PATH).name == "18"


@pytest.mark.parametrize("path,name", [("specs/my net.yaml", "my_net"), ("<spec>", "spec"),
                                       ("..yaml", "model"), ("/tmp/.x.yaml", "x")])
def test_without_a_name_the_file_name_made_into_one(path, name):
    assert parse_spec_text(f"{LAYERS}  - {{type: relu}}\n", path).name == name


def test_layer_names_dotted_positional_and_from_block_parameters():
    spec = parse_spec_text(LAYERS + """\
  - {name: layer1.0.conv1, type: relu}
  - {type: relu}
  - {name: 7, type: relu}
  - {name: stage, type: unit, tag: a-b_c}
blocks:
  unit:
    params: {tag: null}
    layers: [{name: $tag, type: relu}, {type: relu}]
""", PATH)
    assert [d.name for d in spec.layers] == ["layer1.0.conv1", "1", "7", "stage.a-b_c",
                                             "stage.1"]


@pytest.mark.parametrize("path", classic_specs(), ids=lambda p: p.stem)
def test_every_name_in_the_classic_specs_is_a_name(path):
    spec = load_spec(path)
    for name in [spec.name] + [d.name for d in spec.layers]:
        assert NAME_RE.fullmatch(name), name


# -- refused, with the place and the fix ------------------------------------------------------

@pytest.mark.parametrize("written,shown,problem,fix", [
    ("/some/dir", "/some/dir", "contains '/'", "rename it, e.g. 'some_dir'"),
    ("../../../x", "../../../x", "contains '/'", "rename it, e.g. 'x'"),
    ("..", "..", "starts with '.'", "rename it, e.g. 'model'"),
    (".hidden", ".hidden", "starts with '.'", "rename it, e.g. 'hidden'"),
    ("-rf", "-rf", "starts with '-'", "rename it, e.g. 'rf'"),
    ("my net", "my net", "contains a space", "rename it, e.g. 'my_net'"),
    ('"a\\0b"', "a\\u0000b", "contains U+0000 (a control character)", "rename it, e.g. 'a_b'"),
    ('"evil\\u202etxt.yaml"', "evil\\u202etxt.yaml",
     "contains U+202E (RIGHT-TO-LEFT OVERRIDE)", "rename it, e.g. 'evil_txt.yaml'"),
    ("'a\\b'", "a\\b", "contains '\\'", "rename it, e.g. 'a_b'"),
    ("''", "", "is empty", "write a name such as 'conv1'"),
])
def test_model_names_that_are_refused(written, shown, problem, fix):
    line = refusal(f"name: {written}\n{LAYERS}  - {{type: relu}}\n")
    assert line == f"{PATH}:1:7: the model name '{shown}' {problem}; {EXPECTED}; {fix}"


def test_a_model_name_that_is_not_a_string_is_refused():
    line = refusal(f"name: [a, b]\n{LAYERS}  - {{type: relu}}\n")
    assert line.startswith(f"{PATH}:1:7: 'name' must be a string, received ['a', 'b']")


@pytest.mark.parametrize("written,shown,problem,fix", [
    ("/etc/passwd", "/etc/passwd", "contains '/'", "rename it, e.g. 'etc_passwd'"),
    ("../up", "../up", "contains '/'", "rename it, e.g. 'up'"),
    ("..", "..", "starts with '.'", "rename it, e.g. 'layer1'"),
    ("'conv 1'", "conv 1", "contains a space", "rename it, e.g. 'conv_1'"),
    ('"c\\0"', "c\\u0000", "contains U+0000 (a control character)", "rename it, e.g. 'c'"),
    ('"a\\u202eb"', "a\\u202eb", "contains U+202E (RIGHT-TO-LEFT OVERRIDE)",
     "rename it, e.g. 'a_b'"),
    ('"\\e[2J"', "\\u001b[2J", "contains U+001B (a control character)",
     "rename it, e.g. '2J'"),
    ("''", "", "is empty", "write a name such as 'conv1'"),
    ("-1", "-1", "starts with '-'", "rename it, e.g. '1'"),
])
def test_layer_names_that_are_refused(written, shown, problem, fix):
    line = refusal(f"{LAYERS}  - {{type: relu}}\n  - {{name: {written}, type: relu}}\n")
    assert line == f"{PATH}:4:12: layer '{shown}' (relu): the layer name {problem}; " \
                   f"{EXPECTED}; {fix}"


def test_a_name_longer_than_the_limit_is_refused():
    line = refusal(f"{LAYERS}  - {{name: {'a' * (MAX_NAME + 1)}, type: relu}}\n")
    assert f"the layer name is {MAX_NAME + 1} characters long; {EXPECTED}, of at most " \
           f"{MAX_NAME} characters; rename it, e.g. '{'a' * 40}'" in line


def test_a_name_from_a_block_parameter_is_checked_where_the_block_is_used():
    with pytest.raises(SpecError) as info:
        parse_spec_text(LAYERS + """\
  - {name: stage, type: unit, tag: ../x}
blocks:
  unit:
    params: {tag: null}
    layers: [{name: $tag, type: relu}]
""", PATH)
    first, *notes = info.value.format().splitlines()
    assert first == f"{PATH}:7:21: layer 'stage.../x' (relu): the layer name contains '/'; " \
                    f"{EXPECTED}; rename it, e.g. 'x'"
    assert f"    note: in block 'unit', expanded as 'stage' at {PATH}:3:5" in notes
    assert f"    note: 'name' comes from $tag given at {PATH}:3:36" in notes


def test_block_names_that_are_refused():
    line = refusal(LAYERS + "  - {type: relu}\nblocks:\n  a/b: {layers: [{type: relu}]}\n")
    assert line == f"{PATH}:5:3: block 'a/b': the block name contains '/'; {EXPECTED}; " \
                   "rename it, e.g. 'a_b'"


@pytest.mark.parametrize("param,shown", [("1", "1"), (".nan", "nan (not a number)"),
                                         ("~", "null"), ("'a-b'", "'a-b' (a string)")])
def test_block_parameters_that_dollar_cannot_name_are_refused(param, shown):
    line = refusal(LAYERS + f"""\
  - {{type: unit}}
blocks:
  unit:
    params: {{x: 1, {param}: 2}}
    layers: [{{type: conv2d, filters: $x, kernel: 1}}]
""")
    assert line == f"{PATH}:6:20: block 'unit': parameter {shown} is not a name that '$' can " \
                   "refer to; expected letters, digits and '_', not starting with a digit; " \
                   "rename it, e.g. filters"


def test_output_names_that_are_refused():
    line = refusal(LAYERS + "  - {name: a, type: relu}\noutputs: [a, ../a]\n")
    assert line == f"{PATH}:4:14: output name '../a' contains '/'; {EXPECTED}; " \
                   "list the name of a layer"


def test_the_command_line_prints_no_terminal_control_characters(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(f'name: "x\\u202e\\e[31m"\n{LAYERS}  - {{name: "\\u202e", type: relu}}\n')
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["check", str(path)])
    printed = out.getvalue()
    assert code == 1 and "2 errors found" in printed, printed
    assert "\u202e" not in printed and "\x1b" not in printed, printed
    assert "the model name 'x\\u202e\\u001b[31m' contains U+202E" in printed


# -- block expansion never makes a path -------------------------------------------------------

NAMES = st.text(alphabet=st.sampled_from("ab1_.-/\\ \x00\u202e:"), max_size=6)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(instance=NAMES, inner=NAMES, repeat=st.booleans())
def test_expanded_names_are_names(instance, inner, repeat):
    text = LAYERS + f"""\
  - {{name: {yaml_string(instance)}, type: unit{', repeat: 2' if repeat else ''}}}
blocks:
  unit:
    layers: [{{name: {yaml_string(inner)}, type: relu}}]
"""
    try:
        spec = parse_spec_text(text, PATH)
    except SpecError as exc:
        assert "name" in exc.format()
        return
    for decl in spec.layers:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", decl.name), decl.name

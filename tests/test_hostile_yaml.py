"""Hostile and broken input never costs much, never runs anything, and never ends in a
traceback: ``cnnc check`` exits 0 or 1 (70, an internal error, is a bug) and says why.

The YAML cases run under both parsers cnnc may use: libyaml's (where PyYAML has it) and
PyYAML's pure-Python one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncompiler.cli import EXIT_INTERNAL, main
from cnncompiler.errors import SpecError
from cnncompiler.layers import LAYER_TYPES
from cnncompiler.spec import parse_spec_text, yaml_source
from cnncompiler.spec.parse import MAX_LAYERS
from cnncompiler.spec.yaml_source import MAX_ALIASES, MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES

PARSERS = ["libyaml", "python"] if yaml_source._FastLoader is not None else ["python"]


@pytest.fixture(params=PARSERS)
def parser(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(yaml_source, "_FastLoader", None)
    return request.param


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("CNNC_DEBUG", raising=False)


def run_cli(*argv) -> tuple[int, str]:
    """``cnnc ARGV`` in-process: the exit code and everything it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue() + err.getvalue()


def check(path: Path) -> tuple[int, str]:
    code, output = run_cli("check", path)
    assert code in (0, 1), output
    assert "Traceback" not in output and "internal error" not in output, output
    return code, output


def check_text(tmp_path: Path, text: str | bytes, name: str = "spec.yaml") -> tuple[int, str]:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return check(path)


def refused(tmp_path, text, *fragments) -> str:
    code, output = check_text(tmp_path, text)
    assert code == 1, output
    for fragment in fragments:
        assert fragment in output, output
    return output


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def merge_key_bomb(levels: int = 9, width: int = 10) -> str:
    keys = ", ".join(f"k{i}: 1" for i in range(width))
    lines = [f"m0: &m0 {{{keys}}}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * width) + "]}")
    return "\n".join(lines) + "\n"


# -- bombs and bounds -------------------------------------------------------------------------

@pytest.mark.parametrize("bomb", [billion_laughs, merge_key_bomb], ids=["aliases", "merge-keys"])
def test_alias_bomb_is_refused_in_well_under_a_second(bomb, tmp_path, parser):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    start = time.perf_counter()
    code, output = check(path)
    elapsed = time.perf_counter() - start
    assert code == 1
    assert f"expands to more than {MAX_VALUES:,} values" in output
    assert elapsed < 1.0, f"took {elapsed:.2f} s"  # a bound, not a benchmark: it takes ms


@pytest.mark.parametrize("text", [
    "a: " + "[" * 5000 + "]" * 5000,
    "".join("  " * i + f"k{i}:\n" for i in range(200)),
    "".join("  " * i + "-\n" for i in range(200)),
], ids=["flow", "block-mapping", "block-sequence"])
def test_deep_nesting_is_refused(text, tmp_path, parser):
    output = refused(tmp_path, text)
    # Newer libyaml builds stop at their own depth limit (1000) before cnnc's bound is reached.
    assert f"nesting deeper than {MAX_DEPTH} levels" in output or \
        "exceeded maximum nesting depth" in output, output


def test_aliases_cannot_nest_values_deeper_than_the_text_allows(tmp_path, parser):
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 200)]
    refused(tmp_path, "\n".join(lines), f"deeper than {MAX_DEPTH} levels")


def test_file_over_the_size_limit_is_refused_unread(tmp_path):
    text = "input: [3, 32, 32]\nlayers:\n" + "  - {type: relu}\n" * (MAX_FILE_BYTES // 16 + 10)
    assert len(text) > MAX_FILE_BYTES
    start = time.perf_counter()
    refused(tmp_path, text, "larger than 1,024 KiB; refused")
    assert time.perf_counter() - start < 1.0


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero on this system")
def test_endless_file_is_refused_without_reading_it_all():
    start = time.perf_counter()
    code, output = check(Path("/dev/zero"))
    assert code == 1 and "larger than" in output
    assert time.perf_counter() - start < 2.0


def test_expansion_to_a_huge_number_of_layers_is_refused_quickly(tmp_path):
    text = """
input: [3, 8]
blocks:
  inner: {layers: [{type: relu}]}
  outer: {layers: [{type: inner, repeat: 5000}]}
layers:
  - {name: big, type: outer, repeat: 5000}
"""
    start = time.perf_counter()
    refused(tmp_path, text, f"expands to more than {MAX_LAYERS:,} layers; refused")
    assert time.perf_counter() - start < 5.0


def test_absurd_integers_are_refused_with_a_message(tmp_path, parser):
    digits = "9" * 5000  # more digits than Python converts by default
    refused(tmp_path, f"input: [3, 8]\nlayers: [{{type: conv1d, filters: {digits}, kernel: 1}}]",
            "cannot read '999")
    refused(tmp_path, f"input: [3, 8]\nlayers: [{{type: conv1d, filters: {'9' * 50}, kernel: 1}}]",
            "key 'filters': a number of 50 digits is larger than cnnc accepts")
    refused(tmp_path, f"input: [3, {'9' * 40}]\nlayers: [{{type: relu}}]",
            "is larger than any input cnnc accepts")


def test_block_arithmetic_cannot_blow_up(tmp_path):
    for expr, message in [("($x ** 60) ** 60", "too large"),
                          ("$x + 2 ** 2 ** 2 ** 2 ** 2", "exponent too large"),
                          ("$x ** 0.5", "not a real number"), ("$x // 0", "division by zero"),
                          ("$x + __import__('os').getpid()", "cannot evaluate"),
                          ("+".join(["$x"] * 400), "characters long")]:
        text = f"""
input: [3, 8]
blocks:
  b:
    params: {{x: -9}}
    layers: [{{type: conv1d, filters: "{expr}", kernel: 1}}]
layers: [{{type: b}}]
"""
        refused(tmp_path, text, message)


# -- the reader's bounds at their edges, and its marks ------------------------------------------

def nested(depth: int) -> str:
    """A value ``depth`` levels deep, counting the document's mapping as the first."""
    return "[" * (depth - 2) + "1" + "]" * (depth - 2)


@pytest.mark.parametrize("style", ["flow", "block"])
def test_nesting_up_to_the_bound_is_read_and_one_more_is_refused(style, tmp_path, parser):
    def text(depth):
        if style == "flow":
            return f"input: [3, 8]\nlayers: [{{type: relu}}]\ndescription: {nested(depth)}\n"
        items = "".join("  " * (k + 1) + "-\n" for k in range(depth - 3))
        return ("input: [3, 8]\nlayers: [{type: relu}]\ndescription:\n" + items
                + "  " * (depth - 2) + "- 1\n")
    assert check_text(tmp_path, text(MAX_DEPTH))[0] == 0
    refused(tmp_path, text(MAX_DEPTH + 1), f"nesting deeper than {MAX_DEPTH} levels; refused")


def test_nesting_beyond_libyaml_s_own_bound_is_our_refusal(tmp_path, parser):
    refused(tmp_path, "a: " + "[" * 3000 + "]" * 3000, f"nesting deeper than {MAX_DEPTH} levels")


def test_the_alias_bound_is_refused_at_the_first_alias_beyond_it(tmp_path, parser):
    lines = ["input: [3, 8]", "layers: [{type: relu}]", "description:", "  - &x 1"]
    lines += ["  - *x"] * (MAX_ALIASES + 5)
    code, output = check_text(tmp_path, "\n".join(lines[:4 + MAX_ALIASES]) + "\n")
    assert code == 0, output
    output = refused(tmp_path, "\n".join(lines) + "\n",
                     f"more than {MAX_ALIASES} aliases (*name); refused")
    assert f"spec.yaml:{4 + MAX_ALIASES + 1}:5: more than" in output, output


@pytest.mark.parametrize("item", ["1", "[]"], ids=["scalars", "empty-lists"])
def test_many_values_without_aliases_are_refused_as_many(item, tmp_path, parser):
    items = ", ".join([item] * (MAX_VALUES + 10))
    output = refused(tmp_path, f"input: [3, 8]\nlayers: [{{type: relu}}]\nd: [{items}]\n",
                     f"more than {MAX_VALUES:,} values; refused")
    assert "through its aliases" not in output


def test_an_asterisk_that_is_no_alias_costs_nothing(tmp_path, parser):
    code, output = check_text(tmp_path, "input: [3, 8]  # 3 * 8\nlayers: [{type: relu}]\n"
                                        "description: '**bold** * 2'\n")
    assert code == 0, output


def test_marks_of_values_keys_items_aliases_and_merges(parser):
    spec_text = """\
input: [3, 8]
description: &base {a: 1,
  b: [x, y]}
layers:
  - {<<: *base, name: n, type: relu}
  - name: m
    type:   relu
"""
    doc = yaml_source.parse_yaml(spec_text, "f.yaml")
    where = lambda loc: (loc.line, loc.col)  # noqa: E731
    assert where(doc.loc) == (1, 1)
    assert where(doc.loc_of("input")) == (1, 8) and where(doc.key_loc("layers")) == (4, 1)
    assert where(doc["input"].loc_of(1)) == (1, 12)
    base = doc["description"]
    assert where(base.loc_of("b")) == (3, 6) and where(base["b"].loc_of(1)) == (3, 10)
    first, second = doc["layers"]
    assert where(doc["layers"].loc_of(1)) == (6, 5)
    assert where(first.loc_of("a")) == (2, 24)   # merged: where the base wrote it
    assert where(first.loc_of("type")) == (5, 32) and where(first.key_loc("name")) == (5, 17)
    assert where(second.loc_of("type")) == (7, 13) and where(second.key_loc("type")) == (7, 5)
    assert list(first) == ["a", "b", "name", "type"]


def test_the_collector_is_left_as_it_was(parser):
    import gc
    parse_spec_text("input: [3, 8]\nlayers: [{type: relu}]\n")
    assert gc.isenabled()
    gc.disable()
    try:
        parse_spec_text("input: [3, 8]\nlayers: [{type: relu}]\n")
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_control_character_after_wide_characters_is_placed_right(tmp_path, parser):
    refused(tmp_path, "input: [3, 8]\nlayers: [{type: relu}]\ndescription: \u00e9\u00e9\x07\n",
            "spec.yaml:3:16: the spec contains the control character U+0007")


# -- numbers out of any range ----------------------------------------------------------------

HUGE = "1" + "0" * 400
OUT_OF_RANGE = [HUGE, "-" + HUGE, "1e400", "-1e400", ".inf", ".nan", "0x" + "f" * 300,
                "0b" + "1" * 900]
LAYER_KEYS = [(t, f.name) for t, c in sorted(LAYER_TYPES.items()) if not c.internal
              for f in dataclasses.fields(c) if "parser" in f.metadata]
REQUIRED = {"conv2d": "filters: 2, kernel: 1", "conv1d": "filters: 2, kernel: 1",
            "locally_connected2d": "filters: 2, kernel: 1", "dense": "units: 2",
            "maxpool2d": "kernel: 1", "avgpool2d": "kernel: 1", "lppool2d": "kernel: 1",
            "maxpool1d": "kernel: 1", "avgpool1d": "kernel: 1", "lppool1d": "kernel: 1",
            "roi_pool": "output_size: 1", "roi_align": "output_size: 1"}


@pytest.mark.parametrize("ltype,key", LAYER_KEYS, ids=[f"{t}.{k}" for t, k in LAYER_KEYS])
def test_every_layer_key_refuses_numbers_out_of_range_where_they_are(ltype, key):
    """No int(), float() or math function meets a number it cannot hold: each is refused
    at its place, saying the key."""
    for value in OUT_OF_RANGE:
        settings = ", ".join(p for p in (REQUIRED.get(ltype, ""), f"{key}: {value}") if p)
        settings = settings.replace(f"{key}: 1, ", "").replace(f"{key}: 2, ", "")
        text = f"input: [3, 8, 8]\nlayers:\n  - {{name: x, type: {ltype}, {settings}}}\n"
        with pytest.raises(SpecError) as info:
            parse_spec_text(text, "net.yaml")
        first = info.value.format().splitlines()[0]
        assert first.startswith(f"net.yaml:3:") and f"layer 'x' ({ltype}): key '{key}': " \
            in first, (value, first)


@pytest.mark.parametrize("value,message", [
    (HUGE, "received a number of 401 digits, beyond the float32 range (±3.4e38); expected a "
           "probability in [0, 1)"),
    ("1e400", "received infinity (.inf, or a number beyond 1.8e308 such as 1e400); expected "
              "a finite probability in [0, 1)"),
    (".nan", "received nan (not a number); expected a finite probability in [0, 1)"),
    ("-" + HUGE, "received a negative number of 401 digits, beyond the float32 range "
                 "(±3.4e38); expected a probability in [0, 1)"),
    ("1e39", "received 1e+39, beyond the float32 range (±3.4e38); expected a probability in "
             "[0, 1)"),
])
def test_a_dropout_rate_out_of_range_says_the_range(value, message, tmp_path, parser):
    refused(tmp_path, f"input: [3, 8]\nlayers: [{{type: dropout, rate: {value}}}]\n",
            f"spec.yaml:2:32: layer '0' (dropout): key 'rate': {message}")


@pytest.mark.parametrize("value,message", [
    (HUGE, "key 'filters': a number of 401 digits is larger than cnnc accepts; expected at "
           "most 2,147,483,647; this looks like a typo"),
    ("1e400", "key 'filters': received infinity"),
    ("-" + HUGE, "key 'filters': received a negative number of 401 digits; expected an "
                 "integer >= 1"),
])
def test_filters_out_of_range_say_the_range(value, message, tmp_path, parser):
    refused(tmp_path, f"input: [3, 8]\nlayers: [{{type: conv1d, kernel: 1, filters: {value}}}]",
            message)


@pytest.mark.parametrize("section", [
    "train: {{epochs: {v}}}", "train: {{batch_size: {v}}}", "train: {{label_smoothing: {v}}}",
    "train: {{optimizer: {{type: sgd, lr: {v}}}}}",
    "train: {{optimizer: {{type: adam, betas: [{v}, 0.9]}}}}",
    "train: {{optimizer: {{type: adamw, eps: {v}}}}}",
    "train: {{schedule: {{type: multistep, milestones: [{v}]}}}}",
    "train: {{schedule: {{type: step, gamma: {v}, step_size: {v}, warmup: {v}}}}}",
    "train: {{schedule: {{type: cosine, t_max: {v}, eta_min: {v}}}}}",
])
def test_training_settings_refuse_numbers_out_of_range(section, tmp_path):
    for value in OUT_OF_RANGE:
        refused(tmp_path, "input: [3, 8]\nlayers: [{type: relu}]\n"
                + section.format(v=value) + "\n", "spec.yaml:3:")


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_input_sizes_and_repeats_refuse_numbers_out_of_range(value, tmp_path):
    refused(tmp_path, f"input: [3, {value}]\nlayers: [{{type: relu}}]\n", "'input': ")
    refused(tmp_path, "input: [3, 8]\nblocks: {b: {layers: [{type: relu}]}}\n"
                      f"layers: [{{type: b, repeat: {value}}}]\n", "key 'repeat': ")


@pytest.mark.parametrize("default", OUT_OF_RANGE)
def test_block_arithmetic_on_numbers_out_of_range(default, tmp_path):
    for expr in ("$x * 4", "$x + 1", "$x // 2", "$x ** 2", "-$x", "$x"):
        refused(tmp_path, f"""
input: [3, 8]
blocks:
  b:
    params: {{x: {default}}}
    layers: [{{type: conv1d, filters: "{expr}", kernel: 1}}]
layers: [{{type: b}}]
""", "spec.yaml:")


@pytest.mark.parametrize("text,message", [
    ("!!int ''", "cannot read '' as int"),
    ("!!float ''", "cannot read '' as float"),
    ("1" + ":0" * 3000, "cannot read '1:0:0:0"),          # base 60, converted in square time
    ("9" * 2000, "as int: a number of 2,000 characters"),
    ("0." + "1" * 2000, "as float: a number of 2,002 characters"),
])
def test_numbers_yaml_cannot_read_are_refused(text, message, tmp_path, parser):
    refused(tmp_path, f"input: [3, 8]\nlayers: [{{type: dropout, rate: {text}}}]\n", message)


# -- nothing is ever run ----------------------------------------------------------------------

def _tagged_specs(target: Path) -> list[str]:
    """Specs whose tags, were they constructed, would create ``target`` (or run something)."""
    t = target.as_posix()
    head = "input: [1]\nlayers: [{type: relu}]\ndescription: "
    return [
        f'name: !!python/object/apply:os.system ["touch {t}"]\n{head}x',
        head + f'!!python/object/apply:builtins.open ["{t}", "w"]',
        head + f'!!python/object/apply:builtins.open {{args: ["{t}", "w"]}}',
        head + f'!!python/object/new:builtins.open ["{t}", "w"]',
        head + f'!!python/object/apply:os.system "touch {t}"',
        head + "!!python/name:os.system",
        head + "!!python/module:os",
        f'!!python/object/apply:os.system ["touch {t}"]',
    ]


@pytest.mark.parametrize("index", range(len(_tagged_specs(Path("x")))))
def test_python_tags_are_refused_and_never_run(index, tmp_path, parser):
    target = tmp_path / "created-by-yaml"
    output = refused(tmp_path, _tagged_specs(target)[index], "YAML tag '!!python/", "is not allowed")
    assert not target.exists()
    assert "write" in output  # says how to fix it


@pytest.mark.parametrize("text,tag", [
    ("input: !!set {3: null}\nlayers: [{type: relu}]", "!!set"),
    ("input: !!omap [a: 1]\nlayers: [{type: relu}]", "!!omap"),
    ("input: !!binary aGVsbG8=\nlayers: [{type: relu}]", "!!binary"),
    ("input: [1]\nlayers: [{type: relu}]\nname: !!timestamp 2001-01-01", "!!timestamp"),
    ("input: !local [1]\nlayers: [{type: relu}]", "!local"),
])
def test_other_tags_are_refused(text, tag, tmp_path, parser):
    refused(tmp_path, text, f"YAML tag '{tag}' is not allowed")


@pytest.mark.parametrize("text", ["!!int abc", "!!float abc", "!!bool maybe", "!!null x"])
def test_plain_tags_on_unreadable_text_are_errors(text, tmp_path, parser):
    code, output = check_text(tmp_path, f"input: {text}\nlayers: [{{type: relu}}]")
    assert code == 1


# -- duplicates and recursion -----------------------------------------------------------------

@pytest.mark.parametrize("text,key,first,again", [
    ("input: [1]\nlayers: [{type: relu}]\ninput: [2]\n", "input", 1, 3),
    ("input: [1]\nlayers:\n  - type: relu\n    name: a\n    type: tanh\n", "type", 3, 5),
    ("input: [1]\nlayers: [{type: relu, type: tanh}]\n", "type", 2, 2),
    ("input: [1]\nlayers: [{type: relu}]\ntrain:\n  optimizer: {type: sgd}\n  epochs: 1\n"
     "  epochs: 2\n", "epochs", 5, 6),
])
def test_duplicate_keys_name_both_lines(text, key, first, again, tmp_path, parser):
    output = refused(tmp_path, text, f"duplicate key '{key}' (first at line {first}, "
                                     f"again at line {again})")
    assert output.startswith(f"{(tmp_path / 'spec.yaml')}:{again}:") or f":{again}:" in output


def test_keys_that_read_as_one_value_are_duplicates(tmp_path, parser):
    refused(tmp_path, "input: [1]\nlayers: [{type: relu}]\n1: a\ntrue: b\n",
            "key 'true' is the same key as '1' (first at line 3, again at line 4)")
    refused(tmp_path, "input: [1]\nlayers: [{type: relu}]\nd: {.nan: 1,\n  .nan: 2}\n",
            "duplicate key '.nan' (first at line 3, again at line 4)")
    refused(tmp_path, "&k input: [1]\nlayers: [{type: relu}]\n*k : [2]\n",
            "spec.yaml:1:1: duplicate key 'input': an alias repeats the key at line 1")


@pytest.mark.parametrize("text", [
    "a: &a [*a]",
    "a: &m {x: *m}",
    "a: &m {<<: *m}",
    "input: &i [1, *i]\nlayers: [{type: relu}]",
])
def test_recursive_aliases_are_refused(text, tmp_path, parser):
    refused(tmp_path, text, "an alias refers to the collection that contains it")


def test_merge_keys_work_and_the_mapping_own_keys_win(parser):
    spec = parse_spec_text("""
input: [3, 8, 8]
description: &conv {type: conv2d, filters: 8, kernel: 3, padding: 1}
layers:
  - {<<: *conv, name: c1}
  - {<<: *conv, name: c2, filters: 4}
""")
    assert [d.layer.filters for d in spec.layers] == [8, 4]


# -- files that are not text ------------------------------------------------------------------

@pytest.mark.parametrize("data,fragment", [
    (b"input: [1]\nlayers: [{type: relu}]\n\xff\xfe\x00junk", "not UTF-8 text"),
    ("input: [1]\n".encode("utf-16"), "not UTF-8 text"),
    (b"input: [1]\nlayers: [{type: relu}]\nname: a\x00b\n", "NUL bytes"),
    (b"input: [1]\nlayers: [{type: relu}]\nname: a\x07b\n", "control character U+0007"),
    (bytes(range(256)) * 4, "not UTF-8 text"),
])
def test_binary_files_are_refused(data, fragment, tmp_path, parser):
    refused(tmp_path, data, fragment)


def test_a_byte_order_mark_is_fine(tmp_path, parser):
    code, output = check_text(tmp_path, "\ufeffinput: [3, 4]\nlayers: [{type: relu}]\n")
    assert code == 0, output


def test_lone_surrogate_escapes_are_refused(tmp_path, parser):
    refused(tmp_path, 'input: [1]\nlayers: [{type: relu}]\nname: "a\\ud800b"\n', "malformed YAML"
            if parser == "libyaml" else "lone UTF-16 surrogate")


def test_directory_missing_file_and_symlink_loop(tmp_path):
    code, output = check(tmp_path)
    assert code == 1 and "is a directory, not a spec file" in output
    code, output = check(tmp_path / "nope.yaml")
    assert code == 1 and "no such spec file" in output and "nope.yaml" in output
    loop = tmp_path / "loop.yaml"
    try:
        os.symlink(loop, loop)
    except (OSError, NotImplementedError):
        pytest.skip("cannot make a symlink here")
    code, output = check(loop)
    assert code == 1 and "loop.yaml" in output


def test_a_minified_one_line_spec_prints_a_short_excerpt(tmp_path):
    layers = ", ".join("{type: relu}" for _ in range(2000))
    code, output = check_text(tmp_path, f"{{input: [3, 4], layers: [{layers}, {{type: rellu}}]}}")
    assert code == 1 and "did you mean 'relu'?" in output
    assert max(len(line) for line in output.splitlines()) < 400


# -- fuzzing ----------------------------------------------------------------------------------

TYPES = sorted(t for t, c in LAYER_TYPES.items() if not c.internal)
KEYS = sorted({f.name for c in LAYER_TYPES.values() if dataclasses.is_dataclass(c)
               for f in dataclasses.fields(c)} | {"filtrs", "repeat", "x"})
NAMES = st.sampled_from(["a", "b", "conv1", "fc", "input", "0", "1", "x.y", "a b", "blk.0"])
SCALARS = st.one_of(st.integers(-3, 40), st.integers(-2**70, 2**70), st.floats(), st.booleans(),
                    st.none(), st.text(max_size=8),
                    st.sampled_from(["same", "valid", "full", "channels", "$filters", "$x * 2",
                                     "$x ** 0.5", "input", ""]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=6)
SIZES = {
    "filters": st.integers(1, 6), "units": st.integers(1, 6), "groups": st.integers(1, 4),
    "kernel": st.one_of(st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1, max_size=2)),
    "stride": st.one_of(st.integers(1, 4), st.none()), "dilation": st.integers(1, 3),
    "padding": st.one_of(st.integers(0, 3), st.sampled_from(["same", "valid"]),
                         st.lists(st.integers(0, 2), min_size=1, max_size=2)),
    "axis": st.integers(-4, 4), "size": st.integers(1, 6), "p": st.sampled_from([1, 2.0]),
}


@st.composite
def random_layer(draw, blocks=()):
    layer = {}
    if draw(st.integers(0, 9)):
        layer["type"] = draw(st.sampled_from(TYPES + list(blocks) + ["conv2", "relux"]))
    if draw(st.booleans()):
        layer["name"] = draw(st.one_of(NAMES, st.integers(0, 5)))
    if not draw(st.integers(0, 3)):
        layer["inputs"] = draw(st.one_of(NAMES, st.lists(NAMES, max_size=3)))
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        layer[key] = draw(SIZES.get(key, VALUES) if draw(st.booleans()) else VALUES)
    return layer


@st.composite
def random_spec(draw):
    """Specs shaped like real ones, with random (often wrong) layers, keys and values."""
    spec = {}
    if draw(st.integers(0, 9)):
        spec["input"] = draw(st.one_of(st.lists(st.integers(1, 12), min_size=1, max_size=3),
                                       VALUES))
    if not draw(st.integers(0, 3)):
        spec["blocks"] = {
            name: {"params": draw(st.one_of(st.none(), st.dictionaries(
                       st.sampled_from(["filters", "x"]), st.one_of(st.none(), st.integers(-1, 8)),
                       max_size=2))),
                   "layers": draw(st.lists(random_layer(("blk",)), max_size=4))}
            for name in draw(st.lists(st.sampled_from(["blk", "relu"]), max_size=2, unique=True))}
    spec["layers"] = draw(st.one_of(st.lists(random_layer(tuple(spec.get("blocks", ()))),
                                             max_size=7), VALUES))
    if not draw(st.integers(0, 4)):
        spec["outputs"] = draw(st.one_of(NAMES, st.lists(NAMES, max_size=3)))
    if not draw(st.integers(0, 4)):
        spec["train"] = draw(st.one_of(VALUES, st.fixed_dictionaries({}, optional={
            "loss": VALUES, "epochs": VALUES,
            "optimizer": st.one_of(VALUES, st.dictionaries(
                st.sampled_from(["type", "lr", "momentum", "betas"]),
                st.one_of(st.sampled_from(["sgd", "adam", "sgdd"]), VALUES), max_size=3)),
            "schedule": st.one_of(VALUES, st.dictionaries(
                st.sampled_from(["type", "milestones", "gamma"]),
                st.one_of(st.sampled_from(["step", "multistep"]), VALUES), max_size=3))})))
    return spec


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_fuzz_random_text_and_bytes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-text")

    @FUZZ
    @given(st.one_of(st.text(), st.binary(),
                     st.text(alphabet="{}[]:,-&*!|>'\"#%@` \n\tabc123.$<", max_size=60)))
    def run(data):
        check_text(folder, data)

    run()


def test_fuzz_structurally_plausible_specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-spec")

    @FUZZ
    @given(random_spec())
    def run(spec):
        code, _ = check_text(folder, yaml.safe_dump(spec, sort_keys=False))
        if code == 0:  # what checks must also summarise and draw
            for argv in (["summary", "--json"], ["graph", "-o", folder / "g.svg"]):
                code, output = run_cli(argv[0], folder / "spec.yaml", *argv[1:])
                assert code == 0, output

    run()


def test_internal_errors_are_reported_as_such(tmp_path, monkeypatch):
    """The safety net the fuzz tests rely on: an unexpected exception is exit 70, no trace."""
    import cnncompiler.graph.check as check_module

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(check_module, "infer_shapes", broken)
    path = tmp_path / "ok.yaml"
    path.write_text("input: [3, 4]\nlayers: [{type: relu}]\n")
    code, output = run_cli("check", path)
    assert code == EXIT_INTERNAL
    assert "internal error: ZeroDivisionError: boom" in output and "Traceback" not in output

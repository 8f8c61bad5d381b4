"""Safe, bounded YAML reading that remembers where every value came from.

PyYAML composes the node tree (libyaml's parser feeds the events where it is installed, which
is several times faster; the composing stays in Python so the bounds below hold either way).
Nothing is ever constructed from a Python tag. This module then turns nodes into
:class:`YamlMap` / :class:`YamlList`, which are a dict and a list that also carry the line and
column of themselves and of each of their values, so a later stage can say
``specs/net.yaml:14:5`` about any value it rejects.

Hostile input is bounded before it can cost anything: file size, nesting depth, the number of
aliases, and the number of values after alias and merge-key expansion (an alias bomb is
refused at once). Duplicate keys are errors that name both lines.

Two departures from PyYAML's YAML 1.1, both towards YAML 1.2 and what spec authors expect:
``1e-3`` is a float (PyYAML reads it as a string), and ``2001-01-01`` stays a string.
"""

from __future__ import annotations

import re

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from ..errors import Diagnostic, SourceLoc, SpecError

try:  # libyaml's event parser; the pure-Python one gives the same events and marks
    from yaml.cyaml import CParser as _FastParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _FastParser = None

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 512
MAX_VALUES = 200_000

_YAML_TAG = "tag:yaml.org,2002:"
_MAP_TAG = _YAML_TAG + "map"
_SEQ_TAG = _YAML_TAG + "seq"
_MERGE_TAG = _YAML_TAG + "merge"
# Tags whose constructors build plain data; every other tag (python/*, set, omap, ...) is refused.
_SCALAR_TAGS = {_YAML_TAG + t for t in ("str", "int", "float", "bool", "null")}


class YamlMap(dict):
    """A mapping from the spec, with ``loc`` (its own) and ``locs[key]`` (each value's)."""

    loc: SourceLoc
    locs: dict
    key_locs: dict

    def loc_of(self, key) -> SourceLoc:
        return self.locs.get(key, self.loc)

    def key_loc(self, key) -> SourceLoc:
        return self.key_locs.get(key, self.loc)


class YamlList(list):
    """A sequence from the spec, with ``loc`` (its own) and ``locs[i]`` (each item's)."""

    loc: SourceLoc
    locs: list

    def loc_of(self, index: int) -> SourceLoc:
        return self.locs[index] if 0 <= index < len(self.locs) else self.loc


def loc_of(value, default: SourceLoc) -> SourceLoc:
    """The location of a YamlMap/YamlList, or ``default`` for a plain scalar."""
    return getattr(value, "loc", default)


class _SpecResolver(Resolver):
    """PyYAML's YAML 1.1 resolver, but with YAML 1.2 floats and without timestamps."""


_SpecResolver.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _YAML_TAG + "timestamp"]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()}
# 1e-3, 1e5, 2.5E+3: YAML 1.1 wants a dot and a signed exponent, which nobody writes.
_SpecResolver.add_implicit_resolver(
    _YAML_TAG + "float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class _BoundedComposer(Composer):
    """PyYAML's composer, refusing deep nesting and many aliases while it composes."""

    def __init__(self):
        super().__init__()
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name); refused",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nesting deeper than {MAX_DEPTH} levels; refused",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PyLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _BoundedComposer,
                SafeConstructor, _SpecResolver):
    def __init__(self, stream):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self)
        SafeConstructor.__init__(self)
        _SpecResolver.__init__(self)


if _FastParser is not None:
    class _FastLoader(_BoundedComposer, _FastParser, SafeConstructor, _SpecResolver):
        # The composer comes first so its get_single_node (with the bounds) is the one used.
        def __init__(self, stream):
            _FastParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            SafeConstructor.__init__(self)
            _SpecResolver.__init__(self)
else:  # pragma: no cover
    _FastLoader = None


def _loader(text: str):
    return (_FastLoader or _PyLoader)(text)


def _mark_loc(filename: str, mark) -> SourceLoc:
    return SourceLoc(filename, mark.line + 1, mark.column + 1)


def show_tag(tag: str) -> str:
    """A tag as it is written in YAML: ``!!python/object/apply:os.system``, ``!local``."""
    return "!!" + tag[len(_YAML_TAG):] if tag.startswith(_YAML_TAG) else tag


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Converter:
    """Turns a composed node tree into YamlMap/YamlList/scalars, counting expanded values."""

    def __init__(self, loader, filename: str):
        self.loader = loader
        self.filename = filename
        self.count = 0
        self.active: set[int] = set()

    def loc(self, node) -> SourceLoc:
        return _mark_loc(self.filename, node.start_mark)

    def fail(self, node, message: str, expected: str | None = None, fix: str | None = None):
        raise SpecError([Diagnostic(message, self.loc(node), expected=expected, fix=fix)])

    def convert_document(self, root):
        """The document's value; an alias bomb is refused before any of it is expanded."""
        self.expanded_size(root, {})
        return self.convert(root)

    def expanded_size(self, node, sizes: dict) -> int:
        """How many values ``node`` becomes with every alias expanded, counting each shared
        node once (so this costs as much as the text, not as the expansion)."""
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in self.active:
            self.fail(node, "an alias refers to the collection that contains it; "
                            "recursive YAML is not allowed in a spec")
        if len(self.active) >= MAX_DEPTH:
            # aliases can nest collections deeper than the text does
            self.fail(node, f"aliases nest values deeper than {MAX_DEPTH} levels; refused")
        total = 1
        if isinstance(node, (MappingNode, SequenceNode)):
            self.active.add(id(node))
            children = node.value if isinstance(node, SequenceNode) else \
                [v for _, v in node.value]
            for child in children:
                total += self.expanded_size(child, sizes)
            self.active.discard(id(node))
        if total > MAX_VALUES:
            self.fail(node, f"this value expands to more than {MAX_VALUES:,} values through "
                            "its aliases (an alias bomb?); refused",
                      fix="a network spec has a few thousand values; write it without "
                          "nested aliases")
        sizes[id(node)] = total
        return total

    def convert(self, node):
        self.count += 1
        if self.count > MAX_VALUES:
            self.fail(node, f"the document expands to more than {MAX_VALUES:,} values "
                            "(an alias bomb?); refused",
                      fix="a network spec has a few thousand values; write it without "
                          "nested aliases")
        if id(node) in self.active:
            self.fail(node, "an alias refers to the collection that contains it; "
                            "recursive YAML is not allowed in a spec")
        if len(self.active) >= MAX_DEPTH:
            # aliases can nest collections deeper than the text does
            self.fail(node, f"aliases nest values deeper than {MAX_DEPTH} levels; refused")
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        self.active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self.mapping(node)
            if isinstance(node, SequenceNode):
                return self.sequence(node)
        finally:
            self.active.discard(id(node))
        self.fail(node, f"unsupported YAML node {type(node).__name__}")

    def scalar(self, node: ScalarNode):
        if node.tag not in _SCALAR_TAGS:
            self.fail(node, f"YAML tag '{show_tag(node.tag)}' is not allowed in a spec",
                      "plain values: numbers, strings, true/false, null",
                      "write the value without a tag")
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(node, f"cannot read this value: {getattr(exc, 'problem', exc)}")
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError):
            # an explicit tag on text it cannot read (!!int abc), or an integer of more
            # digits than Python converts
            self.fail(node, f"cannot read '{_shorten(node.value)}' as "
                            f"{show_tag(node.tag)[2:]}",
                      fix="write a plain number or string")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                self.fail(node, "this string has an escape that is not a character "
                                "(a lone UTF-16 surrogate such as \\ud800)",
                          fix="write the character itself, or remove the escape")
        return value

    def mapping(self, node: MappingNode) -> YamlMap:
        if node.tag != _MAP_TAG:
            self.fail(node, f"YAML tag '{show_tag(node.tag)}' is not allowed in a spec",
                      fix="write a plain mapping without a tag")
        self.check_duplicates(node)
        out = YamlMap()
        out.loc, out.locs, out.key_locs = self.loc(node), {}, {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.merge(out, value_node)
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.key(key_node)
            out[key] = self.convert(value_node)
            out.locs[key] = self.loc(value_node)
            out.key_locs[key] = self.loc(key_node)
        return out

    def merge(self, out: YamlMap, value_node) -> None:
        """``<<: *base`` or ``<<: [*a, *b]``: keys not yet in ``out`` come from each mapping
        in turn; the mapping's own keys, added after, override them.

        Each merged mapping is converted (and counted) again, so a merge-key bomb meets the
        same bound as an alias bomb instead of PyYAML's unbounded list concatenation.
        """
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.fail(source, "a merge key '<<' takes a mapping or a list of mappings",
                          fix="write '<<: *name' where '&name' marks a mapping")
            merged = self.convert(source)
            for key, value in merged.items():
                if key not in out:
                    out[key] = value
                    out.locs[key] = merged.loc_of(key)
                    out.key_locs[key] = merged.key_loc(key)

    def key(self, key_node):
        if not isinstance(key_node, ScalarNode):
            self.fail(key_node, "a mapping key must be a plain value, not a list or mapping")
        key = self.scalar(key_node)
        try:
            hash(key)
        except TypeError:
            self.fail(key_node, "a mapping key must be a plain value")
        return key

    def check_duplicates(self, node: MappingNode) -> None:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.key(key_node)
            shown = _shorten(str(key_node.value))
            if key in seen:
                first, first_shown = seen[key]
                # 1, 1.0 and true are one key once read (as Python, and YAML, compare them)
                what = f"duplicate key '{shown}'" if shown == first_shown else \
                    f"key '{shown}' is the same key as '{first_shown}'"
                raise SpecError([Diagnostic(
                    f"{what} (first at line {first.line}, again at line "
                    f"{key_node.start_mark.line + 1})",
                    self.loc(key_node),
                    expected="each key once per mapping",
                    fix=f"remove one of the two '{shown}' entries")])
            seen[key] = (self.loc(key_node), shown)

    def sequence(self, node: SequenceNode) -> YamlList:
        if node.tag != _SEQ_TAG:
            self.fail(node, f"YAML tag '{show_tag(node.tag)}' is not allowed in a spec",
                      fix="write a plain list without a tag")
        out = YamlList(self.convert(item) for item in node.value)
        out.loc = self.loc(node)
        out.locs = [self.loc(item) for item in node.value]
        return out


def _syntax_hint(text: str, exc: yaml.MarkedYAMLError) -> str | None:
    """How to fix the common slips behind PyYAML's and libyaml's terse syntax errors."""
    mark = exc.problem_mark
    lines = text.splitlines()
    line = lines[mark.line] if mark and mark.line < len(lines) else ""
    before = line[:mark.column + 1] if mark else ""
    problem = exc.problem or ""
    if "\t" in before:
        return "indent with spaces: YAML does not allow tabs for indentation"
    if "cannot start any token" in problem and before[-1:] in ("@", "`"):
        return "quote the value: YAML reserves '@' and '`'"
    if "flow" in (exc.context or "") and exc.context_mark is not None:
        opened = exc.context_mark
        return (f"close the bracket opened at line {opened.line + 1}, column "
                f"{opened.column + 1}, or separate its items with ', '")
    if "mapping values are not allowed" in problem:
        return "check this line's indentation, or quote a value that contains ': '"
    if "expected <block end>" in problem or "did not find expected key" in problem:
        return "check the indentation: items of one mapping or list line up in one column"
    return None


def parse_yaml(text: str, filename: str):
    """Parse one YAML document safely; returns its value (YamlMap, YamlList or scalar).

    Raises SpecError with the file, line and column of the first problem.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_FILE_BYTES:
        raise SpecError([Diagnostic(
            f"the spec is larger than {MAX_FILE_BYTES // 1024:,} KiB; refused",
            SourceLoc(filename, 1, 1), fix="a network spec is a few kilobytes; check the file")])
    loader = None
    try:
        loader = _loader(text)  # the pure-Python reader checks every character here
        node = loader.get_single_node()
        if node is None:
            raise SpecError([Diagnostic("the spec file is empty", SourceLoc(filename, 1, 1),
                                        expected="a mapping with 'input' and 'layers'",
                                        fix="write e.g. 'input: [1, 28, 28]' and a "
                                            "'layers:' list")])
        return _Converter(loader, filename).convert_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = _mark_loc(filename, mark) if mark else SourceLoc(filename, 1, 1)
        problem = exc.problem or exc.context or "malformed YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise SpecError([Diagnostic(f"malformed YAML: {problem}{context}", loc,
                                    fix=_syntax_hint(text, exc))],
                        text.splitlines()) from None
    except yaml.reader.ReaderError as exc:
        # a control character; the reader knows only the offset
        done = text[:max(exc.position, 0)]
        loc = SourceLoc(filename, done.count("\n") + 1, len(done) - done.rfind("\n"))
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise SpecError([Diagnostic(f"the spec contains the control character {char}, "
                                    "which YAML does not allow", loc,
                                    fix="remove it (is this a text file?)")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(f"malformed YAML: {exc}", SourceLoc(filename, 1, 1))]) from None
    except RecursionError:
        raise SpecError([Diagnostic("YAML nesting is too deep; refused",
                                    SourceLoc(filename, 1, 1))]) from None
    finally:
        if loader is not None:
            loader.dispose()

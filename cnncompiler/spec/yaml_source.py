"""Safe, bounded YAML reading that remembers where every value came from.

libyaml parses the text and composes the node tree in C where PyYAML has it (and the libyaml
build refuses deep nesting itself, so its recursive composer cannot exhaust the stack);
otherwise PyYAML's composer, bounded below, does it in Python. Nothing is ever constructed
from a Python tag. The nodes then become :class:`YamlMap` / :class:`YamlList`, which are a
dict and a list that also carry the line and column of themselves and of each of their values,
so a later stage can say ``specs/net.yaml:14:5`` about any value it rejects.

Hostile input is bounded before it can cost anything: file size, nesting depth, the number of
aliases, and the number of values after alias and merge-key expansion. Composing costs at most
as much as the text (an alias shares its node), and every bound is checked on the composed tree
before a single value is expanded, so an alias bomb is refused at once. Duplicate keys are
errors that name both lines.

Two departures from PyYAML's YAML 1.1, both towards YAML 1.2 and what spec authors expect:
``1e-3`` is a float (PyYAML reads it as a string), and ``2001-01-01`` stays a string.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from ..errors import Diagnostic, SourceLoc, SpecError

try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 512
MAX_VALUES = 200_000
# Longer than any number a spec needs; also keeps YAML 1.1's base-60 integers (1:2:3:...),
# which PyYAML converts in quadratic time, cheap.
MAX_NUMBER_CHARS = 1000

_YAML_TAG = "tag:yaml.org,2002:"
_MAP_TAG = _YAML_TAG + "map"
_SEQ_TAG = _YAML_TAG + "seq"
_STR_TAG = _YAML_TAG + "str"
_MERGE_TAG = _YAML_TAG + "merge"
_INT_TAG = _YAML_TAG + "int"
_NUMBER_TAGS = {_INT_TAG, _YAML_TAG + "float"}

# Tags whose constructors build plain data; every other tag (python/*, set, omap, ...) is refused.
_constructor = SafeConstructor()
_READERS = {
    _YAML_TAG + "int": _constructor.construct_yaml_int,
    _YAML_TAG + "float": _constructor.construct_yaml_float,
    _YAML_TAG + "bool": _constructor.construct_yaml_bool,
    _YAML_TAG + "null": _constructor.construct_yaml_null,
}


class YamlMap(dict):
    """A mapping from the spec, with ``loc`` (its own) and, through ``loc_of(key)`` and
    ``key_loc(key)``, the place of each value and key.

    The places are kept as the parser's marks (0-based line and column) and become SourceLocs
    only when asked for: a spec has a hundred thousand values and few errors.
    """

    file: str = ""
    mark = None                                # its own
    marks: Mapping = MappingProxyType({})      # key -> mark of its value
    key_marks: Mapping = MappingProxyType({})  # key -> mark of the key

    @property
    def loc(self) -> SourceLoc | None:
        return _at(self.file, self.mark)

    def loc_of(self, key) -> SourceLoc | None:
        return _at(self.file, self.marks.get(key) or self.mark)

    def key_loc(self, key) -> SourceLoc | None:
        return _at(self.file, self.key_marks.get(key) or self.mark)

    def placed_like(self, source: "YamlMap") -> "YamlMap":
        """This mapping, placed where ``source``'s values and keys are."""
        self.file, self.mark = source.file, source.mark
        self.marks, self.key_marks = source.marks, source.key_marks
        return self


class YamlList(list):
    """A sequence from the spec, with ``loc`` (its own) and ``loc_of(i)`` (each item's)."""

    file: str = ""
    mark = None
    marks: Sequence = ()  # mark of each item

    @property
    def loc(self) -> SourceLoc | None:
        return _at(self.file, self.mark)

    def loc_of(self, index: int) -> SourceLoc | None:
        inside = 0 <= index < len(self.marks)
        return _at(self.file, self.marks[index] if inside else self.mark)

    def placed_like(self, source) -> "YamlList":
        """This list, placed where ``source``'s items are (when it is a YamlList)."""
        self.file, self.mark = getattr(source, "file", ""), getattr(source, "mark", None)
        self.marks = getattr(source, "marks", ())
        return self


def _at(file: str, mark) -> SourceLoc | None:
    return None if mark is None else SourceLoc(file, mark.line + 1, mark.column + 1)


def loc_of(value, default: SourceLoc) -> SourceLoc:
    """The location of a YamlMap/YamlList, or ``default`` for a plain scalar."""
    return getattr(value, "loc", default)


class _SpecResolver(Resolver):
    """PyYAML's YAML 1.1 resolver, but with YAML 1.2 floats and without timestamps.

    A spec repeats a few plain words (relu, 3, same) thousands of times, so each one's tag is
    worked out once.
    """

    def __init__(self):
        super().__init__()
        self._plain_tags: dict[str, str] = {}

    def resolve(self, kind, value, implicit):
        if kind is not ScalarNode:
            return _MAP_TAG if kind is MappingNode else _SEQ_TAG  # there are no path resolvers
        if not implicit[0]:
            return _STR_TAG
        tag = self._plain_tags.get(value)
        if tag is None:
            tag = next((t for t, rx in _IMPLICIT.get(value[:1], ()) if rx.match(value)),
                       _STR_TAG)
            self._plain_tags[value] = tag
        return tag


_SpecResolver.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _YAML_TAG + "timestamp"]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()}
# 1e-3, 1e5, 2.5E+3: YAML 1.1 wants a dot and a signed exponent, which nobody writes.
_SpecResolver.add_implicit_resolver(
    _YAML_TAG + "float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
# first character -> the resolvers to try, as PyYAML's resolve() looks them up (it would also
# try those registered for any first character, under None: there are none)
_IMPLICIT = dict(_SpecResolver.yaml_implicit_resolvers)
assert None not in _IMPLICIT


class _Refused(Exception):
    """A bound was hit while composing; ``parse_yaml`` reports it at ``mark``."""

    def __init__(self, message: str, mark, fix: str | None = None):
        super().__init__(message)
        self.message, self.mark, self.fix = message, mark, fix


def _too_deep(mark) -> _Refused:
    return _Refused(f"nesting deeper than {MAX_DEPTH} levels; refused", mark,
                    "a network spec nests a few levels; check the brackets and indentation")


def _too_many_aliases(mark) -> _Refused:
    return _Refused(f"more than {MAX_ALIASES} aliases (*name); refused", mark,
                    "a network spec needs a few aliases at most; write the values out")


class _BoundedComposer(Composer):
    """PyYAML's composer, refusing deep nesting and many aliases while it composes (it
    recurses in Python once per level)."""

    def __init__(self):
        super().__init__()
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _too_many_aliases(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _too_deep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PyLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _BoundedComposer,
                _SpecResolver):
    def __init__(self, stream):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _SpecResolver.__init__(self)


def _libyaml_limits_nesting() -> bool:
    """Whether this libyaml refuses deep nesting itself (recent builds stop at 1,000 levels).
    Only then may its composer, which recurses in C once per level, be given any text."""
    depth = 5000
    try:
        _CParser("[" * depth + "]" * depth).raw_parse()
    except yaml.YAMLError:
        return True
    return False


if _CParser is None:  # pragma: no cover
    _FastLoader = None
elif _libyaml_limits_nesting():
    class _FastLoader(_CParser, _SpecResolver):
        """libyaml's parser and composer (nodes with marks, aliases shared), our tags."""

        def __init__(self, stream):
            _CParser.__init__(self, stream)
            _SpecResolver.__init__(self)
else:  # pragma: no cover - an older libyaml: its events, composed by the bounded composer
    class _FastLoader(_BoundedComposer, _CParser, _SpecResolver):
        # The composer comes first so its get_single_node (with the bounds) is the one used.
        def __init__(self, stream):
            _CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _SpecResolver.__init__(self)


def _loader(text: str):
    return (_FastLoader or _PyLoader)(text)


def _mark_loc(filename: str, mark) -> SourceLoc:
    return SourceLoc(filename, mark.line + 1, mark.column + 1)


def _nth_alias_mark(text: str, n: int):
    """Where the ``n``-th alias of the text is (a composed tree keeps only the anchor's mark)."""
    parser = _loader(text)
    try:
        seen = 0
        while True:
            event = parser.get_event()
            if event is None:
                return None
            if isinstance(event, AliasEvent):
                seen += 1
                if seen == n:
                    return event.start_mark
    finally:
        parser.dispose()


def show_tag(tag: str) -> str:
    """A tag as it is written in YAML: ``!!python/object/apply:os.system``, ``!local``."""
    return "!!" + tag[len(_YAML_TAG):] if tag.startswith(_YAML_TAG) else tag


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def gc_paused():
    """Reading a spec builds up to a few hundred thousand small objects and no reference
    cycles; the cycle collector, run every few hundred allocations, would walk that growing
    heap again and again (reading took several times longer with it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Converter:
    """Checks a composed node tree against the bounds, then turns it into
    YamlMap/YamlList/scalars."""

    def __init__(self, filename: str, text: str, check_strings: bool):
        self.filename = filename
        self.text = text
        self.check_strings = check_strings  # libyaml never gives a lone surrogate
        self.measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels)
        self.active: set[int] = set()
        self.aliases = 0
        self.count = 0
        self.scalars: dict[tuple[str, str], object] = {}

    def loc(self, node) -> SourceLoc:
        return _mark_loc(self.filename, node.start_mark)

    def fail(self, node, message: str, expected: str | None = None, fix: str | None = None):
        raise SpecError([Diagnostic(message, self.loc(node), expected=expected, fix=fix)])

    def convert_document(self, root):
        """The document's value; a bomb of any kind is refused before any of it is expanded.

        Without a '*' in the text there is no alias, the tree is as large as the text, and
        converting it checks the bounds as it goes.
        """
        if "*" in self.text:
            self.measure(root, 1)
        return self.convert(root, 1)

    # -- bounds, on the tree as composed (each shared node once) ------------------------------
    def measure(self, node, depth: int) -> tuple[int, int, bool]:
        """How many values ``node`` becomes with every alias expanded, how many levels deep
        they nest, and whether aliases take part. Walks the text's nodes once in document
        order, so the first visit of a node is where it is written and every later one is an
        alias."""
        key = id(node)
        known = self.measured.get(key)
        if known is not None:
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = _nth_alias_mark(self.text, self.aliases) or node.start_mark
                exc = _too_many_aliases(mark)
                raise SpecError([Diagnostic(exc.message, _mark_loc(self.filename, mark),
                                            fix=exc.fix)])
            if depth + known[1] - 1 > MAX_DEPTH:
                self.fail(node, f"aliases nest values deeper than {MAX_DEPTH} levels; refused")
            return known[0], known[1], True
        if key in self.active:
            self.fail(node, "an alias refers to the collection that contains it; "
                            "recursive YAML is not allowed in a spec")
        if depth > MAX_DEPTH:
            self.too_deep(node)
        values, levels, aliased = 1, 1, False
        if node.__class__ is not ScalarNode:
            self.active.add(key)
            pairs = [(None, item) for item in node.value] if isinstance(node, SequenceNode) \
                else node.value
            for key_node, value_node in pairs:
                if key_node is not None:  # keys nest and alias, but are not values
                    _, below, via = self.measure(key_node, depth + 1)
                    levels, aliased = max(levels, 1 + below), aliased or via
                size, below, via = self.measure(value_node, depth + 1)
                values, levels, aliased = values + size, max(levels, 1 + below), aliased or via
            self.active.discard(key)
        if values > MAX_VALUES:
            if aliased:
                self.fail(node, f"this value expands to more than {MAX_VALUES:,} values "
                                "through its aliases (an alias bomb?); refused",
                          fix="a network spec has a few thousand values; write it without "
                              "nested aliases")
            self.too_large(node)
        self.measured[key] = (values, levels)
        return values, levels, aliased

    def too_deep(self, node):
        exc = _too_deep(node.start_mark)
        self.fail(node, exc.message, fix=exc.fix)

    def too_large(self, node):
        self.fail(node, f"the spec holds more than {MAX_VALUES:,} values; refused",
                  fix="a network spec has a few thousand values; check the file")

    # -- conversion -------------------------------------------------------------------------
    def convert(self, node, depth: int):
        self.count += 1
        if self.count > MAX_VALUES:
            self.too_large(node)
        if depth > MAX_DEPTH:
            self.too_deep(node)
        cls = node.__class__
        if cls is ScalarNode:
            return self.scalar(node)
        if cls is MappingNode:
            return self.mapping(node, depth)
        if cls is SequenceNode:
            return self.sequence(node, depth)
        self.fail(node, f"unsupported YAML node {cls.__name__}")

    def scalar(self, node: ScalarNode):
        tag, text = node.tag, node.value
        if tag == _STR_TAG:
            if self.check_strings:
                self.check_string(node)
            return text
        try:
            return self.scalars[tag, text]
        except KeyError:
            pass
        if tag == _INT_TAG and text.isdigit() and text.isascii() and text[0] != "0" \
                and len(text) <= MAX_NUMBER_CHARS:
            value = self.scalars[tag, text] = int(text)  # the common case, without PyYAML's
            return value
        if tag not in _READERS:
            self.fail(node, f"YAML tag '{show_tag(tag)}' is not allowed in a spec",
                      "plain values: numbers, strings, true/false, null",
                      "write the value without a tag")
        kind = show_tag(tag)[2:]
        if tag in _NUMBER_TAGS and len(text) > MAX_NUMBER_CHARS:
            self.fail(node, f"cannot read '{_shorten(text)}' as {kind}: a number of "
                            f"{len(text):,} characters", fix="write a plain number")
        try:
            value = _READERS[tag](node)
        except (ValueError, IndexError, KeyError, AttributeError, TypeError, OverflowError,
                yaml.YAMLError):
            # an explicit tag on text it cannot read (!!int abc, !!float '')
            self.fail(node, f"cannot read '{_shorten(text)}' as {kind}",
                      fix="write a plain number or string")
        self.scalars[tag, text] = value
        return value

    def check_string(self, node: ScalarNode) -> None:
        try:
            node.value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(node, "this string has an escape that is not a character "
                            "(a lone UTF-16 surrogate such as \\ud800)",
                      fix="write the character itself, or remove the escape")

    def mapping(self, node: MappingNode, depth: int) -> YamlMap:
        if node.tag != _MAP_TAG:
            self.fail(node, f"YAML tag '{show_tag(node.tag)}' is not allowed in a spec",
                      fix="write a plain mapping without a tag")
        out = YamlMap()
        out.file, out.mark = self.filename, node.start_mark
        out.marks, out.key_marks = marks, key_marks = {}, {}
        merges = []
        for index, (key_node, value_node) in enumerate(node.value):
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if key_node.__class__ is not ScalarNode:
                self.fail(key_node, "a mapping key must be a plain value, not a list or "
                                    "mapping")
            key = self.scalar(key_node)
            if key in out:
                self.duplicate(node, index, key)
            out[key] = self.convert(value_node, depth + 1)
            marks[key] = value_node.start_mark
            key_marks[key] = key_node.start_mark
        return self.merge(out, merges, depth) if merges else out

    def duplicate(self, node: MappingNode, index: int, key):
        """Refuse the ``index``-th key of ``node``, which an earlier one already is."""
        key_node = node.value[index][0]
        first = next(k for k, _ in node.value[:index]
                     if k.tag != _MERGE_TAG and _same_key(self.scalar(k), key))
        shown, first_shown = _shorten(str(key_node.value)), _shorten(str(first.value))
        line = first.start_mark.line + 1
        if first is key_node:  # an alias (*name) of the key; the tree keeps no place for it
            self.fail(key_node, f"duplicate key '{shown}': an alias repeats the key at line "
                                f"{line}", expected="each key once per mapping",
                      fix="remove the alias used as a key")
        # 1, 1.0 and true are one key once read (as Python, and YAML, compare them)
        what = f"duplicate key '{shown}'" if shown == first_shown else \
            f"key '{shown}' is the same key as '{first_shown}'"
        self.fail(key_node, f"{what} (first at line {line}, again at line "
                            f"{key_node.start_mark.line + 1})",
                  expected="each key once per mapping",
                  fix=f"remove one of the two '{shown}' entries")

    def merge(self, own: YamlMap, merges: list, depth: int) -> YamlMap:
        """``<<: *base`` or ``<<: [*a, *b]``: keys not yet taken come from each mapping in
        turn, and the mapping's own keys override them (and follow them, as in PyYAML).

        Each merged mapping is converted again, which the bounds already counted.
        """
        out = YamlMap()
        out.file, out.mark = own.file, own.mark
        out.marks, out.key_marks = {}, {}
        for value_node in merges:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.fail(source, "a merge key '<<' takes a mapping or a list of mappings",
                              fix="write '<<: *name' where '&name' marks a mapping")
                merged = self.convert(source, depth + 1)
                for key, value in merged.items():
                    if key not in out and key not in own:
                        out[key] = value
                        out.marks[key] = merged.marks.get(key)
                        out.key_marks[key] = merged.key_marks.get(key)
        out.update(own)
        out.marks.update(own.marks)
        out.key_marks.update(own.key_marks)
        return out

    def sequence(self, node: SequenceNode, depth: int) -> YamlList:
        if node.tag != _SEQ_TAG:
            self.fail(node, f"YAML tag '{show_tag(node.tag)}' is not allowed in a spec",
                      fix="write a plain list without a tag")
        items = node.value
        out = YamlList([self.convert(item, depth + 1) for item in items])
        out.file, out.mark = self.filename, node.start_mark
        out.marks = [item.start_mark for item in items]
        return out


def _same_key(a, b) -> bool:
    """Whether a dict takes ``a`` and ``b`` for one key (a NaN is only itself)."""
    return a is b or a == b


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


def _offset_loc(text: str, offset: int, filename: str, in_bytes: bool) -> SourceLoc:
    """The place of a character offset (libyaml counts UTF-8 bytes, PyYAML characters)."""
    if in_bytes:
        done = text.encode("utf-8", errors="replace")[:max(offset, 0)].decode("utf-8", "ignore")
    else:
        done = text[:max(offset, 0)]
    return SourceLoc(filename, done.count("\n") + 1, len(done) - done.rfind("\n"))


def _refuse_many_events(text: str, filename: str) -> None:
    """Refuse a text of more values than the bound before composing it: libyaml counts its
    events in C at a tenth of what composing them costs. A value is one event, or two for a
    list or mapping; a key is one more event but no value, so a mapping is counted as it is
    checked later (keys that are lists or mappings are refused anyway)."""
    events = _CParser(text).raw_parse() - 4  # stream and document start and end
    if events > 2 * MAX_VALUES:
        raise SpecError([Diagnostic(
            f"the spec holds more than {MAX_VALUES:,} values; refused",
            SourceLoc(filename, 1, 1),
            fix="a network spec has a few thousand values; check the file")])


def parse_yaml(text: str, filename: str):
    """Parse one YAML document safely; returns its value (YamlMap, YamlList or scalar).

    Raises SpecError with the file, line and column of the first problem.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_FILE_BYTES:
        raise SpecError([Diagnostic(
            f"the spec is larger than {MAX_FILE_BYTES // 1024:,} KiB; refused",
            SourceLoc(filename, 1, 1), fix="a network spec is a few kilobytes; check the file")])
    loader, loader_cls = None, _FastLoader or _PyLoader
    try:
        with gc_paused():
            if loader_cls is not _PyLoader:
                _refuse_many_events(text, filename)
            loader = loader_cls(text)  # the pure-Python reader checks every character here
            node = loader.get_single_node()
            if node is None:
                raise SpecError([Diagnostic("the spec file is empty", SourceLoc(filename, 1, 1),
                                            expected="a mapping with 'input' and 'layers'",
                                            fix="write e.g. 'input: [1, 28, 28]' and a "
                                                "'layers:' list")])
            converter = _Converter(filename, text, loader_cls is _PyLoader)
            value = converter.convert_document(node)
            del node  # freed while the collector is off, so it never walks the nodes
        return value
    except _Refused as exc:
        raise SpecError([Diagnostic(exc.message, _mark_loc(filename, exc.mark), fix=exc.fix)],
                        text.splitlines()) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = _mark_loc(filename, mark) if mark else SourceLoc(filename, 1, 1)
        problem = exc.problem or exc.context or "malformed YAML"
        if "maximum nesting depth" in problem:  # libyaml's own bound, far above ours
            exc = _too_deep(mark)
            raise SpecError([Diagnostic(exc.message, loc, fix=exc.fix)],
                            text.splitlines()) from None
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise SpecError([Diagnostic(f"malformed YAML: {problem}{context}", loc,
                                    fix=_syntax_hint(text, exc))],
                        text.splitlines()) from None
    except yaml.reader.ReaderError as exc:
        # a control character; the reader knows only the offset
        loc = _offset_loc(text, exc.position, filename, in_bytes=loader_cls is not _PyLoader)
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

"""Safe, bounded YAML reading that remembers where every value came from.

PyYAML's SafeLoader composes the node tree (no Python tags: nothing is ever constructed from a
tag); this module then turns nodes into :class:`YamlMap` / :class:`YamlList`, which are a dict
and a list that also carry the line and column of themselves and of each of their values, so a
later stage can say ``specs/net.yaml:14:5`` about any value it rejects.

Hostile input is bounded before it can cost anything: file size, nesting depth, the number of
aliases, and the number of values after alias expansion (an alias bomb is refused at once).
Duplicate keys are errors that name both lines.
"""

from __future__ import annotations

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from ..errors import Diagnostic, SourceLoc, SpecError

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 512
MAX_VALUES = 200_000

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


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


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting and many aliases while composing."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name); refused", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"nesting deeper than {MAX_DEPTH} levels; refused", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _mark_loc(filename: str, mark) -> SourceLoc:
    return SourceLoc(filename, mark.line + 1, mark.column + 1)


class _Converter:
    """Turns a composed node tree into YamlMap/YamlList/scalars, counting expanded values."""

    def __init__(self, loader: _BoundedLoader, filename: str):
        self.loader = loader
        self.filename = filename
        self.count = 0
        self.active: set[int] = set()

    def loc(self, node) -> SourceLoc:
        return _mark_loc(self.filename, node.start_mark)

    def fail(self, node, message: str):
        raise SpecError([Diagnostic(message, self.loc(node))])

    def convert(self, node):
        self.count += 1
        if self.count > MAX_VALUES:
            self.fail(node, f"the document expands to more than {MAX_VALUES} values "
                            "(an alias bomb?); refused")
        if id(node) in self.active:
            self.fail(node, "an alias refers to the collection that contains it; "
                            "recursive YAML is not allowed in a spec")
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
        if not node.tag.startswith("tag:yaml.org,2002:") or "python" in node.tag:
            self.fail(node, f"YAML tag '{node.tag}' is not allowed in a spec; "
                            "write plain values without tags")
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(node, f"cannot read this value: {getattr(exc, 'problem', exc)}")

    def mapping(self, node: MappingNode) -> YamlMap:
        if node.tag != _MAP_TAG:
            self.fail(node, f"YAML tag '{node.tag}' is not allowed in a spec; "
                            "write a plain mapping without a tag")
        self.check_duplicates(node)
        try:
            self.loader.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.fail(node, f"bad merge key '<<': {getattr(exc, 'problem', exc)}")
        out = YamlMap()
        out.loc, out.locs, out.key_locs = self.loc(node), {}, {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, "a mapping key must be a plain value, not a list or mapping")
            key = self.scalar(key_node)
            out[key] = self.convert(value_node)
            out.locs[key] = self.loc(value_node)
            out.key_locs[key] = self.loc(key_node)
        return out

    def check_duplicates(self, node: MappingNode) -> None:
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.scalar(key_node)
            try:
                hash(key)
            except TypeError:
                self.fail(key_node, "a mapping key must be a plain value")
            if key in seen:
                first = seen[key]
                raise SpecError([Diagnostic(
                    f"duplicate key '{key}' (first at line {first.line}, again at line "
                    f"{key_node.start_mark.line + 1})",
                    self.loc(key_node),
                    expected="each key once per mapping",
                    fix=f"remove one of the two '{key}' entries")])
            seen[key] = self.loc(key_node)

    def sequence(self, node: SequenceNode) -> YamlList:
        if node.tag != _SEQ_TAG:
            self.fail(node, f"YAML tag '{node.tag}' is not allowed in a spec; "
                            "write a plain list without a tag")
        out = YamlList(self.convert(item) for item in node.value)
        out.loc = self.loc(node)
        out.locs = [self.loc(item) for item in node.value]
        return out


def parse_yaml(text: str, filename: str):
    """Parse one YAML document safely; returns its value (YamlMap, YamlList or scalar).

    Raises SpecError with the file, line and column of the first problem.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_FILE_BYTES:
        raise SpecError([Diagnostic(
            f"spec is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; refused",
            SourceLoc(filename, 1, 1), fix="a network spec is a few kilobytes; check the file")])
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError([Diagnostic("the spec file is empty", SourceLoc(filename, 1, 1),
                                        expected="a mapping with 'input' and 'layers'")])
        return _Converter(loader, filename).convert(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = _mark_loc(filename, mark) if mark else SourceLoc(filename, 1, 1)
        problem = exc.problem or exc.context or "malformed YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        raise SpecError([Diagnostic(f"malformed YAML: {problem}{context}", loc)],
                        text.splitlines()) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(f"malformed YAML: {exc}", SourceLoc(filename, 1, 1))]) from None
    except RecursionError:
        raise SpecError([Diagnostic("YAML nesting is too deep; refused",
                                    SourceLoc(filename, 1, 1))]) from None
    finally:
        loader.dispose()

"""JSON records on disk (manifests, checkpoint metadata, cache records), read defensively.

A record is checked against a small schema before any field is used, so a damaged or forged
record is refused with the field's name instead of failing later with a TypeError:

    TARGET = {"kind": one_of("cpu", "cuda"), "cpu_flags": [str]}
    check_record(manifest, {"target": TARGET, "batch_sizes": [positive_int]}, "build/x/manifest.json")

Schema forms: a Python type (``bool`` is never an ``int``), ``[item]`` (a list of items), a
dict (those keys required, others allowed), ``optional(s)`` (the key may be absent or null),
``map_of(s)`` (any string keys), ``one_of(*values)``, and :class:`Check` for anything else.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ArtifactError


@dataclass(frozen=True)
class Check:
    test: Callable[[Any], bool]
    expected: str


@dataclass(frozen=True)
class optional:
    schema: Any


@dataclass(frozen=True)
class map_of:
    schema: Any


def one_of(*values) -> Check:
    return Check(lambda v: isinstance(v, str) and v in values,
                 "one of " + ", ".join(repr(v) for v in values))


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


positive_int = Check(lambda v: _int(v) and v >= 1, "a positive integer")
count = Check(lambda v: _int(v) and v >= 0, "a non-negative integer")
number = Check(lambda v: (_int(v) or isinstance(v, float)) and math.isfinite(v), "a finite number")
sha256 = Check(lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
               "a sha256 (64 hex digits)")
FILE_ENTRY = {"sha256": sha256, "size": count}


def _describe(value) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _expected(schema) -> str:
    if isinstance(schema, Check):
        return schema.expected
    if isinstance(schema, optional):
        return _expected(schema.schema) + " or null"
    if isinstance(schema, list):
        return "a list"
    if isinstance(schema, (dict, map_of)):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        schema, schema.__name__)


def _problem(value, schema, path: str):
    """(field path, what it holds, what it should hold) of the first mismatch, or None."""
    if isinstance(schema, optional):
        return None if value is None else _problem(value, schema.schema, path)
    if isinstance(schema, Check):
        return None if schema.test(value) else (path, _describe(value), schema.expected)
    if isinstance(schema, list):
        if not isinstance(value, list):
            return path, _describe(value), "a list"
        for i, item in enumerate(value):
            found = _problem(item, schema[0], f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(schema, map_of):
        if not isinstance(value, dict):
            return path, _describe(value), "a mapping"
        for key, item in value.items():
            found = _problem(item, schema.schema, f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return path, _describe(value), "a mapping"
        for key, sub in schema.items():
            where = f"{path}.{key}" if path else key
            if key not in value:
                if isinstance(sub, optional):
                    continue
                return where, "missing", _expected(sub)
            found = _problem(value[key], sub, where)
            if found:
                return found
        return None
    ok = isinstance(value, schema) and not (schema is int and isinstance(value, bool))
    if schema is float:
        ok = (_int(value) or isinstance(value, float)) and math.isfinite(value)
    return None if ok else (path, _describe(value), _expected(schema))


def check_record(document, schema, where: str, fix: str) -> None:
    """Raise ArtifactError naming the first field of ``document`` that does not fit ``schema``."""
    found = _problem(document, schema, "")
    if found:
        path, got, expected = found
        field = f"field '{path}'" if path else "the record"
        raise ArtifactError(f"{where}: {field} is {got}; expected {expected}; {fix}")


def parse_json(data: bytes, where: str, what: str, fix: str) -> Any:
    """JSON from bytes; damaged text and absurd nesting are refused, not raised through."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = str(exc)
    except RecursionError:
        detail = "nested too deeply"
    raise ArtifactError(f"{where}: {what} is corrupt ({detail}); {fix}")

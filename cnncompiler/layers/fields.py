"""Parsers for the keys of a layer, and the ``option`` helper that attaches them to fields.

A layer declares its keys as dataclass fields::

    filters: int = option(positive_int)                 # required
    stride: tuple = option(int_tuple(2), default=1)     # optional, parsed like a spec value

Each parser takes the raw YAML value and returns the normalised one, or raises FieldError with
what was received, what was expected and how to fix it. YAML booleans (``yes``, ``no``, ``true``)
are never accepted as numbers, though Python would treat them as 1 and 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

from ..errors import FieldError
from ..suggest import closest, one_of

REQUIRED = object()

Parser = Callable[[Any], Any]


def option(parser: Parser, default: Any = REQUIRED, doc: str = "") -> Any:
    """A layer key: parsed by ``parser``; required when no default is given.

    The default is itself run through the parser, so ``default=1`` for a pair becomes (1, 1).
    """
    meta = {"parser": parser, "doc": doc, "required": default is REQUIRED}
    if default is REQUIRED:
        return dataclasses.field(default=None, metadata=meta)
    return dataclasses.field(default=parser(default), metadata=meta)


# Every size, count, index and setting a spec writes as an integer is below this: TVM indexes
# with int32, and a larger number in a spec is a typo.
MAX_INT = 2**31 - 1
# Real-valued settings become float32 constants of the compiled model.
FLOAT32_MAX = 3.4028234663852886e38


def describe(value: Any) -> str:
    """How a received value reads in an error message."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean; yes/no/on/off are booleans in YAML)"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"'{value if len(value) <= 100 else value[:100] + '...'}' (a string)"
    if isinstance(value, (list, tuple)):
        return f"{list(value)} (a list)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (int, float)):
        return show_number(value)
    return repr(value)


def show_int(value: int) -> str:
    """A whole number for a message; a typo of 400 digits is shown by its length."""
    if abs(value) < 10**15:
        return f"{value:,}"
    # str() refuses integers of more than 4,300 digits; the bit length gives the count too
    digits = len(str(abs(value))) if value.bit_length() < 14_000 else \
        int(value.bit_length() * math.log10(2)) + 1
    return f"{'a negative' if value < 0 else 'a'} number of {digits:,} digits"


def show_number(value: float | int) -> str:
    """A number for a message, saying what an infinity or a NaN is."""
    if isinstance(value, int):
        return show_int(value)
    if math.isnan(value):
        return "nan (not a number)"
    if math.isinf(value):
        return (f"{'-' if value < 0 else ''}infinity (.inf, or a number beyond 1.8e308 such "
                "as 1e400)")
    return repr(value)


def integer(value: Any, minimum: int | None = None, what: str = "an integer") -> int:
    """An integer from ``minimum`` (or -MAX_INT) to MAX_INT."""
    if isinstance(value, bool) or not isinstance(value, int):
        fix = None
        if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT:
            fix = f"write {int(value)} without the decimal point"
        raise FieldError(f"received {describe(value)}", f"expected {what}", fix)
    if minimum is not None and value < minimum:
        raise FieldError(f"received {show_int(value)}", f"expected {what}")
    if abs(value) > MAX_INT:
        bound = f"at most {MAX_INT:,}" if value > 0 else f"at least {-MAX_INT:,}"
        raise FieldError(f"{show_int(value)} is {'larger' if value > 0 else 'smaller'} than "
                         "cnnc accepts", bound, "this looks like a typo")
    return value


def positive_int(value: Any) -> int:
    return integer(value, 1, "an integer >= 1")


def non_negative_int(value: Any) -> int:
    return integer(value, 0, "an integer >= 0")


def number(value: Any, what: str = "a number") -> float:
    """A number a float32 holds, as a float; ``what`` names the range the caller checks next."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(f"received {describe(value)}", f"expected {what}")
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(f"received {show_number(value)}",
                         f"expected a finite {what.removeprefix('a ')}")
    if abs(value) > FLOAT32_MAX:  # exact for an int of any size, where float() would overflow
        raise FieldError(f"received {show_number(value)}, beyond the float32 range "
                         "(±3.4e38)", f"expected {what}")
    return float(value)


def positive_number(value: Any) -> float:
    v = number(value, "a number > 0")
    if v <= 0:
        raise FieldError(f"received {show_number(value)}", "expected a number > 0")
    return v


def non_negative_number(value: Any) -> float:
    v = number(value, "a number >= 0")
    if v < 0:
        raise FieldError(f"received {show_number(value)}", "expected a number >= 0")
    return v


def probability(value: Any) -> float:
    v = number(value, "a probability in [0, 1)")
    if not 0.0 <= v < 1.0:
        raise FieldError(f"received {show_number(value)}", "expected a rate in [0, 1)",
                         "a dropout rate of 0.5 drops half the activations")
    return v


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"received {describe(value)}", "expected true or false")
    return value


def int_tuple(n: int, minimum: int = 1) -> Parser:
    """An int, used for every one of ``n`` dimensions, or a list of ``n`` ints."""
    what = f"an integer >= {minimum}" if n == 1 else \
        f"an integer >= {minimum} or a list of {n} such integers"

    def parse(value: Any) -> tuple[int, ...]:
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise FieldError(f"received {describe(value)} with {len(value)} entries",
                                 f"expected {what}")
            return tuple(integer(v, minimum, what) for v in value)
        return (integer(value, minimum, what),) * n

    parse.__name__ = f"int_tuple{n}"
    return parse


def padding(n: int) -> Parser:
    """``valid``, ``same``, an int, a list of ``n`` ints, or a list of ``n`` [before, after] pairs.

    Returns the string, or a tuple of ``n`` (before, after) pairs.
    """
    what = (f"'valid', 'same', an integer >= 0, a list of {n} integers, "
            f"or a list of {n} [before, after] pairs")

    def one(v: Any) -> tuple[int, int]:
        if isinstance(v, (list, tuple)):
            if len(v) != 2:
                raise FieldError(f"received {describe(v)}", f"expected {what}")
            return (integer(v[0], 0, what), integer(v[1], 0, what))
        p = integer(v, 0, what)
        return (p, p)

    def parse(value: Any):
        if isinstance(value, str):
            if value.lower() in ("valid", "same"):
                return value.lower()
            raise FieldError(f"received {describe(value)}", f"expected {what}")
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise FieldError(f"received {describe(value)} with {len(value)} entries",
                                 f"expected {what}")
            return tuple(one(v) for v in value)
        return (one(value),) * n

    parse.__name__ = f"padding{n}"
    return parse


def choice(*options: str) -> Parser:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise FieldError(f"received {describe(value)}",
                             "expected one of " + ", ".join(f"'{o}'" for o in options))
        return value

    return parse


# what Keras, PyTorch, Caffe and TensorFlow call cnnc's keys: an unknown key named here points
# to cnnc's name instead of to the nearest spelling ("kernel_size" is closer to no key)
ALIASES = {
    "kernel_size": "kernel", "pool_size": "kernel", "strides": "stride",
    "dilation_rate": "dilation", "num_output": "filters", "out_channels": "filters",
    "out_features": "units", "num_outputs": "units", "use_bias": "bias", "bias_term": "bias",
    "negative_slope": "alpha", "drop_rate": "rate", "p": "rate", "learning_rate": "lr",
    "weight_decay_rate": "weight_decay", "epsilon": "eps", "local_size": "size",
}


def _unknown_key_fix(key, known: list[str]) -> tuple[str | None, str]:
    """(the key meant, how to fix) for an unknown key."""
    alias = ALIASES.get(key) if isinstance(key, str) else None
    if alias in known:
        return alias, f"write '{alias}' (cnnc's name for {key})"
    if key == "activation":
        return None, ("write the activation as a layer of its own after this one, e.g. "
                      "{type: relu}; it fuses into this layer's kernel")
    # a key of hundreds of characters is close to no name (and slow to compare)
    close = closest(key, known) if len(str(key)) <= 100 else None
    return close, f"did you mean '{close}'?" if close else f"remove '{key}'"


@functools.cache
def _keys_of(cls) -> tuple[dict, list[str]]:
    """``cls``'s fields by name, and the names of those a spec may set (asked once per layer
    of a spec that may have twenty thousand)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return fields, [n for n, f in fields.items() if "parser" in f.metadata]


def parse_fields(cls, mapping: dict, reserved=()) -> tuple[dict, list[tuple[str, FieldError]]]:
    """Parse ``mapping``'s keys into ``cls``'s fields; returns kwargs and (key, error) pairs.

    Unknown keys come back as errors keyed by the unknown key; missing required ones keyed by
    None (the caller reports them at the mapping itself).
    """
    fields, known = _keys_of(cls)
    kwargs, problems, misspelt = {}, [], set()
    for key, value in mapping.items():
        if key in reserved:
            continue
        f = fields.get(key)
        if f is None or "parser" not in f.metadata:
            meant, fix = _unknown_key_fix(key, known)
            misspelt.add(meant)
            problems.append((key, FieldError(
                f"unknown key '{key}'", f"one of: {one_of(known + list(reserved))}", fix)))
            continue
        try:
            kwargs[key] = f.metadata["parser"](value)
        except FieldError as exc:
            problems.append((key, FieldError(f"key '{key}': {exc.message}", exc.expected, exc.fix)))
    for name, f in fields.items():
        # a misspelt key already said what is missing
        if f.metadata.get("required") and name not in mapping and name not in misspelt:
            doc = f.metadata.get("doc")
            problems.append((None, FieldError(
                f"missing required key '{name}'" + (f" ({doc})" if doc else ""),
                None, f"add '{name}: <value>'")))
    return kwargs, problems

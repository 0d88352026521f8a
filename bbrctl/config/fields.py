"""Typed fields for the config schema: a type, a range or a set of choices, and a description.

A field checks one value and returns it (ints are accepted where floats are meant); a bad
value raises :class:`Invalid` with what is valid, and the schema adds the key. Plain
Python, no OmegaConf: a sweep validates a thousand resolved configs in a fraction of a
second.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping


class Invalid(ValueError):
    """A value that does not fit its field; the message says what is valid."""


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(x: float) -> str:
    if abs(x - 1 / math.e) < 1e-12:
        return "1/e"
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}"


@dataclass(frozen=True)
class Field:
    """Base: ``check`` returns the value or raises Invalid; ``required`` keys must be present."""

    required: bool = field(default=True, kw_only=True)
    doc: str = field(default="", kw_only=True)

    def check(self, v: Any) -> Any:
        return v

    def describe(self) -> str:
        return "any value"


def _range_text(kind: str, lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {fmt(lo)}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {fmt(hi)}"
    return kind


@dataclass(frozen=True)
class Int(Field):
    """An integer in [lo, hi]; without ``hi``, at most :data:`INT_CEILING`: every count bbrctl
    takes (iterations, sizes, periods) fits it, and 10**23 iterations is no experiment."""

    lo: int | None = None
    hi: int | None = None

    def check(self, v: Any) -> Any:
        hi = INT_CEILING if self.hi is None else self.hi
        if not is_int(v) or (self.lo is not None and v < self.lo) or v > hi:
            raise Invalid(self.describe())
        return v

    def describe(self) -> str:
        return _range_text("an integer", self.lo, INT_CEILING if self.hi is None else self.hi, False, False)


INT_CEILING = 2**31 - 1


@dataclass(frozen=True)
class Float(Field):
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, v: Any) -> Any:
        if not is_num(v):
            raise Invalid(self.describe())
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo - 1e-12):
            raise Invalid(self.describe())
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi + 1e-12):
            raise Invalid(self.describe())
        return v

    def describe(self) -> str:
        return _range_text("a number", self.lo, self.hi, self.lo_open, self.hi_open)


@dataclass(frozen=True)
class Bool(Field):
    def check(self, v: Any) -> Any:
        if not isinstance(v, bool):
            raise Invalid(self.describe())
        return v

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Str(Field):
    pattern: str | None = None
    what: str = "a string"
    nonempty: bool = True

    def check(self, v: Any) -> Any:
        if not isinstance(v, str) or (self.nonempty and not v) or "\0" in v:
            raise Invalid(self.describe())
        if self.pattern is not None and not re.fullmatch(self.pattern, v):
            raise Invalid(self.describe())
        return v

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class Choice(Field):
    values: tuple = ()

    def check(self, v: Any) -> Any:
        if isinstance(v, bool) or v not in self.values:
            raise Invalid(self.describe())
        return v

    def describe(self) -> str:
        return "one of " + ", ".join(str(x) for x in self.values)


@dataclass(frozen=True)
class Const(Field):
    """Exactly one value, of its own type (``False`` is not ``0``)."""

    value: Any = None
    what: str = ""

    def check(self, v: Any) -> Any:
        if type(v) is not type(self.value) or v != self.value:
            raise Invalid(self.describe())
        return v

    def describe(self) -> str:
        return self.what or repr(self.value)


@dataclass(frozen=True)
class Nullable(Field):
    inner: Field = field(default_factory=Field)

    def check(self, v: Any) -> Any:
        if v is None:
            return v
        try:
            return self.inner.check(v)
        except Invalid:
            raise Invalid(self.describe()) from None

    def describe(self) -> str:
        return f"null or {self.inner.describe()}"


@dataclass(frozen=True)
class AnyOf(Field):
    options: tuple = ()
    what: str = ""

    def check(self, v: Any) -> Any:
        for opt in self.options:
            try:
                return opt.check(v)
            except Invalid:
                continue
        raise Invalid(self.describe())

    def describe(self) -> str:
        return self.what or " or ".join(o.describe() for o in self.options)


@dataclass(frozen=True)
class ListOf(Field):
    item: Field = field(default_factory=Field)
    length: int | None = None
    min_len: int = 0
    increasing: bool = False          # strictly increasing values

    def check(self, v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            raise Invalid(self.describe())
        if (self.length is not None and len(v) != self.length) or len(v) < self.min_len:
            raise Invalid(self.describe())
        try:
            for x in v:
                self.item.check(x)
        except Invalid:
            raise Invalid(self.describe()) from None
        if self.increasing and any(b <= a for a, b in zip(v, v[1:])):
            raise Invalid(self.describe())
        return v

    def describe(self) -> str:
        n = f"{self.length} " if self.length is not None else ("a non-empty list of " if self.min_len else "a list of ")
        inc = "increasing " if self.increasing else ""
        item = self.item.describe()
        for art in ("an ", "a "):
            if item.startswith(art):
                item = item[len(art):]
                break
        if self.length is not None:
            return f"a list of {self.length} {inc}{_plural(item)}"
        return f"{n}{inc}{_plural(item)}"


def _plural(text: str) -> str:
    if text == Bool().describe():
        return "true/false values"
    head, sep, tail = text.partition(" ")
    return (head + "s" if not head.endswith("s") else head) + sep + tail


@dataclass(frozen=True)
class Mapping_(Field):
    """A free-form mapping (e.g. extra constructor kwargs); keys are not checked."""

    def check(self, v: Any) -> Any:
        if not isinstance(v, dict):
            raise Invalid(self.describe())
        return v

    def describe(self) -> str:
        return "a mapping"


Keys = Mapping[str, Field]


def optional(f: Field) -> Field:
    """The same field, allowed to be absent (code falls back to its default)."""
    import dataclasses

    return dataclasses.replace(f, required=False)


def names(keys: Keys) -> str:
    return ", ".join(sorted(keys))


def did_you_mean(word: str, choices, prefix: str = "") -> str:
    """' (did you mean 'prefix.x'?)' for the closest of ``choices`` to a mistyped ``word``, else ''."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""

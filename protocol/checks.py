"""Typed configuration: one helper that checks a value against what its key expects.

Every config key has a `Spec` where it is used: the run's own keys (app/schema.py), each task's
section (declared in its package), each SSL method's arguments (its CONFIG), each strategy's
arguments (its constructor). A wrong value is refused before anything starts, with the key, the
value and what is expected: `fraction_fit must be a number in (0, 1], got 'abc'`.
Values are checked, not converted: an int is accepted where a number is expected, a bool never.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ConfigError(ValueError):
    """The configuration cannot run; the message names the key, the value and what is valid."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


@dataclass(frozen=True)
class Spec:
    """Base: `check(value, key)` returns the value or raises ConfigError; null=True admits None."""

    null: bool = False

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def fits(self, value) -> str | None:
        """None if `value` is valid, else "type" (wrong kind) or "range" (right kind, out of range)."""
        raise NotImplementedError  # pragma: no cover

    def check(self, value, key: str):
        if value is None and self.null:
            return value
        problem = "type" if value is None else self.fits(value)
        if problem is None:
            return value
        expected = self.describe()
        if self.null:
            expected = f"null or {expected}"
        raise ConfigError(self.message(key, value, expected, problem))

    def message(self, key: str, value, expected: str, problem: str) -> str:
        return f"{key} must be {expected}, got {value!r}"


def _bounds(lo, lo_open, hi, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return ""


@dataclass(frozen=True)
class Int(Spec):
    min: int | None = None
    max: int | None = None

    def describe(self) -> str:
        return " ".join(filter(None, ["an integer", _bounds(self.min, False, self.max, False)]))

    def fits(self, v):
        if not _is_int(v):
            return "type"
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            return "range"
        return None


@dataclass(frozen=True)
class Float(Spec):
    """A number; `min`/`max` are closed bounds, `above`/`below` open ones; `unit` follows the bound."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    unit: str = ""

    def _range(self) -> str:
        lo, lo_open = (self.above, True) if self.above is not None else (self.min, False)
        hi, hi_open = (self.below, True) if self.below is not None else (self.max, False)
        return " ".join(filter(None, [_bounds(lo, lo_open, hi, hi_open), self.unit]))

    def describe(self) -> str:
        return self._range() or "a number"

    def fits(self, v):
        if not _is_number(v):
            return "type"
        if ((self.min is not None and v < self.min) or (self.max is not None and v > self.max)
                or (self.above is not None and v <= self.above) or (self.below is not None and v >= self.below)):
            return "range"
        return None

    def message(self, key, value, expected, problem):
        if problem == "type" and self._range():  # say that a number was expected, then its range
            expected = expected.replace(self._range(), f"a number {self._range()}")
        return f"{key} must be {expected}, got {value!r}"


@dataclass(frozen=True)
class Bool(Spec):
    def describe(self) -> str:
        return "true or false"

    def fits(self, v):
        return None if isinstance(v, bool) else "type"


@dataclass(frozen=True)
class Text(Spec):
    """Any string (a path, a name)."""

    def describe(self) -> str:
        return "a string"

    def fits(self, v):
        return None if isinstance(v, str) else "type"


@dataclass(frozen=True)
class Choice(Spec):
    options: tuple = ()

    def describe(self) -> str:
        return f"one of {list(self.options)}"

    def fits(self, v):
        return None if isinstance(v, str) and v in self.options else "type"

    def message(self, key, value, expected, problem):
        return f"{key}={value!r} is not valid; choose one of {list(self.options)}"


@dataclass(frozen=True)
class Matches(Spec):
    """A string matching `pattern` (whole string); `description` says what that means."""

    pattern: str = ""
    description: str = ""

    def describe(self) -> str:
        return self.description

    def fits(self, v):
        return None if isinstance(v, str) and re.fullmatch(self.pattern, v) else "type"

    def message(self, key, value, expected, problem):
        return f"{key}={value!r} is not valid; choose {expected}"


@dataclass(frozen=True)
class ListOf(Spec):
    """A list whose items fit `item`; `length` fixes its length; `description` replaces the generic one."""

    item: Spec | None = None
    length: int | None = None
    min_length: int = 0
    description: str = ""

    def describe(self) -> str:
        if self.description:
            return self.description
        size = f"{self.length} " if self.length is not None else ""
        return f"a list of {size}items, each {self.item.describe()}" if self.item else f"a list of {size}items"

    def fits(self, v):
        if not isinstance(v, (list, tuple)):
            return "type"
        if (self.length is not None and len(v) != self.length) or len(v) < self.min_length:
            return "range"
        if self.item is not None and any(self.item.fits(x) is not None and not (x is None and self.item.null)
                                         for x in v):
            return "type"
        return None


@dataclass(frozen=True)
class AnyOf(Spec):
    """Valid when one of `specs` accepts the value (e.g. "auto" or an integer >= 1)."""

    specs: tuple = ()

    def describe(self) -> str:
        return " or ".join(s.describe() for s in self.specs)

    def fits(self, v):
        return None if any(s.fits(v) is None for s in self.specs) else "type"


def conform(section: dict, specs: dict[str, Spec], prefix: str = "") -> None:
    """Check every key of `section` that `specs` names (nested dicts: keys "a.b").

    A key of `section` that no spec names is left to its owner (for example an SSL method's own
    arguments, checked by the method); `missing_specs` lists them for a completeness test.
    """
    for key, value in section.items():
        full = f"{prefix}{key}"
        if full in specs:
            specs[full].check(value, full)
        elif isinstance(value, dict):
            conform(value, specs, f"{full}.")


def missing_specs(section: dict, specs: dict[str, Spec], prefix: str = "") -> list[str]:
    """Keys of `section` (leaves, or dicts no spec names) that no spec covers."""
    out = []
    for key, value in section.items():
        full = f"{prefix}{key}"
        if full in specs:
            continue
        if isinstance(value, dict) and value:
            out += missing_specs(value, specs, full + ".")
        else:
            out.append(full)
    return out

"""Lambda FilterCriteria: the EventBridge pattern syntax Lambda documents, compiled once.

Patterns are validated and turned into small matcher objects when a stream is
configured, so a bad pattern fails at startup (as `CreateEventSourceMapping`
would) and matching per record never re-reads the pattern. Match against
`poller.events.filter_view(record)`.

Semantics, where Lambda's docs defer to EventBridge:

- Every field a pattern names must match (AND); values in a rule list are ORed;
  `$or` ORs whole sub-patterns; up to 10 patterns, ORed.
- Exact matching compares strings character by character and numbers by their
  JSON text (`300` does not equal `300.0`); `true`, `1` and `"1"` all differ.
- A rule list tests leaf values. When the event holds an array there, the rule
  matches if any element matches. An object is not a leaf: `exists: true` on a
  field holding an object is false and `exists: false` is true (so on DynamoDB
  images test `{"S": [{"exists": true}]}`, not the attribute itself).
- `numeric` matches JSON numbers only (DynamoDB `N` values are strings and
  never match it).
- A nested pattern object needs an object (or an array of objects) in the
  event, or nothing there at all. A present non-object value fails it even
  when the sub-pattern only says `exists: false`: this is how Lambda drops an
  SQS message whose body is a plain string when the pattern has JSON for `body`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Final

__all__ = ["MAX_PATTERNS", "Matcher", "compile_patterns"]

MAX_PATTERNS: Final = 10

_MISSING: Final = object()
_NO_FIELDS: Final[dict[str, Any]] = {}

Test = Callable[[object], bool]


class Matcher:
    """Compiled FilterCriteria: a record passes if any pattern matches it."""

    __slots__ = ("_patterns",)

    def __init__(self, patterns: tuple[_ObjectRule, ...]) -> None:
        self._patterns = patterns

    def matches(self, view: dict[str, Any]) -> bool:
        """True if any pattern matches `view`; with no patterns everything passes."""
        if not self._patterns:
            return True
        for pattern in self._patterns:
            if pattern.match(view):
                return True
        return False


def compile_patterns(patterns: list[dict[str, Any]]) -> Matcher:
    """Validate and compile FilterCriteria patterns (already-parsed JSON/YAML objects).

    Raises ValueError naming the pattern's index and the path inside it.
    """
    if not isinstance(patterns, list):
        raise ValueError(f"filter patterns must be a list, got {_kind(patterns)}")
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"{len(patterns)} filter patterns given; Lambda allows at most {MAX_PATTERNS}")
    compiled = []
    for index, pattern in enumerate(patterns):
        try:
            if not isinstance(pattern, dict):
                raise _PatternError((), f"a pattern must be an object, got {_kind(pattern)}")
            compiled.append(_compile_object(pattern, ()))
        except _PatternError as e:
            raise ValueError(f"filter pattern {index}: at {e.where}: {e.problem}") from None
    return Matcher(tuple(compiled))


# -- compiled rules ---------------------------------------------------------------


class _ObjectRule:
    """A pattern object: every field rule and every `$or` group must hold."""

    __slots__ = ("_alternatives", "_fields")

    def __init__(
        self,
        fields: tuple[tuple[str, _ObjectRule | _LeafRule], ...],
        alternatives: tuple[tuple[_ObjectRule, ...], ...],
    ) -> None:
        self._fields = fields
        self._alternatives = alternatives

    def match(self, value: object) -> bool:
        if isinstance(value, dict):
            obj: dict[str, Any] = value
        elif value is _MISSING:
            obj = _NO_FIELDS
        elif isinstance(value, list):
            for item in value:
                if self.match(item):
                    return True
            return False
        else:
            return False
        for key, rule in self._fields:
            if not rule.match(obj.get(key, _MISSING)):
                return False
        for group in self._alternatives:
            for alternative in group:
                if alternative.match(obj):
                    break
            else:
                return False
        return True


class _LeafRule:
    """A rule list: exact values (set lookups) plus operator tests, ORed."""

    __slots__ = ("_absent", "_exists", "_others", "_strings", "_tests")

    def __init__(
        self,
        strings: frozenset[str],
        others: frozenset[tuple[str, object]],
        tests: tuple[Test, ...],
        exists: bool,
        absent: bool,
    ) -> None:
        self._strings = strings
        self._others = others
        self._tests = tests
        self._exists = exists  # some rule is {"exists": true}
        self._absent = absent  # some rule is {"exists": false}

    def match(self, value: object) -> bool:
        if value is _MISSING or isinstance(value, dict):
            return self._absent
        if isinstance(value, list):
            found = False
            for leaf in _leaves(value):
                found = True
                if self._match_leaf(leaf):
                    return True
            return self._absent and not found
        return self._match_leaf(value)

    def _match_leaf(self, value: object) -> bool:
        if self._exists:
            return True
        if type(value) is str:
            if value in self._strings:
                return True
        elif self._others and _exact_key(value) in self._others:
            return True
        for test in self._tests:
            if test(value):
                return True
        return False


def _leaves(values: list[Any]) -> Iterator[object]:
    for value in values:
        if isinstance(value, list):
            yield from _leaves(value)
        elif not isinstance(value, dict):
            yield value


def _exact_key(value: object) -> tuple[str, object]:
    """Equality key for non-string leaves: numbers by JSON text, and no bool == int."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", repr(value))
    return ("other", repr(value))


# -- compilation -------------------------------------------------------------------

Path = tuple[str | int, ...]


class _PatternError(Exception):
    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where = _render(path)


def _render(path: Path) -> str:
    if not path:
        return "top level"
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def _compile_object(pattern: dict[str, Any], path: Path) -> _ObjectRule:
    if not pattern:
        raise _PatternError(path, "an empty object matches nothing")
    fields: list[tuple[str, _ObjectRule | _LeafRule]] = []
    alternatives: list[tuple[_ObjectRule, ...]] = []
    for key, value in pattern.items():
        here = (*path, key)
        if not isinstance(key, str):
            raise _PatternError(here, f"field names must be strings, got {_kind(key)}")
        if key == "$or":
            alternatives.append(_compile_or(value, here))
        elif isinstance(value, dict):
            fields.append((key, _compile_object(value, here)))
        elif isinstance(value, list):
            fields.append((key, _compile_leaf(value, here)))
        else:
            raise _PatternError(
                here,
                f"expected a list of rules or a nested object, got {_kind(value)} "
                "(Lambda rejects a bare value: write [value])",
            )
    return _ObjectRule(tuple(fields), tuple(alternatives))


def _compile_or(value: Any, path: Path) -> tuple[_ObjectRule, ...]:
    if not isinstance(value, list) or not value:
        raise _PatternError(path, "$or takes a non-empty list of pattern objects")
    out = []
    for i, sub in enumerate(value):
        if not isinstance(sub, dict):
            raise _PatternError((*path, i), f"expected a pattern object, got {_kind(sub)}")
        out.append(_compile_object(sub, (*path, i)))
    return tuple(out)


def _compile_leaf(rules: list[Any], path: Path) -> _LeafRule:
    if not rules:
        raise _PatternError(path, "an empty rule list matches nothing")
    strings: set[str] = set()
    others: set[tuple[str, object]] = set()
    tests: list[Test] = []
    exists = absent = False
    for i, rule in enumerate(rules):
        here = (*path, i)
        if isinstance(rule, str):
            strings.add(rule)
        elif _is_exact_scalar(rule):
            others.add(_exact_key(_checked_number(rule, here)))
        elif isinstance(rule, dict):
            if len(rule) != 1:
                raise _PatternError(
                    here, f"an operator object takes exactly one operator, got {sorted(rule)}"
                )
            ((op, arg),) = rule.items()
            if op == "exists":
                if not isinstance(arg, bool):
                    raise _PatternError((*here, op), f"expected true or false, got {_kind(arg)}")
                if arg:
                    exists = True
                else:
                    absent = True
            else:
                tests.append(_compile_operator(op, arg, (*here, op)))
        else:
            raise _PatternError(
                here, f"expected a string, number, boolean, null or operator, got {_kind(rule)}"
            )
    return _LeafRule(frozenset(strings), frozenset(others), tuple(tests), exists, absent)


def _is_exact_scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float)


def _checked_number(value: Any, path: Path) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise _PatternError(path, f"{value!r} is not a JSON number")
    return value


def _is_number(value: object) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _compile_operator(op: str, arg: Any, path: Path) -> Test:
    if op == "prefix":
        return _string_test(arg, path, str.startswith)
    if op == "suffix":
        return _string_test(arg, path, str.endswith)
    if op == "equals-ignore-case":
        target = _string_arg(arg, path).casefold()
        return lambda v: type(v) is str and v.casefold() == target
    if op == "numeric":
        return _numeric_test(arg, path)
    if op == "anything-but":
        excluded = _anything_but(arg, path)
        return lambda v: not excluded(v)
    raise _PatternError(
        path,
        "unknown operator; expected one of prefix, suffix, equals-ignore-case, anything-but, numeric, exists",
    )


def _string_arg(arg: Any, path: Path) -> str:
    if not isinstance(arg, str):
        raise _PatternError(path, f"expected a string, got {_kind(arg)}")
    return arg


def _string_test(arg: Any, path: Path, check: Callable[[str, str], bool]) -> Test:
    """prefix/suffix, either on a string or as {"equals-ignore-case": string}."""
    if isinstance(arg, dict) and len(arg) == 1 and "equals-ignore-case" in arg:
        folded = _string_arg(arg["equals-ignore-case"], (*path, "equals-ignore-case")).casefold()
        return lambda v: type(v) is str and check(v.casefold(), folded)
    text = _string_arg(arg, path)
    return lambda v: type(v) is str and check(v, text)


def _anything_but(arg: Any, path: Path) -> Test:
    """The test anything-but negates: listed values, or a prefix/suffix/ignore-case match."""
    if isinstance(arg, dict):
        if len(arg) != 1:
            raise _PatternError(path, f"expected one operator, got {sorted(arg)}")
        ((op, inner),) = arg.items()
        here = (*path, op)
        if op == "prefix":
            prefix = _string_arg(inner, here)
            return lambda v: type(v) is str and v.startswith(prefix)
        if op == "suffix":
            suffix = _string_arg(inner, here)
            return lambda v: type(v) is str and v.endswith(suffix)
        if op == "equals-ignore-case":
            values = inner if isinstance(inner, list) else [inner]
            if not values:
                raise _PatternError(here, "an empty list excludes nothing")
            folded = frozenset(_string_arg(s, (*here, i)).casefold() for i, s in enumerate(values))
            return lambda v: type(v) is str and v.casefold() in folded
        raise _PatternError(here, "anything-but takes values or one of prefix, suffix, equals-ignore-case")
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise _PatternError(path, "an empty list excludes nothing")
    strings: set[str] = set()
    numbers: set[tuple[str, object]] = set()
    for i, value in enumerate(values):
        if isinstance(value, str):
            strings.add(value)
        elif _is_number(value):
            numbers.add(_exact_key(value))
        else:
            raise _PatternError(
                (*path, i) if isinstance(arg, list) else path,
                f"anything-but takes strings or numbers, got {_kind(value)}",
            )

    def excluded(v: object) -> bool:
        if type(v) is str:
            return v in strings
        return _exact_key(v) in numbers

    return excluded


_LOWER: Final = {">": False, ">=": True}  # operator -> inclusive
_UPPER: Final = {"<": False, "<=": True}


def _numeric_test(arg: Any, path: Path) -> Test:
    """`["=", n]`, one bound, or one lower and one upper bound (any order)."""
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise _PatternError(path, 'expected [op, number] or [op, number, op, number], e.g. [">", 0, "<=", 5]')
    lower: tuple[float, bool] | None = None
    upper: tuple[float, bool] | None = None
    equal: float | None = None
    for i in range(0, len(arg), 2):
        op, number = arg[i], arg[i + 1]
        if not _is_number(number):
            raise _PatternError((*path, i + 1), f"expected a number, got {_kind(number)}")
        if op == "=":
            if len(arg) != 2:
                raise _PatternError((*path, i), '"=" cannot be combined with a range')
            equal = float(number)
        elif isinstance(op, str) and op in _LOWER:
            if lower is not None:
                raise _PatternError((*path, i), "two lower bounds")
            lower = (float(number), _LOWER[op])
        elif isinstance(op, str) and op in _UPPER:
            if upper is not None:
                raise _PatternError((*path, i), "two upper bounds")
            upper = (float(number), _UPPER[op])
        else:
            raise _PatternError((*path, i), f"unknown comparison {op!r}; expected =, <, <=, > or >=")
    if lower is not None and upper is not None:
        (lo, lo_incl), (hi, hi_incl) = lower, upper
        if lo > hi or (lo == hi and not (lo_incl and hi_incl)):
            raise _PatternError(path, "the range is empty")
    return _numeric(equal, lower, upper)


def _numeric(equal: float | None, lower: tuple[float, bool] | None, upper: tuple[float, bool] | None) -> Test:
    def test(v: object) -> bool:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        x = float(v)
        if equal is not None:
            return x == equal
        if lower is not None and not (x >= lower[0] if lower[1] else x > lower[0]):
            return False
        return upper is None or (x <= upper[0] if upper[1] else x < upper[0])

    return test

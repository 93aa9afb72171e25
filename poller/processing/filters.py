"""Lambda FilterCriteria: the EventBridge pattern syntax Lambda documents, compiled once.

Patterns are validated and turned into small matcher objects when a stream is
configured, so a bad pattern fails at startup (as `CreateEventSourceMapping`
would) and matching per record never re-reads the pattern. Match against
`poller.events.filter_view(record)`.

Semantics are those of AWS's own engine (event-ruler), where Lambda's docs
defer to EventBridge:

- Every field a pattern names must match (AND); values in a rule list are ORed;
  `$or` ORs whole sub-patterns (at least two); up to 10 patterns, ORed.
- A dotted key is a path, in the pattern and in the event alike:
  `{"state.status": [...]}` is `{"state": {"status": [...]}}`, and an event field
  named `state.status` is found by either. Two rules for one path: the later wins.
- Exact matching compares strings character by character and numbers by value
  (`300` matches `300.0` and `3e2`); `true`, `1` and `"1"` all differ.
- A rule list tests leaf values. When the event holds an array there, the rule
  matches if any element matches. An object is not a leaf: `exists: true` on a
  field holding an object is false and `exists: false` is true (so on DynamoDB
  images test `{"S": [{"exists": true}]}`, not the attribute itself).
- `numeric` matches JSON numbers only (DynamoDB `N` values are strings and
  never match it); a range is written lower bound first, and its lower bound
  must be below its upper one.
- `anything-but` takes strings or numbers (not both in one list), or one of
  `prefix`, `suffix`, `equals-ignore-case` with a string or a list of them; an
  empty prefix or suffix there is refused.
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
_OR: Final = "$or"

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
            # The view's own top-level names have no dots: no path to unfold there.
            if pattern.match_fields(view):
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
            return self.match_fields(_unfold(value) if _has_dotted_key(value) else value)
        if value is _MISSING:
            return self.match_fields(_NO_FIELDS)
        if isinstance(value, list):
            for item in value:
                if self.match(item):
                    return True
        return False

    def match_fields(self, obj: dict[str, Any]) -> bool:
        """Match an object whose dotted keys are already unfolded (or that has none)."""
        for key, rule in self._fields:
            if not rule.match(obj.get(key, _MISSING)):
                return False
        for group in self._alternatives:
            for alternative in group:
                if alternative.match_fields(obj):
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
    """Equality key for non-string leaves: numbers by value (Python's int and float
    hash and compare exactly, as AWS compares numbers), and no bool == int."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    return ("other", repr(value))


# -- dotted keys in the event ---------------------------------------------------------


def _has_dotted_key(obj: dict[str, Any]) -> bool:
    for key in obj:
        if "." in key:
            return True
    return False


def _unfold(obj: dict[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1, "a": {"c": 2}}` as `{"a": {"b": 1, "c": 2}}`, one level (deeper
    objects are unfolded when a rule reaches them). Two values for one path become
    an array of both, as AWS sees several values at one path. `obj` is not changed."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        head, dot, rest = key.partition(".")
        if dot:
            for part in reversed(rest.split(".")):
                value = {part: value}
        out[head] = _merge(out[head], value) if head in out else value
    return out


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = _merge(out[key], value) if key in out else value
        return out
    return [*(a if isinstance(a, list) else [a]), *(b if isinstance(b, list) else [b])]


# -- compilation -------------------------------------------------------------------

Path = tuple[str | int, ...]
# A field of a pattern object as written: its key split at dots, its value, where it is.
_Entry = tuple[tuple[str, ...], Any, Path]


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
    entries, alternatives = _entries(pattern, path)
    return _compile_entries(entries, alternatives)


def _entries(pattern: dict[str, Any], path: Path) -> tuple[list[_Entry], list[tuple[_ObjectRule, ...]]]:
    """The fields of one pattern object (validated) and its compiled `$or` groups."""
    if not pattern:
        raise _PatternError(path, "an empty object matches nothing")
    entries: list[_Entry] = []
    alternatives: list[tuple[_ObjectRule, ...]] = []
    for key, value in pattern.items():
        here = (*path, key)
        if not isinstance(key, str):
            raise _PatternError(here, f"field names must be strings, got {_kind(key)}")
        if key == _OR:
            alternatives.append(_compile_or(value, here))
        elif isinstance(value, dict | list):
            entries.append((tuple(key.split(".")), value, here))
        else:
            raise _PatternError(
                here,
                f"expected a list of rules or a nested object, got {_kind(value)} "
                "(Lambda rejects a bare value: write [value])",
            )
    return entries, alternatives


def _compile_entries(entries: list[_Entry], alternatives: list[tuple[_ObjectRule, ...]]) -> _ObjectRule:
    """Group fields by their first path step: `a.b` and `a: {b: ...}` meet under `a`."""
    leaves: dict[str, _LeafRule] = {}
    nested: dict[str, tuple[list[_Entry], list[tuple[_ObjectRule, ...]]]] = {}
    for steps, value, here in entries:
        head, rest = steps[0], steps[1:]
        if not rest and isinstance(value, list):
            leaves[head] = _compile_leaf(value, here)  # compiled even when overridden: still checked
            continue
        inner_entries, inner_alternatives = nested.setdefault(head, ([], []))
        if rest:
            inner_entries.append((rest, value, here))
        else:
            more, groups = _entries(value, here)
            inner_entries.extend(more)
            inner_alternatives.extend(groups)
    fields: list[tuple[str, _ObjectRule | _LeafRule]] = list(leaves.items())
    for head, (inner_entries, inner_alternatives) in nested.items():
        fields.append((head, _compile_entries(inner_entries, inner_alternatives)))
    return _ObjectRule(tuple(fields), tuple(alternatives))


def _compile_or(value: Any, path: Path) -> tuple[_ObjectRule, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise _PatternError(path, "$or takes a list of at least two pattern objects")
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


def _double(value: object) -> float | None:
    """The number as AWS compares it: a double, or None when it is no number or
    has no exact double (an int beyond 2**53 that a double would round)."""
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            x = float(value)
        except OverflowError:
            return None
        return x if x == value else None
    return None


def _comparable(value: Any, path: Path) -> float:
    if not _is_number(value):
        raise _PatternError(path, f"expected a number, got {_kind(value)}")
    x = _double(value)
    if x is None:
        raise _PatternError(path, f"{value!r} has no exact 64-bit float value: AWS cannot compare it")
    return x


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


def _strings(arg: Any, path: Path, *, empty_ok: bool = True) -> frozenset[str]:
    """A string or a non-empty list of strings (anything-but's prefix, suffix, equals-ignore-case)."""
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise _PatternError(path, "an empty list excludes nothing")
    out = set()
    for i, value in enumerate(values):
        here = (*path, i) if isinstance(arg, list) else path
        text = _string_arg(value, here)
        if not text and not empty_ok:
            raise _PatternError(here, "an empty string is not allowed here (it would exclude every string)")
        out.add(text)
    return frozenset(out)


def _anything_but(arg: Any, path: Path) -> Test:
    """The test anything-but negates: listed values, or a prefix/suffix/ignore-case match."""
    if isinstance(arg, dict):
        if len(arg) != 1:
            raise _PatternError(path, f"expected one operator, got {sorted(arg)}")
        ((op, inner),) = arg.items()
        here = (*path, op)
        if op == "prefix":
            prefixes = tuple(_strings(inner, here, empty_ok=False))
            return lambda v: type(v) is str and v.startswith(prefixes)
        if op == "suffix":
            suffixes = tuple(_strings(inner, here, empty_ok=False))
            return lambda v: type(v) is str and v.endswith(suffixes)
        if op == "equals-ignore-case":
            folded = frozenset(s.casefold() for s in _strings(inner, here))
            return lambda v: type(v) is str and v.casefold() in folded
        raise _PatternError(here, "anything-but takes values or one of prefix, suffix, equals-ignore-case")
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise _PatternError(path, "an empty list excludes nothing")
    strings: set[str] = set()
    numbers: set[tuple[str, object]] = set()
    for i, value in enumerate(values):
        here = (*path, i) if isinstance(arg, list) else path
        if isinstance(value, str):
            strings.add(value)
        elif _is_number(value):
            numbers.add(_exact_key(_comparable(value, here)))
        else:
            raise _PatternError(here, f"anything-but takes strings or numbers, got {_kind(value)}")
        if strings and numbers:
            raise _PatternError(here, "anything-but takes strings or numbers, not both in one list")

    def excluded(v: object) -> bool:
        if type(v) is str:
            return v in strings
        return _exact_key(v) in numbers

    return excluded


_LOWER: Final = {">": False, ">=": True}  # operator -> inclusive
_UPPER: Final = {"<": False, "<=": True}
_NUMERIC_FORMS: Final = (
    'expected [op, number] or [lower-op, number, upper-op, number], e.g. [">", 0, "<=", 5]'
)


def _numeric_test(arg: Any, path: Path) -> Test:
    """`["=", n]`, one bound, or a lower bound then an upper bound."""
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise _PatternError(path, _NUMERIC_FORMS)
    op = arg[0]
    number = _comparable(arg[1], (*path, 1))
    if not isinstance(op, str) or op not in ("=", *_LOWER, *_UPPER):
        raise _PatternError((*path, 0), f"unknown comparison {op!r}; expected =, <, <=, > or >=")
    if len(arg) == 2:
        if op == "=":
            return _numeric(number, None, None)
        if op in _LOWER:
            return _numeric(None, (number, _LOWER[op]), None)
        return _numeric(None, None, (number, _UPPER[op]))
    if op not in _LOWER:
        raise _PatternError((*path, 0), f"a range starts with its lower bound (> or >=), got {op!r}")
    top_op = arg[2]
    if not isinstance(top_op, str) or top_op not in _UPPER:
        raise _PatternError((*path, 2), f"a range ends with its upper bound (< or <=), got {top_op!r}")
    top = _comparable(arg[3], (*path, 3))
    if number >= top:
        raise _PatternError(path, "the range is empty: its lower bound must be below its upper bound")
    return _numeric(None, (number, _LOWER[op]), (top, _UPPER[top_op]))


def _numeric(equal: float | None, lower: tuple[float, bool] | None, upper: tuple[float, bool] | None) -> Test:
    def test(v: object) -> bool:
        x = _double(v)
        if x is None:
            return False
        if equal is not None:
            return x == equal
        if lower is not None and not (x >= lower[0] if lower[1] else x > lower[0]):
            return False
        return upper is None or (x <= upper[0] if upper[1] else x < upper[0])

    return test

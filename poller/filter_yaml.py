"""Filter patterns read from YAML as the JSON they were pasted from.

PyYAML resolves plain scalars by YAML 1.1, which changes JSON that is pasted
into a stream file: `-4e-6`, `1E-3` and `1e+5` (no dot) become strings, `yes`,
`on` and `off` become booleans, `2024-01-01` a date, and a bare `=` cannot be
read at all. Inside the top-level `filters` value this loader resolves plain
scalars by YAML 1.2's core schema instead, so a pattern means in YAML what it
means in the Lambda console:

- `null`, `~` (and an empty value): null; `true` / `false`: booleans;
- a decimal number, signed or not, with or without fraction and exponent: a
  number (`int` when it has neither, `float` otherwise), whatever its case;
- every other plain scalar, and every key, a string.

Quoted scalars, explicit tags and everything outside `filters` are untouched.
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

FILTERS_KEY: Final = "filters"

_NULL: Final = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL: Final = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT: Final = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
# YAML 1.2 core floats (JSON's numbers are a subset); `007` lands here and reads as 7.0
# (equal to 7 in a filter, which compares numbers by value), never as octal.
_FLOAT: Final = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_MERGE: Final = "<<"

_TAG: Final = "tag:yaml.org,2002:"

# What the node being composed is, relative to `filters`.
_OUTSIDE, _INSIDE, _KEY_INSIDE = 0, 1, 2


class FilterJsonLoader(yaml.SafeLoader):
    """`yaml.SafeLoader`, with plain scalars under the top-level `filters` read as JSON."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._where: list[int] = []

    def descend_resolver(self, current_node: Node | None, current_index: Any) -> None:
        # The composer calls this before each node with its parent and its index in
        # it: None for a mapping's key, the key's node for its value.
        if current_node is None or not self._where:
            self._where.append(_OUTSIDE)
            return
        parent = self._where[-1]
        inside = parent == _INSIDE or (
            len(self._where) == 1
            and isinstance(current_node, MappingNode)
            and isinstance(current_index, ScalarNode)
            and current_index.value == FILTERS_KEY
        )
        if inside and isinstance(current_node, MappingNode) and current_index is None:
            self._where.append(_KEY_INSIDE)
        else:
            self._where.append(_INSIDE if inside else _OUTSIDE)

    def ascend_resolver(self) -> None:
        if self._where:
            self._where.pop()

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        where = self._where[-1] if self._where else _OUTSIDE
        if where == _OUTSIDE or kind is not ScalarNode or not implicit[0] or value == _MERGE:
            return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        if where == _KEY_INSIDE:
            return _TAG + "str"
        return _TAG + json_scalar_tag(value)


def json_scalar_tag(value: str) -> str:
    """The YAML 1.2 core-schema type of a plain scalar: null, bool, int, float or str."""
    if _NULL.match(value):
        return "null"
    if _BOOL.match(value):
        return "bool"
    if _INT.match(value):
        return "int"
    if _FLOAT.match(value):
        return "float"
    return "str"

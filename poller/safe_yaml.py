"""Stream files read with bounded work: no file makes `poller check` run for
minutes, take gigabytes, or end in a traceback.

Bounds, checked on the composed node graph *before* any Python object is
built: a file of at most 1 MiB of UTF-8; at most 100,000 nodes once every
alias is expanded as often as it is used (a "billion laughs" document is
refused after a linear walk, however large its expansion); nesting at most 64
deep, expansion included; no alias inside the node it names; integers of at
most 100 digits (Python refuses to convert longer ones, and no setting needs
them). Every refusal is a `YamlProblem` whose message names the line when
there is one and never quotes the file's content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from poller.filter_yaml import FilterJsonLoader

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_INT_DIGITS = 100
_INT_TAG = "tag:yaml.org,2002:int"


class YamlProblem(Exception):
    """The file cannot be a stream file; str() is `line L column C: reason` or `reason`."""


def _where(node: Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_expansion(root: Node) -> None:
    """Raise YamlProblem when `root`, aliases expanded, is too big, too deep or cyclic.

    Linear in the number of distinct nodes: each node's expanded size and height
    are computed once (post-order, iteratively) and reused at every alias."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in kids)
            height[key] = 1 + max((height[id(c)] for c in kids), default=0)
            if size[key] > MAX_NODES:
                raise YamlProblem(
                    f"{_where(node)}more than {MAX_NODES} values once aliases are expanded "
                    "(an alias bomb, or not a stream file)"
                )
            if height[key] > MAX_DEPTH:
                raise YamlProblem(f"{_where(node)}nested more than {MAX_DEPTH} levels deep")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise YamlProblem(f"{_where(node)}an alias refers to a node that contains it")
        if isinstance(node, ScalarNode) and node.tag == _INT_TAG and len(str(node.value)) > MAX_INT_DIGITS:
            raise YamlProblem(f"{_where(node)}an integer of more than {MAX_INT_DIGITS} digits")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node))


def loads(text: str) -> Any:
    """Like `yaml.safe_load` of one document, within the bounds above."""
    loader = FilterJsonLoader(text)  # `filters` read as the JSON they were pasted from
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None
        check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read(path: Path) -> Any:
    """Read and parse one stream file. OSError and yaml.YAMLError pass through."""
    with path.open("rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise YamlProblem(f"larger than {MAX_BYTES // 1024} KiB: not a stream file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise YamlProblem(f"line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    return loads(text)

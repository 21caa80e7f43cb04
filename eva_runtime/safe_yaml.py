"""The one YAML reader for what users hand us: safe tags only, and refused before any work
when a document has duplicate keys (the last would silently win), nests deeper than
``MAX_DEPTH``, or expands through anchors and aliases to more than ``MAX_NODES`` nodes (a
"billion laughs" document is a few hundred bytes that become gigabytes when re-serialised).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_DEPTH = 64  # a manifest nests about 6 levels
MAX_NODES = 100_000  # after expanding aliases; a manifest has a few hundred


class YamlError(ValueError):
    """A document we refuse; the message starts with ``line L, column C:`` when known."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class says so
            if first is not None:
                raise YamlError(
                    f"{_where(key_node.start_mark)}duplicate key {key!r} (first on line "
                    f"{first.line + 1}); each key may appear once in a mapping"
                )
            seen[key] = key_node.start_mark
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _measure(root: Node) -> None:
    """Refuse a node graph that is too deep or too large once aliases are expanded."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}

    def walk(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key], heights[key]
        if depth > MAX_DEPTH:
            raise YamlError(
                f"{_where(node.start_mark)}nested deeper than {MAX_DEPTH} levels; a manifest "
                "needs about 6"
            )
        size, height = 1, 1
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            s, h = walk(child, depth + 1)
            size += s
            height = max(height, h + 1)
            if size > MAX_NODES:
                raise YamlError(
                    f"{_where(node.start_mark)}expands to more than {MAX_NODES:,} values through "
                    "its anchors and aliases; refused (a manifest has a few hundred)"
                )
        sizes[key], heights[key] = size, height
        return size, height

    walk(root, 0)


def load_all(text: str) -> list[Any]:
    """Every document of ``text``; YamlError (or yaml.YAMLError for bad syntax) otherwise."""
    loader = _Loader(text)
    docs: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _measure(node)
            docs.append(loader.construct_document(node))
    except RecursionError:
        raise YamlError(
            f"nested deeper than {MAX_DEPTH} levels; a manifest needs about 6"
        ) from None
    finally:
        loader.dispose()
    return docs


def load(text: str) -> Any:
    """The one document of ``text`` (None for an empty one)."""
    docs = load_all(text)
    if len(docs) > 1:
        raise YamlError(f"{len(docs)} YAML documents where one was expected")
    return docs[0] if docs else None

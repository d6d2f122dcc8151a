"""Bounded YAML input: study files and ``--set`` values.

A study file is read only when it is at most MAX_BYTES and UTF-8; it is composed into
nodes (aliases stay references, nothing is expanded), its size once aliases are expanded
is counted on the node graph (memoised, so a billion-node alias bomb costs a few dozen
steps), and only then is it constructed, refusing duplicate keys with their lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1_000_000  # a study file; the shipped ones are under 3 kB
MAX_NODES = 1_000_000  # values once aliases are expanded (a 1 MB file without aliases has at most ~500,000)
MAX_DEPTH = 100  # nesting of mappings and lists


class YamlInputError(ValueError):
    """Input refused; the message names the source and, where it can, the line."""


# libyaml's parser where PyYAML has it: a 1 MB study of 20,000 levels composes in ~0.3 s, not ~5 s
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # own keys only: keys brought in by a merge (<<) may be overridden, that is what merges are for
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if (key.tag, key.value) in seen:
                    first = seen[(key.tag, key.value)]
                    raise YamlInputError(
                        f" (line {line}): duplicate key {_cut(key.value)} (first at line {first}); "
                        "each key may appear once in a mapping"
                    )
                seen[(key.tag, key.value)] = line
        return super().construct_mapping(node, deep=deep)


def _cut(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"...({len(text)} characters)"


def read_text(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """The file's text: at most ``max_bytes`` and UTF-8, else YamlInputError naming the file."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise YamlInputError(f"{path}: {size:,} bytes; a study file may have at most {max_bytes:,}")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)  # a file that grew since stat() is still bounded
    except OSError as e:
        raise YamlInputError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise YamlInputError(f"{path}: more than {max_bytes:,} bytes; a study file may have at most {max_bytes:,}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise YamlInputError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}); save the file as UTF-8"
        ) from None


def expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, counted without expanding: a node
    reached through an alias counts its whole subtree again, computed once per node.
    YamlInputError for a recursive alias or nesting deeper than MAX_DEPTH."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    on_path: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        if done:
            children = _children(node)
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_NODES + 1)
            on_path.discard(id(node))
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise YamlInputError(
                f" (line {node.start_mark.line + 1}): an alias refers to a node that contains it; "
                "recursive data is not allowed"
            )
        if depth > MAX_DEPTH:
            raise YamlInputError(f" (line {node.start_mark.line + 1}): nested more than {MAX_DEPTH} levels deep")
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def parse(text: str) -> tuple[Any, yaml.Node | None]:
    """(data, root node) of one YAML document, bounded as this module says. Errors are
    YamlInputError whose message starts with the line, for the caller to prefix a source;
    yaml.YAMLError for a syntax error."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            raise YamlInputError(f": nested more than {MAX_DEPTH} levels deep") from None
        if root is None:
            return None, None
        n = expanded_size(root)
        if n > MAX_NODES:
            raise YamlInputError(
                f": more than {MAX_NODES:,} values once its aliases (*name) are expanded; use fewer or smaller aliases"
            )
        return loader.construct_document(root), root
    finally:
        loader.dispose()

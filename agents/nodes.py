"""Checking composed YAML nodes against the field tables, every error with its
position (``FILE:LINE:COL: key.path: what is wrong (the fix)``).

A :class:`Checker` collects the problems instead of raising at the first, so the
loader (:mod:`agent_supervise.agents.loader`) can show them all at once. Duplicate
keys, which PyYAML silently resolves to the last one, are problems too, and a
value is reported at the element that is wrong (a word of ``cmd``, a key of
``env``), quoting the text as written.
"""

from __future__ import annotations

import yaml

from agent_supervise.agents import bounds as B
from agent_supervise.agents.kinds import FieldError
from agent_supervise.agents.tasks import did_you_mean


class Checker:
    """Walks the composed YAML nodes, keeping each value's line and column."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self.constructor = yaml.constructor.SafeConstructor()

    def error(self, node, path: str, message: str, hint: str | None = None) -> None:
        where = (
            f"{self.name}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"
            if node is not None
            else self.name
        )
        text = f"{where}: {path + ': ' if path else ''}{B.clip(message)}"
        self.problems.append(text + (f" ({hint})" if hint else ""))

    def value(self, node, path: str):
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:
            # ValueError: a 5,000-digit number, !!timestamp 2001-99-99, !!float x
            self.error(
                node,
                path,
                f"cannot read this value: {err}",
                "write a plain number, size or duration, or quote text",
            )
            return None

    def items(self, node, path: str):
        """(key, key node, value node) of a mapping node, or None after an error."""
        if is_null(node):
            return []  # 'section:' with nothing under it
        if not isinstance(node, yaml.MappingNode):
            self.error(
                node,
                path,
                f"must be a mapping, not {node_kind(node)}",
                "write 'key: value' lines under it",
            )
            return None
        seen: dict = {}
        for key_node, _ in node.value:  # duplicates among the keys written here
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # '? [a, b]': not hashable
                self.error(
                    key_node,
                    path,
                    f"a key must be text, not {node_kind(key_node)}",
                    "write 'name: value'",
                )
                return None
            key = self.value(key_node, path)
            if key in seen:
                self.error(
                    key_node,
                    key_path(path, key),
                    f"duplicate key (first at line {seen[key]})",
                    "remove one of them",
                )
            seen.setdefault(key, key_node.start_mark.line + 1)
        # Resolve '<<: *anchor' merges: merged keys come first, written ones override.
        try:
            self.constructor.flatten_mapping(node)
        except yaml.YAMLError as err:
            self.error(node, path, f"cannot merge: {err}", "merge only mappings: <<: *name")
            return None
        merged: dict = {}
        for key_node, value_node in node.value:
            key = self.value(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:  # a merged-in mapping's own odd key
                self.error(key_node, path, "a key must be text", "write 'name: value'")
                return None
            merged[key] = (key_node, value_node)
        return [(key, k, v) for key, (k, v) in merged.items()]

    def _field_error(self, node, path: str, err) -> None:
        """Report at the offending element itself, quoting the text as written."""
        child = None
        if err.at is not None and isinstance(node, yaml.SequenceNode):
            child, path = node.value[err.at], f"{path}[{err.at}]"
        elif err.at is not None and isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == err.at), None)
            path = f"{path}.{err.at}"
        if isinstance(child, yaml.ScalarNode) and (err.hint or "").startswith("quote it"):
            key = f"{err.at}: " if isinstance(err.at, str) else ""
            # YAML 1.1 reads 010 as 8, yes/true/on as booleans: quote what was written.
            self.error(child, path, err.message, f"quote it: {key}'{child.value}'")
        else:
            self.error(node, path, err.message, err.hint)

    def fields(self, node, path: str, table) -> dict:
        """Check a mapping against a field table; return the parsed values given."""
        known = {f.name: f for f in table}
        parsed: dict = {}
        entries = self.items(node, path)
        if entries is None:
            return parsed
        for key, key_node, value_node in entries:
            where = key_path(path, key)
            if key not in known:
                self.error(
                    key_node,
                    where,
                    "unknown key",
                    did_you_mean(key, known) or f"known keys: {', '.join(known)}",
                )
                continue
            if known[key].kind == "object":
                parsed[key] = self.fields(value_node, where, known[key].sub)
                continue
            try:
                parsed[key] = known[key].parse(self.value(value_node, where), where)
            except FieldError as err:
                self._field_error(value_node, where, err)
        for f in table:
            if f.required and f.name not in parsed and f.name not in {k for k, *_ in entries}:
                self.error(node, path, f"missing key '{f.name}'", f.doc)
        return parsed


def key_path(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def is_null(node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def node_kind(node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return f"the value {node.value!r}" if node is not None else "nothing"

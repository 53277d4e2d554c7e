"""YAML composed with bounds: PyYAML's node graph, built without recursion and refused
early when it would expand past the limits of :mod:`.bounds`.

PyYAML's own composer recurses once per nesting level (deep flow collections end in a
RecursionError), and an alias is one node however large its anchor: "billion laughs"
is a few hundred bytes whose walk (checking, constructing, quoting in an error) never
ends. Here events come from libyaml where present (the C parser, ~10x faster) and each
node is counted as it is built: an alias counts its anchor's whole expanded size, so
the limit is on what any later walk of the document can cost. An alias inside its own
anchor (a recursive structure) is refused: nothing in a fleet file needs one.
"""

from __future__ import annotations

import yaml
from yaml.composer import ComposerError
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    MappingStartEvent,
    ScalarEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from agent_supervise.agents import bounds as B

#: Events only: the nodes are ours. SafeLoader's resolver turns plain scalars into tags.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class TooLarge(Exception):
    """The document passes a limit: ``where`` (line:col), ``path`` (the key), ``message``,
    ``hint``."""

    def __init__(self, mark, path: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.where = f"{mark.line + 1}:{mark.column + 1}"
        self.path, self.message, self.hint = path, message, hint


class _Frame:
    __slots__ = ("anchor", "key", "node", "nodes0", "text0")

    def __init__(self, node, anchor, nodes0: int, text0: int) -> None:
        self.node, self.anchor = node, anchor
        self.nodes0, self.text0 = nodes0, text0  # counters when it began: its size after
        self.key = None  # a mapping's key node waiting for its value


def compose(text: str):
    """The root node of the single document in ``text`` (None if it has none).

    Raises :class:`TooLarge`, or yaml.YAMLError for what is not YAML."""
    loader = Loader(text)
    composer = _Composer(loader)
    try:
        return composer.document()
    except yaml.MarkedYAMLError as err:
        if "nesting depth" not in str(err.problem):
            raise
        # libyaml's scanner reads ahead and stops at its own depth limit (1000) first
        raise TooLarge(
            err.problem_mark,
            composer._path(),
            f"nested more than {B.MAX_DEPTH} levels deep",
            "a fleet file needs about 6: flatten it",
        ) from None
    finally:
        loader.dispose()


class _Composer:
    def __init__(self, loader) -> None:
        self.loader = loader
        self.anchors: dict = {}  # name -> (node, expanded nodes, expanded text); None open
        self.stack: list[_Frame] = []
        self.nodes = self.text = 0

    def document(self):
        get = self.loader.get_event
        get()  # stream start
        if self.loader.check_event(StreamEndEvent):
            return None
        get()  # document start
        root = self._node()
        get()  # document end
        if not self.loader.check_event(StreamEndEvent):
            raise ComposerError(
                "expected a single document in the stream",
                root.start_mark,
                "but found another document",
                self.loader.peek_event().start_mark,
            )
        return root

    def _node(self):
        """Build one node (and everything in it) with a loop and an explicit stack."""
        get, stack = self.loader.get_event, self.stack
        while True:
            event = get()
            if isinstance(event, AliasEvent):
                done = self._alias(event)
            elif isinstance(event, ScalarEvent):
                self._anchor(event)
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self.loader.resolve(ScalarNode, event.value, event.implicit)
                done = ScalarNode(
                    tag, event.value, event.start_mark, event.end_mark, style=event.style
                )
                self._count(1, len(event.value), event)
                if event.anchor is not None:
                    self.anchors[event.anchor] = (done, 1, len(event.value))
            elif isinstance(event, CollectionStartEvent):
                self._open(event)
                continue
            else:  # the end of a sequence or mapping
                frame = stack.pop()
                frame.node.end_mark = event.end_mark
                done = frame.node
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (
                        done,
                        self.nodes - frame.nodes0,
                        self.text - frame.text0,
                    )
            if not stack:
                return done
            self._attach(stack[-1], done)

    def _open(self, event) -> None:
        if len(self.stack) >= B.MAX_DEPTH:
            raise TooLarge(
                event.start_mark,
                self._path(),
                f"nested more than {B.MAX_DEPTH} levels deep",
                "a fleet file needs about 6: flatten it",
            )
        self._anchor(event)
        kind = MappingNode if isinstance(event, MappingStartEvent) else SequenceNode
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(kind, None, event.implicit)
        node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
        self.stack.append(_Frame(node, event.anchor, self.nodes, self.text))
        self._count(1, 0, event)
        if event.anchor is not None:
            self.anchors[event.anchor] = None  # open: an alias to it now is recursive

    def _anchor(self, event) -> None:
        if event.anchor is not None and event.anchor in self.anchors:
            first = self.anchors[event.anchor]
            raise ComposerError(
                f"found duplicate anchor {event.anchor!r}; first occurrence",
                first[0].start_mark if first else None,
                "second occurrence",
                event.start_mark,
            )

    def _alias(self, event):
        if event.anchor not in self.anchors:
            raise ComposerError(
                None, None, f"found undefined alias {event.anchor!r}", event.start_mark
            )
        entry = self.anchors[event.anchor]
        if entry is None:
            raise TooLarge(
                event.start_mark,
                self._path(),
                f"the alias *{event.anchor} is inside its own anchor (a "
                "structure that contains itself)",
                "copy the values instead",
            )
        node, nodes, text = entry
        self._count(nodes, text, event)
        return node

    def _count(self, nodes: int, text: int, event) -> None:
        self.nodes += nodes
        self.text += text
        if self.nodes > B.MAX_NODES:
            raise TooLarge(
                event.start_mark,
                self._path(),
                f"the document expands to more than {B.MAX_NODES:,} values "
                "(an alias counts everything in its anchor, each time)",
                "use fewer aliases, or pass tasks as JSON lines with --tasks",
            )
        if self.text > B.MAX_EXPANDED_TEXT:
            raise TooLarge(
                event.start_mark,
                self._path(),
                f"the document expands to more than "
                f"{B.MAX_EXPANDED_TEXT // B.MiB} MiB of text (an alias counts "
                "its anchor's text each time)",
                "use fewer aliases",
            )

    @staticmethod
    def _attach(frame: _Frame, node) -> None:
        if isinstance(frame.node, SequenceNode):
            frame.node.value.append(node)
        elif frame.key is None:
            frame.key = node
        else:
            frame.node.value.append((frame.key, node))
            frame.key = None

    def _path(self) -> str:
        """The key path of the node being built, for the message: agents.a.cmd[3]."""
        parts = []
        for frame in self.stack:
            if isinstance(frame.node, SequenceNode):
                parts.append(f"[{len(frame.node.value)}]")
            elif frame.key is not None:
                key = frame.key.value if isinstance(frame.key, ScalarNode) else "?"
                parts.append(f".{B.clip(str(key), 40)}")
        if len(parts) > 8:  # 64 levels of it help nobody
            parts[5:-1] = [f"<{len(parts) - 6} more>"]
        return "".join(parts).lstrip(".")

"""The kinds of value a fleet file's key takes (size, duration, cmd, env, ...): a
:class:`Field` checks and converts a YAML value of its kind, and describes itself
in JSON Schema (agents/schema.py), so ``agent-supervise schema`` cannot drift from
what ``agent-supervise validate`` accepts. Which keys there are is
:mod:`agent_supervise.agents.fields`'.

Text that no argv, environ or path could carry (a NUL) is refused here, when the
file is read, not at spawn with an agent's slot spent.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from agent_supervise.agents import bounds as B
from agent_supervise.errors import BadInput
from agent_supervise.units import parse_cap, parse_duration, parse_size

_UNIT = r"([KMGTkmgt]([Ii][Bb])?|[Bb])?"
#: The JSON Schema patterns of a size and a duration (agents/schema.py).
SIZE_RE = rf"^(?!0+(\.0+)?{_UNIT}$)[0-9]+(\.[0-9]+)?{_UNIT}$"  # not zero
#: A cap as a share of MemTotal (units.parse_cap): above 0%, at most 100%.
PERCENT_RE = r"^(?!0+(\.0+)?%$)(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)%$"
DURATION_RE = r"^([0-9]+(\.[0-9]+)?(us|ms|sec|min|s|m|h|d))+$|^[0-9]+(\.[0-9]+)?$"


class FieldError(Exception):
    """A value is wrong; ``message`` has no position, the loader adds it."""

    def __init__(self, message: str, hint: str | None = None, at=None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint
        self.at = at  # the list index or mapping key of the offending element


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a mapping",
        type(None): "empty",
    }.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # size, size0, cap, duration, int, choice, path, cmd, env, text,
    # bool, resources, object
    doc: str
    default: Any = None
    minimum: float = 1
    maximum: int | None = None  # kind int: the documented bound (bounds.MAX_REPEAT)
    choices: tuple[str, ...] = ()
    required: bool = False
    sub: tuple = ()  # kind "object": the nested fields (the loader recurses)

    def parse(self, value: Any, what: str) -> Any:
        """Convert a YAML value; raise :class:`FieldError`."""
        try:
            return getattr(self, f"_{self.kind}")(value, what)
        except BadInput as err:  # the unit parsers name the value and give a hint
            raise FieldError(err.message.split(": ", 1)[-1], err.hint) from None

    def _size(self, value, what):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise FieldError(f"{value!r} is not a size", "try 50M")
        return parse_size(value, what=what, allow_zero=self.kind == "size0")

    _size0 = _size

    def _cap(self, value, what):
        """An agent's memory cap: a size of at least bounds.MIN_CAP."""
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise FieldError(f"{value!r} is not a size", "try 50M")
        return parse_cap(value, what=what)

    def _duration(self, value, what):
        if value is None:
            return None
        if not isinstance(value, (int, float, str)) or isinstance(value, bool):
            raise FieldError(f"{value!r} is not a duration", "try 2s, 100ms or 10m")
        return parse_duration(value, what=what)

    def _number(self, value, what):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise FieldError(
                f"{value!r} is {_type_name(value)}, not a number", f"try {self.default}"
            )
        if value < self.minimum:
            raise FieldError(
                f"{value} is below the minimum of {self.minimum}", f"try {self.default}"
            )
        return float(value)

    def _int(self, value, what):
        if not isinstance(value, int) or isinstance(value, bool):
            raise FieldError(
                f"{value!r} is {_type_name(value)}, not a whole number",
                f"try {self.default or self.minimum}",
            )
        if value < self.minimum:
            raise FieldError(
                f"{value} is below the minimum of {self.minimum}",
                f"try {self.default or self.minimum}",
            )
        if self.maximum is not None and value > self.maximum:
            raise FieldError(
                f"{B.clip(str(value), 40)} is above the maximum of {self.maximum:,}",
                f"split it into several tasks of at most {self.maximum:,}",
            )
        return value

    def _choice(self, value, what):
        if value not in self.choices:
            raise FieldError(
                f"{value!r} is not one of {', '.join(self.choices)}", f"try {self.choices[0]}"
            )
        return value

    def _text(self, value, what):
        if not isinstance(value, str) or not value:
            raise FieldError(
                f"{_quote(value)} is {_type_name(value)}, not text", "quote it: 'value'"
            )
        _kernel_text(value)
        return value

    _path = _text

    def _bool(self, value, what):
        if not isinstance(value, bool):
            raise FieldError(
                f"{value!r} is {_type_name(value)}, not true or false", "write true or false"
            )
        return value

    def _resources(self, value, what):
        """Ray resources: names to amounts (``{agent_node: 1}``)."""
        if not isinstance(value, dict):
            raise FieldError(f"{_type_name(value)} is not a mapping", "write resources: {name: 1}")
        for key, amount in value.items():
            if not isinstance(key, str) or not key or key in ("memory", "CPU", "GPU"):
                raise FieldError(
                    f"the resource name {key!r} is not allowed",
                    "memory comes from the cap, CPU from cpus; name a custom resource",
                )
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
                raise FieldError(f"{amount!r} is not a positive amount", f"write {key}: 1", at=key)
        return {k: float(v) for k, v in value.items()}

    def _ident(self, value, what):
        """A user or group: a name, or a numeric id."""
        if (
            isinstance(value, bool)
            or not isinstance(value, (str, int))
            or value == ""
            or (isinstance(value, int) and value < 0)
        ):
            raise FieldError(
                f"{_quote(value)} is not a user or group name or id",
                "write a name such as nobody, or an id such as 65534",
            )
        if isinstance(value, str):
            _kernel_text(value)
        return str(value)

    def _cmd(self, value, what):
        if isinstance(value, str):
            words = shlex.split(value) if _splits(value) else [value]
            raise FieldError(
                "cmd must be a list of words, not one string",
                f"write cmd: {words}, or ['sh', '-c', '...'] for shell syntax",
            )
        if not isinstance(value, list) or not value:
            raise FieldError(f"{_type_name(value)} is not a command", "write cmd: [prog, arg]")
        for i, word in enumerate(value):
            if not isinstance(word, str):
                raise FieldError(
                    f"word {i} is {_type_name(word)} ({_quote(word)}), not text",
                    f"quote it: '{B.clip(str(word), 40)}'",
                    at=i,
                )
            _kernel_text(word, at=i)
        if not value[0]:  # exec would fail: exit 126, with an agent's slot spent
            raise FieldError(
                "the program name (word 0) is empty", "name a program: cmd: [python3, ...]", at=0
            )
        return tuple(value)

    def _env(self, value, what):
        if not isinstance(value, dict):
            raise FieldError(f"{_type_name(value)} is not a mapping", "write env: {KEY: value}")
        for key, val in value.items():
            if not isinstance(key, str) or not key:
                raise FieldError(
                    f"the key {_quote(key)} is not text", f"quote it: '{B.clip(str(key), 40)}'"
                )
            if not isinstance(val, str):
                what_values = "placeholder" if self.name == "vars" else "environment"
                raise FieldError(
                    f"{_quote(val)} is {_type_name(val)}; {what_values} values are text",
                    f"quote it: {key}: '{B.clip(str(val), 40)}'",
                    at=key,
                )
            if self.name == "env" and "=" in key:
                raise FieldError(
                    f"the name {_quote(key)} contains '='",
                    "environment names cannot: the first '=' ends the name",
                    at=key,
                )
            _kernel_text(key, at=key)
            _kernel_text(val, at=key)
        return dict(value)

    def schema(self) -> dict:
        """This field in JSON Schema (agents/schema.py knows each kind's shape)."""
        from agent_supervise.agents.schema import field_schema

        return field_schema(self)


def _quote(value) -> str:
    """repr() of a value for a message, cut short: it may be a megabyte long."""
    return B.clip(repr(value), 80)


def _kernel_text(value: str, at=None) -> None:
    """Refuse text no argv, environ or path can carry (a NUL), now, not at spawn."""
    problem = B.text_problem(value)
    if problem:
        raise FieldError(f"{_quote(value)} {problem}", "remove it", at=at)


def _splits(text: str) -> bool:
    try:
        shlex.split(text)
        return True
    except ValueError:
        return False

"""The JSON Schema of fleet files, built from the same field table as the loader.

It checks shapes and values (keys, types, sizes, durations, names). What JSON
Schema cannot express — a task naming an undefined agent, a ``{placeholder}``
without a value — only the loader (``agent-supervise validate``) checks.
"""

from __future__ import annotations

from agent_supervise.agents import bounds as B
from agent_supervise.agents import fields as F
from agent_supervise.agents.kinds import _UNIT, DURATION_RE, PERCENT_RE, SIZE_RE
from agent_supervise.units import MAX_SIZE


def _object(table, doc: str) -> dict:
    return {
        "type": "object",
        "description": doc,
        "additionalProperties": False,
        "properties": {f.name: f.schema() for f in table},
        "required": [f.name for f in table if f.required],
    }


def fleet_schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://agent-supervise.dev/schema/fleet.json",
        "title": "agent-supervise fleet file",
        "type": "object",
        "additionalProperties": False,
        "required": ["agents"],
        "properties": {
            "supervisor": _object(F.SUPERVISOR, "How the fleet is dispatched."),
            "defaults": _object(F.DEFAULTS, "Agent settings used where an agent sets none."),
            "agents": {
                "type": "object",
                "description": "Named agents.",
                "minProperties": 1,
                "propertyNames": {"pattern": F.NAME_RE, "not": {"pattern": r"\.\."}},
                "additionalProperties": _object(F.AGENT, "One agent."),
            },
            "tasks": {
                "type": "array",
                "description": "What to run.",
                "items": _object(F.TASK, "One task (repeat: N runs it N times)."),
            },
        },
    }


def field_schema(f) -> dict:
    """One field of the table in JSON Schema."""
    out = {"description": f.doc}
    kinds = {
        "size": {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_SIZE},
                {"type": "string", "pattern": SIZE_RE},
            ]
        },
        "size0": {
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_SIZE},
                {"type": "string", "pattern": rf"^[0-9]+(\.[0-9]+)?{_UNIT}$"},
            ]
        },
        "duration": {
            "oneOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": DURATION_RE},
                {"type": "null"},
            ]
        },
        "cap": {
            "oneOf": [
                {"type": "integer", "minimum": B.MIN_CAP, "maximum": MAX_SIZE},
                {"type": "string", "pattern": SIZE_RE},
                {"type": "string", "pattern": PERCENT_RE},
            ]
        },
        "int": {
            "type": "integer",
            "minimum": f.minimum,
            **({"maximum": f.maximum} if f.maximum is not None else {}),
        },
        "number": {"type": "number", "minimum": f.minimum},
        "choice": {"enum": list(f.choices)},
        "text": {"type": "string", "minLength": 1},
        "path": {"type": "string", "minLength": 1},
        "ident": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0}]},
        "bool": {"type": "boolean"},
        "resources": {
            "type": "object",
            "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
        },
        "cmd": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
    }
    if f.kind == "object":
        out.update(
            {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {sub.name: field_schema(sub) for sub in f.sub},
            }
        )
        return out
    out.update(kinds[f.kind])
    if f.default is not None:
        out["default"] = f.default
    return out

"""The JSON Schema of fleet files, built from the same field table as the loader.

It checks shapes and values (keys, types, sizes, durations, names). What JSON
Schema cannot express — a task naming an undefined agent, a ``{placeholder}``
without a value — only the loader (``agent-supervise validate``) checks.
"""

from __future__ import annotations

from . import fields as F


def _object(table, doc: str) -> dict:
    return {"type": "object", "description": doc, "additionalProperties": False,
            "properties": {f.name: f.schema() for f in table},
            "required": [f.name for f in table if f.required]}


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
            "agents": {"type": "object", "description": "Named agents.", "minProperties": 1,
                       "propertyNames": {"pattern": F.NAME_RE, "not": {"pattern": r"\.\."}},
                       "additionalProperties": _object(F.AGENT, "One agent.")},
            "tasks": {"type": "array", "description": "What to run.",
                      "items": _object(F.TASK, "One task (repeat: N runs it N times).")},
        },
    }

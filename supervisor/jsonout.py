"""JSON for people and programs: summary.json, state.json, ``fleet --json``.

``json.dumps(..., indent=2)`` cannot use the C encoder and spends ~40 ms on a
500-task summary, as much as the supervisor spends starting 40 agents. So the top
levels are laid out here, one key per line, and each deeper value (a task's entry)
goes through the C encoder onto one line of its own: as easy to read and to diff.
"""

from __future__ import annotations

import json

_encode = json.JSONEncoder().encode  # the C encoder: no indent


def dumps(obj, levels: int = 2, _indent: int = 0) -> str:
    """``obj`` as JSON with its first ``levels`` levels indented, the rest compact."""
    if levels <= 0 or not obj or not isinstance(obj, (dict, list)):
        return _encode(obj)
    pad = "  " * (_indent + 1)
    if isinstance(obj, dict):
        items = [
            f"{pad}{_encode(str(k))}: {dumps(v, levels - 1, _indent + 1)}" for k, v in obj.items()
        ]
        open_, close = "{", "}"
    else:
        items = [pad + dumps(v, levels - 1, _indent + 1) for v in obj]
        open_, close = "[", "]"
    return open_ + "\n" + ",\n".join(items) + "\n" + "  " * _indent + close

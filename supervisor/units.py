"""Sizes and durations, parsed the way systemd parses them.

Sizes: ``50M``, ``1.5G``, ``512MiB``, ``52428800``. K, M, G and T are powers of
1024 (``MiB`` is accepted as a synonym of ``M``). ``MB`` is refused rather than
guessed: whether it means 10**6 or 2**20 is exactly the ambiguity a memory cap
must not have.

A cap may also be a percentage of the machine's memory, as systemd's
``MemoryMax=10%``: ``10%``, ``12.5%`` of MemTotal (the RAM /proc/meminfo and
``free`` report), resolved once when the command line or fleet file is read. Recent
systemd also takes the minimum with its cgroup namespace root's limit; we do not:
the same ``10%`` then means the same bytes on every backend (rlimit has no cgroup
to read), and :func:`size_note` says what it resolved to.

Durations: ``100ms``, ``2s``, ``10m``, ``1h``, combinations such as ``1h30m``, and
a bare number meaning seconds (as ``timeout 10`` and ``sleep 10`` do).
"""

from __future__ import annotations

import re

from agent_supervise.errors import BadInput

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([KMGT]?)(iB|B)?", re.IGNORECASE)
#: The kernel stores limits as a count of pages in a signed 64-bit counter; anything
#: above 8 EiB is a typo, not a limit.
MAX_SIZE = (1 << 63) - 1
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)%")

_DURATION_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|sec|min|s|m|h|d)")


def parse_size(
    text: str | int, *, what: str = "size", allow_zero: bool = False, percent: bool = False
) -> int:
    """Return a byte count from ``text``; raise :class:`BadInput` naming the value.

    Zero and negative sizes are refused (a zero cap is never what anyone meant)
    unless ``allow_zero`` (a reserve of 0 disables it). ``percent``: ``10%`` is that
    share of MemTotal.
    """
    if isinstance(text, bool):
        raise BadInput(f"{what}: {text!r} is not a size", hint="try 50M")
    value: float
    if percent and isinstance(text, str) and text.strip().endswith("%"):
        value = int(_parse_percent(text.strip(), what) * memory_total() // 100)
    elif isinstance(text, int):
        value = text
    else:
        raw = str(text).strip()
        match = _SIZE_RE.fullmatch(raw)
        if not match or (match.group(3) and match.group(3).upper() == "B" and match.group(2)):
            raise BadInput(
                f"{what}: {str(text)!r} is not a size",
                hint=f"try {_size_example(raw)}; K, M, G, T are powers of 1024",
            )
        number, unit, _ = match.groups()
        value = float(number) * _SIZE_UNITS[unit.upper()]
        if value != int(value) and not unit:
            raise BadInput(f"{what}: {raw!r} is not a whole number of bytes", hint="try 50M")
        value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        raise BadInput(f"{what}: {text!r} must be above zero", hint="try 50M")
    if value > MAX_SIZE:
        raise BadInput(f"{what}: {text!r} is too large (the kernel's limit is 8E)", hint="try 50M")
    return value


def parse_cap(text: str | int, *, what: str = "--memory") -> int:
    """An agent's memory cap: a size of at least :data:`~.agents.bounds.MIN_CAP`
    (below it nothing can start, and a bare ``1`` almost surely meant ``1M``), or a
    percentage of the machine's memory."""
    from agent_supervise.agents.bounds import MIN_CAP

    value = parse_size(text, what=what, percent=True)
    if value < MIN_CAP:
        bare = isinstance(text, int) or str(text).strip().isdigit()
        hint = (
            f"a number without a unit is bytes: did you mean {text}M?" if bare else "try 1M or more"
        )
        raise BadInput(f"{what}: {text!r} is below the smallest cap, 1M", hint=hint)
    return value


def _parse_percent(raw: str, what: str) -> float:
    """``12.5%`` -> 12.5: above 0 and at most 100, as systemd takes them."""
    match = _PERCENT_RE.fullmatch(raw)
    if not match:
        raise BadInput(
            f"{what}: {raw!r} is not a percentage",
            hint="write a number from 0 to 100 then %, such as 10% or 12.5%",
        )
    share = float(match.group(1))
    if not 0 < share <= 100:
        raise BadInput(
            f"{what}: {raw!r} must be above 0% and at most 100% (of the machine's memory)",
            hint="try 10%, or a size such as 500M",
        )
    return share


def memory_total(path: str = "/proc/meminfo") -> int:
    """MemTotal in bytes: what a percentage cap is a share of."""
    from agent_supervise.memsource import read_meminfo

    total = read_meminfo(path).get("MemTotal")
    if not total:
        raise BadInput(
            f"cannot read MemTotal from {path} for a percentage", hint="give a size such as 500M"
        )
    return total


def size_note(text: str | int, value: int, *, what: str) -> str | None:
    """``--memory 10% of 7.8 GiB = 799.4 MiB`` for a percentage (so the text the user
    wrote is not lost once it is bytes); None for a plain size."""
    if not (isinstance(text, str) and text.strip().endswith("%")):
        return None
    return f"{what} {text.strip()} of {format_size(memory_total())} = {format_size(value)}"


def _size_example(raw: str) -> str:
    digits = re.match(r"-?\s*(\d+(?:\.\d+)?)", raw)
    if digits and not raw.lstrip().startswith("-"):
        unit = re.search(r"([kmgtKMGT])", raw[digits.end() :])
        return f"{digits.group(1)}{unit.group(1).upper() if unit else 'M'}"
    return "50M"


def parse_duration(
    text: str | int | float, *, what: str = "duration", allow_zero: bool = False
) -> float:
    """Return seconds from ``text``; raise :class:`BadInput` naming the value."""
    if isinstance(text, bool):
        raise BadInput(f"{what}: {text!r} is not a duration", hint="try 2s or 100ms")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        raw = str(text).strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", raw):
            seconds = float(raw)
        else:
            parts = _DURATION_PART.findall(raw)
            if not raw or "".join(n + u for n, u in parts) != raw:
                raise BadInput(
                    f"{what}: {str(text)!r} is not a duration", hint="try 100ms, 2s, 10m or 1h"
                )
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise BadInput(f"{what}: {text!r} must be above zero", hint="try 2s or 100ms")
    if seconds > 100 * 365 * 86400:
        raise BadInput(f"{what}: {text!r} is too long", hint="try 10m or 1h")
    return seconds


def format_size(n: int | None, *, short: bool = False) -> str:
    """``52428800`` -> ``'50.0 MiB'`` (``short``: ``'50.0M'``, as in RESOURCES lines);
    None -> ``'-'``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if short:
                return f"{n}B" if unit == "B" else f"{value:.1f}{unit[0]}"
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """``0.25`` -> ``'250ms'``, ``90`` -> ``'1m30s'``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if minutes else ""
    return text + (f"{secs}s" if secs else "")

"""JUnit XML for CI: one testcase per task; a task that did not end ``ok`` fails, with
its reason, peak and cap as the message and the tail of its stderr as the text."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agent_supervise.tailfile import read_tail
from agent_supervise.units import format_size

TAIL_BYTES = 4096


def _tail(path: str | None) -> str:
    if not path:
        return ""
    try:
        return read_tail(path, TAIL_BYTES)[0].decode("utf-8", "replace")
    except OSError:
        return ""


def junit_xml(result, name: str) -> bytes:
    failures = sum(t["reason"] not in ("ok", "cancelled") for t in result.tasks)
    skipped = sum(t["reason"] == "cancelled" for t in result.tasks)
    suite = ET.Element(
        "testsuite",
        name=name,
        tests=str(len(result.tasks)),
        failures=str(failures + len(result.rejected)),
        errors="0",
        skipped=str(skipped),
        time=f"{result.duration_s:.3f}",
    )
    for t in result.tasks:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{name}.{t['agent']}",
            name=t["task"],
            time=f"{t['duration_s']:.3f}",
        )
        facts = (
            f"{t['reason']} (exit {t['exit_code']}, peak {format_size(t['peak_bytes'])}"
            f" / cap {format_size(t['limit_bytes'])}, attempts {t['attempts']})"
        )
        if t["detail"]:
            facts += f": {t['detail']}"
        if t["reason"] == "cancelled":
            ET.SubElement(case, "skipped", message=facts)
        elif t["reason"] != "ok":
            failure = ET.SubElement(case, "failure", message=facts, type=t["reason"])
            failure.text = _tail(t["stderr"])
        if t["stdout"]:
            ET.SubElement(case, "system-out").text = f"log: {t['stdout']}"
    for r in result.rejected:
        case = ET.SubElement(suite, "testcase", classname=f"{name}.input", name=r["where"])
        ET.SubElement(case, "failure", message=r["error"], type="rejected")
    ET.indent(suite)
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)

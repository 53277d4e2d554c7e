"""``agent-supervise doctor``: which backends work here, and why the others do not.

Every backend is probed for real (a probe cage is created and removed), so what
doctor says is what ``run`` will find.
"""

from __future__ import annotations

import os
import platform
import sys

from agent_supervise import __version__, limits
from agent_supervise.limits.cgroupfs import cgroup_mounts, own_cgroups
from agent_supervise.linux import pidfd_supported
from agent_supervise.memsource import read_meminfo, read_psi
from agent_supervise.run import spawn


def _pid1() -> str:
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _psi() -> dict:
    line, why = read_psi()
    return (
        {"available": True, "memory": line} if why is None else {"available": False, "reason": why}
    )


def collect(*, rlimit: str = "data", cgroup_root: str | None = None) -> dict:
    """Everything doctor reports, as plain data (``--json`` prints it as is)."""
    own = own_cgroups()  # before probing: under systemd a probe may move this process
    probes = limits.probe_all(rlimit=rlimit, cgroup_root=cgroup_root)
    chosen = next((p.name for p in probes if p.available), None)
    mem = read_meminfo()
    is_root = os.geteuid() == 0
    warnings = []
    if is_root:
        warnings.append(
            "running as root: an agent that also runs as root can write its "
            "pid into another cgroup's cgroup.procs and leave its cage"
        )
    if not any(p.available for p in probes if p.name != "rlimit"):
        warnings.append(
            "no cgroup backend: caps are per-process rlimits plus the "
            "watchdog's RSS sampling, not a kernel-enforced tree cap"
        )
    return {
        "version": __version__,
        "system": {
            "kernel": platform.release(),
            "python": sys.version.split()[0],
            "root": is_root,
            "uid": os.getuid(),
            "pid1": _pid1(),
            "cpus": os.cpu_count(),
            "mem_total": mem.get("MemTotal"),
            "mem_available": mem.get("MemAvailable"),
        },
        "cgroups": {
            "mounts": [
                {
                    "point": m.point,
                    "type": m.fstype,
                    "options": [o for o in m.options if o not in ("rw", "ro")],
                }
                for m in cgroup_mounts()
            ],
            "own": own,
        },
        "psi": _psi(),
        "pidfd": pidfd_supported(),
        "spawn": "vfork (C extension agent_supervise._spawn)"
        if spawn.fast_path()
        else "fork + preexec_fn (the C extension was not built, or "
        "AGENT_SUPERVISE_SPAWN=python): ~10x slower to start agents",
        "namespaces": _namespaces(),
        "systemd": _systemd(),
        "backends": [
            {
                "name": p.name,
                "available": p.available,
                "detail": p.detail,
                **({"advice": list(p.advice)} if p.advice else {}),
            }
            for p in probes
        ],
        "auto": chosen,
        "warnings": warnings,
    }


def render(report: dict) -> str:
    """The human-readable form."""
    s = report["system"]
    lines = [
        f"agent-supervise {report['version']}",
        f"kernel {s['kernel']}, python {s['python']}, "
        f"{'root' if s['root'] else 'uid ' + str(s['uid'])}, pid 1 is {s['pid1']}, "
        f"{s['cpus']} cpus, {_gib(s['mem_available'])} of {_gib(s['mem_total'])} "
        "available",
        "",
        "backends (tried for real, in auto's order):",
    ]
    for b in report["backends"]:
        mark = "yes" if b["available"] else "no "
        lines.append(f"  {b['name']:8} {mark}  {b['detail']}")
        if b.get("advice"):
            lines.append(f"           kernel caps ({b['name']}) for this user, any of:")
            lines += [f"           - {a}" for a in b["advice"]]
    lines.append(f"  auto picks: {report['auto'] or 'nothing'}")
    lines += ["", "cgroup mounts:"]
    for m in report["cgroups"]["mounts"] or [{"point": "none", "type": "", "options": []}]:
        lines.append(f"  {m['point']:28} {m['type']:8} {','.join(m['options'])}")
    own = report["cgroups"]["own"]
    lines.append(f"  this process: v2 {own.get('', '-')}, v1 memory {own.get('memory', '-')}")
    psi = report["psi"]
    lines.append("")
    lines.append(f"PSI: {psi['memory'] if psi['available'] else 'unavailable: ' + psi['reason']}")
    lines.append(f"pidfd: {'yes' if report['pidfd'] else 'no (exits found by SIGCHLD)'}")
    lines.append(f"spawn: {report['spawn']}")
    lines.append(f"systemd: {report['systemd']['detail']}")
    ns = report["namespaces"]
    lines.append(f"namespaces: {ns['detail']}")
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _systemd() -> dict:
    """Which systemd manager would hand out a delegated scope (limits/systemd.py)."""
    from agent_supervise.limits import systemd

    try:
        manager = systemd.find_manager()
    except systemd.NoManager as err:
        return {"manager": None, "detail": f"no delegated scope: {err}"}
    return {
        "manager": "user" if manager.user else "system",
        "detail": f"cgroup2 cages may go in a delegated scope from {manager.describe()} "
        f"(systemd-run{' --user' if manager.user else ''} --scope -p "
        "Delegate=yes, held while agent-supervise runs)",
    }


def _namespaces() -> dict:
    """Whether agents get PID, IPC and mount namespaces of their own, and what that
    means for the promise (limits/isolation.py)."""
    from agent_supervise.limits import isolation
    from agent_supervise.limits.shmmeter import rlimit_uncounted

    why = isolation.unavailable()
    if why is None:
        return {
            "available": True,
            "detail": (
                "yes: each agent has PID, IPC and mount namespaces of its own (its tree "
                "cannot be shed, dies with its run or a SIGKILLed supervisor, cannot signal "
                "other agents; a private /dev/shm and SysV limits sized to its cap)"
            ),
        }
    return {"available": False, "detail": f"no ({why}); " + rlimit_uncounted(False)}


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"

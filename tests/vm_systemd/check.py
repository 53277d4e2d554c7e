"""The checks inside the systemd guest: agent-supervise for real, as its users run it.

Run as root by ``agent-supervise-check.service`` (tests/vm_systemd/units) once
systemd, dbus, logind and dev's user manager (``user@1001.service``, lingering) are
up. Three users, each with the same steps and a few of their own:

* **root**, from this service (``system.slice``, root's): cages must go in a
  delegated scope from the system manager, not into ``system.slice`` itself.
* **dev** (uid 1001), from a real login session: ``runuser -l`` goes through PAM,
  so pam_systemd puts the shell in ``session-N.scope`` (root's, as for ssh). Cages
  must go in a delegated scope from dev's user manager. Also: inside tmux, from a
  scope of its own user manager (a desktop terminal), and after a SIGKILLed
  supervisor left a process in its scope.
* **runner** (uid 1002), without a user manager (``runuser -u``: no PAM session,
  like a CI runner's job in its service): rlimit, and doctor's explanation. Then,
  as runner with passwordless sudo, every job of the GitHub Actions workflow
  (workflow.py: the guest stands in for ``ubuntu-latest``).

Each user's steps run in one shell (one login session); every step's stdout,
stderr, exit status and duration are collected into ``/out/results.json`` for the
host's test (tests/test_systemd_stage.py), which makes the assertions. Then: what
agent-supervise left in the cgroup tree and among the processes (nothing, it must
be), and power-off.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import workflow  # beside this file

REPO = Path(__file__).resolve().parents[2]
OUT = Path("/out")
PY = sys.executable
AS = f"{PY} -s -m agent_supervise"
HOG = f"{PY} -s {REPO}/tests/vm_systemd/hog.py"
CG = "/sys/fs/cgroup"
#: Every user's steps end by then (the unit's own limit is 130 s): a hung step
#: still leaves time to report.
DEADLINE = time.monotonic() + 115
OURS = "agent-supervise-check"  # this service, and the --cgroup-root test's folder
#: What an ordinary agent prints: its cgroup, its parent's subtree_control and owner.
WHERE = (
    'c=$(cut -d: -f3 /proc/self/cgroup); echo "cgroup $c"; '
    'echo "parent_controls $(cat /sys/fs/cgroup$c/../cgroup.subtree_control)"; '
    'echo "parent_owner $(stat -c %U /sys/fs/cgroup$c/..)"'
)
AGENT = f"sh -c {shlex.quote(WHERE)}"

COMMON = [
    ("where", 'cat /proc/self/cgroup; echo "XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-}"; id -u'),
    ("doctor", f"{AS} doctor"),
    ("hog", f"{AS} run --memory 50M --json -- {HOG}"),
    ("ok", f"{AS} run --memory 50M --json -- {AGENT}"),
]


def dev_steps(d: str) -> list[tuple[str, str]]:
    steps = list(COMMON)
    # A desktop terminal: the shell is in a scope of the user's own manager
    # (app.slice, the user's, but holding processes).
    steps.append(("desktop", f"systemd-run --user --scope --quiet -- {AS} run --json -- {AGENT}"))
    # tmux: its server is the login session's; agent-supervise runs in a pane.
    pane = f"{d}/pane.sh"
    Path(pane).write_text(
        f"{AS} run --json -- {AGENT} > {d}/pane.out 2> {d}/pane.err\necho $? > {d}/pane.rc\n"
    )
    steps.append(
        (
            "tmux",
            f"""
        command -v tmux >/dev/null || {{ echo "tmux not installed"; exit 99; }}
        tmux -S {d}/tmux.sock new-session -d -x 100 -y 20 "sh {pane}" || exit 98
        i=0; while [ ! -s {d}/pane.rc ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
        tmux -S {d}/tmux.sock kill-server 2>/dev/null
        cat {d}/pane.out; cat {d}/pane.err >&2; exit $(cat {d}/pane.rc 2>/dev/null || echo 97)
    """,
        )
    )
    # One agent's OOM kill must not stop the scope, and the other agents with it.
    fleet = f"{d}/fleet.yaml"
    Path(fleet).write_text(
        json.dumps(
            {
                "supervisor": {
                    "max_concurrent": 2,
                    "min_free_memory": "10M",
                    "log_dir": f"{d}/runs",
                },
                "agents": {
                    "calm": {
                        "cmd": ["sh", "-c", "sleep 1.5; cat /proc/self/cgroup"],
                        "memory_limit": "50M",
                    },
                    "hog": {
                        "cmd": [PY, "-s", f"{REPO}/tests/vm_systemd/hog.py"],
                        "memory_limit": "50M",
                    },
                },
                "tasks": [{"agent": "calm"}, {"agent": "hog"}],
            }
        )
    )
    steps.append(("fleet", f"{AS} fleet --json --no-dashboard {fleet}"))
    steps += killed_steps(d, f"{CG}/user.slice/user-1001.slice/user@1001.service/app.slice", "dev")
    return steps


def killed_steps(d: str, slice_dir: str, user: str, env: str = "") -> list:
    """A SIGKILLed supervisor whose agent left a process that scrubbed its
    environment (no marker): only the scope's leftover cage leads to it."""
    return [
        (
            "killed",
            f"""
        {env} {AS} run -- sh -c 'setsid env -i /bin/sleep 300 </dev/null >/dev/null 2>&1 &
                          echo started; exec sleep 300' > {d}/killed.agent 2>&1 &
        sup=$!
        i=0; while ! grep -q started {d}/killed.agent 2>/dev/null && [ $i -lt 200 ]; do
            sleep 0.05; i=$((i+1)); done
        kill -9 $sup; wait $sup 2>/dev/null
        echo "supervisor $sup"
        sleep 0.3
        for s in {slice_dir}/agent-supervise-*.scope; do
            [ -d "$s" ] || continue
            echo "left scope $s: $(ls -d $s/*/ 2>/dev/null | xargs -n1 basename | tr '\\n' ' ')"
            for c in $s/agent-supervise.*; do
                [ -d "$c" ] && echo "left processes in $(basename $c):" \
                    "$(cat $c/cgroup.procs | tr '\\n' ' ')"
            done
        done
    """,
        ),
        (
            "after_kill",
            f"{AS} run --json -- true; "
            f"pgrep -u {user} -x sleep && echo 'sleep still running' || true",
        ),
    ]


def runner_steps(d: str) -> list[tuple[str, str]]:
    return [*COMMON, ("forced", f"{AS} run --backend cgroup2 -- true")]


def root_steps(d: str) -> list[tuple[str, str]]:
    mine = f"{CG}/{OURS}-root"
    return [
        *COMMON,
        (
            "cgroup_root",
            f"mkdir {mine} && {AS} run --json --cgroup-root {mine} "
            f"-- cat /proc/self/cgroup; rc=$?; rmdir {mine}; exit $rc",
        ),
        # A scope's OOMPolicy by default, and as agent-supervise asks (systemd.py)
        (
            "oom_policy",
            "for p in '' '-p OOMPolicy=continue'; do systemd-run --scope --quiet "
            f"--unit={OURS}-oom $p -- systemctl show -p OOMPolicy {OURS}-oom.scope; "
            "done",
        ),
        # Without namespaces of its own, what an agent leaves outlives the supervisor.
        *killed_steps(d, f"{CG}/system.slice", "root", "AGENT_SUPERVISE_NAMESPACES=0"),
    ]


def lingering_steps(d: str) -> list[tuple[str, str]]:
    """dev without a login session (runuser -u, as cron or sudo -u would): no
    XDG_RUNTIME_DIR, in root's service cgroup, but its user manager runs."""
    return [COMMON[0], COMMON[3]]


def script(d: str, steps) -> str:
    """One shell for all of a user's steps; each step's files go to ``d``."""
    lines = ["cd /"]
    for name, cmd in steps:
        lines.append(
            f"read t0 _ < /proc/uptime; ( {cmd}\n) > {d}/{name}.out 2> {d}/{name}.err "
            f"< /dev/null; echo $? > {d}/{name}.rc; read t1 _ < /proc/uptime; "
            f'echo "$t0 $t1" > {d}/{name}.t'
        )
    return "\n".join(lines) + "\n"


def run_user(who: str, uid: int, steps_of, how: list[str]) -> dict:
    d = f"/tmp/as-{who}"
    os.makedirs(d, exist_ok=True)
    os.chown(d, uid, uid)
    steps = steps_of(d)
    path = f"{d}/steps.sh"
    Path(path).write_text(script(d, steps))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [*how, f"sh {path}" if how[-1] == "-c" else path],
        env=env,
        capture_output=True,
        timeout=max(5.0, DEADLINE - time.monotonic()),
    )
    found = {
        "how": " ".join(how),
        "wall_s": round(time.monotonic() - started, 2),
        "shell_rc": proc.returncode,
        "shell_err": proc.stderr.decode(errors="replace")[-2000:],
        "steps": {},
    }
    for name, cmd in steps:
        step = {"cmd": " ".join(cmd.split())}
        for ext in ("out", "err", "rc", "t"):
            try:
                step[ext] = Path(f"{d}/{name}.{ext}").read_text(errors="replace")
            except OSError:
                step[ext] = None
        step["rc"] = int(step["rc"]) if step["rc"] and step["rc"].strip().isdigit() else None
        if step["t"]:
            t0, t1 = map(float, step["t"].split())
            step["t"] = round(t1 - t0, 2)
        found["steps"][name] = step
    return found


def leftovers(patience: float = 3.0) -> dict:
    """Cgroups named by agent-supervise anywhere in the tree, its units, and processes
    still in them, after a short wait (systemd removes an emptied scope at once)."""
    deadline = time.monotonic() + patience
    while True:
        cgroups = [
            os.path.join(top, d)
            for top, dirs, _ in os.walk(CG)
            for d in dirs
            if d.startswith("agent-supervise") and not d.startswith(OURS)
        ]
        if not cgroups or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    procs = {}
    for c in cgroups:
        try:
            procs[c] = Path(c, "cgroup.procs").read_text().split()
        except OSError:
            pass
    units = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "agent-supervise-[0-9]*"],
        capture_output=True,
        text=True,
    ).stdout
    hogs = [p for p in os.listdir("/proc") if p.isdigit() and "hog.py" in _cmdline(p)]
    return {
        "cgroups": cgroups,
        "procs": procs,
        "system_units": units.split("\n")[:-1],
        "hogs": hogs,
    }


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def main() -> int:
    begun = float(Path("/proc/uptime").read_text().split()[0])
    results = {
        "uptime_at_start": begun,
        "system": subprocess.run(
            ["systemctl", "is-system-running"], capture_output=True, text=True
        ).stdout.strip(),
        "user_manager": subprocess.run(
            ["systemctl", "is-active", "user@1001.service"], capture_output=True, text=True
        ).stdout.strip(),
        "users": {},
    }
    try:
        results["users"]["root"] = run_user("root", 0, root_steps, ["sh"])
        results["users"]["dev"] = run_user("dev", 1001, dev_steps, ["runuser", "-l", "dev", "-c"])
        results["users"]["dev_no_session"] = run_user(
            "dev_no_session", 1001, lingering_steps, ["runuser", "-u", "dev", "--", "sh"]
        )
        results["users"]["runner"] = run_user(
            "runner", 1002, runner_steps, ["runuser", "-u", "runner", "--", "sh"]
        )
        # Last: its linger job gives runner a user manager for the rest of the boot.
        results["workflow"] = workflow.run_all(DEADLINE)
        results["leftovers"] = leftovers()
    except Exception as err:  # still report what there is
        results["error"] = repr(err)
    results["uptime_at_end"] = float(Path("/proc/uptime").read_text().split()[0])
    failed = subprocess.run(
        ["systemctl", "--failed", "--plain", "--no-legend"], capture_output=True, text=True
    ).stdout
    results["failed_units"] = failed.split("\n")[:-1]
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    with open(OUT / "journal.log", "w") as f:
        subprocess.run(
            ["journalctl", "-b", "--no-pager", "-o", "short-monotonic"],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    os.sync()
    print("AGENT-SUPERVISE-SYSTEMD-CHECKS-DONE", flush=True)
    subprocess.run(["systemctl", "poweroff", "-ff"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

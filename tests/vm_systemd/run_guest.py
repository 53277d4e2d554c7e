"""Boot a User-Mode Linux guest with systemd as PID 1 and run agent-supervise in it.

The layout of most users' machines (Debian 12, Ubuntu 22.04+, Fedora, GitHub's
runners): a pure cgroup v2 kernel, systemd as PID 1, logind, D-Bus, a user manager
per logged-in or lingering user. This project's machines have none of it, so the
guest brings it: ``linux.uml`` (kernel 6.1) over the host's root (hostfs,
read-only), ``init.sh`` puts a tmpfs overlay over it with a small layer built here
(units, masks, the linger file), adds two users, and execs the host's own systemd
252. Its ``agent-supervise-check.service`` runs ``check.py`` (as root, dev and
runner), which writes ``results.json`` into the output folder and powers off.

The guest is pinned to one host CPU: UML runs every guest system call through
ptrace, and a guest whose host processes wake each other across CPUs is ~2.5x
slower. ``linux.uml`` exits 0 whatever the guest did: the verdict is
``results.json``. A guest that hangs is killed at the timeout with every host
process it made.

Usage: ``python tests/vm_systemd/run_guest.py [--out DIR] [--timeout S] [--cpu N]``
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INIT = HERE / "init.sh"

_spec = importlib.util.spec_from_file_location("uml_guest", HERE.parent / "vm" / "run_guest.py")
uml = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("uml_guest", uml)
_spec.loader.exec_module(uml)
CannotBoot = uml.CannotBoot

#: The host's limit on one boot with every check: 36-40 s measured (README). The
#: guest's own limits are below it (the check unit's, check.py's), so that a hung step
#: still lets the guest report.
TIMEOUT_S = 150.0
GUEST_MEM = "768M"
SYSTEMD = "/lib/systemd/systemd"
#: Units that cannot work in UML (no kmod tool, no binfmt_misc) or only cost boot
#: time; none takes part in cgroups, logind or delegation.
MASKED = (
    "timers.target systemd-binfmt.service proc-sys-fs-binfmt_misc.automount "
    "kmod-static-nodes.service modprobe@.service systemd-modules-load.service "
    "systemd-timesyncd.service systemd-update-utmp.service "
    "systemd-random-seed.service systemd-journal-flush.service "
    "systemd-pstore.service systemd-sysusers.service systemd-oomd.service "
    "dev-hugepages.mount sys-kernel-debug.mount sys-kernel-tracing.mount "
    "sys-kernel-config.mount sys-fs-fuse-connections.mount "
    "apt-daily.service apt-daily-upgrade.service man-db.service e2scrub_reap.service"
).split()
#: Generators for disks, gettys, SysV scripts and the host's services.
MASKED_GENERATORS = (
    "postgresql-generator systemd-cryptsetup-generator "
    "systemd-getty-generator systemd-gpt-auto-generator "
    "systemd-hibernate-resume-generator systemd-integritysetup-generator "
    "systemd-rc-local-generator systemd-system-update-generator "
    "systemd-sysv-generator systemd-veritysetup-generator"
).split()


def kernel_modules() -> str | None:
    found = sorted(glob.glob("/usr/lib/uml/modules/*/kernel/fs/overlayfs/overlay.ko"))
    return found[-1].split("/")[5] if found else None


def check_bootable() -> None:
    uml.check_bootable()  # linux.uml, busybox, not inside a guest, paths without spaces
    for tool, why in (
        (SYSTEMD, "systemd (252+) to be PID 1"),
        (shutil.which("runuser"), "runuser (util-linux) for login sessions"),
        (shutil.which("sudo"), "sudo for the GitHub workflow's jobs"),
        (shutil.which("taskset"), "taskset (util-linux) to pin the guest"),
    ):
        if not tool or not os.access(tool, os.X_OK):
            raise CannotBoot(f"systemd guest: needs {why}")
    if kernel_modules() is None:
        raise CannotBoot(
            "systemd guest: no overlay.ko under /usr/lib/uml/modules (user-mode-linux's modules)"
        )
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/security/pam_systemd.so") and not glob.glob(
        "/usr/lib*/**/pam_systemd.so", recursive=True
    ):
        raise CannotBoot(
            "systemd guest: pam_systemd missing (apt-get install "
            "libpam-systemd): logins would get no session"
        )
    if not (shutil.which("dbus-daemon") or shutil.which("dbus-broker")):
        raise CannotBoot(
            "systemd guest: no D-Bus daemon (apt-get install dbus): logind needs the system bus"
        )


def build_layer(layer: Path) -> None:
    """The files init.sh copies over the guest's root."""
    if layer.exists():
        shutil.rmtree(layer)
    system = layer / "etc/systemd/system"
    for d in (
        system,
        layer / "etc/systemd/system-generators",
        layer / "usr/lib/modules",
        layer / "var/lib/systemd/linger",
    ):
        d.mkdir(parents=True)
    version = kernel_modules()
    (layer / f"usr/lib/modules/{version}").symlink_to(f"/usr/lib/uml/modules/{version}")
    (layer / "etc/machine-id").write_text("5e1f0000c0ffee00000000000000abcd\n")
    (layer / "etc/hostname").write_text("agent-supervise-guest\n")
    (layer / "etc/fstab").write_text("")
    for unit in (HERE / "units").iterdir():
        text = unit.read_text().replace("@PYTHON@", sys.executable)
        (system / unit.name).write_text(text.replace("@REPO@", str(REPO)))
    for name in MASKED:
        (system / name).symlink_to("/dev/null")
    for name in MASKED_GENERATORS:
        (layer / "etc/systemd/system-generators" / name).symlink_to("/dev/null")
    (layer / "var/lib/systemd/linger/dev").write_text("")  # dev lingers: user@1001
    # runner has passwordless sudo, as on GitHub's hosted runners (the workflow's jobs)
    sudoers = layer / "etc/sudoers.d"
    sudoers.mkdir(parents=True)
    (sudoers / "runner").write_text("runner ALL=(ALL) NOPASSWD:ALL\n")
    (sudoers / "runner").chmod(0o440)
    (layer / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 agent-supervise-guest\n")


@dataclass
class SystemdRun:
    results: dict | None  # results.json; None: the guest never wrote it
    console: str
    wall_s: float
    timed_out: bool
    session: int
    out: Path

    @property
    def ok(self) -> bool:
        return self.results is not None and not self.timed_out

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.rstrip().splitlines()[-lines:])

    def verdict(self) -> str:
        if self.timed_out:
            return f"guest killed at its timeout after {self.wall_s:.1f} s"
        if self.results is None:
            return f"the guest wrote no results.json ({self.wall_s:.1f} s wall)"
        r = self.results
        return (
            f"systemd guest: checks from {r['uptime_at_start']:.1f} s to "
            f"{r['uptime_at_end']:.1f} s of guest uptime, {self.wall_s:.1f} s wall"
        )

    def report(self) -> str:
        return f"{self.verdict()}\n--- tail of the guest console ---\n{self.tail()}"


def pick_cpu() -> int:
    """One CPU of those this process may use: AGENT_SUPERVISE_VM_CPU, else the last."""
    allowed = sorted(os.sched_getaffinity(0))
    want = os.environ.get("AGENT_SUPERVISE_VM_CPU")
    return int(want) if want and int(want) in allowed else allowed[-1]


def boot(
    out_dir: str, *, timeout: float = TIMEOUT_S, cpu: int | None = None, extra: tuple[str, ...] = ()
) -> SystemdRun:
    """One boot: every check, then power-off. ``extra``: more kernel command-line
    words (``systemd.log_level=debug``, say)."""
    check_bootable()
    out = Path(out_dir).resolve()
    if any(c.isspace() for c in str(out)):
        raise CannotBoot(f"{out}: kernel command-line values cannot hold whitespace")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "journal.log"):
        (out / stale).unlink(missing_ok=True)
    layer = out / "layer"
    build_layer(layer)
    (out / "uml").mkdir(exist_ok=True)
    cmdline = [
        "taskset",
        "-c",
        str(pick_cpu() if cpu is None else cpu),
        uml.LINUX_UML,
        f"mem={GUEST_MEM}",
        "rootfstype=hostfs",
        "rootflags=/",
        "ro",
        f"init={INIT}",
        "con0=fd:0,fd:1",
        "con=null",
        "quiet",
        f"uml_dir={out / 'uml'}",
        "systemd.unit=agent-supervise-check.target",
        "systemd.show_status=0",
        f"AS_LAYER={layer}",
        f"AS_OUT={out}",
        f"AS_REPO={REPO}",
        f"AS_PYTHON={sys.executable}",
        *extra,
    ]
    started = time.monotonic()
    with open(out / "console.log", "wb") as console:
        proc = subprocess.Popen(
            cmdline,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=out,
            start_new_session=True,
        )
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        uml.end_session(proc)
    wall = time.monotonic() - started
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        results = None
    console = (out / "console.log").read_bytes().decode(errors="replace")
    return SystemdRun(results, console, wall, timed_out, proc.pid, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S)
    parser.add_argument("--out", help="keep the results in this folder")
    parser.add_argument("--cpu", type=int, help="the host CPU to pin the guest to")
    parser.add_argument("extra", nargs="*", help="more kernel command-line words")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agent-supervise-systemd.") as tmp:
        try:
            run = boot(opts.out or tmp, timeout=opts.timeout, cpu=opts.cpu, extra=tuple(opts.extra))
        except CannotBoot as err:
            print(f"run_guest: {err}", file=sys.stderr)
            return 2
        if run.results is not None:
            print(json.dumps(run.results, indent=1))
        print(run.report(), file=sys.stderr)
        return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())

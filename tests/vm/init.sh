#!/bin/sh
# PID 1 of the User-Mode Linux guest that tests the cgroup2 backend on a real v2
# kernel (the host binds the memory controller to cgroup v1). Started by
# run_guest.py as `linux.uml ... rootfstype=hostfs rootflags=/ ro init=THIS AS_...`.
#
# The root filesystem is the host's, read-only, so everything writable is mounted
# here: tmpfs on /run and /tmp (pytest's tmp_path), and the host folder AS_OUT
# (hostfs) where the results go. The kernel hands unknown `VAR=value` words of its
# command line to init as environment variables: AS_OUT, AS_REPO, AS_PYTHON,
# AS_TIMEOUT arrive that way. Values cannot hold spaces, so the pytest arguments
# come from the file AS_OUT/pytest-args, one per line.
#
# `linux.uml` exits 0 whatever happens in here: the host reads the verdict from
# AS_OUT/status (and the AGENT-SUPERVISE-VM-STATUS console line) instead.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A cgroup2 (or rlimit) skip in here is a failure (tests/conftest.py
# required_backends), and AGENT_SUPERVISE_IN_VM stops the guest booting a guest.
export AGENT_SUPERVISE_REQUIRE_BACKENDS=cgroup2,rlimit AGENT_SUPERVISE_IN_VM=1
# The reliability figures of the cgroup2 cases come back to the host from here.
export AGENT_SUPERVISE_FIGURES=/run/out/figures.json
OUT=/run/out

halt() {
    sync
    busybox poweroff -f
    echo "tests/vm/init.sh: busybox poweroff failed; is busybox-static installed?"
    exit 1  # PID 1 exiting panics the guest kernel, which ends linux.uml too
}

mount -t proc proc /proc
# Kernel messages (the OOM killer's lines) go to dmesg.txt, not between the
# test results on the console.
echo 1 > /proc/sys/kernel/printk
mount -t sysfs sysfs /sys
# A checkout under /tmp or /run (CI may clone there) would vanish under those
# tmpfs mounts: hold it on a bind mount meanwhile, then put it back in place.
mount -t tmpfs tmpfs /mnt
mkdir -p /mnt/repo
case "$AS_REPO" in
    /tmp/*|/run/*) mount --bind "$AS_REPO" /mnt/repo && held=1 ;;
esac
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
# /dev as on a real system: the guest kernel's devices (its kernel may have mounted
# them already) and a tmpfs /dev/shm (the host's is a mount, not a file of its root
# filesystem, so the guest would have none).
grep -q "^devtmpfs /dev " /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm
if [ -n "$held" ]; then
    mkdir -p "$AS_REPO" && mount --bind /mnt/repo "$AS_REPO" || {
        echo "AGENT-SUPERVISE-VM-STATUS=3 (cannot put $AS_REPO back in place)"; halt; }
fi
# The unified hierarchy alone: the guest has no v1 mounts, so every controller
# (cpu io memory pids) is on cgroup2, as on a systemd machine.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p "$OUT"
if ! mount -t hostfs none "$OUT" -o "$AS_OUT"; then
    echo "AGENT-SUPERVISE-VM-STATUS=3 (cannot mount the output folder $AS_OUT)"
    halt
fi

set --
while IFS= read -r arg; do
    set -- "$@" "$arg"
done < "$OUT/pytest-args"

cd "$AS_REPO" || halt
echo "guest: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu," \
     "controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
# -p no:cacheprovider: the repository is read-only in here. The guest's own timeout
# ends a hung test run while the kernel still works, so its output still arrives;
# the host's timeout (a little longer) is for a guest that hangs as a whole.
timeout -k 2 "${AS_TIMEOUT:-50}" "$AS_PYTHON" -m pytest -p no:cacheprovider --color=no \
    --junitxml="$OUT/junit.xml" "$@" < /dev/null
status=$?
dmesg > "$OUT/dmesg.txt" 2>&1
echo "$status" > "$OUT/status"
echo "AGENT-SUPERVISE-VM-STATUS=$status"
halt

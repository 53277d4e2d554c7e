#!/bin/sh
# Stage 0 of the systemd guest (tests/vm_systemd/run_guest.py): PID 1 for a moment,
# then systemd. The guest's root is the host's /, read-only over hostfs; this puts a
# writable overlay (tmpfs upper layer) over it, copies the layer run_guest.py built
# (units, masks, machine-id, the linger file), adds the guest's own users, and execs
# /lib/systemd/systemd as PID 1 in the overlay. Nothing of the host is written but the
# results folder AS_OUT.
#
# Kernel command-line words VAR=value arrive here as environment variables:
# AS_LAYER, AS_OUT, AS_REPO, AS_PYTHON (no spaces: run_guest.py checks).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

fail() {
    echo "AGENT-SUPERVISE-SYSTEMD-STAGE0-FAILED: $*"
    busybox poweroff -f
    exit 1
}

mount -t tmpfs -o mode=755,size=256m tmpfs /mnt || fail "tmpfs on /mnt"
mkdir /mnt/upper /mnt/work /mnt/root
R=/mnt/root
# No kmod on these machines: busybox loads the UML kernel's overlay module.
busybox insmod /usr/lib/uml/modules/*/kernel/fs/overlayfs/overlay.ko 2>/dev/null
mount -t overlay overlay -o lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work $R \
    || fail "overlay over the hostfs root"
cp -a "$AS_LAYER/." $R/ || fail "copy of the layer $AS_LAYER"

# The guest's users: dev (1001) lingers, so logind starts user@1001.service at boot;
# runner (1002) has no user manager, like a CI runner. Host entries with those names
# or uids are dropped in the guest only.
for f in passwd group; do
    sed -i '/^dev:/d;/^runner:/d;/^[^:]*:[^:]*:100[12]:/d' $R/etc/$f
done
sed -i '/^dev:/d;/^runner:/d' $R/etc/shadow $R/etc/gshadow
cat >> $R/etc/passwd <<USERS
dev:x:1001:1001:dev:/home/dev:/bin/sh
runner:x:1002:1002:runner:/home/runner:/bin/sh
USERS
printf 'dev:x:1001:\nrunner:x:1002:\n' >> $R/etc/group
printf 'dev:!:19000::::::\nrunner:!:19000::::::\n' >> $R/etc/shadow
mkdir -p $R/home/dev $R/home/runner
chown 1001:1001 $R/home/dev
chown 1002:1002 $R/home/runner

# A /.dockerenv of the host would make systemd believe it runs in a container and
# ignore the kernel command line (systemd.unit=).
rm -f $R/.dockerenv

# The users must reach the interpreter and the checkout (a pyenv under the 0700
# /root, say): search permission on every folder on the way, in the overlay only.
for p in "$(readlink -f "$AS_PYTHON")" "$AS_PYTHON" "$AS_REPO/x"; do
    d=$(dirname "$p")
    while [ "$d" != / ]; do
        chmod o+x "$R$d" 2>/dev/null
        d=$(dirname "$d")
    done
done

# A fresh /tmp, as a real system has (systemd-tmpfiles would otherwise walk the
# host's /tmp through the overlay: seconds). A checkout or results folder under
# /tmp stays visible through a bind mount at its own path.
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/tmp || fail "tmpfs on /tmp"
case "$AS_REPO" in
    /tmp/*) mkdir -p "$R$AS_REPO" && mount --bind "$AS_REPO" "$R$AS_REPO" \
                || fail "bind of the checkout $AS_REPO" ;;
esac
mkdir -p $R/out
mount -t hostfs none $R/out -o "$AS_OUT" || fail "hostfs mount of $AS_OUT"

cd $R && mkdir -p .oldroot && pivot_root . .oldroot || fail "pivot_root"
umount -l /.oldroot
exec /lib/systemd/systemd

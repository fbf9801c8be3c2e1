#!/usr/bin/env bash
# customize.sh - mmdebstrap --customize-hook of the cached root file system (firmware/image):
# the third-party Python wheels into the venv, then the one initramfs, then the Pi's boot
# files. Everything that changes with mta-lite itself is done later, by build.py, on a copy.
# $1 is the root file system; the wheels were synced into $1/tmp/mta-lite-wheels.
# Never: reach the network (pip runs with --no-index and --require-hashes).
set -euo pipefail
root="$1"
venv=/usr/lib/mta-lite/venv
wheels=/tmp/mta-lite-wheels
export PYTHONHASHSEED=0     # marshal writes sets in hash order: fixed for identical .pyc files

echo "customize: venv ${venv}"
chroot "$root" python3 -m venv "$venv"
chroot "$root" "$venv/bin/pip" install --quiet --no-index --no-cache-dir --no-compile \
    --find-links "$wheels" --require-hashes -r "$wheels/wheels.lock"
# Unchecked-hash .pyc: valid whatever the files' mtimes, never rewritten on a read-only root.
chroot "$root" "$venv/bin/python" -m compileall -q -f --invalidation-mode unchecked-hash "$venv/lib"
rm -rf "${root:?}$wheels"

echo "customize: initramfs (once)"
rm -f "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
chroot "$root" update-initramfs -c -k all

echo "customize: Pi boot files"
kver="$(basename "$(ls -d "$root"/lib/modules/* | sort -V | tail -1)")"
cat > "$root/etc/default/raspi-firmware" <<CONF
# Set by the mta-lite image recipe; build.py writes the final cmdline.txt.
ROOTPART=LABEL=mta-root
CONSOLES="tty1"
CONF
chroot "$root" env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$kver" "/boot/vmlinuz-$kver"
ls "$root/boot/firmware/vmlinuz-$kver" "$root/boot/firmware/initrd.img-$kver" >/dev/null

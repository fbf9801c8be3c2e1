#!/usr/bin/env bash
# essential.sh - mmdebstrap --essential-hook: keep update-initramfs from running while packages
# are installed. Under qemu-user one initramfs takes ~9 minutes, and the kernel's postinst and
# the initramfs-tools trigger would each build one; customize.sh builds it once, at the end.
# $1 is the root file system being built.
set -euo pipefail
root="$1"
chroot "$root" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
printf '#!/bin/sh\n# diverted while the image is built (firmware/image/hooks/essential.sh)\nexit 0\n' \
    > "$root/usr/sbin/update-initramfs"
chmod 0755 "$root/usr/sbin/update-initramfs"

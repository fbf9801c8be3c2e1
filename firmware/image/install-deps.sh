#!/usr/bin/env bash
# install-deps.sh - what `make image` and `make image-test` need on a Debian 12/13 machine:
# mmdebstrap and qemu-user-static (an arm64 root file system built on any architecture),
# the tools that make and inspect disk images without mounting them, qemu-system-arm for the
# boot test, and swaks and Postfix's smtp-sink for the mail it relays. Enables the binfmt
# handler for arm64 (mounting binfmt_misc if needed) and checks it with arch-test.
# Guarantees: idempotent; with everything present it only checks, within a second.
# Never: starts a service (apt starts none here), or installs anything when not root.
set -euo pipefail

PACKAGES=(mmdebstrap qemu-user-static binfmt-support arch-test qemu-system-arm dosfstools mtools
          e2fsprogs fdisk bmap-tools xz-utils zstd faketime swaks postfix python3-pip git)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "image-deps: not root; missing: ${missing[*]}" >&2
        exit 1
    fi
    echo "image-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=900 "${missing[@]}"
fi
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
if ! arch-test arm64 >/dev/null 2>&1; then
    echo "image-deps: arm64 binaries do not run here (binfmt_misc, qemu-user-static)" >&2
    exit 1
fi

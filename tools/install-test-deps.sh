#!/usr/bin/env bash
# install-test-deps.sh - install the real peers the integration tests and the bench run
# (Postfix + smtp-sink/smtp-source, cyrus SASL tools, swaks, strace, faketime, socat, openssl,
# dnsmasq as the DNSBL server of the postscreen tests, dovecot-core as the OAuth2 token checker
# behind the OAuth2 smarthost (auth only, started by the tests, never as a service), mtools and dosfstools for USB stick
# images, chrony; for the SD-card flash tool's tests fdisk (sfdisk), mount (losetup), bmap-tools,
# xz-utils, zstd and e2fsprogs; apt starts none of them as a service here).
#
# Also creates the users of the privilege-separated layout (same as
# firmware/sysusers.d/mta-lite.conf): system users mta-lite (queue manager, supplementary group
# mta-smtpd), mta-smtpd (SMTP server) and mta-config (config installer, group mta-lite), and the
# unprivileged mta-test-user that the tests use
# as "any local user" running sendmail.
#
# Guarantees: idempotent; when everything is already installed it only runs `dpkg -s`/`command -v`
# and `getent`/`id`, and exits 0 within a second (no apt-get update). Installs non-interactively
# with apt-get, with Postfix preseeded to "No configuration" so no system main.cf is written.
# Never: starts or enables a system service, writes /etc/postfix/main.cf, or installs or creates
# anything when not root (it lists what is missing and exits 1 instead).
set -euo pipefail

NOLOGIN=/usr/sbin/nologin
SYSTEM_USERS=(mta-smtpd mta-lite mta-config)   # in this order: each joins a group made before
TEST_USER=mta-test-user

missing_users() {
    local u
    for u in "${SYSTEM_USERS[@]}" "$TEST_USER"; do
        getent passwd "$u" >/dev/null || echo "$u"
    done
    if getent passwd mta-lite >/dev/null && ! id -nG mta-lite | tr ' ' '\n' | grep -qx mta-smtpd; then
        echo "mta-lite-in-group-mta-smtpd"
    fi
    if getent passwd mta-config >/dev/null && ! id -nG mta-config | tr ' ' '\n' | grep -qx mta-lite; then
        echo "mta-config-in-group-mta-lite"
    fi
}

# useradd with a group of the user's name; an existing group of that name is reused.
add_user() {
    local name="$1"; shift
    local group_opt=(--user-group)
    if getent group "$name" >/dev/null; then
        group_opt=(--gid "$name")
    fi
    useradd "${group_opt[@]}" --no-create-home --home-dir /nonexistent --shell "$NOLOGIN" "$@" "$name"
}

create_users() {
    getent passwd mta-smtpd >/dev/null || add_user mta-smtpd --system --comment "mta-lite SMTP server"
    getent passwd mta-lite >/dev/null || add_user mta-lite --system --comment "mta-lite queue manager"
    usermod --append --groups mta-smtpd mta-lite
    getent passwd mta-config >/dev/null || add_user mta-config --system --comment "mta-lite config installer"
    usermod --append --groups mta-lite mta-config
    getent passwd "$TEST_USER" >/dev/null || add_user "$TEST_USER" --comment "mta-lite tests, any local user"
}

missing_accounts="$(missing_users)"
if [[ -n "$missing_accounts" ]]; then
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "install-test-deps: not root; missing users: ${missing_accounts//$'\n'/ }" >&2
        echo "install-test-deps: run as root: sudo bash $0" >&2
        exit 1
    fi
    echo "install-test-deps: creating users: ${missing_accounts//$'\n'/ }"
    create_users
fi

# libnet-ssleay-perl is only a Recommends of swaks, but `swaks --tls` needs it.
PACKAGES=(postfix sasl2-bin libsasl2-modules swaks libnet-ssleay-perl strace faketime socat openssl
          ca-certificates dnsmasq dovecot-core mtools dosfstools chrony fdisk mount bmap-tools xz-utils zstd e2fsprogs)
# Programs the tests call directly: a package can be "installed" yet broken (half-configured).
PROGRAMS=(/usr/sbin/postfix /usr/sbin/smtp-sink /usr/sbin/smtp-source /usr/sbin/saslpasswd2
          swaks strace faketime socat openssl /usr/sbin/dnsmasq /usr/sbin/dovecot mtype mcopy
          /usr/sbin/mkfs.vfat /usr/sbin/sfdisk /usr/sbin/losetup /usr/sbin/mkfs.ext4 bmaptool xz zstd)

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            echo "$p"
        fi
    done
}

missing_programs() {
    local p
    for p in "${PROGRAMS[@]}"; do
        command -v "$p" >/dev/null 2>&1 || echo "$p"
    done
}

missing="$(missing_packages)"
missing_bins="$(missing_programs)"
if [[ -z "$missing" && -z "$missing_bins" ]]; then
    echo "install-test-deps: all test dependencies present"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-test-deps: not root; missing packages: ${missing:-none}" >&2
    echo "install-test-deps: missing programs: ${missing_bins:-none}" >&2
    echo "install-test-deps: run as root: sudo bash $0" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Install every listed package (apt skips those already present) so a broken one is repaired too.
echo "install-test-deps: installing: ${missing//$'\n'/ } ${missing_bins//$'\n'/ }"
apt-get update -qq
apt-get install -y -qq \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"

still_missing="$(missing_packages)$(missing_programs)"
if [[ -n "$still_missing" ]]; then
    echo "install-test-deps: still missing after install: ${still_missing}" >&2
    exit 1
fi
echo "install-test-deps: done"

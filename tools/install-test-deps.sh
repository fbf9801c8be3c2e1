#!/usr/bin/env bash
# install-test-deps.sh - install the real peers the integration tests and the bench run
# (Postfix + smtp-sink/smtp-source, cyrus SASL tools, swaks, strace, faketime, socat, openssl).
#
# Guarantees: idempotent; when everything is already installed it only runs `dpkg -s`/`command -v`
# and exits 0 within a second (no apt-get update). Installs non-interactively with apt-get, with
# Postfix preseeded to "No configuration" so no system main.cf is written.
# Never: starts or enables a system service, writes /etc/postfix/main.cf, or installs anything when
# not root (it lists what is missing and exits 1 instead).
set -euo pipefail

# libnet-ssleay-perl is only a Recommends of swaks, but `swaks --tls` needs it.
PACKAGES=(postfix sasl2-bin libsasl2-modules swaks libnet-ssleay-perl strace faketime socat openssl
          ca-certificates)
# Programs the tests call directly: a package can be "installed" yet broken (half-configured).
PROGRAMS=(/usr/sbin/postfix /usr/sbin/smtp-sink /usr/sbin/smtp-source /usr/sbin/saslpasswd2
          swaks strace faketime socat openssl)

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

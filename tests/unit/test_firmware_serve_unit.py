"""The units the SD-card image enables: mta-lite.service (`mta-lite serve` as root, children
dropping to mta-smtpd and mta-lite), mta-lite.path, mta-lite-firstboot.service,
mta-lite-data.service and mta-lite-maillog.service.

The relay unit holds exactly the capabilities the master and the children's drop need, and
the file system is read-only but for the spool; the first-boot unit reads the boot partition
and writes the config directory only. Read with test_firmware_units.py's unit reader and
mount model; `systemd-analyze verify` and `security --offline` check them for real.
"""

from __future__ import annotations

import pytest

from tests.unit.test_firmware_units import (SPOOL, _analyze, stubbed_units, access, exposure_level, load,
                                            needs_systemd_analyze, one, paths, words)

SERVE = "mta-lite.service"
FIRSTBOOT = "mta-lite-firstboot.service"
DATA = "mta-lite-data.service"
MAILLOG = "mta-lite-maillog.service"
PATH_UNIT = "mta-lite.path"
CONFIG = "/etc/mta-lite/mta-lite.toml"
# What `serve` needs before its children drop (docs/deployed.md), and not one more.
SERVE_CAPS = {"CAP_SETUID", "CAP_SETGID", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID",
              "CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE", "CAP_KILL"}


# Programs the units run on the image, replaced by a stub so that verify can check them here.
PROGRAMS = ("/usr/lib/mta-lite/venv/bin/python3", "/usr/lib/mta-lite/mta-lite-data",
            "/usr/lib/mta-lite/mta-lite-maillog", "/usr/bin/mta-lite-board", "/usr/bin/mta-lite")


@pytest.fixture
def unit_dir(tmp_path):
    return stubbed_units(tmp_path, PROGRAMS)


@pytest.fixture(scope="module")
def serve():
    return load(SERVE)


@pytest.fixture(scope="module")
def firstboot():
    return load(FIRSTBOOT)


def test_serve_runs_the_master_as_root_with_the_config_path_only(serve):
    assert one(serve, "Service", "ExecStart").split() == ["/usr/bin/mta-lite", "serve"]
    assert "User" not in serve["Service"] and "DynamicUser" not in serve["Service"]
    assert words(serve, "Service", "Environment") == [f"MTA_LITE_CONFIG={CONFIG}"]
    assert one(serve, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_serve_has_only_the_capabilities_the_drop_needs(serve):
    assert set(words(serve, "Service", "CapabilityBoundingSet")) == SERVE_CAPS
    assert words(serve, "Service", "AmbientCapabilities") == []
    assert one(serve, "Service", "NoNewPrivileges") == "yes"


def test_serve_writes_the_spool_and_the_status_snapshot_in_ram_only(serve):
    assert paths(serve, "ReadWritePaths") == [SPOOL, "/run/mta-lite"]
    assert access(serve, "/run/mta-lite/status.json") == "rw" and access(serve, "/run/other") == "ro"
    assert access(serve, f"{SPOOL}/incoming/X") == access(serve, f"{SPOOL}/deferred/X") == "rw"
    for path in (CONFIG, "/etc/mta-lite/secrets/x.pw", "/usr/lib/x", "/var/lib/x", "/boot/firmware/config.txt"):
        assert access(serve, path) in ("ro", "none"), path


def test_serve_keeps_setgid_modes_and_sees_its_children(serve):
    # The master chmods the spool's setgid directories; RestrictSUIDSGID= would refuse that.
    assert "RestrictSUIDSGID" not in serve["Service"]
    # The children run as other users: hidepid-style ProtectProc= would hide them from it.
    assert "ProtectProc" not in serve["Service"]


def test_serve_syscall_filter_keeps_setuid_and_chown(serve):
    filters = serve["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service"
    denied = {w for f in filters[1:] for w in f[1:].split()}
    assert not {"@privileged", "@setuid", "@chown"} & denied
    assert {"@mount", "@module", "@reboot", "@raw-io", "@debug"} <= denied


def test_serve_starts_once_a_config_exists_after_the_first_boot_step(serve):
    assert one(serve, "Unit", "ConditionPathExists") == CONFIG
    assert FIRSTBOOT in words(serve, "Unit", "After")
    assert one(serve, "Unit", "StartLimitIntervalSec") == "0"
    assert one(serve, "Service", "Restart") == "always"
    path = load(PATH_UNIT)
    assert one(path, "Path", "PathExists") == CONFIG and one(path, "Path", "Unit") == SERVE
    assert words(serve, "Install", "WantedBy") == words(path, "Install", "WantedBy") == ["multi-user.target"]


def test_firstboot_reads_the_boot_partition_writes_the_config_directory(firstboot):
    argv = one(firstboot, "Service", "ExecStart").split()
    assert argv[1:] == ["-m", "mta_lite_board.firstboot", "/dev/disk/by-label/MTA-BOOT"]
    assert firstboot["Service"]["DeviceAllow"] == ["/dev/disk/by-label/MTA-BOOT rw"]
    assert one(firstboot, "Service", "DevicePolicy") == "closed"
    assert paths(firstboot, "ReadWritePaths") == ["/etc/mta-lite"]
    assert access(firstboot, f"{SPOOL}/incoming/x") == "none"
    assert one(firstboot, "Service", "PrivateNetwork") == "yes"
    assert set(words(firstboot, "Service", "CapabilityBoundingSet")) == {
        "CAP_SETUID", "CAP_SETGID", "CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH"}
    assert {SERVE, "mta-lite-board.service"} <= set(words(firstboot, "Unit", "Before"))
    assert "ProtectHostname" not in firstboot["Service"], "it sets the hostname"


def test_data_unit_runs_before_any_local_mount():
    data = load(DATA)
    assert one(data, "Unit", "DefaultDependencies") == "no"
    assert {"local-fs-pre.target", "var-lib-mta\\x2dlite.mount"} <= set(words(data, "Unit", "Before"))
    assert words(data, "Install", "WantedBy") == ["local-fs.target"]


def test_maillog_writes_only_its_directory():
    maillog = load(MAILLOG)
    assert paths(maillog, "ReadWritePaths") == ["/var/log/mta-lite"]
    assert "CapabilityBoundingSet" in maillog["Service"] and words(maillog, "Service", "CapabilityBoundingSet") == []


@needs_systemd_analyze
def test_systemd_analyze_verify_image_units(unit_dir):
    result = _analyze(unit_dir, "verify", "--man=no", SERVE, PATH_UNIT, FIRSTBOOT, DATA, MAILLOG)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "mta-lite" in line and "Failed to resolve" not in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert complaints == [], "\n".join(complaints)


@needs_systemd_analyze
@pytest.mark.parametrize("name, limit", [(SERVE, 3.5), (FIRSTBOOT, 2.5), (MAILLOG, 1.5)])
def test_systemd_analyze_security_exposure_of_image_units(unit_dir, name, limit):
    # serve runs as root with the capabilities of a supervisor that drops: "MEDIUM" is what
    # that costs; its children, which face the network, hold nothing at all.
    assert exposure_level(unit_dir, name) <= limit


def test_serve_may_hold_ten_thousand_connections():
    """The postscreen benchmark holds 10,000 idle connections (docs/benchmark.md): the
    unit must allow smtpd that many descriptors, and more, not systemd's default 1024."""
    assert int(one(load(SERVE), "Service", "LimitNOFILE")) >= 10_000 + 1024

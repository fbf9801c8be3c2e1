"""The status page's units: its own user, the address handed over by a root step, a sandbox
that shows it spool/public/ and nothing else of the relay, and its place in the image."""

from __future__ import annotations

import pathlib
import tomllib

import pytest

from firmware.image import layout
from tests.unit.test_firmware_units import (_analyze, stubbed_units, exposure_level, load, mounts, needs_systemd_analyze,
                                            one, paths, words)

PAGE = "mta-lite-page.service"
PAGE_PATH = "mta-lite-page.path"
PAGE_RESTART = "mta-lite-page-restart.service"
RELAY_UNITS = {"mta-lite.service", "mta-lite-smtpd.service", "mta-lite-qmgr.service", "mta-lite.target"}
ROOT = pathlib.Path(__file__).resolve().parents[2]
LISTEN_FILE = "/run/mta-lite-page/listen"


@pytest.fixture(scope="module")
def page():
    return load(PAGE)


def test_page_runs_as_its_own_user_in_no_group_of_the_relay(page):
    assert one(page, "Service", "User") == "mta-page" and one(page, "Service", "Group") == "mta-page"
    assert "SupplementaryGroups" not in page["Service"] and "DynamicUser" not in page["Service"]
    sysusers = (ROOT / "firmware" / "sysusers.d" / "mta-lite.conf").read_text().splitlines()
    assert any(line.split()[:2] == ["u", "mta-page"] for line in sysusers)
    assert not any(line.split()[:2] == ["m", "mta-page"] for line in sysusers)
    assert "mta-page" in (ROOT / "tools" / "install-test-deps.sh").read_text()


def test_only_a_root_step_reads_the_config_and_hands_over_the_address(page):
    pre = one(page, "Service", "ExecStartPre")
    assert pre.startswith("+/usr/bin/mta-lite-page address ") and pre.split()[-2:] == ["--out", LISTEN_FILE]
    start = one(page, "Service", "ExecStart").split()
    assert start[:2] == ["/usr/bin/mta-lite-page", "serve"] and start[start.index("--listen-file") + 1] == LISTEN_FILE
    assert not [w for w in start if "/etc/mta-lite" in w]
    assert one(page, "Service", "RuntimeDirectory") == "mta-lite-page"
    assert "Environment" not in page["Service"]         # not even the config's path


def test_page_sees_spool_public_only_and_no_config(page):
    assert words(page, "Service", "TemporaryFileSystem") == ["/var/spool/mta-lite:ro"]
    assert paths(page, "BindReadOnlyPaths") == ["/var/spool/mta-lite/public"]
    assert paths(page, "InaccessiblePaths") == ["/etc/mta-lite"]
    assert paths(page, "ReadWritePaths") == []
    assert ("/", "ro") in mounts(page) and ("/etc/mta-lite", "none") in mounts(page)


def test_page_may_bind_a_low_port_and_nothing_else(page):
    assert words(page, "Service", "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]
    assert words(page, "Service", "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    filters = page["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service" and all(f.startswith("~") for f in filters[1:])
    assert {"@privileged", "@resources"} <= {w for f in filters[1:] for w in f[1:].split()}


@pytest.mark.parametrize("key, value", [
    ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"), ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"), ("ProtectControlGroups", "yes"), ("ProtectProc", "invisible"),
    ("RestrictNamespaces", "yes"), ("RestrictSUIDSGID", "yes"), ("MemoryDenyWriteExecute", "yes"),
    ("LockPersonality", "yes"), ("SystemCallArchitectures", "native"), ("Type", "exec"), ("MemoryMax", "64M"),
])
def test_page_is_hardened(page, key, value):
    assert one(page, "Service", key) == value


def test_page_is_independent_of_the_relay(page):
    for key in ("Requires", "Requisite", "BindsTo", "PartOf", "Before", "Wants", "Conflicts"):
        assert not RELAY_UNITS & set(words(page, "Unit", key)), key
    assert PAGE not in words(load("mta-lite.target"), "Unit", "Wants")
    assert words(page, "Install", "WantedBy") == ["multi-user.target"]


def test_a_changed_config_restarts_the_page():
    path = load(PAGE_PATH)
    assert one(path, "Path", "PathChanged") == "/etc/mta-lite/mta-lite.toml"
    assert one(path, "Path", "Unit") == PAGE_RESTART
    assert one(load(PAGE_RESTART), "Service", "ExecStart") == f"/bin/systemctl restart {PAGE}"


def test_the_image_installs_and_enables_the_page():
    assert {PAGE, PAGE_PATH} <= set(layout.ENABLED_UNITS)
    assert "mta-lite-page" in layout.COMMANDS
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mta-lite-page"] == "mta_lite_board.page.cli:main"


@pytest.fixture
def page_unit_dir(tmp_path):
    """The units with their commands pointing at a stub, for systemd-analyze."""
    return stubbed_units(tmp_path, ("/usr/bin/mta-lite-page", "/bin/systemctl"))


@needs_systemd_analyze
def test_systemd_analyze_verify_page_units(page_unit_dir):
    result = _analyze(page_unit_dir, "verify", "--man=no", PAGE, PAGE_PATH, PAGE_RESTART)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "mta-lite-page" in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert complaints == [], "\n".join(complaints)


@needs_systemd_analyze
def test_systemd_analyze_security_exposure_of_the_page(page_unit_dir):
    assert exposure_level(page_unit_dir, PAGE) <= 2.0

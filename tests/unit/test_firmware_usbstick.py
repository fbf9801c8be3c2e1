"""The USB stick provisioning units: firmware/udev/99-mta-lite-usbstick.rules and
firmware/systemd/mta-lite-usbstick@.service (board/usbstick.py on untrusted media, C3).

The rule must start the unit only for a FAT stick labelled MTACONFIG on USB, and give that one
device node to the unit's group; the unit must run the provisioner as mta-config without
network, without capabilities, with one device and the config directory as its only ways out.
The units are read with tests/unit/test_firmware_units.py's reader and mount model; if
systemd-analyze is installed, `verify` and `security --offline` check the unit for real.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from mta_lite_board import usbstick
from mta_lite_board.mtools import MTOOLS_TIMEOUT_S
from tests.unit.test_firmware_units import (_analyze, access, exposure_level, needs_systemd_analyze, one,
                                            parse_unit, paths, words)

FIRMWARE = pathlib.Path(__file__).resolve().parents[2] / "firmware"
RULES = FIRMWARE / "udev" / "99-mta-lite-usbstick.rules"
TEMPLATE = "mta-lite-usbstick@.service"
INSTANCE = "mta-lite-usbstick@sda1.service"
PYTHON = "/usr/lib/mta-lite/venv/bin/python3"   # the image's venv (firmware/image/layout.py)


# ------------------------------------------------------------------ the udev rule

def parse_rules(text: str) -> list[list[tuple[str, str, str]]]:
    """Each rule as (key, operator, value) triples; continuation lines joined."""
    rules, pending = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if not line or line.startswith("#"):
            continue
        pairs = re.findall(r'([A-Za-z_]+(?:\{[^}]*\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)', line)
        assert ", ".join(f'{k}{op}"{v}"' for k, op, v in pairs) == re.sub(r",\s+", ", ", line.strip()), line
        rules.append(pairs)
    return rules


@pytest.fixture(scope="module")
def rule():
    rules = parse_rules(RULES.read_text())
    assert len(rules) == 1, "one rule"
    return rules[0]


@pytest.fixture(scope="module")
def unit():
    return parse_unit((FIRMWARE / "systemd" / TEMPLATE).read_text())


def test_parse_rules_keeps_operators_and_joins_lines():
    rules = parse_rules('# c\nA=="1", \\\n  B{x}+="2"\nC!="3"\n')
    assert rules == [[("A", "==", "1"), ("B{x}", "+=", "2")], [("C", "!=", "3")]]


def test_usbstick_rule_matches_only_a_fat_stick_labelled_mtaconfig_on_usb_when_added(rule):
    matches = {(key, value) for key, op, value in rule if op == "=="}
    assert matches == {("ACTION", "add"), ("SUBSYSTEM", "block"), ("ENV{ID_BUS}", "usb"),
                       ("ENV{ID_FS_TYPE}", "vfat"), ("ENV{ID_FS_LABEL}", usbstick.LABEL)}


def test_usbstick_rule_wants_the_template_for_the_kernel_name(rule):
    assigned = [(key, op, value) for key, op, value in rule if op != "=="]
    assert ("TAG", "+=", "systemd") in assigned
    assert ("ENV{SYSTEMD_WANTS}", "+=", TEMPLATE.replace("@", "@%k")) in assigned
    assert (FIRMWARE / "systemd" / TEMPLATE).is_file()


def test_usbstick_rule_gives_the_node_to_mta_config_not_disk(rule, unit):
    assigned = {key: value for key, op, value in rule if op == "="}
    assert assigned == {"GROUP": "mta-config", "MODE": "0660"}
    assert one(unit, "Service", "Group") == "mta-config"
    assert "disk" not in words(unit, "Service", "SupplementaryGroups")


# ------------------------------------------------------------------ the unit

def test_usbstick_unit_runs_the_provisioner_once_on_the_instance_device(unit):
    assert one(unit, "Service", "Type") == "oneshot"
    assert one(unit, "Service", "ExecStart").split() == [PYTHON, "-m", "mta_lite_board.usbstick", "/dev/%I"]
    assert words(unit, "Service", "Environment") == ["MTA_LITE_CONFIG=/etc/mta-lite/mta-lite.toml"]
    assert "Install" not in unit, "started by udev only, never enabled"


def test_usbstick_unit_interpreter_is_the_venv_the_relay_commands_link_into():
    """The image installs mta-lite into one venv; /usr/bin/mta-lite links into it, and the
    stick's module runs with that venv's Python (the system's python3 has no mta-lite)."""
    from firmware.image import layout
    assert PYTHON == f"{layout.VENV}/bin/python3"
    relay = parse_unit((FIRMWARE / "systemd" / "mta-lite.service").read_text())
    assert one(relay, "Service", "ExecStart").split()[0] == "/usr/bin/mta-lite"
    assert "mta-lite" in layout.COMMANDS


def test_usbstick_unit_runs_as_mta_config_without_capabilities(unit):
    assert one(unit, "Service", "User") == "mta-config"
    assert words(unit, "Service", "SupplementaryGroups") == []
    assert "CapabilityBoundingSet" in unit["Service"] and words(unit, "Service", "CapabilityBoundingSet") == []
    assert "AmbientCapabilities" not in unit["Service"] and "DynamicUser" not in unit["Service"]


def test_usbstick_unit_has_no_network(unit):
    assert one(unit, "Service", "PrivateNetwork") == "yes"
    assert words(unit, "Service", "RestrictAddressFamilies") == ["AF_UNIX"]
    assert one(unit, "Service", "IPAddressDeny") == "any"


def test_usbstick_unit_reaches_its_device_only(unit):
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert words(unit, "Service", "DeviceAllow") == ["/dev/%I", "rw"]
    assert unit["Service"].get("PrivateDevices", ["no"])[-1] == "no", "a private /dev has no stick in it"


def test_usbstick_unit_writes_the_config_directory_only(unit):
    assert paths(unit, "ReadWritePaths") == ["/etc/mta-lite"]
    for path in ("/etc/mta-lite/mta-lite.toml", "/etc/mta-lite/generations/000002.toml",
                 "/etc/mta-lite/secrets/g000002-relay0-isp.pw"):
        assert access(unit, path) == "rw", path
    for path in ("/etc/passwd", "/usr/lib/x", "/var/lib/x", "/boot/config.txt"):
        assert access(unit, path) in ("ro", "none"), path
    assert access(unit, "/var/spool/mta-lite/maildrop/x") == "none"
    assert access(unit, "/home/pi/x") == "none" and access(unit, "/tmp/x") == "private"


HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
             "PrivateMounts": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
             "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
             "ProtectHostname": "yes", "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
             "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
             "SystemCallArchitectures": "native", "UMask": "0027", "SystemCallErrorNumber": "EPERM"}


@pytest.mark.parametrize("key, value", sorted(HARDENING.items()))
def test_usbstick_unit_hardened(unit, key, value):
    assert one(unit, "Service", key) == value


def test_usbstick_unit_syscalls_system_service_minus_privileged(unit):
    filters = unit["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service" and all(f.startswith("~") for f in filters[1:])
    assert {"@privileged", "@resources"} <= {w for f in filters[1:] for w in f[1:].split()}


def test_usbstick_unit_time_limit_covers_three_mtools_commands(unit):
    value = one(unit, "Service", "TimeoutStartSec")
    match = re.fullmatch(r"(\d+)(min|s)", value)
    assert match, value
    seconds = int(match.group(1)) * (60 if match.group(2) == "min" else 1)
    assert 3 * MTOOLS_TIMEOUT_S < seconds <= 600


# ------------------------------------------------------------------ systemd itself

@pytest.fixture
def unit_dir(tmp_path):
    stub = tmp_path / "python3"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    text = (FIRMWARE / "systemd" / TEMPLATE).read_text()
    (units / TEMPLATE).write_text(text.replace(PYTHON, str(stub)))
    return units


@needs_systemd_analyze
def test_usbstick_unit_systemd_analyze_verify(unit_dir):
    result = _analyze(unit_dir, "verify", "--man=no", INSTANCE)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "usbstick" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


@needs_systemd_analyze
def test_usbstick_unit_systemd_analyze_security_exposure(unit_dir):
    assert exposure_level(unit_dir, INSTANCE) <= 1.0

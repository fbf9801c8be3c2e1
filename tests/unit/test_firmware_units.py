"""The systemd units in firmware/systemd express the air gap (GUARANTEES S7, STYLE "Processes").

smtpd (network input) runs as mta-smtpd with CAP_NET_BIND_SERVICE only and no view of the
secrets; qmgr (credentials, delivery) runs as mta-lite with no capability and no listening
socket. The board daemon (the serial console, C3) runs as mta-config with outbound network only, the UART
as its only device and the config directory as its only writable path. The units are parsed with a small reader that keeps repeated keys (systemd allows them,
and an empty assignment resets a list), and a small model of the mount namespace that
ProtectSystem=strict, ProtectHome=, PrivateTmp= and the *Paths= settings give each service.
If systemd-analyze is installed, `verify` and `security --offline` check them for real.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

UNITS = pathlib.Path(__file__).resolve().parents[2] / "firmware" / "systemd"
SPOOL = "/var/spool/mta-lite"
SECRETS = "/etc/mta-lite/secrets"
SPOOL_DIRS = ("incoming", "active", "deferred", "hold", "corrupt", "state", "public", "maildrop",
              "postscreen")
SMTPD, QMGR, TARGET = "mta-lite-smtpd.service", "mta-lite-qmgr.service", "mta-lite.target"
SERVICES = (SMTPD, QMGR)
BOARD = "mta-lite-board.service"
CONFIG_DIR = "/etc/mta-lite"


# ---------------------------------------------------------------------------- reading units

def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values in order; an empty value resets the list, as systemd does."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    lines = iter(text.splitlines())
    for line in lines:
        line = line.strip()
        while line.endswith("\\"):                       # continuation lines
            line = line[:-1] + " " + next(lines, "").strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        key, value = key.strip(), value.strip()
        values = current.setdefault(key, [])
        if value:
            values.append(value)
        else:
            values.clear()
    return sections


def load(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((UNITS / name).read_text())


def one(unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: expected one value, got {values}"
    return values[0]


def words(unit, section: str, key: str) -> list[str]:
    return [w for value in unit[section].get(key, []) for w in value.split()]


def paths(unit, key: str) -> list[str]:
    """A *Paths= list without the "-" (ignore if missing) and "+" prefixes."""
    return [w.lstrip("-+") for w in words(unit, "Service", key)]


@pytest.fixture(scope="module")
def smtpd():
    return load(SMTPD)


@pytest.fixture(scope="module")
def qmgr():
    return load(QMGR)


@pytest.fixture(scope="module", params=SERVICES)
def service(request):
    return load(request.param)


# ------------------------------------------------------------ the mount namespace, modelled

def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def mounts(unit) -> list[tuple[str, str]]:
    """(path, mode) for every mount the sandbox settings create; mode is rw, ro, none or private."""
    svc = unit["Service"]
    entries: list[tuple[str, str]] = []
    protect = one(unit, "Service", "ProtectSystem") if "ProtectSystem" in svc else "no"
    if protect == "strict":
        entries.append(("/", "ro"))
    if svc.get("ProtectHome", ["no"])[-1] in ("yes", "true"):
        entries += [("/home", "none"), ("/root", "none"), ("/run/user", "none")]
    if svc.get("PrivateTmp", ["no"])[-1] in ("yes", "true"):
        entries += [("/tmp", "private"), ("/var/tmp", "private")]
    entries += [(p, "rw") for p in paths(unit, "ReadWritePaths")]
    entries += [(p, "ro") for p in paths(unit, "ReadOnlyPaths")]
    entries += [(p, "none") for p in paths(unit, "InaccessiblePaths")]
    return entries


_STRICTNESS = {"none": 0, "ro": 1, "private": 2, "rw": 3}


def mount_of(unit, path: str) -> tuple[str, str]:
    """The mount that governs `path`: the deepest entry above it (for equal paths the stricter
    mode), except that nothing can be nested inside an InaccessiblePaths= entry."""
    entries = mounts(unit)
    hidden = [p for p, mode in entries if mode == "none" and _under(path, p)]
    if hidden:
        return min(hidden, key=len), "none"
    above = [(p, mode) for p, mode in entries if _under(path, p)]
    if not above:
        return "/", "rw"
    return max(above, key=lambda e: (len(e[0].rstrip("/")), -_STRICTNESS[e[1]]))


def access(unit, path: str) -> str:
    return mount_of(unit, path)[1]


# ------------------------------------------------------------------------------ the layout

def test_the_units_are_the_two_halves_a_target_the_board_and_the_serve_unit():
    # mta-lite.service (`serve` as root, dropping its children) is what the SD-card image
    # runs; the two halves and the target stay for systems that want systemd to split them.
    names = {p.name for p in UNITS.iterdir() if p.suffix in (".service", ".target", ".socket")}
    assert {SMTPD, QMGR, TARGET, BOARD, "mta-lite.service"} <= names


def test_each_half_runs_its_own_command(smtpd, qmgr):
    assert one(smtpd, "Service", "ExecStart").split() == ["/usr/bin/mta-lite", "smtpd"]
    assert one(qmgr, "Service", "ExecStart").split() == ["/usr/bin/mta-lite", "qmgr"]


def test_only_qmgr_checks_the_config_because_only_it_can_read_the_secrets(smtpd, qmgr):
    assert "ExecStartPre" not in smtpd["Service"]
    assert one(qmgr, "Service", "ExecStartPre").split() == ["/usr/bin/mta-lite", "config", "check"]


def test_config_path_in_the_environment_and_no_secret(service):
    env = words(service, "Service", "Environment")
    assert env == ["MTA_LITE_CONFIG=/etc/mta-lite/mta-lite.toml"]
    assert "EnvironmentFile" not in service["Service"]
    for key in ("LoadCredential", "SetCredential", "LoadCredentialEncrypted", "SetCredentialEncrypted"):
        assert key not in service["Service"]


def test_reload_is_sighup(service):
    assert one(service, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


# ------------------------------------------------------------------------------ users

def test_smtpd_runs_as_its_own_user_without_extra_groups(smtpd):
    assert one(smtpd, "Service", "User") == "mta-smtpd"
    assert one(smtpd, "Service", "Group") == "mta-smtpd"
    assert words(smtpd, "Service", "SupplementaryGroups") == []
    assert "DynamicUser" not in smtpd["Service"]


def test_qmgr_runs_as_mta_lite_and_can_read_incoming(qmgr):
    assert one(qmgr, "Service", "User") == "mta-lite"
    assert one(qmgr, "Service", "Group") == "mta-lite"
    assert words(qmgr, "Service", "SupplementaryGroups") == ["mta-smtpd"]


# ------------------------------------------------------------------------------ privileges

def test_smtpd_has_cap_net_bind_service_only(smtpd):
    assert words(smtpd, "Service", "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    assert words(smtpd, "Service", "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]


def test_qmgr_has_no_capabilities(qmgr):
    # Present and empty: a missing CapabilityBoundingSet= would mean "all capabilities".
    assert "CapabilityBoundingSet" in qmgr["Service"]
    assert words(qmgr, "Service", "CapabilityBoundingSet") == []
    assert words(qmgr, "Service", "AmbientCapabilities") == []


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0027",
    "Type": "exec",
}


@pytest.mark.parametrize("key, value", sorted(HARDENING.items()))
def test_both_halves_are_hardened(service, key, value):
    assert one(service, "Service", key) == value


def test_syscall_filter_is_system_service_minus_privileged(service):
    filters = service["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service", "the allow-list comes first"
    assert all(f.startswith("~") for f in filters[1:]), "later lines only take away"
    denied = {w for f in filters[1:] for w in f[1:].split()}
    assert {"@privileged", "@resources"} <= denied
    assert one(service, "Service", "SystemCallErrorNumber") == "EPERM"


def test_address_families(service):
    assert sorted(words(service, "Service", "RestrictAddressFamilies")) == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_qmgr_cannot_listen_on_a_stream_socket(qmgr):
    denied = {w for f in qmgr["Service"]["SystemCallFilter"] if f.startswith("~") for w in f[1:].split()}
    assert {"listen", "accept", "accept4"} <= denied


def test_smtpd_may_listen(smtpd):
    denied = {w for f in smtpd["Service"]["SystemCallFilter"] if f.startswith("~") for w in f[1:].split()}
    assert not {"listen", "accept", "accept4", "bind"} & denied


# ------------------------------------------------------------------------------ file system

def test_smtpd_cannot_reach_the_secrets(smtpd, qmgr):
    assert access(smtpd, SECRETS) == "none"
    assert access(smtpd, SECRETS + "/gmail.pw") == "none"
    # Fail closed: no "-" prefix, so a missing directory stops the unit instead of being ignored.
    assert SECRETS in words(smtpd, "Service", "InaccessiblePaths")
    for key in ("BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem"):
        assert key not in smtpd["Service"], f"{key} could re-expose paths"
    assert access(qmgr, SECRETS + "/gmail.pw") == "ro"


def test_smtpd_writes_only_incoming_and_postscreen(smtpd):
    writable = {d for d in SPOOL_DIRS if access(smtpd, f"{SPOOL}/{d}/X") == "rw"}
    assert writable == {"incoming", "postscreen"}
    # The spool root is on the writable mount too (see the next test); its directory mode
    # (not writable by mta-smtpd) is what keeps smtpd from creating files there.
    assert paths(smtpd, "ReadWritePaths") == [SPOOL]


def test_queue_directories_are_one_mount_so_rename_does_not_fail_with_exdev(smtpd, qmgr):
    # Every *Paths= entry is its own bind mount; link()/rename() between two mounts fails with
    # EXDEV even on the same file system. smtpd links incoming/.tmp-ID -> incoming/ID.
    assert mount_of(smtpd, f"{SPOOL}/incoming/X") == (SPOOL, "rw")
    # The queue manager rename()s between all queue directories.
    moved = ("incoming", "active", "deferred", "hold", "corrupt", "maildrop", "state")
    assert {mount_of(qmgr, f"{SPOOL}/{d}/X") for d in moved} == {(SPOOL, "rw")}


def test_smtpd_can_reach_the_doorbell_socket(smtpd):
    # A read-only mount does not stop sendto() on an existing AF_UNIX socket (systemd.exec(5),
    # "Sandboxing"); only "none" would.
    assert access(smtpd, f"{SPOOL}/public/qmgr") == "ro"


def test_smtpd_sees_no_other_queue_directory(smtpd):
    for d in ("active", "deferred", "hold", "corrupt", "state", "maildrop"):
        assert access(smtpd, f"{SPOOL}/{d}/X") == "none", d


def test_qmgr_paths(qmgr):
    assert paths(qmgr, "ReadWritePaths") == [SPOOL, "/run/mta-lite"]
    assert paths(qmgr, "ReadOnlyPaths") == ["/etc/mta-lite"]
    assert access(qmgr, "/etc/mta-lite/mta-lite.toml") == "ro"


@pytest.mark.parametrize("path", ["/etc/passwd", "/usr/lib/x", "/var/lib/x", "/var/log/x", "/var/spool/other",
                                  "/home/pi/x", "/root/x", "/boot/config.txt"])
def test_nothing_else_is_writable(service, path):
    assert access(service, path) in ("ro", "none")


def test_private_tmp_and_no_home(service):
    assert access(service, "/tmp/x") == "private"
    assert access(service, "/home/pi/.ssh/id_ed25519") == "none"


# ------------------------------------------------------------------------------ supervision

def test_restart_always_and_never_give_up(service):
    assert one(service, "Service", "Restart") == "always"
    assert re.fullmatch(r"\d+(ms|s)?", one(service, "Service", "RestartSec"))
    assert one(service, "Unit", "StartLimitIntervalSec") == "0"


def test_the_halves_are_independent(service):
    unit = service["Unit"]
    for key in ("Requires", "Requisite", "BindsTo", "PartOf", "After", "Wants", "Conflicts"):
        named = words(service, "Unit", key)
        assert not {SMTPD, QMGR} & set(named), f"{key}= ties one half to the other"
    for key in ("Requires", "Requisite", "BindsTo"):
        assert key not in unit, f"{key}= would let another unit stop this one"
    assert words(service, "Unit", "PartOf") == [TARGET]
    assert "network-online.target" in words(service, "Unit", "After")
    assert "network-online.target" in words(service, "Unit", "Wants")
    assert words(service, "Install", "WantedBy") == [TARGET]


def test_target_wants_both_halves():
    target = load(TARGET)
    assert sorted(words(target, "Unit", "Wants")) == sorted(SERVICES)
    for key in ("Requires", "BindsTo", "Requisite"):
        assert key not in target["Unit"]
    assert words(target, "Install", "WantedBy") == ["multi-user.target"]


def test_parser_handles_repeats_and_resets():
    unit = parse_unit("[Service]\nA=1\nA=2 3\nB=x\nB=\n# c\n[Install]\nWantedBy=m\n")
    assert words(unit, "Service", "A") == ["1", "2", "3"]
    assert "B" in unit["Service"] and words(unit, "Service", "B") == []


# ------------------------------------------------------------------------------ systemd itself

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


def stubbed_units(tmp_path, programs) -> pathlib.Path:
    """A copy of the units with each of `programs` replaced by a stub that exits 0, so
    systemd-analyze can verify them on a machine that has none of them (longest path first:
    /usr/bin/mta-lite-board is not read as /usr/bin/mta-lite plus "-board")."""
    stub = tmp_path / "stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for path in UNITS.iterdir():
        text = path.read_text()
        for program in sorted(programs, key=len, reverse=True):
            text = text.replace(program, str(stub))
        (units / path.name).write_text(text)
    return units


@pytest.fixture
def unit_dir(tmp_path):
    """A copy of the units whose commands point at a stub, so verify can check them here."""
    return stubbed_units(tmp_path, ("/usr/bin/mta-lite", "/usr/bin/mta-lite-board"))


def _analyze(unit_dir, *args):
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:", SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    return subprocess.run([SYSTEMD_ANALYZE, *args], cwd=unit_dir, env=env, capture_output=True,
                          text=True, timeout=60)


@needs_systemd_analyze
def test_systemd_analyze_verify(unit_dir):
    result = _analyze(unit_dir, "verify", "--man=no", TARGET, *SERVICES, BOARD)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "mta-lite" in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert complaints == [], "\n".join(complaints)


def exposure_level(unit_dir, name: str) -> float:
    """`systemd-analyze security --offline` of one unit (skips on systemd < 250)."""
    if "--offline" not in _analyze(unit_dir, "security", "--help").stdout:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    result = _analyze(unit_dir, "security", "--offline=yes", "--threshold=20", "--no-pager", name)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_systemd_analyze
@pytest.mark.parametrize("name", SERVICES + (BOARD,))
def test_systemd_analyze_security_exposure(unit_dir, name):
    assert exposure_level(unit_dir, name) <= 2.0


# ------------------------------------------------------------------------------ the board daemon

@pytest.fixture(scope="module")
def board():
    return load(BOARD)


def test_board_runs_the_serial_console_on_the_uart(board):
    assert one(board, "Service", "ExecStart").split() == ["/usr/bin/mta-lite-board", "--serial", "/dev/serial0",
                                                           "--spool", SPOOL]
    assert words(board, "Service", "Environment") == [
        "MTA_LITE_CONFIG=/etc/mta-lite/mta-lite.toml", "GPIOZERO_PIN_FACTORY=lgpio", "LG_WD=/run/mta-lite-board"]
    assert one(board, "Service", "WorkingDirectory") == "/run/mta-lite-board"   # lgpio writes there
    # The console is how a broken config gets replaced: nothing may keep it from starting.
    assert "ExecStartPre" not in board["Service"] and "ExecCondition" not in board["Service"]
    for key in ("EnvironmentFile", "LoadCredential", "SetCredential"):
        assert key not in board["Service"]


def test_board_runs_as_mta_config_with_the_uart_and_gpio_groups(board):
    assert one(board, "Service", "User") == "mta-config"
    assert words(board, "Service", "SupplementaryGroups") == ["dialout", "gpio", "systemd-journal"]
    assert "DynamicUser" not in board["Service"]


def test_board_has_no_capability_and_never_serves_on_the_network(board):
    """Outbound only, for TEST RELAY: no capability, and no listen() or accept() at all."""
    assert "CapabilityBoundingSet" in board["Service"]
    assert words(board, "Service", "CapabilityBoundingSet") == []
    assert words(board, "Service", "AmbientCapabilities") == []
    assert sorted(words(board, "Service", "RestrictAddressFamilies")) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert {"~listen", "accept", "accept4"} <= set(words(board, "Service", "SystemCallFilter"))


def test_board_waits_for_the_uart_link_udev_makes(board):
    assert words(board, "Unit", "Wants") == ["dev-serial0.device"]
    assert words(board, "Unit", "After") == ["dev-serial0.device"]
    rules = (FIRMWARE / "udev" / "90-mta-lite-board.rules").read_text()
    assert 'SYMLINK+="serial0"' in rules and 'GROUP="gpio"' in rules


def test_board_sees_the_uart_and_gpio_chips_and_no_other_device(board):
    assert one(board, "Service", "DevicePolicy") == "closed"
    assert board["Service"]["DeviceAllow"] == ["/dev/serial0 rw", "char-gpiochip rw"]
    # PrivateDevices=yes would hide /dev/ttyS0 behind a private /dev.
    assert board["Service"].get("PrivateDevices", ["no"])[-1] in ("no", "false")


@pytest.mark.parametrize("key, value", sorted((k, v) for k, v in HARDENING.items() if k != "PrivateDevices"))
def test_board_is_hardened(board, key, value):
    assert one(board, "Service", key) == value


def test_board_syscall_filter_is_system_service_minus_privileged(board):
    filters = board["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service" and all(f.startswith("~") for f in filters[1:])
    assert {"@privileged", "@resources"} <= {w for f in filters[1:] for w in f[1:].split()}


def test_board_writes_only_the_config_directory(board):
    assert paths(board, "ReadWritePaths") == [CONFIG_DIR]
    for path in ("/etc/mta-lite/mta-lite.toml", "/etc/mta-lite/generations/000001.toml", "/etc/mta-lite/secrets/x.pw"):
        assert access(board, path) == "rw", path
    assert access(board, f"{SPOOL}/public/status.json") == "ro"


@pytest.mark.parametrize("path", ["/etc/passwd", "/usr/lib/x", "/var/lib/x", "/var/log/x", f"{SPOOL}/incoming/x",
                                  "/home/pi/x", "/root/x", "/boot/config.txt", "/tmp/x"])
def test_board_writes_nothing_else(board, path):
    assert access(board, path) in ("ro", "none", "private")


def test_board_is_independent_of_the_relay(board):
    # If the console dies mail still flows, and restarting the relay leaves the console alone.
    for key in ("Requires", "Requisite", "BindsTo", "PartOf", "After", "Before", "Wants", "Conflicts"):
        assert not {SMTPD, QMGR, TARGET} & set(words(board, "Unit", key)), key
    assert words(board, "Install", "WantedBy") == ["multi-user.target"]
    assert BOARD not in words(load(TARGET), "Unit", "Wants")
    assert one(board, "Service", "Restart") == "always"
    assert one(board, "Unit", "StartLimitIntervalSec") == "0"


FIRMWARE = UNITS.parent


def test_mta_config_user_owns_the_config_directory_and_is_in_group_mta_lite():
    sysusers = [line.split() for line in (FIRMWARE / "sysusers.d" / "mta-lite.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert any(fields[:2] == ["u", "mta-config"] for fields in sysusers)
    assert ["m", "mta-config", "mta-lite"] in sysusers
    tmpfiles = [line.split() for line in (FIRMWARE / "tmpfiles.d" / "mta-lite.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    entry = next(fields for fields in tmpfiles if fields[1] == CONFIG_DIR)
    assert entry[0] == "d" and entry[3:5] == ["mta-config", "mta-lite"]
    mode = int(entry[2], 8)
    assert mode & 0o2000, "setgid: files mta-config writes get group mta-lite, which the relay reads"
    assert mode & 0o070 == 0o050 and mode & 0o007 in (0, 0o001), "group reads, others at most traverse"


def test_status_snapshot_lives_in_ram_and_both_relay_units_may_write_it(qmgr):
    """tmpfiles.d links the spool's status.json into /run, where the queue manager (its own unit
    or the master's child) writes it: the 10 s heartbeat never reaches the SD card."""
    tmpfiles = [line.split() for line in (FIRMWARE / "tmpfiles.d" / "mta-lite.conf").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    [link] = [fields for fields in tmpfiles if fields[1] == f"{SPOOL}/public/status.json"]
    assert link[0] == "L+" and link[-1] == "/run/mta-lite/status.json"
    [run_dir] = [fields for fields in tmpfiles if fields[1] == "/run/mta-lite"]
    assert run_dir[0] == "d" and run_dir[3] == "mta-lite" and int(run_dir[2], 8) & 0o022 == 0
    for unit in (qmgr, load("mta-lite.service")):
        assert access(unit, "/run/mta-lite/status.json") == "rw"

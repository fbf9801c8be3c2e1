"""firmware: the config path unit activates a changed config only after it validates (C1), under
systemd as `mta-lite serve` does by itself."""

from __future__ import annotations

from tests.unit.test_firmware_units import UNITS, _analyze, needs_systemd_analyze, parse_unit
from tests.unit.test_firmware_units import unit_dir  # noqa: F401  (fixture)

PATH_UNIT, ACTIVATE = "mta-lite-config.path", "mta-lite-config.service"


def unit(name: str) -> dict:
    return parse_unit((UNITS / name).read_text())


def test_path_unit_watches_the_config_file_and_starts_the_activation():
    path = unit(PATH_UNIT)
    assert path["Path"]["PathChanged"] == ["/etc/mta-lite/mta-lite.toml"]
    assert path["Path"]["Unit"] == [ACTIVATE]
    assert path["Install"]["WantedBy"] == ["mta-lite.target"]


def test_activation_validates_as_the_queue_managers_user_before_touching_either_half():
    service = unit(ACTIVATE)["Service"]
    [condition] = service["ExecCondition"]
    assert condition.split()[-2:] == ["config", "check"] and "--reuid=mta-lite" in condition
    assert service["ExecStart"] == ["/bin/systemctl try-reload-or-restart mta-lite-qmgr.service",
                                    "/bin/systemctl try-restart mta-lite-smtpd.service"]
    assert service["Type"] == ["oneshot"]


@needs_systemd_analyze
def test_config_units_verify(unit_dir):
    result = _analyze(unit_dir, "verify", "--man=no", PATH_UNIT, ACTIVATE)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "mta-lite-config" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


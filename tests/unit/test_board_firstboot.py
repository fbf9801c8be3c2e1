"""mta_lite_board/firstboot.py: a mta-lite.toml on the card's boot partition, installed at boot.

The boot partition is a real FAT image (dosfstools, mtools: tests/stickpeer.py) labelled
MTA-BOOT with firmware-like files beside the config; the box's config directory is a temporary
one. Installed: the file leaves the card and mta-lite-result.txt says OK; refused: the file
stays and the result names file, key or line, and problem; nothing on the card: untouched.
"""

from __future__ import annotations

import grp
import os
import pathlib
import pwd
import shutil
import tempfile

import pytest

from mta_lite_board import firstboot
from mta_lite_board.usbstick import Outcome
from tests.support.relay import PASSWORD
from tests.support.stick import box_state, config_bytes, make_stick, stick_file

pytestmark = pytest.mark.skipif(not shutil.which("mcopy") or not shutil.which("mkfs.vfat"),
                                reason="mtools and dosfstools needed: bash tools/install-test-deps.sh")
FIRMWARE_FILES = {"config.txt": b"arm_64bit=1\n", "cmdline.txt": b"console=tty1 root=LABEL=mta-root ro\n",
                  "bootcode.bin": b"\0" * 512}


@pytest.fixture
def box(tmp_path) -> str:
    directory = tmp_path / "etc"
    directory.mkdir()
    return str(directory / "mta-lite.toml")


def card(tmp_path, files: dict[str, bytes]) -> str:
    return make_stick(tmp_path / "boot.img", {**FIRMWARE_FILES, **files}, label="MTA-BOOT", size="40M",
                      mkfs_args=("-F", "32"))


def result(image: str) -> list[str]:
    data = stick_file(image, firstboot.RESULT_NAME)
    assert data is not None and PASSWORD.encode() not in data
    return data.decode().split("\r\n")[:-1]


def test_firstboot_valid_config_installed_removed_from_card_result_ok(tmp_path, box):
    image = card(tmp_path, {"mta-lite.toml": config_bytes()})
    outcome = firstboot.from_boot_partition(image, box)
    assert outcome.outcome is Outcome.APPLIED and outcome.exit_code == 0
    assert stick_file(image, "mta-lite.toml") is None
    assert stick_file(image, "config.txt") == FIRMWARE_FILES["config.txt"]
    lines = result(image)
    assert lines[0].startswith("OK generation 1 installed (config ") and lines[1].endswith(" UTC")
    installed = pathlib.Path(box).read_text()
    assert "relay.lan.test" in installed and PASSWORD not in installed
    secrets = list((pathlib.Path(box).parent / "secrets").iterdir())
    assert [p.read_text().strip() for p in secrets] == [PASSWORD]


def test_firstboot_leaves_no_password_anywhere_on_the_card(tmp_path, box):
    """Deleting a FAT file frees its clusters but keeps its bytes: they are zeroed first."""
    image = card(tmp_path, {"mta-lite.toml": config_bytes()})
    firstboot.from_boot_partition(image, box)
    assert stick_file(image, "mta-lite.toml") is None
    assert PASSWORD.encode() not in pathlib.Path(image).read_bytes()


def test_firstboot_broken_config_stays_and_result_names_file_key_and_problem(tmp_path, box):
    image = card(tmp_path, {"mta-lite.toml": config_bytes(admin_address="not an address")})
    outcome = firstboot.from_boot_partition(image, box)
    assert outcome.outcome is Outcome.REJECTED and outcome.exit_code == 78
    assert stick_file(image, "mta-lite.toml") is not None
    line = result(image)[0]
    assert line.startswith("ERROR boot:mta-lite.toml: admin_address: ")
    assert not os.path.exists(box)


def test_firstboot_toml_syntax_error_names_the_line(tmp_path, box):
    image = card(tmp_path, {"mta-lite.toml": b'hostname = "relay.lan"\nadmin_address = \n'})
    assert firstboot.from_boot_partition(image, box).exit_code == 78
    line = result(image)[0]
    assert line.startswith("ERROR boot:mta-lite.toml: not valid TOML") and "line 2" in line


def test_firstboot_nothing_on_the_card_leaves_it_untouched(tmp_path, box):
    image = card(tmp_path, {})
    before = pathlib.Path(image).read_bytes()
    outcome = firstboot.from_boot_partition(image, box)
    assert outcome.outcome is Outcome.NOTHING and outcome.exit_code == 0
    assert pathlib.Path(image).read_bytes() == before


def test_firstboot_same_config_again_is_no_change_and_still_removed(tmp_path, box):
    firstboot.from_boot_partition(card(tmp_path, {"mta-lite.toml": config_bytes()}), box)
    state = box_state(box)
    image = card(tmp_path, {"mta-lite.toml": config_bytes()})
    outcome = firstboot.from_boot_partition(image, box)
    assert outcome.outcome is Outcome.UNCHANGED and box_state(box) == state
    assert stick_file(image, "mta-lite.toml") is None and "no change" in result(image)[0]


def test_firstboot_rollback_file_installs_that_generation(tmp_path, box):
    firstboot.from_boot_partition(card(tmp_path, {"mta-lite.toml": config_bytes()}), box)
    firstboot.from_boot_partition(card(tmp_path, {"mta-lite.toml": config_bytes(hostname="two.lan.test")}), box)
    image = card(tmp_path, {"ROLLBACK.TXT": b"1\r\n"})
    outcome = firstboot.from_boot_partition(image, box)
    assert outcome.outcome is Outcome.APPLIED and "rolled back to generation 1" in result(image)[0]
    assert "relay.lan.test" in pathlib.Path(box).read_text()
    assert stick_file(image, "ROLLBACK.TXT") is None


def test_firstboot_unreadable_partition_changes_nothing(tmp_path, box):
    missing = str(tmp_path / "no-such-device")
    outcome = firstboot.from_boot_partition(missing, box)
    assert outcome.outcome is Outcome.READ_ERROR and outcome.exit_code == 75 and not os.path.exists(box)


def test_firstboot_sets_the_hostname_from_the_installed_config(tmp_path, box):
    firstboot.from_boot_partition(card(tmp_path, {"mta-lite.toml": config_bytes()}), box)
    names = []
    assert firstboot.set_hostname(box, names.append) == "relay.lan.test" and names == ["relay.lan.test"]
    assert firstboot.set_hostname(str(tmp_path / "none.toml"), names.append) is None and len(names) == 1


def _mta_config_exists() -> bool:
    try:
        pwd.getpwnam(firstboot.INSTALL_USER)
        grp.getgrnam("mta-lite")
    except KeyError:
        return False
    return True


@pytest.mark.skipif(os.geteuid() != 0 or not _mta_config_exists(),
                    reason="root and the mta-config user (tools/install-test-deps.sh) needed")
def test_firstboot_as_root_installs_as_mta_config(tmp_path):
    """Files the console and the stick will replace later belong to mta-config, not root."""
    # pytest's own temporary directories are root's 0700: mta-config could not reach them.
    top = pathlib.Path(tempfile.mkdtemp(prefix="mta-firstboot-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        etc = top / "etc"
        etc.mkdir()
        user = pwd.getpwnam(firstboot.INSTALL_USER)
        os.chown(etc, user.pw_uid, grp.getgrnam("mta-lite").gr_gid)
        image = card(tmp_path, {"mta-lite.toml": config_bytes()})
        outcome = firstboot.from_boot_partition(image, str(etc / "mta-lite.toml"),
                                                installer=firstboot.install_as(firstboot.INSTALL_USER))
        assert outcome.outcome is Outcome.APPLIED, outcome.message
        for path in (etc / "mta-lite.toml", etc / "generations", etc / "secrets"):
            assert path.stat().st_uid == user.pw_uid, path
        assert stick_file(image, "mta-lite.toml") is None
    finally:
        shutil.rmtree(top)

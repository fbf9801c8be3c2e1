"""No password left on the stick, and a stick imported once (board/stickimport.py): S3 on the
stick after import, C1/C2 for a stick plugged in again.

Peers: dosfstools (`mkfs.vfat`, FAT12, FAT16 and FAT32 images) and mtools, as in
test_usbstick.py; the whole image file is what a finder of the stick gets, and it is searched
byte for byte for the password and its base64 forms. The box is a config directory in
tmp_path; configgen.apply_config() stands in for a later change over the console.
A read-only stick is an immutable image (chattr +i); a stick whose config cannot be rewritten
but whose RESULT.TXT can is a runner that fails that one write.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from mta_lite_board import usbstick
from mta_lite_board.usbstick import Outcome, provision_from_stick
from tests.support.relay import PASSWORD, secret_needles
from tests.support.stick import Recorder, box_state, config_bytes, installed_config, make_stick, put_file, stick_file

pytestmark = pytest.mark.integration
NEEDLES = secret_needles({PASSWORD})
CONFIG = "mta-lite.toml"
# A file as a person writes it: a comment, a byte-order mark from Notepad, CRLF, the password
# not at the start, and more after it than one cluster holds.
HAND_WRITTEN = (usbstick.UTF8_BOM + b"# office relay, from the ISP's letter\r\n"
                + config_bytes(hostname="new.lan.test").replace(b"\n", b"\r\n")
                + b"# " + b"-" * 5000 + b"\r\n")


@pytest.fixture
def box(tmp_path):
    return installed_config(tmp_path)


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="mta_lite_board.usbstick")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "mta_lite_board.usbstick"]


def image_needles(image) -> list[bytes]:
    blob = Path(image).read_bytes()
    return [needle for needle in NEEDLES if needle in blob]


def result_lines(image) -> list[str]:
    data = stick_file(image, "RESULT.TXT")
    assert data is not None and not [n for n in NEEDLES if n in data]
    return data.decode().split("\r\n")[:-1]


def fat_stick(path, files, fat: int) -> str:
    size = {12: "4M", 16: "16M", 32: "40M"}[fat]
    return make_stick(path, {"other.txt": b"before\n", **files, "after.txt": b"after\n"}, size=size,
                      mkfs_args=("-F", str(fat)))


# ------------------------------------------------------------------ scrub

@pytest.mark.parametrize("fat", [12, 16, 32])
def test_scrub_after_install_no_password_anywhere_in_the_image(tmp_path, box, logs, fat):
    image = fat_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN}, fat)
    assert image_needles(image), "the control: the password is on the stick before"
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.APPLIED and result.exit_code == 0
    assert load_config(box).relays["isp"].password.reveal() == PASSWORD
    assert image_needles(image) == [], "the password (or its base64) is still somewhere on the stick"
    assert stick_file(image, CONFIG) == HAND_WRITTEN.replace(f'"{PASSWORD}"'.encode(), b'"********"')
    line, note, _stamp = result_lines(image)
    assert line == f"OK generation 2 installed (config {result.digest})"
    assert note.startswith("the passwords in mta-lite.toml were replaced by ******** (the box keeps them)")
    assert stick_file(image, "other.txt") == b"before\n" and stick_file(image, "after.txt") == b"after\n"
    assert not [n for n in NEEDLES for line in logs() if n.decode() in line]


def test_mcopy_overwrite_on_fat32_leaves_the_old_password_in_free_clusters(tmp_path):
    """Why the box wipes: replacing the file the plain way (as mtools or a PC does) leaves
    the old clusters, password and all, on a FAT32 stick."""
    image = fat_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN}, 32)
    put_file(image, CONFIG, HAND_WRITTEN.replace(f'"{PASSWORD}"'.encode(), b'"********"'))
    assert PASSWORD.encode() not in stick_file(image, CONFIG)
    assert image_needles(image), "mtools reused the clusters: the wipe would not be needed"


def test_scrub_disabled_keeps_the_file_and_says_so(tmp_path, box):
    keep = HAND_WRITTEN + b"\r\n[provision]\r\nscrub_secrets = false\r\n"
    image = make_stick(tmp_path / "stick.img", {CONFIG: keep})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.APPLIED
    assert stick_file(image, CONFIG) == keep
    assert "still holds the password in clear ([provision] scrub_secrets = false)" in result_lines(image)[1]
    installed = Path(configgen.generations(box)[0].path).read_bytes()
    assert b"provision" not in installed and b"scrub_secrets" not in installed, "[provision] is the stick's only"


def test_scrub_config_not_writable_result_says_password_still_on_stick(tmp_path, box):
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN})

    def refuse_config_write(argv):
        if argv[0] == "mcopy" and "-o" in argv and argv[-1] == "::/" + CONFIG:
            return ["sh", "-c", "echo 'mcopy: write protected' >&2; exit 1"]
    result = provision_from_stick(image, box, Recorder(rewrite=refuse_config_write))
    assert result.outcome is Outcome.APPLIED and result.result_written
    assert stick_file(image, CONFIG) == HAND_WRITTEN
    note = result_lines(image)[1]
    assert note.startswith("WARNING: mta-lite.toml could not be rewritten (mcopy exited with status 1")
    assert "the password is still on the stick in clear" in note


def test_scrub_read_only_stick_file_kept_log_says_password_still_there(tmp_path, box, logs):
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN})
    if subprocess.run(["chattr", "+i", image], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        result = provision_from_stick(image, box)
    finally:
        subprocess.run(["chattr", "-i", image], check=True)
    assert result.outcome is Outcome.APPLIED and not result.result_written
    assert stick_file(image, CONFIG) == HAND_WRITTEN and stick_file(image, "RESULT.TXT") is None
    assert any("the password is still on the stick in clear" in line for line in logs())


def test_scrub_wipe_impossible_says_format_the_stick(tmp_path, box):
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN})

    def no_chain(argv):
        if argv[0] == "mshowfat":
            return ["false"]
    result = provision_from_stick(image, box, Recorder(rewrite=no_chain))
    assert result.outcome is Outcome.APPLIED
    assert PASSWORD.encode() not in stick_file(image, CONFIG)
    note = result_lines(image)[1]
    assert note.startswith("WARNING: the passwords in mta-lite.toml were replaced by ********, but what the file "
                           "held before could not be overwritten") and "format the stick" in note


def test_scrub_backup_copy_on_the_stick_named_in_a_warning(tmp_path, box):
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN, "mta-lite.toml.bak": HAND_WRITTEN})
    provision_from_stick(image, box)
    assert "WARNING: mta-lite.toml.bak on the stick may hold a password too: delete it" in result_lines(image)


# ------------------------------------------------------------------ import once

def test_import_scrubbed_file_plugged_in_again_already_installed(tmp_path, box):
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN})
    first = provision_from_stick(image, box)
    before = box_state(box)
    runner = Recorder()
    again = provision_from_stick(image, box, runner)
    assert again.outcome is Outcome.UNCHANGED and again.exit_code == 0 and again.generation == first.generation
    assert result_lines(image)[0] == (f"OK mta-lite.toml already installed (generation {first.generation}, "
                                      f"config {first.digest}): nothing changed")
    assert box_state(box) == before, "not installed again, and no ******** password on the box"
    assert [argv[-1] for argv in runner.writes()] == ["::/RESULT.TXT"], "nothing left to scrub"


def test_import_stick_left_in_after_a_console_change_does_not_undo_it(tmp_path, box):
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN})
    assert provision_from_stick(image, box).generation == 2
    console = configgen.apply_config(box, config_bytes(hostname="console.lan.test"), "console upload")
    before = box_state(box)
    again = provision_from_stick(image, box)                # the stick, still in, at the next boot
    assert again.outcome is Outcome.SUPERSEDED and again.exit_code == 0
    assert box_state(box) == before and load_config(box).hostname == "console.lan.test"
    line = result_lines(image)[0]
    assert line.startswith("NOTHING to do: mta-lite.toml was installed before, as generation 2, and has been "
                           f"replaced since (generation {console.generation} is installed)")
    assert "ROLLBACK.TXT holding 2" in line


def test_import_unscrubbed_stick_twice_installs_once(tmp_path, box):
    keep = HAND_WRITTEN + b"[provision]\r\nscrub_secrets = false\r\n"
    image = make_stick(tmp_path / "stick.img", {CONFIG: keep})
    first = provision_from_stick(image, box)
    before = box_state(box)
    again = provision_from_stick(image, box)
    assert again.outcome is Outcome.UNCHANGED and again.generation == first.generation and box_state(box) == before


def test_import_edited_scrubbed_file_installs_with_the_box_password(tmp_path, box):
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN})
    provision_from_stick(image, box)
    edited = stick_file(image, CONFIG).replace(b"new.lan.test", b"edited.lan.test")
    put_file(image, CONFIG, edited)
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.APPLIED and result.generation == 3
    cfg = load_config(box)
    assert cfg.hostname == "edited.lan.test" and cfg.relays["isp"].password.reveal() == PASSWORD
    assert stick_file(image, CONFIG) == edited, "nothing in clear: the file is left as it is"


def test_import_placeholder_the_box_has_no_secret_for_refused(tmp_path, box):
    before = box_state(box)
    other = config_bytes(relays={"isp": {"host": "smtp.isp.example", "username": "office@isp.example",
                                         "password": PASSWORD},
                                 "backup": {"host": "smtp.backup.example", "username": "u@backup.example",
                                            "password": "********"}})
    image = make_stick(tmp_path / "stick.img", {CONFIG: other})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78
    assert result_lines(image)[0] == ('ERROR usb:MTACONFIG/mta-lite.toml: relays.backup.password: "********" keeps '
                                      "the secret the box has here, but the box has none for this key: write the "
                                      "secret itself")
    assert box_state(box) == before and stick_file(image, CONFIG) == other


def test_import_provision_with_unknown_key_refused(tmp_path, box):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN + b"[provision]\r\nscrub = true\r\n"})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED
    assert "usb:MTACONFIG/mta-lite.toml: provision.scrub: unknown key" in result_lines(image)[0]
    assert box_state(box) == before and image_needles(image), "a refused file is not touched"


def test_import_generations_dir_unreadable_still_installs(tmp_path, box):
    """A generation that does not parse (a hand-made file in generations/) is skipped, not fatal."""
    gens = Path(box).parent / "generations"
    gens.mkdir(mode=0o700)
    (gens / "000001.toml").write_bytes(b"not = [toml\n")
    os.utime(gens / "000001.toml")
    image = make_stick(tmp_path / "stick.img", {CONFIG: HAND_WRITTEN})
    assert provision_from_stick(image, box).outcome is Outcome.APPLIED

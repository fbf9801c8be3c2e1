"""Config provisioning from a USB stick (board/usbstick.py): C1, C2, C3 and S3 on untrusted media.

Peers: dosfstools (`mkfs.vfat`) makes the stick, an image file of a few MiB, the way a PC
formats one; mtools puts files on it, and board/usbstick.py reads and writes it with mtools
too (the kernel here has no vfat: nothing is mounted). The box is a config directory in
tmp_path with an installed config; configgen.generations() shows what was installed.

Faults: a stick pulled mid-read is simulated three ways: the image truncated through the
config's data (mtools then returns short data with status 0), the image removed between the
listing and the read, and a device path that is a FIFO nobody writes to (mtools blocks in
open(): only the timeout ends it). A read-only stick is an immutable image (chattr +i) or,
where the file system has no such flag, the stick pulled just before the result is written.
Every test checks that no password (or its base64) reaches RESULT.TXT or the log.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mta_lite_board import usbstick
from mta_lite_board.mtools import MtoolsRunner
from mta_lite_board.usbstick import Outcome, provision_from_stick
from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from tests.support.relay import PASSWORD, secret_needles
from tests.support.stick import (Recorder, box_state, config_bytes, digest, installed_config, make_dir, make_stick,
                                 put_many, stick_file)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NEEDLES = secret_needles({PASSWORD})
# Short enough to keep the hang tests quick, long enough for mtools on a loaded CI machine.
HANG_TIMEOUT_S = 1.0


@pytest.fixture
def box(tmp_path):
    """A config directory with a config installed (generation 1 after the first apply)."""
    return installed_config(tmp_path)


@pytest.fixture
def stick_logs(caplog):
    caplog.set_level(logging.INFO, logger="mta_lite_board.usbstick")

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "mta_lite_board.usbstick"]
    return lines


def assert_no_secret(*texts) -> None:
    for text in texts:
        blob = text if isinstance(text, bytes) else str(text).encode()
        for needle in NEEDLES:
            assert needle not in blob, f"secret form {needle!r} found"


def result_lines(image) -> list[str]:
    data = stick_file(image, usbstick.RESULT_NAME)
    assert data is not None, "no RESULT.TXT on the stick"
    assert_no_secret(data)
    assert data.endswith(b"\r\n")
    return data.decode().split("\r\n")[:-1]


# ------------------------------------------------------------------ installing

def test_provision_valid_config_installs_new_generation_and_says_ok(tmp_path, box, stick_logs):
    new = config_bytes(hostname="new.lan.test")
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": new})
    result = provision_from_stick(image, box, now=lambda: 1_800_000_000)
    assert result.outcome is Outcome.APPLIED and result.exit_code == 0 and result.result_written
    newest = configgen.generations(box)[0]
    assert newest.current and newest.number == result.generation == 2
    assert Path(newest.path).read_bytes() == new
    assert load_config(box).hostname == "new.lan.test"
    line, scrubbed, stamp = result_lines(image)
    assert line == f"OK generation 2 installed (config {newest.digest})"
    assert scrubbed.startswith("the passwords in mta-lite.toml were replaced by ********")
    assert stamp == "2027-01-15 08:00:00 UTC"
    assert stick_logs() == [f"{image}: {line} / {scrubbed}"]
    assert PASSWORD not in Path(box).read_text(), "the installed file holds no password (S7)"
    assert_no_secret(*stick_logs())


def test_provision_fat32_stick_installs(tmp_path, box):
    """Most sticks come formatted FAT32 (its top folder is a cluster chain, not a fixed area)."""
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="fat32.lan.test")},
                       size="40M", mkfs_args=("-F", "32"))
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.APPLIED, result.message
    assert load_config(box).hostname == "fat32.lan.test" and result_lines(image)[0].startswith("OK generation 2")


def test_provision_same_stick_twice_installs_once(tmp_path, box, stick_logs):
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="new.lan.test")})
    first = provision_from_stick(image, box)
    before = box_state(box)
    second = provision_from_stick(image, box)
    assert first.outcome is Outcome.APPLIED and second.outcome is Outcome.UNCHANGED
    assert second.exit_code == 0 and second.generation == first.generation
    assert box_state(box) == before
    assert result_lines(image)[0] == (f"OK mta-lite.toml already installed (generation {first.generation}, "
                                      f"config {first.digest}): nothing changed")


def test_provision_config_with_bom_and_crlf_installs(tmp_path, box):
    new = config_bytes(hostname="crlf.lan.test").replace(b"\n", b"\r\n")
    image = make_stick(tmp_path / "stick.img", {"MTA-LITE.TOML": usbstick.UTF8_BOM + new})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.APPLIED, result.message
    assert load_config(box).hostname == "crlf.lan.test"


def test_provision_password_file_on_the_box_resolves(tmp_path, box):
    (Path(box).parent / "isp.pw").write_text(PASSWORD + "\n")
    new = config_bytes(relays={"isp": {"host": "smtp.isp.example", "port": 587, "username": "office@isp.example",
                                       "password_file": "isp.pw"}})
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": new})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.APPLIED, result.message
    assert load_config(box).relays["isp"].password.reveal() == PASSWORD


def test_provision_password_file_only_on_the_stick_rejected(tmp_path, box):
    """Secrets travel inline or are on the box already: no other file is copied from the stick."""
    before = box_state(box)
    new = config_bytes(relays={"isp": {"host": "smtp.isp.example", "port": 587, "username": "office@isp.example",
                                       "password_file": "isp.pw"}})
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": new, "isp.pw": PASSWORD.encode()})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78
    assert "relays.isp.password_file" in result.message and "file not found" in result.message
    assert box_state(box) == before


# ------------------------------------------------------------------ refusing

def test_provision_invalid_config_rejected_names_source_key_value(tmp_path, box, stick_logs):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="relay lan")})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78 and result.result_written
    assert box_state(box) == before, "config, generations and secrets unchanged byte for byte"
    line = result_lines(image)[0]
    assert line.startswith("ERROR usb:MTACONFIG/mta-lite.toml: hostname: ") and "'relay lan'" in line
    assert stick_logs() == [f"{image}: {line}"]
    assert_no_secret(*stick_logs())


def test_provision_invalid_password_value_never_shown(tmp_path, box, stick_logs):
    new = config_bytes(relays={"isp": {"host": "smtp.isp.example", "port": 587, "username": "office@isp.example",
                                       "password": PASSWORD, "password_file": "x.pw"}})
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": new})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED and "relays.isp.password" in result.message
    assert_no_secret(result.message, *stick_logs(), *result_lines(image))


def test_provision_oversized_config_rejected_without_reading_it(tmp_path, box, stick_logs):
    before = box_state(box)
    big = config_bytes() + b"#" * configgen.MAX_CONFIG_BYTES
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": big})
    runner = Recorder()
    result = provision_from_stick(image, box, runner)
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78
    assert runner.reads("mta-lite.toml") == [], "the file is refused from its directory entry alone"
    assert f"{len(big)} bytes is over the {configgen.MAX_CONFIG_BYTES}-byte limit" in result_lines(image)[0]
    assert box_state(box) == before and len(stick_logs()) == 1


def test_provision_listing_that_understates_size_reads_at_most_size_plus_one(tmp_path, box, stick_logs):
    """The directory entry is the stick's word only: a file longer than it claims is never
    read whole, whatever mtools would deliver."""
    real = config_bytes() + b"#" * 30000
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": real})
    lying = Recorder(inner=understating(MtoolsRunner(), claimed=100))
    result = provision_from_stick(image, box, lying)
    assert result.outcome is Outcome.READ_ERROR and result.exit_code == 75
    (read,) = [done for argv, done in zip(lying.calls, lying.results) if argv in lying.reads("mta-lite.toml")]
    assert read.overflow and len(read.stdout) == 101
    assert "more than the 100 bytes" in result.message
    assert configgen.generations(box) == [] and len(stick_logs()) == 1


def understating(inner, claimed: int):
    """A runner whose `mdir` says mta-lite.toml is `claimed` bytes long."""
    def run(argv, limit_bytes, stdin=b""):
        done = inner(argv, limit_bytes, stdin)
        if argv[0] != "mdir":
            return done
        lines = []
        for line in done.stdout.decode().split("\n"):
            if line.endswith(" mta-lite.toml"):
                line = line[:13] + f" {claimed:8d}" + line[22:]
            lines.append(line)
        return type(done)(done.returncode, "\n".join(lines).encode(), done.stderr, done.overflow)
    return run


def test_provision_deeply_nested_config_rejected_not_crashed(tmp_path, box, stick_logs):
    """30000 nested arrays fit in the size limit, and exhaust the TOML parser's recursion."""
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": b"a = " + b"[" * 30000 + b"]" * 30000 + b"\n"})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78
    assert result_lines(image)[0] == "ERROR usb:MTACONFIG/mta-lite.toml: not valid TOML: nested too deeply"
    assert box_state(box) == before and len(stick_logs()) == 1


def test_provision_non_utf8_config_rejected(tmp_path, box):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes() + b'# caf\xe9\n'})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78
    assert "usb:MTACONFIG/mta-lite.toml: not UTF-8 at byte" in result_lines(image)[0]
    assert box_state(box) == before


def test_provision_config_that_is_a_folder_rejected(tmp_path, box):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img")
    make_dir(image, "mta-lite.toml")
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED
    assert result_lines(image)[0] == "ERROR usb:MTACONFIG/mta-lite.toml: is a folder, not a file"
    assert box_state(box) == before


def test_provision_wrong_label_ignored_and_stick_untouched(tmp_path, box, stick_logs):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="new.lan.test")},
                       label="KINGSTON")
    untouched = digest(image)
    runner = Recorder()
    result = provision_from_stick(image, box, runner)
    assert result.outcome is Outcome.IGNORED and result.exit_code == 0
    assert [argv[0] for argv in runner.calls] == ["mdir"], "nothing read from, nothing written to it"
    assert digest(image) == untouched and box_state(box) == before
    assert stick_logs() == [f"{image}: label 'KINGSTON', not MTACONFIG: stick ignored"]


def test_provision_unlabelled_stick_ignored(tmp_path, box, stick_logs):
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes()}, label=None)
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.IGNORED and stick_file(image, "RESULT.TXT") is None
    assert stick_logs() == [f"{image}: no label, not MTACONFIG: stick ignored"]


def test_provision_empty_stick_says_nothing_to_do(tmp_path, box):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml.txt": config_bytes()})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.NOTHING and result.exit_code == 0
    line = result_lines(image)[0]
    assert line.startswith("NOTHING to do: no mta-lite.toml, ROLLBACK.TXT or EXPORT")
    assert "found mta-lite.toml.txt: rename it" in line
    assert box_state(box) == before


# ------------------------------------------------------------------ many, long and odd names

ODD = ["a long file name with spaces.txt", "Ünïcödé ñame ☃.toml", "[brackets] (parens) & + = ;.cfg",
       "x" * 200 + ".txt", ".hidden-dotfile", "mta-lite.toml.bak", "._mta-lite.toml", "System Volume Information"]


def test_provision_many_files_and_odd_names_config_still_found(tmp_path, box, stick_logs):
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="many.lan.test")},
                       mkfs_args=("-r", "1024"))
    files = tmp_path / "files"
    files.mkdir()
    put_many(image, ODD[:-1] + [f"f{i:04d}.dat" for i in range(400)], str(files))
    make_dir(image, ODD[-1])
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.APPLIED, result.message
    assert load_config(box).hostname == "many.lan.test" and len(stick_logs()) == 1


def test_provision_listing_over_limit_refused(tmp_path, box, stick_logs):
    """More names in the top folder than MAX_LISTING_BYTES of listing: the listing is cut
    there, unread beyond; the stick is refused rather than judged on part of its folder."""
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes()}, mkfs_args=("-r", "2048"))
    files = tmp_path / "files"
    files.mkdir()
    put_many(image, [f"file{i:04d}.dat" for i in range(1600)], str(files))
    runner = Recorder()
    result = provision_from_stick(image, box, runner)
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78
    assert runner.results[0].overflow and len(runner.results[0].stdout) == 64 * 1024 + 1
    assert "too many files" in result_lines(image)[0]
    assert box_state(box) == before and len(stick_logs()) == 1


# ------------------------------------------------------------------ rollback

def test_provision_rollback_number_installs_that_generation(tmp_path, box):
    first = make_stick(tmp_path / "a.img", {"mta-lite.toml": config_bytes(hostname="a.lan.test")})
    assert provision_from_stick(first, box).generation == 2
    image = make_stick(tmp_path / "rollback.img", {"ROLLBACK.TXT": b"1\r\n"})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.APPLIED and result.generation == 3
    assert load_config(box).hostname == "relay.lan.test"
    assert result_lines(image)[0].endswith("(config %s), rolled back to generation 1" % result.digest)
    again = provision_from_stick(image, box)
    assert again.outcome is Outcome.UNCHANGED and load_config(box).hostname == "relay.lan.test"


def test_provision_empty_rollback_lists_generations_changes_nothing(tmp_path, box):
    provision_from_stick(make_stick(tmp_path / "a.img", {"mta-lite.toml": config_bytes(hostname="a.lan.test")}), box)
    before = box_state(box)
    image = make_stick(tmp_path / "rollback.img", {"rollback.txt": b""})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78
    assert result_lines(image)[0] == ("ERROR usb:MTACONFIG/ROLLBACK.TXT: write the number of the generation "
                                      "to install into it; kept: 2 (installed), 1")
    assert box_state(box) == before


def test_provision_rollback_to_missing_generation_rejected(tmp_path, box):
    before = box_state(box)
    image = make_stick(tmp_path / "rollback.img", {"ROLLBACK.TXT": b"42"})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED and "no generation 42" in result.message
    assert box_state(box) == before


def test_provision_config_and_rollback_together_refused(tmp_path, box):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="b.lan.test"),
                                                "ROLLBACK.TXT": b"1"})
    result = provision_from_stick(image, box)
    assert result.outcome is Outcome.REJECTED
    assert "both mta-lite.toml and ROLLBACK.TXT" in result_lines(image)[0]
    assert box_state(box) == before


# ------------------------------------------------------------------ the stick pulled, hung, damaged

def assert_read_error(result, box, before, lines, runner=None) -> None:
    assert result.outcome is Outcome.READ_ERROR and result.exit_code == 75
    assert box_state(box) == before, "nothing installed"
    assert len(lines) == 1 and "stick not read, nothing changed" in lines[0], lines
    if runner is not None:
        assert runner.writes() == [], "no RESULT.TXT on a stick that could not be read"


def test_provision_image_truncated_through_config_data_read_error(tmp_path, box, stick_logs):
    before = box_state(box)
    data = config_bytes(hostname="cut.lan.test") + b"#" * 8000
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": data})
    blob = Path(image).read_bytes()
    start = blob.index(data[:64])
    os.truncate(image, start + len(data) // 2)          # the stick pulled half-way through the file
    runner = Recorder()
    result = provision_from_stick(image, box, runner)
    assert_read_error(result, box, before, stick_logs(), runner)
    assert f"of the {len(data)} bytes of mta-lite.toml" in result.message


def test_provision_image_removed_after_listing_read_error(tmp_path, box, stick_logs):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="gone.lan.test")})

    def pull(argv):
        if argv[0] == "mcopy":
            os.unlink(image)
    runner = Recorder(before=pull)
    result = provision_from_stick(image, box, runner)
    assert_read_error(result, box, before, stick_logs(), runner)
    assert "mcopy exited with status 1" in result.message and "No such file" in result.message


def test_provision_device_missing_read_error(tmp_path, box, stick_logs):
    before = box_state(box)
    result = provision_from_stick(str(tmp_path / "sdz1"), box)
    assert_read_error(result, box, before, stick_logs())
    assert "mdir exited with status 1" in result.message


def test_provision_corrupt_boot_sector_read_error(tmp_path, box, stick_logs):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes()})
    with open(image, "r+b") as handle:
        handle.write(b"\xff" * 64)                      # the BIOS parameter block: sector size, FAT size...
    result = provision_from_stick(image, box)
    assert_read_error(result, box, before, stick_logs())
    assert "mdir exited with status 1: init: sector size too big" in result.message


def test_provision_device_is_fifo_nobody_writes_timeout_fires(tmp_path, box, stick_logs):
    before = box_state(box)
    fifo = tmp_path / "sdz1"
    os.mkfifo(fifo)
    result = provision_from_stick(str(fifo), box, MtoolsRunner(timeout_s=HANG_TIMEOUT_S))     # mdir would block for ever
    assert_read_error(result, box, before, stick_logs())
    assert f"mdir did not finish within {HANG_TIMEOUT_S:g} s and was killed" in result.message


def test_provision_config_read_hangs_timeout_fires(tmp_path, box, stick_logs):
    """The listing comes, then the device stops answering during the read of the config."""
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="hang.lan.test")})
    fifo = str(tmp_path / "hung")
    os.mkfifo(fifo)

    def hang(argv):
        if argv[0] == "mcopy":
            return [fifo if arg == image else arg for arg in argv]
    runner = Recorder(inner=MtoolsRunner(timeout_s=HANG_TIMEOUT_S), rewrite=hang)
    result = provision_from_stick(image, box, runner)
    assert_read_error(result, box, before, stick_logs(), runner)
    assert "mcopy did not finish" in result.message


# ------------------------------------------------------------------ RESULT.TXT that cannot be written

def _immutable(path: str) -> bool:
    return subprocess.run(["chattr", "+i", path], capture_output=True).returncode == 0


def test_provision_read_only_stick_outcome_applied_file_kept_and_logged(tmp_path, box, stick_logs):
    """A write-protected stick: installed, its file untouched, and since RESULT.TXT cannot be
    written either, the log says that the password is still on it."""
    original = config_bytes(hostname="ro.lan.test")
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": original})
    if not _immutable(image):
        pytest.skip("chattr +i is not supported on this file system (the next test covers the write failure)")
    try:
        result = provision_from_stick(image, box)
        untouched = stick_file(image, "mta-lite.toml")
    finally:
        subprocess.run(["chattr", "-i", image], check=True)
    assert result.outcome is Outcome.APPLIED and result.exit_code == 0 and not result.result_written
    assert load_config(box).hostname == "ro.lan.test"
    assert untouched == original and stick_file(image, "RESULT.TXT") is None
    lines = stick_logs()
    assert len(lines) == 2 and "RESULT.TXT not written (the outcome stands)" in lines[0]
    assert lines[1].endswith(f"{result.message} / {result.notes[0]}")
    assert "the password is still on the stick in clear" in result.notes[0]
    assert_no_secret(*lines)


def test_provision_stick_pulled_before_result_write_outcome_applied(tmp_path, box, stick_logs):
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="late.lan.test")})

    def pull(argv):
        if "-o" in argv and "::/RESULT.TXT" in argv:
            os.unlink(image)
    result = provision_from_stick(image, box, Recorder(before=pull))
    assert result.outcome is Outcome.APPLIED and not result.result_written
    assert load_config(box).hostname == "late.lan.test"
    lines = stick_logs()
    assert len(lines) == 2 and "RESULT.TXT not written" in lines[0] and "No such file" in lines[0]


def test_provision_rejected_config_result_write_fails_still_rejected(tmp_path, box, stick_logs):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": b"not toml ["})

    def pull(argv):
        if "-o" in argv:
            os.unlink(image)
    result = provision_from_stick(image, box, Recorder(before=pull))
    assert result.outcome is Outcome.REJECTED and result.exit_code == 78 and not result.result_written
    assert box_state(box) == before and len(stick_logs()) == 2


def test_provision_config_directory_not_writable_install_failed_nothing_changed(tmp_path, box, stick_logs):
    before = box_state(box)
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": config_bytes(hostname="box.lan.test")})
    directory = os.path.dirname(box)
    if not _immutable(directory):
        pytest.skip("chattr +i is not supported on this file system")
    try:
        result = provision_from_stick(image, box)
    finally:
        subprocess.run(["chattr", "-i", directory], check=True)
    assert result.outcome is Outcome.INSTALL_FAILED and result.exit_code == 73 and result.result_written
    assert box_state(box) == before
    assert result_lines(image)[0] == ("ERROR could not install the config on the box: Operation not permitted "
                                      "(the config in use is unchanged)")
    assert len(stick_logs()) == 1


# ------------------------------------------------------------------ the command

def run_cli(*args, env_config: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "MTA_LITE_CONFIG"}
    if env_config:
        env["MTA_LITE_CONFIG"] = env_config
    return subprocess.run([sys.executable, "-m", "mta_lite_board.usbstick", *args], cwd=REPO, env=env,
                          capture_output=True, timeout=60)


def test_cli_exit_status_applied_rejected_unreadable(tmp_path, box):
    good = make_stick(tmp_path / "good.img", {"mta-lite.toml": config_bytes(hostname="cli.lan.test")})
    bad = make_stick(tmp_path / "bad.img", {"mta-lite.toml": config_bytes(hostname="cli lan")})
    applied = run_cli(good, "--config", box)
    rejected = run_cli(bad, env_config=box)
    unreadable = run_cli(str(tmp_path / "gone.img"), "--config", box)
    assert (applied.returncode, rejected.returncode, unreadable.returncode) == (0, 78, 75)
    assert load_config(box).hostname == "cli.lan.test"
    for done in (applied, rejected, unreadable):
        assert done.stdout == b"" and len(done.stderr.splitlines()) == 1, done.stderr
        assert b"mta-lite/usbstick[" in done.stderr
        assert_no_secret(done.stderr)
    assert b"usb:MTACONFIG/mta-lite.toml: hostname:" in rejected.stderr

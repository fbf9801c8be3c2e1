"""The clock floor's build stamp (qmgr/clock.py read_build_time): the image build writes its
SOURCE_DATE_EPOCH into /usr/lib/mta-lite/build-time; the relay takes it when it is later than
the hand-set RELEASE_TIME, and ignores a stamp that is absent, unreadable or garbage. The
build's side (firmware/image/build.py writes it) is tests/unit/test_image_layout.py's."""

import pytest

from mta_lite.qmgr import clock
from mta_lite.qmgr.clock import RELEASE_TIME, read_build_time

DAY = 86400


def test_no_stamp_gives_the_release_time(tmp_path):
    assert read_build_time(str(tmp_path / "build-time")) == RELEASE_TIME


def test_a_later_stamp_wins_over_the_release_time(tmp_path):
    stamp = tmp_path / "build-time"
    stamp.write_text(f"{int(RELEASE_TIME) + 30 * DAY}\n")
    assert read_build_time(str(stamp)) == RELEASE_TIME + 30 * DAY
    # The whole rule follows: a clock between the two is not set.
    floor = read_build_time(str(stamp))
    assert clock.observe(clock.ClockRecord(), RELEASE_TIME + DAY, floor).state == clock.NOT_SET


def test_an_earlier_stamp_never_lowers_the_floor(tmp_path):
    stamp = tmp_path / "build-time"
    stamp.write_text(f"{int(RELEASE_TIME) - DAY}\n")
    assert read_build_time(str(stamp)) == RELEASE_TIME


@pytest.mark.parametrize("content", [b"", b"\n", b"soon\n", b"1.9e9\n", b"-1900000000\n", b"+1900000000\n",
                                     b"1_900_000_000\n", b"\xd9\xa1\xd9\xa2\n", b"\xff\xfe1900000000",
                                     b"1900000000 1900000001\n", b"9" * 40 + b"\n"])
def test_a_garbage_stamp_is_ignored(tmp_path, content):
    stamp = tmp_path / "build-time"
    stamp.write_bytes(content)
    assert read_build_time(str(stamp)) == RELEASE_TIME


def test_an_unreadable_stamp_is_ignored(tmp_path):
    assert read_build_time(str(tmp_path)) == RELEASE_TIME           # a directory: EISDIR


def test_the_relay_reads_the_installed_stamp_at_start():
    assert clock.BUILD_TIME_FILE == "/usr/lib/mta-lite/build-time"
    assert clock.BUILD_TIME == read_build_time() >= RELEASE_TIME

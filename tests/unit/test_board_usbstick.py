"""The pure parts of the USB stick reader: deciding what a stick asks for (board.usbstick.plan),
the names it may use, the rollback number, RESULT.TXT's text, and mdir's header lines
(board.mtools). No subprocess, no files: listings are built by hand, time is a number.
"""

from __future__ import annotations

import pytest

from mta_lite_board.mtools import Entry, Listing, ListingError, parse_label, parse_mdir, shown
from mta_lite_board.usbstick import (EX_CANTCREAT, EX_CONFIG, EX_OK, EX_TEMPFAIL, MAX_RESULT_LINE_CHARS, Action, Outcome,
                                     StickResult, copies, decode_config, format_result, generation_number, plan)
from mta_lite.config import generations as configgen
from mta_lite.errors import ConfigError

CONFIG = Entry("MTA-LI~1.TOM", "mta-lite.toml", 300, False)
ROLLBACK = Entry("ROLLBACK.TXT", "", 2, False)


def listing(*entries: Entry, complete: bool = True) -> Listing:
    return Listing("MTACONFIG", tuple(entries), 0, complete)


def generation(number: int, current: bool = False) -> configgen.Generation:
    return configgen.Generation(number, f"/x/{number:06d}.toml", 10, 0.0, "d" * 12, current)


# ------------------------------------------------------------------ plan

def test_plan_config_present_applies_its_listed_size():
    todo = plan(listing(Entry("NOTES.TXT", "", 5, False), CONFIG))
    assert (todo.action, todo.size) == (Action.APPLY, 300)


def test_plan_names_match_without_case():
    assert plan(listing(Entry("MTA-LI~1.TOM", "MTA-LITE.TOML", 7, False))).action is Action.APPLY
    assert plan(listing(Entry("rollback.txt", "", 1, False))).action is Action.ROLLBACK


def test_plan_rollback_alone_reads_it():
    todo = plan(listing(ROLLBACK))
    assert (todo.action, todo.size) == (Action.ROLLBACK, 2)


def test_plan_config_and_rollback_refused():
    todo = plan(listing(CONFIG, ROLLBACK))
    assert todo.action is Action.REFUSE and "both mta-lite.toml and ROLLBACK.TXT" in str(todo.error)


def test_plan_config_one_byte_over_limit_refused_at_limit_accepted():
    over = Entry("MTA-LI~1.TOM", "mta-lite.toml", configgen.MAX_CONFIG_BYTES + 1, False)
    at = Entry("MTA-LI~1.TOM", "mta-lite.toml", configgen.MAX_CONFIG_BYTES, False)
    assert plan(listing(over)).action is Action.REFUSE
    assert plan(listing(at)).action is Action.APPLY


def test_plan_oversized_rollback_refused():
    assert plan(listing(Entry("ROLLBACK.TXT", "", 65, False))).action is Action.REFUSE


def test_plan_config_folder_refused():
    todo = plan(listing(Entry("MTA-LI~1.TOM", "mta-lite.toml", 0, True)))
    assert str(todo.error) == "usb:MTACONFIG/mta-lite.toml: is a folder, not a file"


def test_plan_two_entries_of_one_name_refused():
    todo = plan(listing(CONFIG, Entry("MTA-LI~2.TOM", "MTA-LITE.TOML", 10, False)))
    assert todo.action is Action.REFUSE and "2 entries named mta-lite.toml" in str(todo.error)


def test_plan_cut_listing_refused_even_with_config_in_it():
    todo = plan(listing(CONFIG, complete=False))
    assert todo.action is Action.REFUSE and "too many files" in str(todo.error)


def test_plan_nothing_there_names_a_near_miss():
    todo = plan(listing(Entry("MTA-LI~1.TXT", "mta-lite.toml.txt", 300, False), Entry("RESULT.TXT", "", 9, False)))
    assert todo.action is Action.NOTHING and todo.hint == " (found mta-lite.toml.txt: rename it)"
    assert plan(listing(Entry("RESULT.TXT", "", 9, False))).hint == ""


def test_plan_export_alone_or_beside_a_config():
    export = Entry("EXPORT", "", 0, False)
    alone = plan(listing(export))
    assert (alone.action, alone.export, alone.hint) == (Action.NOTHING, True, "")
    assert plan(listing(export, CONFIG)).export and plan(listing(export, CONFIG)).action is Action.APPLY
    assert plan(listing(Entry("export", "", 9, False), ROLLBACK)).export
    assert not plan(listing(Entry("EXPORT", "", 0, True))).export, "a folder named EXPORT is not the file"


def test_plan_export_near_miss_and_reports_are_not_near_misses():
    assert plan(listing(Entry("EXPORT.TXT", "", 0, False))).hint == " (found EXPORT.TXT: rename it)"
    reports = listing(Entry("MTA-LI~1.TXT", "mta-lite-report.txt", 9, False),
                      Entry("MTA-LI~1.JSO", "mta-lite-report.json", 9, False))
    assert plan(reports).hint == ""


def test_copies_of_the_config_named():
    found = copies(listing(CONFIG, Entry("MTA-LI~1.BAK", "mta-lite.toml.bak", 3, False),
                           Entry("_MTA-L~1.TOM", "._mta-lite.toml", 3, False),
                           Entry("MTA-LI~2.TXT", "mta-lite-report.txt", 3, False)))
    assert found == ["mta-lite.toml.bak", "._mta-lite.toml"]


def test_plan_near_miss_with_control_characters_escaped():
    todo = plan(listing(Entry("MTA-LI~1.TXT", "mta-lite\r\nOK generation 9", 3, False)))
    assert "\n" not in todo.hint and "\r" not in todo.hint and "\\r\\n" in todo.hint


# ------------------------------------------------------------------ file contents

def test_decode_config_byte_order_mark_dropped():
    assert decode_config(b"\xef\xbb\xbfhostname = 'x'\n") == b"hostname = 'x'\n"


def test_decode_config_latin1_rejected_names_byte():
    with pytest.raises(ConfigError) as caught:
        decode_config(b"# caf\xe9\n")
    assert str(caught.value) == "usb:MTACONFIG/mta-lite.toml: not UTF-8 at byte 5 (save the file as UTF-8)"


@pytest.mark.parametrize("text, number", [(b"6", 6), (b" 12\r\n", 12), (b"\xef\xbb\xbf3\n", 3), (b"000004", 4)])
def test_generation_number_digits_read(text, number):
    assert generation_number(text, []) == number


@pytest.mark.parametrize("text", [b"", b"\r\n", b"previous", b"-1", b"1 2", b"1234567", "１２".encode(), b"\xff"])
def test_generation_number_anything_else_lists_kept(text):
    with pytest.raises(ConfigError) as caught:
        generation_number(text, [generation(3, current=True), generation(2), generation(1)])
    assert str(caught.value).endswith("kept: 3 (installed), 2, 1")


# ------------------------------------------------------------------ RESULT.TXT and outcomes

def test_format_result_line_time_crlf():
    text = format_result(StickResult(Outcome.APPLIED, "OK generation 2 installed (config abc)"), 0)
    assert text == b"OK generation 2 installed (config abc)\r\n1970-01-01 00:00:00 UTC\r\n"


def test_format_result_notes_between_line_and_time():
    text = format_result(StickResult(Outcome.APPLIED, "OK generation 2", notes=("scrubbed", "report")), 0)
    assert text == b"OK generation 2\r\nscrubbed\r\nreport\r\n1970-01-01 00:00:00 UTC\r\n"


def test_format_result_long_line_cut():
    first = format_result(StickResult(Outcome.REJECTED, "ERROR " + "v" * 5000), 0).split(b"\r\n")[0]
    assert len(first) == MAX_RESULT_LINE_CHARS + 3 and first.endswith(b"...")


@pytest.mark.parametrize("outcome, code", [(Outcome.APPLIED, EX_OK), (Outcome.UNCHANGED, EX_OK),
                                           (Outcome.NOTHING, EX_OK), (Outcome.IGNORED, EX_OK),
                                           (Outcome.REJECTED, EX_CONFIG), (Outcome.READ_ERROR, EX_TEMPFAIL),
                                           (Outcome.INSTALL_FAILED, EX_CANTCREAT), (Outcome.SUPERSEDED, EX_OK),
                                           (Outcome.EXPORTED, EX_OK), (Outcome.EXPORT_FAILED, EX_CANTCREAT)])
def test_outcome_exit_status(outcome, code):
    assert StickResult(outcome, "").exit_code == code
    assert len(set(Outcome)) == len(Outcome.__members__), "no outcome is another's alias"
    assert (EX_CONFIG, EX_TEMPFAIL) == (78, 75)


# ------------------------------------------------------------------ mdir's header, shown text

@pytest.mark.parametrize("line, label", [(" Volume in drive : is MTACONFIG  ", "MTACONFIG"),
                                         (" Volume in drive : has no label", None),
                                         (" Volume in drive A is Config Stick (abbr=CONFIG STIC)", "Config Stick"),
                                         (" Volume in drive : is   ", "")])
def test_parse_label_forms(line, label):
    assert parse_label(line) == label


@pytest.mark.parametrize("text", ["", "hello", "Directory for ::/\n", " Volume in drive : is X\n\nNo files\n",
                                  " Volume in drive : is X\nDirectory for ::/\n\nfoo\n"])
def test_parse_mdir_not_a_listing_raises_listing_error(text):
    with pytest.raises(ListingError):
        parse_mdir(text)


def test_parse_mdir_odd_lines_skipped_and_counted():
    text = (" Volume in drive : is MTACONFIG  \nDirectory for ::/\n\n"
            "MTA-LI~1 TOM       300 2026-11-25  12:06  mta-lite.toml\n"
            "garbage that is no entry\n"
            "        1 file                  300 bytes\n")
    result = parse_mdir(text)
    assert result.entries == (CONFIG,) and result.skipped == 1 and result.complete


def test_parse_mdir_cut_listing_needs_no_summary_and_drops_cut_line():
    text = (" Volume in drive : is MTACONFIG  \nDirectory for ::/\n\n"
            "MTA-LI~1 TOM       300 2026-11-25  12:06  mta-lite.toml\nROLLBACK TXT         2 2026-1")
    result = parse_mdir(text, complete=False)
    assert result.entries == (CONFIG,) and not result.complete


def test_shown_escapes_controls_and_cuts():
    assert shown("a\nb\x1b[31m") == "a\\nb\\x1b[31m"
    assert shown("x" * 300, 10) == "x" * 10 + "..."

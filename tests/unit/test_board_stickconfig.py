"""The stick's mta-lite.toml as the box reads it (board/tomlspans.py, board/stickconfig.py,
board/redact.py's key rule): where values sit, span edits that keep every other character,
[provision], "********" placeholders, matching kept generations, scrubbing.

Peer: none. Texts are written out here; generations are files in tmp_path, as configgen
keeps them (Generation records built by hand).
"""

from __future__ import annotations

import tomllib

import pytest

from mta_lite.config import generations as configgen
from mta_lite.errors import ConfigError
from mta_lite_board.stickconfig import StickConfig, dotted, normal_path
from mta_lite_board.tomlspans import SpanError, remove_statements, replace_values, scan, toml_string
from tests.support.relay import PASSWORD

SOURCE = "usb:MTACONFIG/mta-lite.toml"
STICK = f'''# the office relay, set up by Anna
hostname = "relay.lan.test"   # the box's name
admin_address = 'admin@lan.test'
mynetworks = [
  "127.0.0.0/8",   # the box itself
  "192.168.0.0/16",
]

[provision]
scrub_secrets = true  # take the password off the stick

[relays.isp]
host = "smtp.isp.example"
username = "office@isp.example"
password = "{PASSWORD}"  # from the ISP's letter

[[senders]]
address = "Alice@lan.test"
relay = "isp"
username = "alice@isp.example"
password = """{PASSWORD}-alice"""

[[senders]]
address = "bob@lan.test"
relay = "isp"
'''


def generation(tmp_path, number: int, text: str, current: bool = False) -> configgen.Generation:
    path = tmp_path / f"{number:06d}.toml"
    path.write_text(text)
    return configgen.Generation(number, str(path), len(text), 0.0, "d" * 12, current)


# ------------------------------------------------------------------ tomlspans

def test_scan_paths_of_values_headers_and_arrays_of_tables():
    spans, statements = scan(STICK)
    found = {span.path: STICK[span.start:span.end] for span in spans}
    assert found[("relays", "isp", "password")] == f'"{PASSWORD}"'
    assert found[("senders", 0, "password")] == f'"""{PASSWORD}-alice"""'
    assert found[("senders", 1, "address")] == '"bob@lan.test"'
    assert found[("mynetworks", 1)] == '"192.168.0.0/16"'
    headers = [s.path for s in statements if s.header]
    assert headers == [("provision",), ("relays", "isp"), ("senders", 0), ("senders", 1)]


def test_replace_values_changes_only_that_value_crlf_and_comments_kept():
    text = STICK.replace("\n", "\r\n")
    changed = replace_values(text, {("relays", "isp", "password"): '"********"'})
    assert changed == text.replace(f'"{PASSWORD}"', '"********"')
    assert "\r\n" in changed and "# from the ISP's letter" in changed


def test_remove_statements_drops_provision_table_dotted_and_inline_forms():
    for text in (STICK, 'provision.scrub_secrets = false\nhostname = "a"\n',
                 'provision = { scrub_secrets = false }  # no\nhostname = "a"\n'):
        kept = remove_statements(text, lambda path: path[:1] == ("provision",))
        assert "provision" not in tomllib.loads(kept) and "scrub_secrets" not in kept
    assert tomllib.loads(remove_statements(STICK, lambda p: p[:1] == ("provision",)))["relays"]["isp"]["host"]


@pytest.mark.parametrize("text, value", [
    ('k = """a""""\nnext = 1\n', 'a"'),
    ("k = '''it's'''''\nnext = 1\n", "it's''"),
    ('k = "x = \\"#\\" ]"  # c\nnext = 1\n', 'x = "#" ]'),
    ("k = [1, {a = 'b]'}, [\n  2, # c ]\n]]\nnext = 1\n", None),
])
def test_scan_strings_ending_in_quotes_and_brackets_in_strings(text, value):
    parsed = tomllib.loads(text)
    spans, _ = scan(text)
    found = {span.path: text[span.start:span.end] for span in spans}
    assert ("next",) in found and found[("next",)] == "1"
    if value is not None:
        assert parsed["k"] == value and tomllib.loads("k = " + found[("k",)])["k"] == value


def test_scan_garbage_raises_span_error_never_anything_else():
    for text in ('k = "open\n', "[[a]\n", "k = [1,\n", "= 1\n", "k = {a = 1\n"):
        with pytest.raises(SpanError):
            scan(text)


@pytest.mark.parametrize("value", ['qu"ote', "back\\slash", "tab\tand\nnewline", "del\x7f", "snow\u2603man \U0001f600",
                                   "********"])
def test_toml_string_reads_back_as_the_value(value):
    assert tomllib.loads(f"k = {toml_string(value)}")["k"] == value


# ------------------------------------------------------------------ [provision]

def test_parse_provision_default_true_and_false_read():
    assert StickConfig.parse('hostname = "a"\n', SOURCE).scrub_secrets is True
    stick = StickConfig.parse(STICK.replace("scrub_secrets = true", "scrub_secrets = false"), SOURCE)
    assert stick.scrub_secrets is False and "provision" not in stick.config


@pytest.mark.parametrize("text, problem", [
    ("[provision]\nscrub = true\n", "provision.scrub: unknown key"),
    ('[provision]\nscrub_secrets = "yes"\n', "provision.scrub_secrets: expected true or false"),
    ("provision = 1\n", "provision: must be a table"),
    ("hostname = \n", "not valid TOML"),
])
def test_parse_bad_provision_or_toml_refused_naming_key(text, problem):
    with pytest.raises(ConfigError) as caught:
        StickConfig.parse(text, SOURCE)
    assert str(caught.value).startswith(SOURCE) and problem in str(caught.value)


def test_install_text_has_no_provision_and_keeps_comments():
    text = StickConfig.parse(STICK, SOURCE).install_text({})
    assert "[provision]" not in text and "scrub_secrets" not in text
    assert "# from the ISP's letter" in text and PASSWORD in text
    assert tomllib.loads(text) == {k: v for k, v in tomllib.loads(STICK).items() if k != "provision"}


# ------------------------------------------------------------------ scrubbing

def test_scrubbed_replaces_every_secret_and_nothing_else():
    stick = StickConfig.parse(STICK, SOURCE)
    scrubbed = stick.scrubbed()
    assert PASSWORD not in scrubbed and stick.edited_in_place
    assert scrubbed.count('"********"') == 2
    assert scrubbed.replace('"********"', "X") == STICK.replace(f'"{PASSWORD}"', "X").replace(
        f'"""{PASSWORD}-alice"""', "X")


def test_scrubbed_of_a_file_without_secrets_is_none():
    assert StickConfig.parse('hostname = "a"\n[relays.isp]\npassword_file = "isp.pw"\n', SOURCE).scrubbed() is None
    assert StickConfig.parse(StickConfig.parse(STICK, SOURCE).scrubbed(), SOURCE).scrubbed() is None


def test_scrubbed_tokens_and_hashes_too():
    text = ('[relays.m365]\nhost = "x"\noauth_token = "tok-123456789"\nclient_secret = "cs-987654321"\n'
            '[users.scanner]\npassword_hash = "$scrypt$abc"\n')
    scrubbed = StickConfig.parse(text, SOURCE).scrubbed()
    assert "tok-" not in scrubbed and "cs-" not in scrubbed and "$scrypt$" not in scrubbed


def test_scrubbed_when_the_span_edit_fails_falls_back_to_tomli_w(monkeypatch):
    import mta_lite_board.stickconfig as stickconfig

    def broken(text, new):
        raise SpanError("simulated")
    monkeypatch.setattr(stickconfig, "replace_values", broken)
    stick = StickConfig.parse(STICK, SOURCE)
    scrubbed = stick.scrubbed()
    assert PASSWORD not in scrubbed and not stick.edited_in_place
    assert tomllib.loads(scrubbed)["relays"]["isp"]["password"] == "********"


# ------------------------------------------------------------------ placeholders and import once

def test_match_scrubbed_file_is_the_generation_it_came_from(tmp_path):
    installed = StickConfig.parse(STICK, SOURCE).install_text({})
    kept = [generation(tmp_path, 3, 'hostname = "other"\n', current=True), generation(tmp_path, 2, installed)]
    scrubbed = StickConfig.parse(StickConfig.parse(STICK, SOURCE).scrubbed(), SOURCE)
    assert scrubbed.match(kept).number == 2
    assert StickConfig.parse(STICK, SOURCE).match(kept).number == 2


def test_match_other_password_or_other_value_is_no_match(tmp_path):
    installed = StickConfig.parse(STICK, SOURCE).install_text({})
    kept = [generation(tmp_path, 2, installed, current=True)]
    assert StickConfig.parse(STICK.replace(PASSWORD + '"', 'other-pw"'), SOURCE).match(kept) is None
    assert StickConfig.parse(STICK.replace("relay.lan.test", "new.lan.test"), SOURCE).match(kept) is None


def test_match_comments_and_layout_do_not_count(tmp_path):
    kept = [generation(tmp_path, 2, StickConfig.parse(STICK, SOURCE).install_text({}), current=True)]
    relaid = STICK.replace("# the office relay, set up by Anna\n", "").replace("  # from the ISP's letter", "")
    assert StickConfig.parse(relaid, SOURCE).match(kept).number == 2


def test_install_text_fills_placeholders_from_the_box_by_name_and_address():
    scrubbed = StickConfig.parse(STICK, SOURCE).scrubbed()
    # The owner reused the file: a new host name, and the senders in another order.
    edited = scrubbed.replace("relay.lan.test", "new.lan.test")
    stick = StickConfig.parse(edited, SOURCE)
    box = {("relays", "isp", "password"): "box-isp", ("senders", "@alice@lan.test", "password"): "box-alice"}
    data = tomllib.loads(stick.install_text(box))
    assert data["relays"]["isp"]["password"] == "box-isp" and data["senders"][0]["password"] == "box-alice"
    assert data["hostname"] == "new.lan.test" and "provision" not in data


def test_install_text_placeholder_the_box_has_nothing_for_refused_without_value():
    stick = StickConfig.parse(StickConfig.parse(STICK, SOURCE).scrubbed(), SOURCE)
    with pytest.raises(ConfigError) as caught:
        stick.install_text({("relays", "isp", "password"): "box-isp"})
    assert str(caught.value).startswith(f"{SOURCE}: senders[0].password: ") and "box has none" in str(caught.value)


def test_normal_path_and_dotted():
    data = tomllib.loads(STICK)
    assert normal_path(data, ("senders", 0, "password")) == ("senders", "@alice@lan.test", "password")
    assert dotted(("senders", 0, "password")) == "senders[0].password"
    assert dotted(("relays", "isp", "password")) == "relays.isp.password"

"""configgen: C1 (a config is installed only after it validates completely; on error nothing
changes) and C2 (earlier generations are kept and can be rolled back to)."""

import os
import stat
import tomllib

import pytest
import tomli_w

from mta_lite.config import generations as configgen
from mta_lite.errors import ConfigError
from tests.support.relay import PASSWORD


def config_bytes(port: int = 2525, inline: bool = False, **extra) -> bytes:
    """A valid config; with `inline`, the smarthost password is written into it."""
    relay = {"host": "smtp.isp.test", "username": "office@isp.test", "password_file": "isp.secret"}
    if inline:
        del relay["password_file"]
        relay["password"] = PASSWORD
    return tomli_w.dumps({
        "admin_address": "admin@lan.test", "spool_dir": "/var/spool/mta-lite",
        "listen": [{"address": f"127.0.0.1:{port}"}], "relays": {"isp": relay}, **extra,
    }).encode()


@pytest.fixture
def path(tmp_path):
    (tmp_path / "isp.secret").write_text(PASSWORD + "\n")
    return str(tmp_path / "mta-lite.toml")


def read(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def leftovers(path) -> list[str]:
    return [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]


def test_apply_valid_config_installs_it_as_generation_one(path):
    result = configgen.apply_config(path, config_bytes(), "test")
    assert (result.generation, result.changed) == (1, True)
    assert read(path) == config_bytes()
    assert stat.S_IMODE(os.stat(path).st_mode) == configgen.DEFAULT_MODE
    [gen] = configgen.generations(path)
    assert gen.current and gen.number == 1 and gen.digest == result.digest
    assert stat.S_IMODE(os.stat(gen.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(gen.path)).st_mode) == 0o700


def test_apply_invalid_config_changes_nothing_and_names_source_key_value(path):
    configgen.apply_config(path, config_bytes(), "test")
    before = configgen.generations(path)
    with pytest.raises(ConfigError) as info:
        configgen.apply_config(path, config_bytes(port=99999, inline=True), "usb:MTACONFIG/mta-lite.toml")
    message = str(info.value)
    assert message.startswith("usb:MTACONFIG/mta-lite.toml: listen[0].address: ") and "99999" in message
    assert PASSWORD not in message
    assert read(path) == config_bytes()
    assert configgen.generations(path) == before
    assert leftovers(path) == []


def test_apply_not_toml_names_source(path):
    with pytest.raises(ConfigError, match=r"^console upload: not valid TOML"):
        configgen.apply_config(path, b"\xff\xfe garbage", "console upload")
    assert not os.path.exists(path) and leftovers(path) == []


def test_apply_oversized_config_is_refused_before_parsing(path):
    data = config_bytes() + b"#" * configgen.MAX_CONFIG_BYTES
    with pytest.raises(ConfigError, match="over the 65536-byte limit"):
        configgen.apply_config(path, data, "test")
    assert not os.path.exists(path)


def test_apply_resolves_password_file_against_config_directory(path, tmp_path):
    data = config_bytes()
    assert configgen.apply_config(path, data, "test").changed
    missing = data.replace(b"isp.secret", b"gone.secret")
    with pytest.raises(ConfigError, match=r"relays\.isp\.password_file: file not found"):
        configgen.apply_config(path, missing, "test")
    assert read(path) == data


def test_apply_same_bytes_twice_adds_no_generation(path):
    configgen.apply_config(path, config_bytes(), "test")
    result = configgen.apply_config(path, config_bytes(), "test")
    assert (result.generation, result.changed) == (1, False)
    assert len(configgen.generations(path)) == 1


def test_apply_after_hand_edit_keeps_the_edited_file_as_a_generation(path):
    configgen.apply_config(path, config_bytes(), "test")
    with open(path, "wb") as handle:
        handle.write(config_bytes(port=2600))
    configgen.apply_config(path, config_bytes(port=2700), "test")
    assert [g.number for g in configgen.generations(path)] == [3, 2, 1]
    assert read(configgen.generations(path)[1].path) == config_bytes(port=2600)


def test_apply_keeps_owner_group_and_mode_of_replaced_file(path):
    with open(path, "wb") as handle:
        handle.write(config_bytes())
    os.chmod(path, 0o604)
    if os.geteuid() == 0:
        os.chown(path, 1, 2)
    configgen.apply_config(path, config_bytes(port=2600), "test")
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o604
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (1, 2)


def test_rollback_installs_previous_generation(path):
    configgen.apply_config(path, config_bytes(port=2600), "test")
    configgen.apply_config(path, config_bytes(port=2700), "test")
    result = configgen.rollback(path)
    assert read(path) == config_bytes(port=2600)
    assert result.generation == 3 and result.changed
    assert configgen.rollback(path).generation == 4 and read(path) == config_bytes(port=2700)


def test_rollback_to_numbered_generation(path):
    for port in (2600, 2700, 2800):
        configgen.apply_config(path, config_bytes(port=port), "test")
    configgen.rollback(path, 1)
    assert read(path) == config_bytes(port=2600)


def test_rollback_unknown_generation_lists_kept_ones(path):
    configgen.apply_config(path, config_bytes(), "test")
    with pytest.raises(ConfigError, match=r"no generation 7 \(kept: 1\)"):
        configgen.rollback(path, 7)


def test_rollback_without_history_is_an_error(path):
    with pytest.raises(ConfigError, match="no earlier generation"):
        configgen.rollback(path)
    configgen.apply_config(path, config_bytes(), "test")
    with pytest.raises(ConfigError, match="no earlier generation"):
        configgen.rollback(path)


def test_rollback_to_generation_that_no_longer_validates_changes_nothing(path, tmp_path):
    configgen.apply_config(path, config_bytes(), "test")
    configgen.apply_config(path, config_bytes(port=2600, inline=True), "test")
    os.unlink(tmp_path / "isp.secret")
    installed = read(path)
    with pytest.raises(ConfigError, match=r"^generation 1: relays\.isp\.password_file"):
        configgen.rollback(path)
    assert read(path) == installed


def test_generations_are_pruned_to_the_newest_ones(path):
    for port in range(2600, 2600 + configgen.KEEP_GENERATIONS + 3):
        configgen.apply_config(path, config_bytes(port=port), "test")
    numbers = [g.number for g in configgen.generations(path)]
    assert numbers == list(range(configgen.KEEP_GENERATIONS + 3, 3, -1))


def secret_files(tmp_path) -> list[str]:
    return sorted(os.listdir(tmp_path / "secrets")) if (tmp_path / "secrets").exists() else []


def test_apply_inline_password_moves_it_out_of_installed_file(path, tmp_path):
    """S7: smtpd reads the installed config; an uploaded password must not be in it."""
    result = configgen.apply_config(path, config_bytes(inline=True), "console upload")
    installed = read(path)
    assert PASSWORD.encode() not in installed
    [name] = secret_files(tmp_path)
    assert name == "g000001-relay0-isp.pw"
    assert (tmp_path / "secrets" / name).read_text() == PASSWORD
    assert stat.S_IMODE(os.stat(tmp_path / "secrets" / name).st_mode) == 0o640
    assert configgen.generations(path)[0].current and configgen.generations(path)[0].digest == result.digest
    assert read(configgen.generations(path)[0].path) == config_bytes(inline=True), "kept as given"


def test_apply_inline_sender_password_moves_it_out(path, tmp_path):
    sender = {"address": "alice@lan.test", "relay": "isp", "username": "alice@isp.test", "password": PASSWORD + "-a"}
    configgen.apply_config(path, config_bytes(senders=[sender]), "test")
    assert PASSWORD.encode() not in read(path)
    assert secret_files(tmp_path) == ["g000001-sender0.pw"]


def test_rollback_restores_the_earlier_generations_password(path, tmp_path):
    configgen.apply_config(path, config_bytes(inline=True), "test")
    configgen.apply_config(path, config_bytes(inline=True).replace(PASSWORD.encode(), b"other-password-1"), "test")
    configgen.rollback(path)
    relay_file = tomllib.loads(read(path).decode())["relays"]["isp"]["password_file"]
    assert (tmp_path / relay_file).read_text() == PASSWORD


def test_prune_removes_password_files_of_dropped_generations_only(path, tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "isp.pw").write_text("the admin's own")
    for port in range(2600, 2600 + configgen.KEEP_GENERATIONS + 2):
        configgen.apply_config(path, config_bytes(port=port, inline=True), "test")
    numbers = {g.number for g in configgen.generations(path)}
    own = [n for n in secret_files(tmp_path) if n.startswith("g")]
    assert {int(n[1:7]) for n in own} == numbers
    assert "isp.pw" in secret_files(tmp_path)


def test_apply_password_with_control_character_is_refused_without_showing_it(path):
    data = config_bytes(inline=True).replace(PASSWORD.encode(), (PASSWORD + "\\r\\n").encode())
    with pytest.raises(ConfigError, match=r"relays\.isp\.password: the password contains a control character") as info:
        configgen.apply_config(path, data, "test")
    assert PASSWORD not in str(info.value)


def test_apply_password_file_not_utf8_is_a_config_error(path, tmp_path):
    (tmp_path / "isp.secret").write_bytes(b"\xffpw")
    with pytest.raises(ConfigError, match=r"relays\.isp\.password_file: .*not UTF-8 at byte 0"):
        configgen.apply_config(path, config_bytes(), "test")


def test_apply_deeply_nested_toml_is_a_config_error(path):
    data = b"a = " + b"[" * 30000 + b"]" * 30000 + b"\n"
    with pytest.raises(ConfigError, match="^test: not valid TOML"):
        configgen.apply_config(path, data, "test")


def test_apply_install_failure_leaves_no_new_generation_or_password_file(path, tmp_path, monkeypatch):
    configgen.apply_config(path, config_bytes(), "test")

    def failing_install(*_):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(configgen, "_install", failing_install)
    with pytest.raises(OSError):
        configgen.apply_config(path, config_bytes(port=2600, inline=True), "test")
    assert [g.number for g in configgen.generations(path)] == [1]
    assert secret_files(tmp_path) == []
    assert read(path) == config_bytes()

"""mta-lite-flash's command line (tools/mta_lite_tools/flash/cli.py) and boot partition
lookup (bootconfig.py): usage errors and exit statuses, the config checked by the box's own
validator before anything is written, and the MBR read from the image's first sector.

The card written with --config and read back with mtools is in
tests/integration/test_flash_files.py and test_flash_loop.py."""

from __future__ import annotations

import ast
import io
import pathlib
import struct

import pytest

from mta_lite_tools.flash import cli
from mta_lite_tools.flash.bootconfig import boot_partition, parse_mbr
from mta_lite_tools.flash.errors import ImageError
from tests.support.stick import config_bytes

REPO = pathlib.Path(__file__).resolve().parents[2]


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), streams=cli.Streams(io.StringIO(), out, err))
    return status, out.getvalue(), err.getvalue()


def _mbr(*entries: tuple[int, int, int]) -> bytes:
    """A first sector with (type, first sector, sectors) primary entries and the signature."""
    sector = bytearray(512)
    for index, (type_id, first, count) in enumerate(entries):
        at = 446 + 16 * index
        sector[at + 4] = type_id
        struct.pack_into("<II", sector, at + 8, first, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "card.img"
    path.write_bytes(_mbr((0x0C, 2048, 16384), (0x83, 18432, 14336)) + bytes(16 * 1024 * 1024 - 512))
    return str(path)


def test_cli_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "IMAGE [DEVICE]" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: IMAGE"),
    (["a.img", "b", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["a.img", "b", "--bmap", "a.bmap", "--no-bmap"], "--bmap and --no-bmap contradict each other"),
    (["a.img", "--to-file"], "--to-file needs a DEVICE"),
])
def test_cli_bad_command_line_exits_64(argv, message):
    status, out, err = _main(*argv)
    assert status == 64
    assert message in err and err.count("\n") == 1 and out == ""


def test_cli_missing_image_exits_66_nothing_written(tmp_path):
    status, _, err = _main(str(tmp_path / "none.img"), str(tmp_path / "out"), "--to-file")
    assert status == 66
    assert err.endswith("none.img: cannot open the image: No such file or directory; nothing was written\n")
    assert not (tmp_path / "out").exists()


def test_cli_missing_bmap_given_exits_66(tmp_path, image):
    status, _, err = _main(image, str(tmp_path / "out"), "--to-file", "--bmap", str(tmp_path / "none.bmap"))
    assert status == 66 and "none.bmap: no such bmap file" in err


def test_cli_broken_config_exits_78_with_the_box_line_nothing_written(tmp_path, image):
    config = tmp_path / "mta-lite.toml"
    config.write_bytes(config_bytes(relays={"isp": {"host": "smtp.isp.example", "port": "587"}}))
    status, out, err = _main(image, str(tmp_path / "out"), "--to-file", "--config", str(config))
    assert status == 78
    assert err == f"mta-lite-flash: {config}: relays.isp.port: expected int, got '587'\n"
    assert out == ""
    assert not (tmp_path / "out").exists()


def test_cli_config_with_relative_password_file_refused_with_a_hint(tmp_path, image):
    config = tmp_path / "mta-lite.toml"
    (tmp_path / "isp.pw").write_text("secret\n")      # beside the config here, but not on the box
    config.write_bytes(config_bytes(relays={"isp": {"host": "smtp.isp.example", "username": "u@isp.example",
                                                    "password_file": "isp.pw"}}))
    status, _, err = _main(image, str(tmp_path / "out"), "--to-file", "--config", str(config))
    assert status == 78
    assert err.startswith(f"mta-lite-flash: {config}: relays.isp.password_file: file not found: ")
    assert "write the password inline (password = \"...\")" in err and err.count("\n") == 1


def test_cli_config_error_never_shows_the_password(tmp_path, image):
    config = tmp_path / "mta-lite.toml"
    config.write_bytes(config_bytes(relays={"isp": {"host": "smtp.isp.example", "password": "hunter2-secret"}}))
    status, _, err = _main(image, str(tmp_path / "out"), "--to-file", "--config", str(config))
    assert status == 78 and "relays.isp.username: password given without username" in err
    assert "hunter2" not in err


def test_cli_missing_config_exits_66(tmp_path, image):
    status, _, err = _main(image, str(tmp_path / "out"), "--to-file", "--config", str(tmp_path / "none.toml"))
    assert status == 66 and "none.toml: no such config file; nothing was written" in err


def test_cli_config_for_image_without_fat_partition_exits_65_nothing_written(tmp_path):
    image = tmp_path / "linux.img"
    image.write_bytes(_mbr((0x83, 2048, 8192)) + bytes(8 * 1024 * 1024))
    config = tmp_path / "mta-lite.toml"
    config.write_bytes(config_bytes())
    status, _, err = _main(str(image), str(tmp_path / "out"), "--to-file", "--config", str(config))
    assert status == 65, err
    assert "the image has no FAT partition for mta-lite.toml (partitions: type 0x83); nothing was written" in err
    assert not (tmp_path / "out").exists()


def test_parse_mbr_reads_the_primary_entries():
    entries = parse_mbr(_mbr((0x0C, 2048, 16384), (0x83, 18432, 14336)))
    assert [(e.number, e.kind, e.start, e.size) for e in entries] == [
        (1, "FAT32 LBA", 1048576, 8388608), (2, "type 0x83", 9437184, 7340032)]


def test_boot_partition_first_fat_partition_chosen():
    boot = boot_partition(_mbr((0x83, 2048, 100), (0x0E, 4096, 100), (0x0C, 8192, 100)), "x.img", 10**7)
    assert (boot.number, boot.start) == (2, 4096 * 512)


@pytest.mark.parametrize("sector, message", [
    (bytes(512), "no MBR partition table"),
    (_mbr((0xEE, 1, 100000)), "GPT partition table"),
    (_mbr((0x83, 2048, 100)), "no FAT partition"),
    (_mbr((0x0C, 2048, 10**6)), "ends beyond the image"),
])
def test_boot_partition_unusable_table_refused(sector, message):
    with pytest.raises(ImageError, match=message):
        boot_partition(sector, "x.img", 10**7)


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_relay_and_board_never_import_the_flash_tool():
    for path in [*(REPO / "mta_lite").rglob("*.py"), *(REPO / "board").rglob("*.py")]:
        assert not any(name.split(".")[0] == "mta_lite_tools" for name in _imports(path)), path

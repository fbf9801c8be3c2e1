"""The SD-card image recipe's pure parts (firmware/image/layout.py, manifest.py, rootfs.py):
partition plan, partition table, fstab, kernel command line, units, manifest format, cache key.

No image is built here: `make image-test` builds and boots the real one, and
tests/unit/test_image_disk.py inspects a reduced one made by the same code.
"""

from __future__ import annotations

import inspect
import pathlib

import pytest

from firmware.image import build, layout, manifest, rootfs
from mta_lite.qmgr import clock

FIRMWARE = pathlib.Path(__file__).resolve().parents[2] / "firmware"


def test_one_variable_names_the_debian_release():
    assert layout.SUITE == "trixie"
    recipe = "".join(p.read_text() for p in (FIRMWARE / "image").glob("*.py"))
    assert recipe.count('"trixie"') == 1, "the suite is named once, in layout.SUITE"


def test_partitions_boot_fat32_then_root_ext4_aligned_to_4_mib():
    boot, root = layout.partition_plan()
    assert (boot.number, boot.fstype, boot.type_code, boot.label) == (1, "vfat", "c", layout.BOOT_LABEL)
    assert (root.number, root.fstype, root.type_code, root.label) == (2, "ext4", "83", layout.ROOT_LABEL)
    assert boot.start_mib == 4 and root.start_mib == boot.start_mib + boot.size_mib
    assert all(p.start_mib % 4 == 0 for p in (boot, root))
    assert layout.image_bytes((boot, root)) == (4 + layout.BOOT_MIB + layout.ROOT_MIB) * layout.MIB


def test_data_partition_starts_where_the_image_ends_and_never_moves():
    # Cards upgraded in place find their data here: changing it would format them.
    assert layout.DATA_START_MIB == 2308
    assert layout.DATA_START_MIB * layout.MIB == layout.image_bytes(layout.partition_plan())
    conf = dict(line.split("=", 1) for line in layout.image_conf().splitlines())
    assert int(conf["DATA_START_SECTOR"]) * layout.SECTOR_BYTES == layout.DATA_START_MIB * layout.MIB
    assert conf["DATA_LABEL"] == layout.DATA_LABEL
    assert conf["DATA_DIRS"].strip('"').split() == [sub for sub, _ in layout.DATA_BINDS]


def test_labels_fit_their_file_systems():
    assert len(layout.BOOT_LABEL) <= 11 and layout.BOOT_LABEL == layout.BOOT_LABEL.upper()
    assert all(len(label) <= 16 for label in (layout.ROOT_LABEL, layout.DATA_LABEL))
    assert len({layout.BOOT_LABEL, layout.ROOT_LABEL, layout.DATA_LABEL, "MTACONFIG"}) == 4


def test_sfdisk_script_is_mbr_with_a_fixed_disk_id_and_bootable_fat():
    script = layout.sfdisk_script(layout.partition_plan())
    assert script.splitlines()[:3] == ["label: dos", "label-id: 0x6d74616c", "unit: sectors"]
    rows = [line for line in script.splitlines() if line.startswith("start=")]
    assert rows == ["start=8192, size=524288, type=c, bootable", "start=532480, size=4194304, type=83"]


def fstab_rows() -> dict[str, list[str]]:
    rows = [line.split("\t") for line in layout.fstab().splitlines() if line and not line.startswith("#")]
    assert all(len(row) == 6 for row in rows)
    return {row[1]: row for row in rows}


def test_fstab_root_read_only_data_by_label_binds_and_ram():
    rows = fstab_rows()
    assert rows["/"][0] == f"LABEL={layout.ROOT_LABEL}" and "ro" in rows["/"][3].split(",")
    data = rows[layout.DATA_MOUNT]
    assert data[0] == f"LABEL={layout.DATA_LABEL}" and data[2] == "ext4"
    assert {"nodev", "nosuid", "noexec"} <= set(data[3].split(","))
    for sub, target in layout.DATA_BINDS:
        assert rows[target][0] == f"{layout.DATA_MOUNT}/{sub}" and rows[target][3].startswith("bind")
    for path in ("/tmp", "/var/tmp", "/var/log"):
        assert rows[path][2] == "tmpfs"
    assert {"/var/spool/mta-lite", "/etc/mta-lite", "/var/lib/systemd/timesync"} <= set(rows)


def test_cmdline_read_only_root_by_label_and_no_console_on_the_uart():
    words = layout.cmdline().split()
    assert layout.cmdline().endswith("\n") and layout.cmdline().count("\n") == 1
    assert f"root=LABEL={layout.ROOT_LABEL}" in words and "ro" in words and "rw" not in words
    assert [w for w in words if w.startswith("console=")] == ["console=tty1"]


def test_enabled_units_exist_and_the_split_halves_are_not_enabled():
    units = {p.name for p in (FIRMWARE / "systemd").iterdir()}
    ours = [u for u in layout.ENABLED_UNITS if u.startswith("mta-lite")]
    assert set(ours) <= units
    assert set(layout.DISABLED_UNITS) <= units
    assert not set(layout.ENABLED_UNITS) & set(layout.DISABLED_UNITS)
    assert {"mta-lite.service", "mta-lite-board.service", "mta-lite-firstboot.service",
            "systemd-timesyncd.service"} <= set(layout.ENABLED_UNITS)
    assert not [u for u in layout.ENABLED_UNITS if "ssh" in u]
    assert "openssh-server" not in layout.PACKAGES


def test_firmware_files_exist():
    for src, target in layout.FIRMWARE_FILES:
        assert (FIRMWARE / src).is_file() and target.startswith("/usr/lib/")


STATUS = """Package: zlib1g
Status: install ok installed
Architecture: arm64
Version: 1:1.3.dfsg+really1.3.1-1+b1
Description: compression
 more text: with a colon

Package: gone
Status: deinstall ok config-files
Architecture: arm64
Version: 1.0

Package: apt
Status: install ok installed
Architecture: arm64
Version: 3.0.3
"""


def test_manifest_lists_installed_debian_packages_sorted():
    assert manifest.dpkg_packages(STATUS) == [("apt", "3.0.3", "arm64"),
                                              ("zlib1g", "1:1.3.dfsg+really1.3.1-1+b1", "arm64")]


def test_manifest_format(tmp_path):
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    site = tmp_path / "usr/lib/mta-lite/venv/lib/python3.13/site-packages"
    for name, version in (("mta_lite-0.1.0", "0.1.0"), ("aiosmtplib-5.1.3", "5.1.3")):
        (site / f"{name}.dist-info").mkdir(parents=True)
        pkg = name.split("-")[0].replace("_", "-")
        (site / f"{name}.dist-info/METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: {version}\n\nbody")
    text = manifest.manifest(tmp_path, [("image", "mta-lite-0.1.0-arm64"), ("source_date_epoch", "1700000000")],
                             layout.VENV)
    assert text.splitlines() == [
        manifest.HEADER, "image mta-lite-0.1.0-arm64", "source_date_epoch 1700000000",
        "deb apt 3.0.3 arm64", "deb zlib1g 1:1.3.dfsg+really1.3.1-1+b1 arm64",
        "python aiosmtplib 5.1.3", "python mta-lite 0.1.0"]


def test_rootfs_cache_key_covers_the_package_list(monkeypatch):
    key = rootfs.cache_key()
    assert len(key) == 16 and key == rootfs.cache_key()
    monkeypatch.setattr(layout, "PACKAGES", layout.PACKAGES + ("vim",))
    assert rootfs.cache_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(layout, "SUITE", "forky")
    assert rootfs.cache_key() != key


def test_mmdebstrap_command_diverts_initramfs_and_takes_only_the_locked_wheels(tmp_path):
    argv = rootfs.mmdebstrap_argv(tmp_path / "wheels", tmp_path / "out.tar")
    assert argv[0] == "mmdebstrap" and f"--arch={layout.ARCH}" in argv
    assert f"--components={','.join(layout.COMPONENTS)}" in argv and "non-free-firmware" in layout.COMPONENTS
    assert argv[-3:] == [layout.SUITE, str(tmp_path / "out.tar"), layout.MIRROR]
    assert any(a.startswith("--essential-hook=") and a.endswith("essential.sh") for a in argv)
    hook = (FIRMWARE / "image/hooks/customize.sh").read_text()
    assert "--no-index" in hook and "--require-hashes" in hook and "update-initramfs -c" in hook
    assert all("--hash=sha256:" in line for line in rootfs.WHEELS_LOCK.read_text().splitlines()
               if line and not line.startswith("#"))


@pytest.mark.parametrize("script", ["hooks/essential.sh", "hooks/customize.sh", "files/mta-lite-data",
                                    "install-deps.sh"])
def test_shell_scripts_are_strict(script):
    text = (FIRMWARE / "image" / script).read_text()
    assert text.startswith("#!/usr/bin/env bash\n#") and "set -euo pipefail" in text


def test_every_runtime_dependency_is_in_the_wheel_lock():
    """The image installs mta-lite with --no-deps from the locked wheels: a dependency added to
    pyproject.toml but not to firmware/image/wheels.lock would be missing on the box."""
    import re
    import tomllib
    project = tomllib.loads((FIRMWARE.parent / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower().replace("_", "-")
              for dep in project["dependencies"]}
    locked = {line.split("==")[0].lower() for line in rootfs.WHEELS_LOCK.read_text().splitlines()
              if line and not line.startswith("#")}
    assert wanted <= locked, f"not in wheels.lock: {sorted(wanted - locked)}"


def test_build_stamps_its_time_where_the_relay_reads_its_clock_floor(tmp_path):
    """Static: configure_system() (run by every `make image`) writes the stamp, at the path
    qmgr/clock.py reads, and the relay reads back the build's SOURCE_DATE_EPOCH."""
    assert layout.BUILD_TIME_FILE == clock.BUILD_TIME_FILE
    assert "stamp_build_time(root, sde)" in inspect.getsource(build.configure_system)
    assert "configure_system(root, sde)" in inspect.getsource(build.build)
    sde = int(clock.RELEASE_TIME) + 86400
    build.stamp_build_time(tmp_path, sde)
    stamp = tmp_path / layout.BUILD_TIME_FILE.lstrip("/")
    assert stamp.read_text() == f"{sde}\n" and stamp.stat().st_mode & 0o777 == 0o644
    assert clock.read_build_time(str(stamp)) == sde


def test_build_without_a_source_date_stamps_its_own_time():
    assert build.build_time_stamp(0, now=1900000000.7) == "1900000000\n"
    assert build.build_time_stamp(1800000000, now=1900000000.0) == "1800000000\n"

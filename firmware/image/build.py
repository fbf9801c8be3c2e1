"""build — `make image`: the SD-card image, from the cached root file system and this tree.

    python3 -m firmware.image.build [--dist DIR] [--work DIR] [--cache DIR] [--no-xz]

Steps (each prints a line): the root file system (rootfs.py, cached) and the compiled wheels
(wheels.py, cached); mta-lite's own wheel; a copy of the root with mta-lite, its units, users
and settings installed (firmware/); the boot partition's files; the disk image (disk.py);
then into dist/: mta-lite-VERSION-arm64.img.xz, .bmap, .sha256 and .manifest.

SOURCE_DATE_EPOCH is the last commit's time (or the environment's): every file in the image
is dated at most then, and /usr/lib/clock-epoch carries it, so the box's clock never starts
before it. /usr/lib/mta-lite/build-time holds it too, as decimal seconds: the relay's
trusted clock floor (mta_lite/qmgr/clock.py BUILD_TIME), so no constant needs editing at a
release (without a SOURCE_DATE_EPOCH at all, the build's own time). Two builds of the same
tree from the same cache are the same bytes.
Guarantees: dist/ only ever holds complete artifacts (written under .partial, renamed last);
the cached root file system is never changed (each build works on its own copy).
Must never: run without root (owners in the image must be exact), or leave mounts behind.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import time
import tomllib

from . import disk, layout, manifest, rootfs, wheels

REPO = pathlib.Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
HERE = FIRMWARE / "image"
# Units whose timers or jobs write to the root file system: nothing to do on a read-only one.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
                "systemd-machine-id-commit.service", "systemd-networkd-persistent-storage.service",
                # User sessions and lingering (state in /var/lib): the box has no logins.
                "systemd-logind.service")
# xz level 6 (its default) with two threads: ~2.5 minutes for the release image here.
XZ_ARGS = ("xz", "-6", "-T2", "--keep", "--force")
T0 = time.monotonic()


def say(line: str) -> None:
    print(f"image: [{time.monotonic() - T0:6.1f}s] {line}", flush=True)


def source_date_epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


def build_time_stamp(sde: int, now: float | None = None) -> str:
    """The content of layout.BUILD_TIME_FILE: SOURCE_DATE_EPOCH, or now when there is none
    (never later than the build), as one line of decimal seconds."""
    return f"{sde or int(time.time() if now is None else now)}\n"


def revision() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def version() -> str:
    """pyproject.toml's version, or mta_lite.__version__ where the version is dynamic."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    if "version" in project:
        return project["version"]
    text = (REPO / "mta_lite" / "__init__.py").read_text()
    return next(line.split("=", 1)[1].strip().strip("\"'") for line in text.splitlines()
                if line.startswith("__version__"))


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kwargs)


@contextlib.contextmanager
def chroot_mounts(root: pathlib.Path):
    """/proc and /dev inside the root while commands run in it under qemu-user."""
    mounted = []
    try:
        for kind, target in (("proc", "proc"), ("dev", "dev")):
            path = root / target
            path.mkdir(exist_ok=True)
            run(["mount", "-t", "proc", "proc", str(path)] if kind == "proc" else ["mount", "--bind", "/dev", str(path)])
            mounted.append(path)
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(path)], check=False)


def mta_lite_wheel(dest: pathlib.Path, sde: int) -> pathlib.Path:
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(REPO)],
        env=dict(os.environ, SOURCE_DATE_EPOCH=str(sde)), stderr=subprocess.DEVNULL)
    return next(dest.glob("mta_lite-*.whl"))


def extract(tarball: pathlib.Path, root: pathlib.Path) -> None:
    root.mkdir(parents=True)
    run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tarball), "-C", str(root)])


def install_file(src: pathlib.Path, root: pathlib.Path, target: str, mode: int = 0o644) -> None:
    dest = root / target.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, mode)


def write_file(root: pathlib.Path, target: str, text: str, mode: int = 0o644) -> None:
    dest = root / target.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    os.chmod(dest, mode)


def install_firmware(root: pathlib.Path) -> None:
    """Units, users, directories, udev rules, settings and helper scripts of firmware/."""
    for unit in sorted((FIRMWARE / "systemd").iterdir()):
        install_file(unit, root, f"/usr/lib/systemd/system/{unit.name}")
    for rule in sorted((FIRMWARE / "udev").iterdir()):
        install_file(rule, root, f"/usr/lib/udev/rules.d/{rule.name}")
    for src, target in layout.FIRMWARE_FILES[:2]:
        install_file(FIRMWARE / src, root, target)
    for src in sorted(p for p in (HERE / "overlay").rglob("*") if p.is_file()):
        install_file(src, root, "/" + src.relative_to(HERE / "overlay").as_posix())
    for script in sorted((HERE / "files").iterdir()):
        install_file(script, root, f"{layout.LIBEXEC}/{script.name}", 0o755)
    install_file(REPO / "README.md", root, "/usr/share/doc/mta-lite/README.md")
    install_file(REPO / "docs" / "box.md", root, "/usr/share/doc/mta-lite/box.md")
    write_file(root, "/etc/fstab", layout.fstab())
    write_file(root, f"{layout.LIBEXEC}/image.conf", layout.image_conf())
    write_file(root, "/etc/machine-id", "")     # a fresh id at every boot, kept in RAM
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    # Mount points: a read-only root cannot get them at boot.
    for path in (layout.DATA_MOUNT, *(target for _, target in layout.DATA_BINDS)):
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)


def install_python(root: pathlib.Path, wheel_files: list[pathlib.Path]) -> None:
    """mta-lite and the compiled wheels into the venv (the third-party ones are there already)."""
    inbox = root / "tmp/mta-lite-wheels"
    inbox.mkdir(parents=True, exist_ok=True)
    for wheel in wheel_files:
        shutil.copyfile(wheel, inbox / wheel.name)
    venv = layout.VENV
    names = [f"/tmp/mta-lite-wheels/{w.name}" for w in wheel_files]
    env = dict(os.environ, PYTHONHASHSEED="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    run(["chroot", str(root), f"{venv}/bin/pip", "install", "--quiet", "--no-index", "--no-deps",
         "--no-cache-dir", "--no-compile", *names], env=env)
    # Only what was just installed: the rest of the venv was compiled with the cached root.
    site = next((root / venv.lstrip("/")).glob("lib/python3*/site-packages"))
    fresh = [f"/{p.relative_to(root)}" for p in sorted(site.iterdir())
             if p.name in ("mta_lite", "mta_lite_board", "mta_lite_tools") or p.name.startswith("lgpio")
             and p.suffix in (".py", "")]
    run(["chroot", str(root), f"{venv}/bin/python3", "-m", "compileall", "-q", "-f",
         "--invalidation-mode", "unchecked-hash", *fresh], env=env)
    shutil.rmtree(inbox)
    for command in layout.COMMANDS:
        link = root / "usr/bin" / command
        link.unlink(missing_ok=True)
        link.symlink_to(f"{venv}/bin/{command}")


def enable_units(root: pathlib.Path, units: tuple[str, ...], masked: tuple[str, ...] = ()) -> None:
    """systemctl --root: the [Install] sections of the units, applied offline."""
    run(["systemctl", f"--root={root}", "enable", "--quiet", *units])
    if masked:
        run(["systemctl", f"--root={root}", "mask", "--quiet", *masked])


def configure_system(root: pathlib.Path, sde: int) -> None:
    """Users (the root file system is read-only at run time), enabled and masked units, clock."""
    run(["chroot", str(root), "systemd-sysusers"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    enable_units(root, layout.ENABLED_UNITS, MASKED_UNITS)
    epoch = root / "usr/lib/clock-epoch"
    epoch.touch()
    os.utime(epoch, (sde, sde))
    stamp_build_time(root, sde)
    for leftover in ("var/log", "var/cache/apt", "var/lib/apt/lists", "tmp"):
        for item in (root / leftover).glob("*"):
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def stamp_build_time(root: pathlib.Path, sde: int) -> None:
    """The relay's trusted clock floor for this image (layout.BUILD_TIME_FILE, read by
    mta_lite/qmgr/clock.py at start): mode 0644, every service user reads it."""
    write_file(root, layout.BUILD_TIME_FILE, build_time_stamp(sde))


def boot_files(root: pathlib.Path, boot: pathlib.Path) -> None:
    """The boot partition: what raspi-firmware put into /boot/firmware, our cmdline.txt, the
    example config. /boot/firmware stays as an empty mount point in the root file system."""
    firmware = root / "boot/firmware"
    shutil.copytree(firmware, boot, symlinks=False)
    shutil.rmtree(firmware)
    firmware.mkdir()
    (boot / "cmdline.txt").write_text(layout.cmdline())
    config = (boot / "config.txt").read_text()
    if "enable_uart=1" not in config.split():
        config += "\n# mta-lite: the board daemon's serial console on GPIO 14/15 (/dev/serial0)\nenable_uart=1\n"
    (boot / "config.txt").write_text(config)
    shutil.copyfile(HERE / "mta-lite.toml.example", boot / "mta-lite.toml.example")


def clamp_mtimes(tree: pathlib.Path, sde: int) -> None:
    """Nothing in the image is dated after SOURCE_DATE_EPOCH (reproducible file systems)."""
    for path in [tree, *tree.rglob("*")]:
        st = path.lstat()
        if st.st_mtime > sde or st.st_atime > sde:
            os.utime(path, (sde, min(st.st_mtime, sde)), follow_symlinks=False)


def kernel_version(root: pathlib.Path) -> str:
    return sorted(p.name for p in (root / "usr/lib/modules").iterdir())[-1]


def publish(img: pathlib.Path, root: pathlib.Path, dist: pathlib.Path, facts: list, xz: bool) -> list[pathlib.Path]:
    """dist/: the compressed image, its bmap, the manifest and the checksums."""
    dist.mkdir(parents=True, exist_ok=True)
    base = f"mta-lite-{version()}-{layout.ARCH}"
    bmap = dist / f"{base}.bmap"
    run(["bmaptool", "--quiet", "create", "--output", str(bmap) + ".partial", str(img)])
    os.replace(str(bmap) + ".partial", bmap)
    (dist / f"{base}.manifest").write_text(manifest.manifest(root, facts, layout.VENV))
    outputs = [bmap, dist / f"{base}.manifest"]
    if xz:
        say(f"xz: {base}.img.xz (about 2-3 minutes)")
        packed = dist / f"{base}.img.xz"
        with open(str(packed) + ".partial", "wb") as out:
            run([*XZ_ARGS, "--stdout", str(img)], stdout=out)
        os.replace(str(packed) + ".partial", packed)
        outputs.insert(0, packed)
    sums = "".join(f"{_sha256(p)}  {p.name}\n" for p in outputs)
    (dist / f"{base}.sha256").write_text(sums)
    return outputs + [dist / f"{base}.sha256"]


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(args: argparse.Namespace) -> pathlib.Path:
    sde = source_date_epoch()
    say(f"mta-lite {version()} ({revision()}), Debian {layout.SUITE} {layout.ARCH}, SOURCE_DATE_EPOCH={sde}")
    tarball = rootfs.ensure_rootfs(args.cache, sde, say)
    compiled = sorted(wheels.ensure_wheels(args.cache, sde, say).glob("*.whl"))
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    say("wheel: mta-lite")
    own = mta_lite_wheel(work / "wheels", sde)
    root, boot = work / "root", work / "boot"
    say(f"root: extracting {tarball.name}")
    extract(tarball, root)
    say("root: firmware (units, users, udev, fstab, settings)")
    install_firmware(root)
    with chroot_mounts(root):
        say(f"root: python packages into {layout.VENV} ({own.name}, {', '.join(w.name for w in compiled)})")
        install_python(root, [own, *compiled])
        say("root: users, units enabled: " + " ".join(layout.ENABLED_UNITS))
        configure_system(root, sde)
    say("boot: firmware, kernel, initrd, config.txt, cmdline.txt, mta-lite.toml.example")
    boot_files(root, boot)
    facts = [("image", f"mta-lite-{version()}-{layout.ARCH}"), ("revision", revision()),
             ("suite", layout.SUITE), ("kernel", kernel_version(root)),
             ("source_date_epoch", str(sde)), ("rootfs_source_date_epoch", str(rootfs.rootfs_epoch(tarball)))]
    clamp_mtimes(root, sde)
    clamp_mtimes(boot, sde)
    img = work / "disk.img"
    say(f"disk: {img} (boot {layout.BOOT_MIB} MiB FAT32, root {layout.ROOT_MIB} MiB ext4, read-only)")
    disk.make_disk(img, boot, root, layout.partition_plan(), sde)
    # Without xz there is no release: its bmap and manifest stay beside the raw image, and a
    # release already in dist/ is left as it was (never a new bmap beside an old .img.xz).
    dist = work / "dist" if args.no_xz else args.dist
    for output in publish(img, root, dist, facts, not args.no_xz):
        say(f"done: {output}")
    return img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make image", description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=pathlib.Path, default=REPO / "dist")
    parser.add_argument("--work", type=pathlib.Path, default=REPO / "build" / "image")
    parser.add_argument("--cache", type=pathlib.Path, default=rootfs.DEFAULT_CACHE)
    parser.add_argument("--no-xz", action="store_true",
                        help="no release: the raw image, its bmap and manifest stay in --work, dist/ is untouched")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("make image: run as root (mmdebstrap, chroot, exact owners in the image)", file=sys.stderr)
        return 77
    build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""layout — what the SD-card image is made of: Debian suite, packages, partitions, mounts, units.

    partition_plan()            the image's partitions (boot FAT32, root ext4) and where the
                                data partition goes when the box creates it at first boot
    sfdisk_script(plan)         the partition table as sfdisk reads it
    fstab()  cmdline()          /etc/fstab and the kernel command line (cmdline.txt)
    ENABLED_UNITS, DISABLED_UNITS, image_conf()

Everything here is pure data and text: firmware/image/build.py and the tests read the same
values, so the recipe and its checks cannot drift apart. The Debian release is one variable
(SUITE): the next one is a one-line change (and a new rootfs, since the cache key covers it).

Guarantees: DATA_START_MIB never moves between image versions. A new image written over an old
card rewrites the partition table with boot and root only; the box then finds its data
partition at DATA_START_MIB by its label and adopts it with spool, config and secrets intact.
Must never: put the data partition into the image (flashing would overwrite the old one), or
mount the root file system writable.
"""

from __future__ import annotations

from dataclasses import dataclass

SUITE = "trixie"                 # Debian 13; the one place the release is named
ARCH = "arm64"
MIRROR = "http://deb.debian.org/debian"
COMPONENTS = ("main", "non-free-firmware")     # raspi-firmware lives in non-free-firmware

# What the box runs, from Debian. (gpiozero's lgpio pin factory: Debian has no python3-lgpio
# and PyPI no aarch64 wheel of lgpio for trixie's Python 3.13, so wheel.py builds one here,
# in a separate chroot with a compiler; the box has none.) mtools reads the boot partition and
# USB sticks without mounting them; fdisk (sfdisk) and e2fsprogs create and adopt the data
# partition; ca-certificates verify the smarthosts. No ssh server: the box has no login at all.
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "systemd-timesyncd", "systemd-resolved",
    "linux-image-arm64", "raspi-firmware", "initramfs-tools", "kmod",
    "python3", "python3-venv",
    "iproute2", "netbase", "ca-certificates", "mtools", "fdisk", "e2fsprogs",
)
# Left out of the root file system: documentation (copyright files stay), man pages, locales.
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/locale/*", "/usr/share/doc/*", "/usr/share/info/*")
DPKG_INCLUDES = ("/usr/share/doc/*/copyright",)

VENV = "/usr/lib/mta-lite/venv"
LIBEXEC = "/usr/lib/mta-lite"
# The build's SOURCE_DATE_EPOCH for the relay's clock floor (mta_lite/qmgr/clock.py BUILD_TIME_FILE).
BUILD_TIME_FILE = f"{LIBEXEC}/build-time"
COMMANDS = ("mta-lite", "mta-lite-board", "mta-lite-page")        # /usr/bin links into the venv

MIB = 1024 * 1024
SECTOR_BYTES = 512
# The first partition starts at 4 MiB: SD cards erase in blocks of up to 4 MiB, and a
# partition aligned to them does not straddle two (the SD Association's own formatter aligns so).
BOOT_START_MIB = 4
# Firmware, kernel, initrd and device trees take ~80 MiB; room for a second kernel later.
BOOT_MIB = 256
# The root file system uses ~800 MiB; 2 GiB leaves room for later releases without moving
# DATA_START_MIB (which would lose the data partition of every card upgraded in place).
ROOT_MIB = 2048
DATA_START_MIB = BOOT_START_MIB + BOOT_MIB + ROOT_MIB
# The smallest data partition the box creates: a card must be at least this much larger than
# the image (a 4 GB card leaves ~1.4 GiB).
DATA_MIN_MIB = 64
# Fixed so that two builds of the same tree are the same bytes (the MBR disk identifier).
DISK_ID = 0x6d74616c             # "mtal"

BOOT_LABEL = "MTA-BOOT"          # FAT: upper case, at most 11 characters
ROOT_LABEL = "mta-root"
DATA_LABEL = "mta-data"
DATA_MOUNT = "/var/lib/mta-lite"
# What lives on the data partition, and where the read-only system sees it (bind mounts).
DATA_BINDS = (
    ("spool", "/var/spool/mta-lite"),                # the queue
    ("etc", "/etc/mta-lite"),                        # config, generations/, secrets/
    ("timesync", "/var/lib/systemd/timesync"),       # the last synchronised time (clock file)
    ("log", "/var/log/mta-lite"),                    # the small mail log
)
# RAM file systems on the read-only system: what programs expect to write.
TMPFS = (("/tmp", "mode=1777,nosuid,nodev,size=64m"),
         ("/var/tmp", "mode=1777,nosuid,nodev,size=16m"),
         ("/var/log", "mode=0755,nosuid,nodev,noexec,size=16m"))
# Under emulation the data partition can take this long to appear at first boot (created,
# formatted, probed by udev); systemd's default of 90 s is kept as the floor.
DEVICE_TIMEOUT_S = 120

# Units enabled in the image. The relay runs as one unit (`mta-lite serve` as root, dropping
# its children to mta-smtpd and mta-lite; firmware/README.md says why). The split units
# mta-lite-smtpd/qmgr.service and mta-lite.target stay in the repository, not enabled.
ENABLED_UNITS = (
    "mta-lite-data.service", "mta-lite-firstboot.service", "mta-lite.service", "mta-lite.path",
    "mta-lite-board.service", "mta-lite-maillog.service", "mta-lite-page.service", "mta-lite-page.path",
    "systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service",
)
DISABLED_UNITS = ("mta-lite.target", "mta-lite-smtpd.service", "mta-lite-qmgr.service",
                  "mta-lite-config.path")
# The firmware files installed into the image (source under firmware/, target path).
FIRMWARE_FILES = (
    ("sysusers.d/mta-lite.conf", "/usr/lib/sysusers.d/mta-lite.conf"),
    ("tmpfiles.d/mta-lite.conf", "/usr/lib/tmpfiles.d/mta-lite.conf"),
    ("udev/99-mta-lite-usbstick.rules", "/usr/lib/udev/rules.d/99-mta-lite-usbstick.rules"),
)


@dataclass(frozen=True)
class Partition:
    number: int
    label: str
    fstype: str          # "vfat" or "ext4"
    start_mib: int
    size_mib: int
    type_code: str       # MBR partition type: c FAT32 (LBA), 83 Linux

    @property
    def offset(self) -> int:
        return self.start_mib * MIB

    @property
    def size(self) -> int:
        return self.size_mib * MIB


def partition_plan(boot_mib: int = BOOT_MIB, root_mib: int = ROOT_MIB) -> tuple[Partition, ...]:
    """Boot and root; smaller sizes make the reduced image the tests build."""
    boot = Partition(1, BOOT_LABEL, "vfat", BOOT_START_MIB, boot_mib, "c")
    root = Partition(2, ROOT_LABEL, "ext4", boot.start_mib + boot_mib, root_mib, "83")
    return boot, root


def image_bytes(plan: tuple[Partition, ...]) -> int:
    last = plan[-1]
    return last.offset + last.size


def sfdisk_script(plan: tuple[Partition, ...], disk_id: int = DISK_ID) -> str:
    """An MBR table: the Pi's boot ROM reads MBR only; partition 1 is the FAT it boots from."""
    lines = ["label: dos", f"label-id: 0x{disk_id:08x}", "unit: sectors", ""]
    per_mib = MIB // SECTOR_BYTES
    for part in plan:
        boot = ", bootable" if part.number == 1 else ""
        lines.append(f"start={part.start_mib * per_mib}, size={part.size_mib * per_mib}, "
                     f"type={part.type_code}{boot}")
    return "\n".join(lines) + "\n"


def fstab() -> str:
    """Root read-only; data by label, with the box's writable paths bound from it; RAM for the rest."""
    rows = [
        ("# /etc/fstab of the mta-lite image: the system is read-only; what changes lives on",),
        ("# the data partition (found by its label, created at first boot) or in RAM.",),
        (f"LABEL={ROOT_LABEL}", "/", "ext4", "ro,noatime", "0", "1"),
        (f"LABEL={DATA_LABEL}", DATA_MOUNT, "ext4",
         f"noatime,nodev,nosuid,noexec,x-systemd.device-timeout={DEVICE_TIMEOUT_S}s", "0", "2"),
    ]
    for sub, target in DATA_BINDS:
        rows.append((f"{DATA_MOUNT}/{sub}", target, "none",
                     f"bind,x-systemd.requires-mounts-for={DATA_MOUNT}", "0", "0"))
    rows += [("tmpfs", path, "tmpfs", options, "0", "0") for path, options in TMPFS]
    return "\n".join("\t".join(row) for row in rows) + "\n"


def cmdline(consoles: tuple[str, ...] = ("tty1",)) -> str:
    """cmdline.txt: one line. The UART is the board daemon's serial console (/dev/serial0), so
    the kernel and getty stay off it: kernel messages go to the screen (tty1)."""
    words = [f"console={c}" for c in consoles]
    words += [f"root=LABEL={ROOT_LABEL}", "ro", "rootfstype=ext4", "rootwait", "fsck.repair=yes",
              "net.ifnames=0"]
    return " ".join(words) + "\n"


def image_conf() -> str:
    """/usr/lib/mta-lite/image.conf: what the data partition script needs (shell syntax)."""
    return (f"DATA_START_SECTOR={DATA_START_MIB * MIB // SECTOR_BYTES}\n"
            f"DATA_MIN_SECTORS={DATA_MIN_MIB * MIB // SECTOR_BYTES}\n"
            f"DATA_LABEL={DATA_LABEL}\nDATA_DIRS=\"{' '.join(sub for sub, _ in DATA_BINDS)}\"\n")

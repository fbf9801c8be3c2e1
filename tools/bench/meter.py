"""meter: what the benches count besides time: disk bytes at the device, CPU of a process tree.

    LoopFs(workdir)     a fresh ext4 file system in an image file, mounted on a loop device,
                        made and mounted the way the box makes its data partition
                        (firmware/image/files/mta-lite-data: mkfs.ext4 -m 1, nodev,nosuid,noexec);
                        written_bytes() syncs it and reads the device's sectors-written counter,
                        so the journal, directory and inode writes count as well as file data.
    CpuCgroup(name)     a cgroup of its own for one relay: every process started in it and all
                        their descendants, including short-lived ones that have already exited
                        (Postfix's cleanup, trivial-rewrite, smtp), add to cpu_seconds().

Why a cgroup: Postfix's master daemonizes (it is not the launcher's child, so
RUSAGE_CHILDREN misses it) and forks short-lived processes that /proc sampling would miss;
a cgroup's cpu.stat counts every process that ever ran in it, for both relays alike.
Guarantees: every mount it makes is unmounted on exit (the loop device is freed with it);
the cgroup is removed when empty.
Never: touches a device or cgroup it did not create.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

IMAGE_BYTES = 768 * 1024 * 1024
SECTOR_BYTES = 512          # /sys/block/*/stat counts 512-byte sectors whatever the device's block size
# Inode tables and the journal are written by mkfs itself, not by a kernel thread after the
# mount, which would count against the relay under test.
MKFS = ("mkfs.ext4", "-q", "-F", "-m", "1", "-E", "lazy_itable_init=0,lazy_journal_init=0")
MOUNT_OPTIONS = "loop,nodev,nosuid,noexec"
CGROUP_V2_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
CGROUP_V1_CPUACCT = "/sys/fs/cgroup/cpuacct"


class MeterError(RuntimeError):
    """A loop file system or cgroup that could not be set up; the message says what failed."""


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise MeterError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def syncfs(path: Path) -> None:
    """syncfs(2) on the file system holding `path`: dirty data, inodes and the journal."""
    from mta_lite.queue.dirsync import syncfs as _syncfs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _syncfs(fd)
    finally:
        os.close(fd)


class LoopFs:
    """A fresh ext4 on a loop device, mounted at workdir/name; a context manager."""

    def __init__(self, workdir: Path, name: str = "fs") -> None:
        self.image = workdir / f"{name}.img"
        self.mount = workdir / name
        self.device = ""

    def __enter__(self) -> LoopFs:
        self.mount.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as image:
            image.truncate(IMAGE_BYTES)
        _run(*MKFS, str(self.image))
        _run("mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(self.image), str(self.mount))
        self.device = _run("findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(self.mount)).strip()
        # Postfix's daemons and mta-lite's service users traverse it, as they would /var/spool.
        os.chmod(self.mount, 0o755)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device:
            subprocess.run(["umount", str(self.mount)], capture_output=True, timeout=120)
            self.device = ""
        self.image.unlink(missing_ok=True)

    def written_bytes(self) -> int:
        """Bytes the file system has written to its device so far, after a syncfs."""
        syncfs(self.mount)
        fields = Path(f"/sys/block/{os.path.basename(self.device)}/stat").read_text().split()
        return int(fields[6]) * SECTOR_BYTES


    def journal_commits(self) -> int | None:
        """Transactions the file system's journal (jbd2) has committed since the mount;
        None where /proc/fs/jbd2 does not show them (some containers)."""
        name = f"{os.path.basename(self.device)}-8"
        try:
            return int(Path(f"/proc/fs/jbd2/{name}/info").read_text().split(None, 1)[0])
        except (OSError, ValueError, IndexError):
            return None


class CpuCgroup:
    """A cgroup for one relay's processes: enter() from the child before exec (preexec_fn)."""

    def __init__(self, name: str) -> None:
        self.path, self.v2 = self._make(f"mta-bench-{name}-{os.getpid()}")

    @staticmethod
    def _make(name: str) -> tuple[Path, bool]:
        for root in CGROUP_V2_ROOTS:
            if Path(root, "cgroup.procs").exists() and Path(root, "cgroup.max.depth").exists():
                path = Path(root, name)
                try:
                    path.mkdir(exist_ok=True)
                except OSError:
                    continue
                if (path / "cpu.stat").exists():
                    return path, True
                path.rmdir()
        path = Path(CGROUP_V1_CPUACCT, name)
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise MeterError(f"no cgroup for CPU accounting: {exc}") from None
        return path, False

    def enter(self) -> None:
        """Move the calling process (and so everything it starts) into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_seconds(self) -> float:
        """User + system CPU of every process that ever ran in the cgroup."""
        if self.v2:
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass        # a process outlived the relay's stop: left for the next boot, harmless

"""disk — a partitioned disk image from a boot tree and a root tree, without mounting anything.

    make_disk(out, boot_dir, root_dir, plan, sde)     sfdisk + mkfs.vfat/mcopy + mke2fs -d + dd

The same code makes the release image (build.py) and the reduced image the fast tests inspect
(a small plan and a stand-in root tree), so what the tests check is how the real one is made.

Guarantees: the same trees, plan and SOURCE_DATE_EPOCH give the same bytes: the MBR's disk
identifier, the file systems' UUIDs, hash seed and timestamps are derived from the
plan and the epoch, never from the clock or chance; files are copied in sorted order. The
output is sparse (blocks of zeros are holes), so bmaptool maps only the blocks that hold data.
Must never: mount a file system or need a loop device (the kernel here has no vfat at all).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
import uuid

from . import layout

# Only the FAT boot partition is written through mtools; its directory entries carry the
# epoch instead of the clock (under faketime: mtools dates folders by the clock).
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "LC_ALL": "C.UTF-8"}
# Copies are done in 4 MiB pieces, the partitions' alignment; `conv=sparse` leaves zeros as holes.
DD_BLOCK = "4M"
# A namespace for the UUIDs derived from (label, epoch): fixed, so they are reproducible.
UUID_NAMESPACE = uuid.UUID("6d74612d-6c69-7465-2d69-6d6167650000")


def fs_uuid(label: str, sde: int) -> uuid.UUID:
    return uuid.uuid5(UUID_NAMESPACE, f"{label}:{sde}")


def _run(argv: list[str], env: dict | None = None, stdin: bytes | None = None) -> None:
    full_env = dict(os.environ, **(env or {}))
    subprocess.run(argv, env=full_env, input=stdin, check=True, stdout=subprocess.DEVNULL)


def make_fat(path: pathlib.Path, part: layout.Partition, tree: pathlib.Path, sde: int) -> None:
    """FAT32 with the tree's files at the top; folder entries dated at the epoch."""
    path.unlink(missing_ok=True)
    # --invariant: a fixed volume id (1234-ABCD) and no clock in the boot sector.
    _run(["mkfs.vfat", "-F", "32", "-n", part.label, "--invariant",
          "-C", str(path), str(part.size // 1024)])
    env = dict(MTOOLS_ENV, SOURCE_DATE_EPOCH=str(sde))
    faketime = ["faketime", f"@{sde}"] if _has("faketime") else []
    for entry in sorted(tree.rglob("*")):
        target = "::/" + entry.relative_to(tree).as_posix()
        if entry.is_dir():
            _run(faketime + ["mmd", "-i", str(path), target], env)
        else:
            # Under faketime every entry is dated at the epoch ("now"); -m would then misread
            # the source's mtime, so it is only used without faketime.
            _run(faketime + ["mcopy", *([] if faketime else ["-m"]), "-i", str(path), str(entry), target], env)


def make_ext4(path: pathlib.Path, part: layout.Partition, tree: pathlib.Path, sde: int) -> None:
    """ext4 populated from the tree (owners, modes, links, xattrs kept) at the epoch."""
    fs_id = str(fs_uuid(part.label, sde))
    seed = str(fs_uuid(part.label + ":hash", sde))
    path.unlink(missing_ok=True)
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", part.label, "-U", fs_id, "-E", f"hash_seed={seed}",
          "-b", "4096", "-d", str(tree), str(path), f"{part.size // 1024}k"],
         env={"E2FSPROGS_FAKE_TIME": str(sde), "SOURCE_DATE_EPOCH": str(sde)})
    set_times(path, tree, sde)


def set_times(path: pathlib.Path, tree: pathlib.Path, sde: int) -> None:
    """mke2fs -d copies each file's ctime (when the tree was unpacked) and atime (when it was
    last read, mke2fs's own read included): both become the epoch (debugfs, one session)."""
    commands = [f'sif "{_debugfs_path(p, tree)}" {field} @{sde}'
                for p in [tree, *sorted(tree.rglob("*"))] for field in ("ctime", "atime")]
    # debugfs stamps the superblock's last-write time when it closes: the epoch, not the clock.
    subprocess.run(["debugfs", "-w", "-f", "-", str(path)], input="\n".join(commands).encode(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, E2FSPROGS_FAKE_TIME=str(sde)))


def _debugfs_path(path: pathlib.Path, tree: pathlib.Path) -> str:
    relative = path.relative_to(tree).as_posix()
    return "/" if relative == "." else "/" + relative.replace("\\", "\\\\").replace('"', '\\"')


def make_disk(out: pathlib.Path, boot_dir: pathlib.Path, root_dir: pathlib.Path,
              plan: tuple[layout.Partition, ...], sde: int) -> pathlib.Path:
    """The disk image at `out` (sparse), partitioned as `plan` says."""
    out.unlink(missing_ok=True)
    with open(out, "wb") as handle:
        handle.truncate(layout.image_bytes(plan))
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)],
         stdin=layout.sfdisk_script(plan).encode())
    with tempfile.TemporaryDirectory(prefix="mta-lite-fs-", dir=out.parent) as tmp:
        for part in plan:
            fs = pathlib.Path(tmp) / f"p{part.number}.img"
            if part.fstype == "vfat":
                make_fat(fs, part, boot_dir, sde)
            else:
                make_ext4(fs, part, root_dir, sde)
            _run(["dd", f"if={fs}", f"of={out}", f"bs={DD_BLOCK}", f"seek={part.start_mib * layout.MIB}",
                  "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"])
    return out


def _has(program: str) -> bool:
    return any(os.access(os.path.join(d, program), os.X_OK) for d in os.environ.get("PATH", "").split(":"))

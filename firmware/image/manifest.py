"""manifest — what an image holds, one line per package, for people and for diffing builds.

    text = manifest(root_dir, facts)      facts: image name, version, epochs, git revision...
    dpkg_packages(status_text)            pure: (name, version, arch) of installed packages
    python_packages(site_packages)        (name, version) from *.dist-info/METADATA

Format (UTF-8, sorted, stable):
    # mta-lite image manifest
    <key> <value>                         the facts, in the order given
    deb <name> <version> <arch>           every installed Debian package
    python <name> <version>               every package in the box's venv (mta-lite included)
Two builds of the same tree differ only in the facts that are timestamps
(source_date_epoch: the tree's; rootfs_source_date_epoch: the cached root file system's),
and in the package versions a newer Debian mirror brought.
Guarantees: never lists anything the image does not hold; the same root gives the same text.
"""

from __future__ import annotations

import pathlib

HEADER = "# mta-lite image manifest"


def dpkg_packages(status_text: str) -> list[tuple[str, str, str]]:
    """Installed packages from /var/lib/dpkg/status (stanzas with "install ok installed")."""
    found = []
    for stanza in status_text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status") == "install ok installed":
            found.append((fields["Package"], fields["Version"], fields.get("Architecture", "")))
    return sorted(found)


def python_packages(site_packages: pathlib.Path) -> list[tuple[str, str]]:
    found = []
    for meta in site_packages.glob("*.dist-info/METADATA"):
        fields = {}
        for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key, value.strip())
        found.append((fields.get("Name", meta.parent.name).lower(), fields.get("Version", "?")))
    return sorted(found)


def manifest(root_dir: pathlib.Path, facts: list[tuple[str, str]], venv: str) -> str:
    lines = [HEADER]
    lines += [f"{key} {value}" for key, value in facts]
    status = (root_dir / "var/lib/dpkg/status").read_text(encoding="utf-8")
    lines += [f"deb {name} {version} {arch}" for name, version, arch in dpkg_packages(status)]
    for site in sorted((root_dir / venv.lstrip("/")).glob("lib/python3*/site-packages")):
        lines += [f"python {name} {version}" for name, version in python_packages(site)]
    return "\n".join(lines) + "\n"

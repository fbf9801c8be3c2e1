"""safeio.atomic_write: complete or absent, durable unless asked not to be (status)."""

import os

from mta_lite import safeio


def _fsyncs(monkeypatch) -> list[int]:
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_atomic_write_replaces_the_file_and_fsyncs_file_and_directory(tmp_path, monkeypatch):
    fsyncs = _fsyncs(monkeypatch)
    path = tmp_path / "status.json"
    path.write_bytes(b"old")
    safeio.atomic_write(str(path), b"new", mode=0o644)
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["status.json"]
    assert len(fsyncs) == 2
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_write_not_durable_replaces_the_file_without_any_fsync(tmp_path, monkeypatch):
    fsyncs = _fsyncs(monkeypatch)
    path = tmp_path / "status.json"
    path.write_bytes(b"old")
    safeio.atomic_write(str(path), b"new", mode=0o644, durable=False)
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["status.json"]
    assert fsyncs == []

"""The maillog line shape: `Mon DD HH:MM:SS mta-lite/COMPONENT[PID]: message`, exactly, with
the time stamp of each record's own second and the PID of the process that wrote it."""

from __future__ import annotations

import io
import logging
import os
import time

import pytest

from mta_lite import maillog


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.logProcesses)
    maillog.setup_logging(None, stream=stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logging.logProcesses = saved[2]


def _record(name: str, created: float, msg: str, *args) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, "", 0, msg, args, None)
    record.created = created
    return record


def test_line_shape_and_stamp_per_second(captured):
    handler = logging.getLogger().handlers[0]
    base = time.mktime((2026, 11, 25, 10, 0, 0, 0, 0, -1))
    lines = [handler.format(_record("mta_lite.smtpd", base + 0.2, "%s: client=%s", "66116D47A6264320", "[192.0.2.1]")),
             handler.format(_record("mta_lite.qmgr", base + 0.9, "%s: removed", "66116D47A6264320")),
             handler.format(_record("aiosmtplib", base + 1.0, "note"))]
    pid = os.getpid()
    assert lines == [f"Nov 25 10:00:00 mta-lite/smtpd[{pid}]: 66116D47A6264320: client=[192.0.2.1]",
                     f"Nov 25 10:00:00 mta-lite/qmgr[{pid}]: 66116D47A6264320: removed",
                     f"Nov 25 10:00:01 mta-lite/aiosmtplib[{pid}]: note"]


def test_traceback_follows_the_line(captured):
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("mta_lite.qmgr").exception("%s: unexpected error", "ABC")
    first, *rest = captured.getvalue().splitlines()
    assert first.endswith(f" mta-lite/qmgr[{os.getpid()}]: ABC: unexpected error")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: broken"


def test_a_forked_child_writes_its_own_pid(captured):
    logging.getLogger("mta_lite.smtpd").info("parent")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:      # pragma: no cover - runs in the child
        stream = captured
        stream.seek(0)
        stream.truncate()
        logging.getLogger("mta_lite.smtpd").info("child")
        os.write(write_end, stream.getvalue().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        line = pipe.read().decode()
    assert f"mta-lite/smtpd[{child}]: child" in line
    assert f"mta-lite/smtpd[{os.getpid()}]: parent" in captured.getvalue()

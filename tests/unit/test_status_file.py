"""status.read_status: a damaged or hostile status file never crashes a reader and never
makes a dead relay look running."""

import json
import os

import pytest

from mta_lite.status import STATUS_FILE, read_status


@pytest.mark.parametrize("pid, written", [(-1, 0), ("1", 0), (2 ** 70, 0), (True, 0), (os.getpid(), "now")])
def test_read_status_with_bad_types_reports_not_running(tmp_path, pid, written):
    (tmp_path / "public").mkdir()
    (tmp_path / STATUS_FILE).write_text(json.dumps({"pid": pid, "written": written}))
    snapshot = read_status(str(tmp_path))
    assert snapshot.running is False

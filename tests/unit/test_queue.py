"""The spool: durable commit (G1), self-validating files and recovery (G4)."""

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mta_lite.envelope import Envelope
from mta_lite.errors import CorruptQueueFileError, QueueIdError, SpoolError
from mta_lite.queue import Spool, read_queue_file
from mta_lite.queue.queuefile import WHOLE_READ_BYTES
from mta_lite.queue.spool import MessageState

CONTENT = b"Received: from x\r\nSubject: test\r\n\r\nline one\r\n.line with dot\r\n"


def _queue_one(spool, content=CONTENT, rcpts=("bob@example.org",)):
    writer = spool.begin(Envelope("alice@example.com", list(rcpts), "192.0.2.7", "scanner"))
    writer.write(content)
    return writer.commit()


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool")).ensure()


def test_commit_puts_complete_file_in_incoming(spool):
    queue_id = _queue_one(spool)
    entry = spool.read("incoming", queue_id)
    assert entry.sender == "alice@example.com" and entry.recipients == ("bob@example.org",)
    assert entry.read_content() == CONTENT and entry.size == len(CONTENT)
    assert spool.staged() == []


@pytest.mark.parametrize("size", [1000, WHOLE_READ_BYTES - 400, WHOLE_READ_BYTES + 1, 3 * WHOLE_READ_BYTES])
def test_a_small_message_comes_with_its_verified_content_a_big_one_never_whole(spool, size):
    body = b"Subject: size\r\n\r\n" + b"x" * (size - 22) + b"\r\n"
    queue_id = _queue_one(spool, body)
    entry = spool.read("incoming", queue_id, keep_content=True)
    file_size = os.path.getsize(spool.path("incoming", queue_id))
    assert entry.content == (body if file_size <= WHOLE_READ_BYTES else None)
    assert entry.read_content() == body and entry.size == len(body)
    assert spool.read("incoming", queue_id).content is None       # only when asked for


def test_a_big_queue_file_damaged_is_refused_too(spool, tmp_path):
    queue_id = _queue_one(spool, b"Subject: big\r\n\r\n" + b"y" * 2 * WHOLE_READ_BYTES + b"\r\n")
    data = bytearray(open(spool.path("incoming", queue_id), "rb").read())
    data[WHOLE_READ_BYTES] ^= 1
    target = tmp_path / "big"
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptQueueFileError, match="checksum mismatch"):
        read_queue_file(str(target))


def test_read_entry_carries_its_queue_id_and_the_whole_envelope(spool):
    writer = spool.begin(Envelope("a@b.example", ["c@d.example"], "192.0.2.7", "scanner", True,
                                  "8BITMIME", "alice"), is_bounce=True, now=1_700_000_000.5)
    writer.write(CONTENT)
    queue_id = writer.commit()
    spool.move(queue_id, "incoming", "deferred")
    entry = spool.read("deferred", queue_id)
    assert entry.queue_id == queue_id and entry.path == spool.path("deferred", queue_id)
    assert (entry.sender, entry.recipients, entry.client_address, entry.client_helo) == (
        "a@b.example", ("c@d.example",), "192.0.2.7", "scanner")
    assert (entry.smtputf8, entry.body, entry.sasl_username) == (True, "8BITMIME", "alice")
    assert (entry.arrival, entry.is_bounce) == (1_700_000_000.5, True)


def test_abort_leaves_nothing(spool):
    writer = spool.begin(Envelope("a@b.example", ["c@d.example"]))
    writer.write(b"partial")
    writer.abort()
    assert spool.staged() == [] and spool.list("incoming") == []


def test_write_failure_raises_spool_error_and_removes_the_staging_file(spool):
    writer = spool.begin(Envelope("a@b.example", ["c@d.example"]))
    writer._file.close()
    writer._file = open("/dev/full", "wb", buffering=0)   # every write fails with ENOSPC
    with pytest.raises(SpoolError):
        writer.write(b"x" * 10)
    assert spool.staged() == []


def test_queue_ids_sort_by_arrival(spool):
    ids = [_queue_one(spool) for _ in range(20)]
    assert ids == sorted(ids) and len(set(ids)) == 20


def _file_bytes(spool):
    queue_id = _queue_one(spool)
    with open(spool.path("incoming", queue_id), "rb") as handle:
        return handle.read()


def test_every_truncation_is_detected(spool, tmp_path):
    data = _file_bytes(spool)
    target = tmp_path / "cut"
    for offset in range(len(data)):
        target.write_bytes(data[:offset])
        with pytest.raises(CorruptQueueFileError):
            read_queue_file(str(target))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_bit_flip_is_detected(spool, tmp_path, position, bit):
    data = bytearray(_file_bytes(spool))
    data[position % len(data)] ^= 1 << bit
    target = tmp_path / "flipped"
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptQueueFileError):
        read_queue_file(str(target))


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_reader(tmp_path_factory, blob):
    target = tmp_path_factory.mktemp("q") / "blob"
    target.write_bytes(blob)
    with pytest.raises(CorruptQueueFileError):
        read_queue_file(str(target))


def test_recover_purges_tmp_requeues_active_and_quarantines_corrupt(spool):
    good = _queue_one(spool)
    spool.move(good, "incoming", "active")
    bad = _queue_one(spool)
    with open(spool.path("incoming", bad), "r+b") as handle:
        handle.truncate(50)
    with open(os.path.join(spool.root, "incoming", ".tmp-0000000000000ABC"), "wb") as handle:
        handle.write(b"half written")
    counts = spool.recover()
    assert counts == {"purged": 1, "requeued": 1, "corrupt": 1}
    assert spool.list("incoming") == [good]
    assert os.listdir(os.path.join(spool.root, "corrupt")) == [bad]


def test_set_aside_under_a_new_name_never_replaces_a_file_in_corrupt(spool):
    for name in ("submission-1", "submission-2"):
        with open(spool.path("maildrop", name), "wb") as handle:
            handle.write(name.encode())
    assert spool.set_aside("maildrop", "submission-1", new_name="0000000000000AAA") == "0000000000000AAA"
    with pytest.raises(FileExistsError):
        spool.set_aside("maildrop", "submission-2", new_name="0000000000000AAA")
    with open(spool.path("corrupt", "0000000000000AAA"), "rb") as handle:
        assert handle.read() == b"submission-1"
    assert os.listdir(os.path.join(spool.root, "maildrop")) == ["submission-2"]


def test_state_round_trip_and_remove_drops_it(spool):
    queue_id = _queue_one(spool, rcpts=("a@x.example", "b@x.example"))
    spool.save_state(MessageState(queue_id, attempts=2, next_attempt=5.0, last_error="451 4.3.0 later",
                                  done={"a@x.example": "sent"}))
    state = spool.load_state(queue_id)
    assert state.pending(["a@x.example", "b@x.example"]) == ["b@x.example"] and state.attempts == 2
    assert spool.remove(queue_id)
    assert not os.path.exists(os.path.join(spool.root, "state", queue_id + ".json"))


def test_require_unknown_id_names_it(spool):
    with pytest.raises(QueueIdError, match="0123456789ABCDEF"):
        spool.require("0123456789ABCDEF")


def test_queue_file_keeps_the_submission_login_and_reads_files_without_it(tmp_path):
    """sasl_username (Postfix's name) was added later: old files without it stay valid."""
    import hashlib
    from mta_lite.queue.queuefile import encode_header, encode_trailer
    spool = Spool(str(tmp_path))
    spool.ensure()
    writer = spool.begin(Envelope("me@example.com", ["you@example.org"], "192.0.2.7", "laptop",
                                  sasl_username="alice"))
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    queue_id = writer.commit()
    assert spool.read("incoming", queue_id).sasl_username == "alice"
    old_envelope = {"sender": "me@example.com", "recipients": ["you@example.org"], "arrival": 1.0,
                    "client_address": "192.0.2.7", "client_helo": "laptop", "smtputf8": False,
                    "body": "7BIT", "is_bounce": False}
    content = b"Subject: x\r\n\r\nbody\r\n"
    head = encode_header(old_envelope) + content
    path = str(tmp_path / "old-file")
    with open(path, "wb") as handle:
        handle.write(head + encode_trailer(len(content), hashlib.sha256(head).hexdigest()))
    assert read_queue_file(path).sasl_username == ""
    with open(path, "wb") as handle:            # an unknown field is still corrupt
        head = encode_header({**old_envelope, "sasl_user": "x"}) + content
        handle.write(head + encode_trailer(len(content), hashlib.sha256(head).hexdigest()))
    with pytest.raises(CorruptQueueFileError, match="fields missing or unknown"):
        read_queue_file(path)

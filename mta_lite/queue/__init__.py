"""queue — the durable spool. States are directories; a state change is a rename()."""

from mta_lite.queue.queuefile import QueueEntry, read_queue_file
from mta_lite.queue.spool import STATES, WAIT_AUTH, WAIT_BUDGET, WAIT_CLOCK, WAIT_UNREACHABLE, MessageState, QueueWriter, Spool

__all__ = ["QueueEntry", "read_queue_file", "STATES", "MessageState", "Spool", "QueueWriter",
           "WAIT_AUTH", "WAIT_BUDGET", "WAIT_CLOCK", "WAIT_UNREACHABLE"]

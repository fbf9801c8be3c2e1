"""smtpd — inbound SMTP: the pure session state machine, the DATA reader and the listener.

session.Session, dotreader.DotReader and received.received_header() are pure (no I/O, no
clock); listener.Listener owns sockets, timeouts, TLS and the queue writer, with
stream.SmtpStream for buffering. Guarantees and limits are in each module.
SECURITY: everything in this package faces untrusted network input.
Must never: import smarthost or qmgr; the queue is the only path to outbound. This file
imports nothing, so importing a pure module does not pull in asyncio and sockets.
"""

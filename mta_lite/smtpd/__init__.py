"""smtpd — inbound SMTP: the pure session state machine, the DATA reader, the engine and the listener.

session.Session (with conversation.Conversation, the part postscreen's engine shares, and
syntax for command arguments), dotreader.DotReader and received.received_header() are pure
(no I/O, no clock); listener.Listener owns the sockets, connection limits and graceful
close; engine.SmtpEngine runs one client's session over its stream.SmtpStream: timeouts
(one watchdog.Watchdog timer per connection), TLS, AUTH checks and the queue writer.
Guarantees and limits are in each module.
SECURITY: everything in this package faces untrusted network input.
Must never: import smarthost or qmgr; the queue is the only path to outbound. This file
imports nothing, so importing a pure module does not pull in asyncio and sockets.
"""

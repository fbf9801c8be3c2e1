"""support — what the tests share: the real daemon (relay), real peers (peers: Postfix,
smtp-sink, swaks; recorder: an aiosmtpd smarthost; dns: dnsmasq; stick: FAT images; flash:
card images and loop devices), the fault harness (faults), the dialog runner (dialogs), the
queue manager's in-process harness (qmgr), and memgrep, which reads a live process's memory.

Two rules hold for all of them. Waiting for a condition is waiting.wait_until (or its asyncio
twin wait_until_async): a deadline and a message naming what was awaited, never a bare sleep.
Ports come from the kernel: whatever can bind port 0 does and reports the port (the relay
under test in its `listening on` log line, in-process servers from their socket); only a
peer that must be told its port takes one from peers.free_port()."""

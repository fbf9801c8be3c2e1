"""process — the relay's processes: the master (`mta-lite serve`), the two services it
forks (smtpd and qmgr), how a child is spawned and drops its privileges, and the demo."""

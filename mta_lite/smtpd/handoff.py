"""handoff — what a stage in front of the SMTP engine tells it about a client it lets through.

A pre-greeting hook (postscreen) returns True (serve with the configured limits), False
(the hook has dealt with the client; close) or a Handoff: serve, but with these limits —
Postfix's overload values when the listener is under stress.
Must never: loosen a limit; a Handoff can only make the engine stricter.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Handoff:
    timeout_s: float                  # per read and drain, instead of smtpd.timeout
    command_deadline_s: float | None  # a whole command line must arrive within this
    hard_error_limit: int             # instead of smtpd.hard_error_limit

"""boardrelay — a relay with two accounts behind a real Postfix smarthost, one of them with the
wrong password, and a message stuck in its queue: what the console's and the stick's
diagnostics tests look at.

    config = two_accounts(smarthost)            [relays.isp] logs in, [relays.wrongpw] is refused
    canary = send_canary(relay)                 a message whose body and subject must never show
    wait_deferred(relay, 1)
    leaks(blob, relay) -> [where]               every password of the config, and its base64

The queued message goes out through wrongpw (the default relay): the smarthost refuses the
login, the relay defers it and pauses that account (S5), and it waits in the queue.
"""

from __future__ import annotations

import smtplib
import uuid
from dataclasses import dataclass
from email.message import EmailMessage

from tests.support.relay import ALICE_PASSWORD
from tests.support.relay import PASSWORD, RelayProcess, secret_needles
from tests.support.waiting import wait_until

WRONG_PASSWORD = "wrong-" + PASSWORD
ALL_PASSWORDS = {PASSWORD, WRONG_PASSWORD, ALICE_PASSWORD}


def two_accounts(smarthost) -> dict:
    account = {"host": "127.0.0.1", "port": smarthost.port, "tls": "starttls", "ca_file": str(smarthost.ca_file),
               "username": "office@example.test", "timeout": "10s"}
    return {
        "default_relay": "wrongpw",
        "relays": {"isp": {**account, "password": PASSWORD}, "wrongpw": {**account, "password": WRONG_PASSWORD}},
        "senders": [{"address": "alice@example.com", "relay": "isp", "username": "alice@example.test",
                     "password": ALICE_PASSWORD}],
        "queue": {"min_backoff": "1s", "max_backoff": "2s"},
    }


@dataclass(frozen=True)
class Canary:
    subject: str
    body: str

    def needles(self) -> set[bytes]:
        return {self.subject.encode(), self.body.encode()}


def send_canary(relay: RelayProcess) -> Canary:
    tag = uuid.uuid4().hex
    canary = Canary(f"Quarterly figures {tag}", f"The body of this message is private {tag[::-1]}")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "scanner@lan.test", "boss@remote.example", canary.subject
    msg.set_content(canary.body + "\n")
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        client.send_message(msg)
    return canary


def wait_deferred(relay: RelayProcess, count: int, timeout: float = 60) -> list[dict]:
    def deferred():
        items = relay.queue()
        return items if len(items) == count and all(i["state"] == "deferred" and i["last_error"] for i in items) \
            else None
    return wait_until(deferred, timeout, what=f"{count} deferred message(s) with a reason")


def leaks(blob: bytes) -> list[bytes]:
    return [needle for needle in secret_needles(ALL_PASSWORDS) if needle in blob]

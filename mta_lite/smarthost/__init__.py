"""smarthost — outbound: deliver queued messages to the configured smarthost accounts.

    result       DeliveryResult: per recipient sent, deferred or bounced (pure)
    replies      what a smarthost's answer, or the lack of one, means: Reply, status, the
                 wording of failures, the cleaning of the peer's text (pure)
    esmtp        MAIL FROM parameters for the server's EHLO extensions; DATA's encoding,
                 whole or chunk by chunk (pure)
    content      the message to send: in memory, or its queue file read in chunks
    connection   Connection, one SMTP connection as one account; Opener: connect, greeting,
                 EHLO, STARTTLS with a verified certificate, AUTH
    transaction  MAIL FROM, RCPT TO, DATA on an open connection, a result per recipient
    pool         SmarthostPool: connections kept per account, idle expiry, TLS contexts;
                 deliver() for qmgr, check_route() for `mta-lite relay test`

Each module imports only modules listed above it, so there is no import cycle.
Guarantees are in each module (G3 in transaction, S3 and S5 in connection).
Must never: import smtpd or qmgr. This file imports nothing, so importing a pure module
does not pull in asyncio, sockets and aiosmtplib.
"""

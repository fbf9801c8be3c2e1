"""oauth — access tokens for logging in to a smarthost with OAuth2 (XOAUTH2, OAUTHBEARER).

    sasl      the SASL initial responses and what a refusing server's challenge says (pure)
    grants    token requests built and token responses parsed with oauthlib (pure)
    http      one POST to a token endpoint: urllib in a thread, TLS verified, bounded (I/O)
    store     tokens on disk: spool/state/oauth/NAME.json (qmgr's alone), seeds from
              `mta-lite oauth login` in the config's secrets/ (durable writes)
    tokens    TokenManager: the access token per provider, refreshed before it expires,
              one request at a time per provider; status and warnings
    device    the device authorization grant (RFC 8628) behind `mta-lite oauth login`

Where tokens live and who reads them: docs/deployed.md. Must never: log, show or put into
an exception an access token, a refresh token or a client secret.
"""

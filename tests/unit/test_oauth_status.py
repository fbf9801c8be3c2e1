"""What `status` and `queue why` say about an OAuth2 account: the token's health in plain
words, the provider's error, the warnings, and never a token."""

from mta_lite.commands.why import _token_trouble
from mta_lite.status import StatusSnapshot, format_status

NOW = 1_800_000_000.0


def status_with(oauth: dict) -> str:
    relay = {"state": "ok", "sent": 1, "deferred": 0, "bounced": 0, "oauth": {"provider": "m365", **oauth}}
    return format_status(StatusSnapshot(pid=1, started=NOW - 10, written=NOW, running=True,
                                        relays={"o365:scanner@contoso.example": relay}))


def test_status_shows_token_ok_until():
    assert "  oauth m365: token ok until 2027-01-15 09:00:00 UTC" in status_with({"token_until": NOW + 3600})


def test_status_shows_the_providers_error_and_warnings():
    text = status_with({"token_until": NOW + 3600, "failed": "invalid_grant: AADSTS70008: the refresh token expired",
                        "warnings": ["client secret expires on 2027-02-01 (in 16 days): make a new one"]})
    assert "  oauth m365: token refresh failed: invalid_grant: AADSTS70008: the refresh token expired" in text
    assert "  oauth m365: warning: client secret expires on 2027-02-01 (in 16 days)" in text
    assert "token ok" not in text


def test_status_without_a_token_yet_says_so():
    assert "no valid token yet" in status_with({"token_until": None})


def test_status_survives_a_garbled_oauth_entry():
    assert "oauth m365" in status_with({"token_until": "soon", "warnings": "not a list"})


def test_queue_why_takes_the_token_reason_from_the_accounts_oauth_entry():
    refused_by_provider = {"state": "auth_failed", "last_error": "451 4.7.8 token refresh failed: x",
                           "oauth": {"provider": "m365", "failed": "invalid_grant: revoked"}}
    assert _token_trouble(refused_by_provider) == "token refresh failed: invalid_grant: revoked ([oauth.m365])"
    refused_by_smarthost = {"state": "auth_failed", "oauth": {"provider": "m365", "failed": ""},
                            "last_error": "435 4.7.8 token refused: server x said: 535 5.7.8 no"}
    assert _token_trouble(refused_by_smarthost) == refused_by_smarthost["last_error"]
    password_account = {"state": "auth_failed", "last_error": "435 4.7.8 SASL authentication failed"}
    assert _token_trouble(password_account) == ""
    assert _token_trouble({"state": "ok", "oauth": {"provider": "m365", "failed": ""}}) == ""

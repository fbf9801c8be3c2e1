"""commands — the operator's tools: mailq, sendmail, passwd, queue why, relay test, check.
Each is a function the CLI dispatches to; none of them runs a daemon."""

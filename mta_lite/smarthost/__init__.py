"""smarthost — outbound: deliver queued messages to the configured smarthost accounts."""

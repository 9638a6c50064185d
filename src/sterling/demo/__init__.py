"""The demonstration scenario: a market of providers and a consumer, end to end."""

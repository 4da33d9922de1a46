"""Codecs: pure functions between wire formats and the internal types in gateway.types."""

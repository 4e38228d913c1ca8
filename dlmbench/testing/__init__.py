"""Conformance kit for plugin authors (see dlmbench.testing.conformance)."""

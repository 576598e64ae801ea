"""Validation gates: the Great Expectations suites every dataset passes before use."""

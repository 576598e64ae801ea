"""Prefect tasks: thin, idempotent units of work. See :mod:`tasks.conventions`."""

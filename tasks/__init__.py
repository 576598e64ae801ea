"""Prefect tasks: thin, idempotent units of work. See :mod:`tasks.conventions`."""

from flywheel.runtime import apply_environment

apply_environment()  # before anything imports prefect

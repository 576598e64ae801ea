"""Prefect flows: thin compositions of tasks that read like the pipeline diagram."""

from flywheel.runtime import apply_environment

apply_environment()  # before anything imports prefect

"""The ``flywheel`` command line (an entry point: it loads the config and runs flows)."""

"""sam3d-flywheel's own packages, by concern (README "Layout"):

``core`` (config, store, datasets, contracts, digests, codecs, typed records) imports
nothing else of the project; ``tracking``, ``feedback``, ``learning``, ``rounds``,
``validation`` and ``ops`` are domain packages (never Prefect, tasks or flows); ``cli`` is
the entry point."""

__version__ = "0.1.0"

"""sam3d-flywheel core: configuration, data contracts, storage, datasets, lineage, CLI.

Domain code: never imports Prefect."""

__version__ = "0.1.0"

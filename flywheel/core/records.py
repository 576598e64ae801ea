"""Typed records that cross layers: references to what a task made, and per-item results.

A task returns one of the references (small, hashable, JSON-able with ``to_dict``), never a
large object; a producer that handles a batch of untrusted items yields a :class:`Sample`
or a :class:`Rejected` per item, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetRef:
    """A small, hashable pointer to one committed dataset version."""

    name: str
    version: str
    uri: str  # the version's folder
    digest: str  # content digest: rows, samples' bytes and quarantine (not the sharding)
    num_rows: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file: where it is (a store URI, or a registry URI ``models:/...``), its
    store key when it is in the store, and the sha256 of its bytes (checked on every read)."""

    uri: str
    sha256: str
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RewardRef:
    """A reward model (:mod:`sam3d_model.reward`): its checkpoint, the registered model whose
    features it scores (``backbone``, a ``models:/`` URI), and how it did on the pairs of
    objects held out of its training (accuracy nan when none were)."""

    checkpoint: CheckpointRef
    backbone: str
    pairs: int
    heldout_pairs: int
    heldout_accuracy: float
    artist_pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelRef:
    """A registered model version (MLflow registry) and the sha256 of its checkpoint."""

    name: str
    version: int  # the registry's version number
    uri: str  # models:/<name>/<version>
    sha256: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def checkpoint(self) -> CheckpointRef:
        return CheckpointRef(uri=self.uri, sha256=self.sha256)


@dataclass(frozen=True)
class ItemWarning:
    """Why an accepted item is not quite what its source asked for."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Sample:
    """One good item of a batch: its key, manifest row and files (name -> bytes)."""

    key: str
    row: Mapping[str, Any]
    files: Mapping[str, bytes] = field(repr=False)
    warnings: tuple[ItemWarning, ...] = ()  # accepted, but people should know (a default material, say)


@dataclass(frozen=True)
class Rejected:
    """One bad item of a batch: it goes to the quarantine table with its reason."""

    item_id: str
    reason: str
    detail: str
    kind: str = ""  # what the item is (object, sample, background ...); "": the batch's kind


@dataclass(frozen=True)
class RunSummary:
    """What a data flow run committed: its run id, its MLflow run, its datasets."""

    run: str
    mlflow_run_id: str
    datasets: list[DatasetRef]

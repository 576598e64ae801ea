"""The round record: what one closed flywheel round committed, as a typed, versioned record.

Its JSON form (``rounds/<series>/round-<k>.json`` in the store) is :class:`RoundRecord`'s
schema at :data:`SCHEMA_VERSION`; ``flywheel rounds``, the summary plots and the next round
read it through this class only. Records written before the schema had a version read as
version 1 (the same fields). Version 2 adds the baselines, the held-out halves with their
intervals (``heldout``), the round's best-of-N figures and the warnings; ``evaluation`` is
then the *reporting* half's means (version 1: the whole held-out set, two models). Version
3 adds the artist path (``artists``) and the yield among the best-of-N figures. Version 4 adds
the held-out rotation error per mesh family (``heldout_families_rotation``).
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flywheel.core.records import DatasetRef, ModelRef
from flywheel.learning.heldout import SeedNoise, Split, SplitReport
from flywheel.rounds.promotion import Promotion

SCHEMA_VERSION = 4


class RoundRecord(BaseModel):
    """Round ``round`` of series ``series``: the models, the decision, the metrics, the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1, 2, 3, 4] = 4  # SCHEMA_VERSION
    round: int = Field(..., ge=0)
    series: str = Field(..., description="flywheel.rounds.ledger.series_id of the config that ran it")
    champion_before: ModelRef = Field(..., description="The champion round k started from.")
    challenger: ModelRef = Field(..., description="The model round k trained and registered.")
    champion_after: ModelRef = Field(..., description="The champion round k ended with.")
    promotion: Promotion
    evaluation: dict[str, dict[str, float]] = Field(
        ...,
        description="Mean held-out metrics on the reporting half: champion, challenger and the baselines "
        "constant / retrieval (flywheel.learning.heldout).",
    )
    heldout: dict[Split, SplitReport] = Field(
        default_factory=dict, description="Both held-out halves: means and paired 95% intervals (v2)."
    )
    best_of_n: dict[str, float] = Field(
        default_factory=dict,
        description="The round's candidates vs the pool's truth: oracle_viou, model_viou, retrieval_viou (v2), "
        "yield (v3).",
    )
    warnings: list[str] = Field(default_factory=list, description="What people must know about this round (v2).")
    synthetic_heldout: SplitReport | None = Field(
        None,
        description="Round 0: the bootstrap champion and the baselines on a held-out set of the synthetic "
        "world, beside ``heldout`` (the real world's): the gap the flywheel must close (v2).",
    )
    heldout_families: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per mesh family of the held-out set: objects, and held-out vIoU of each model / baseline "
        "over both halves — where the models fail (v2).",
    )
    heldout_families_rotation: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="The same per mesh family for the symmetric rotation error in degrees: a family whose "
        "orientation the training data never showed is where a model's pose falls behind the mean pose (v4).",
    )
    seed_noise: SeedNoise | None = Field(
        None,
        description="The spread of the promote metric over training seeds of SFT (same start, same data), "
        "measured in the series' first round and carried forward; the gain had to exceed it (v2).",
    )
    rankings: dict[str, int | float] = Field(
        ...,
        description="Decision metrics: accept_rate, objects_judged, accepted, hard_cases, preference_pairs, "
        "annotators, alpha[, fleiss_kappa]; v3: aligned (winners with an aligned pose), winners_<member> (accepted "
        "winners per ensemble member).",
    )
    artists: dict[str, float] = Field(
        default_factory=dict,
        description="The artist path: queued (this round), queued_total, delivered (usable Art-3DO meshes so far), "
        "refused_deliveries, pending, spend (v3).",
    )
    volumes: dict[str, int] = Field(..., description="Rows per dataset the round made or read.")
    seconds: dict[str, float] = Field(..., description="Wall-clock seconds per phase.")
    stages: list[str] = Field(..., description="Training stages the challenger went through.")
    datasets: dict[str, DatasetRef] = Field(..., description="Role -> the dataset version the round used.")
    sft_history: list[DatasetRef] = Field(..., description="Every accepted (SFT) version so far, oldest first.")
    mlflow_run_id: str | None = Field(None, description="The round's parent MLflow run.")

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RoundRecord:
        parsed = json.loads(data)
        if isinstance(parsed, dict) and "schema_version" not in parsed:
            parsed["schema_version"] = 1  # written before the schema had a version
        return cls.model_validate(parsed)

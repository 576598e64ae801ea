"""Ingesting annotation exports into the next ``rankings`` version.

Every export is kept exactly as received (``rankings/raw/<sha256>/<name>``, create-if-absent:
append-only); its rows are read (native or Label Studio), checked against the candidate
registry, and either added, counted as an already-ingested resubmission, or quarantined
with their reason (a whole file when it is too large or unreadable).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from flywheel.core.config import StoreConfig
from flywheel.core.contracts import RANKINGS
from flywheel.core.datasets import Dataset, DatasetWriter
from flywheel.core.records import DatasetRef
from flywheel.core.store import Store, read_uri
from flywheel.feedback.exports import ExportError, check, from_label_studio, read_native, resubmissions

log = logging.getLogger(__name__)


def ingest_exports(
    store: Store,
    store_config: StoreConfig,
    new: list[tuple[str, str]],
    *,
    version: str,
    inputs: dict[str, Any],
    candidates: DatasetRef,
    previous: DatasetRef | None,
    settings: dict[str, Any],
    writer_options: dict[str, Any],
) -> tuple[DatasetRef, dict[str, int]]:
    """Commit rankings ``version``: the ``previous`` version's rows plus those of the ``new``
    (uri, sha256) exports. Returns the reference and the counts of this ingestion."""
    registry = (
        Dataset(store, candidates.name, candidates.version).manifest().select(["candidate_id", "object_id"]).to_pandas()
    )
    old = Dataset(store, previous.name, previous.version) if previous else None
    tables = [old.manifest().select(RANKINGS.schema.names).cast(RANKINGS.schema)] if old else []
    quarantine = old.quarantine().to_pylist() if old else []
    counts = {"rows": 0, "accepted": 0, "duplicates": 0, "quarantined": 0}
    for uri, digest in new:
        data = read_uri(uri, store_config)
        name = Path(uri).name
        store.create_if_absent(f"rankings/raw/{digest}/{name}", data)  # as received, once
        if len(data) > settings["max_file_bytes"]:
            quarantine.append(
                {
                    "item_id": name,
                    "kind": "file",
                    "reason": "file too large",
                    "detail": f"{name}: {len(data)} bytes, over {settings['max_file_bytes']}",
                }
            )
            continue
        try:
            raw = from_label_studio(data, name) if name.endswith(".json") else read_native(data, name)
        except ExportError as e:
            quarantine.append({"item_id": name, "kind": "file", "reason": "unreadable file", "detail": str(e)})
            continue
        good, bad = check(
            raw,
            name,
            candidates=registry,
            annotators=settings["annotators"],
            max_time_spent_s=settings["max_time_spent_s"],
        )
        duplicates, conflicts = resubmissions(good, pa.concat_tables(tables) if tables else None)
        fresh = ~duplicates & ~conflicts
        for sid in good["submission_id"].filter(pa.array(conflicts)).to_pylist():
            quarantine.append(
                {
                    "item_id": f"{name}:{sid}",
                    "kind": "ranking",
                    "reason": "conflicting resubmission",
                    "detail": f"submission {sid} was ingested before with other contents",
                }
            )
        counts["rows"] += len(raw)
        counts["duplicates"] += int(duplicates.sum())
        counts["accepted"] += int(fresh.sum())
        counts["quarantined"] += len(bad) + int(conflicts.sum())
        good = good.filter(pa.array(fresh))
        tables.append(
            good.append_column("source_file", pa.array([digest] * good.num_rows, pa.string())).cast(RANKINGS.schema)
        )
        quarantine += bad.to_dict("records")
        log.info(
            "%s: %d rows, %d new, %d already ingested, %d quarantined",
            name,
            len(raw),
            int(fresh.sum()),
            int(duplicates.sum()),
            len(bad) + int(conflicts.sum()),
        )
    with DatasetWriter(
        store,
        RANKINGS,
        version,
        inputs=inputs,
        parents=[candidates] + ([previous] if previous else []),
        **writer_options,
    ) as writer:
        if tables:
            writer.add_table(pa.concat_tables(tables), "submission_id")
        for row in quarantine:
            writer.quarantine(**row)
    return writer.ref, counts

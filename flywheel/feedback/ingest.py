"""Ingesting annotation exports into the next ``rankings`` version.

Every export is kept exactly as received (``rankings/raw/<sha256>/<name>``, create-if-absent:
append-only); its rows are read (native, or Label Studio JSON / JSON_MIN / CSV read through
its labeling config), checked against the candidate registry, and either added, counted as
an already-ingested resubmission, taken as a revision (the same submission edited later:
it supersedes the earlier judgement), or quarantined with their reason (a whole file when it
is too large or unreadable; a whole tag when it is not a judgement). Each file gets a
:class:`FileReport`, kept in the version's commit marker (``report.files``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.core.config import StoreConfig
from flywheel.core.contracts import RANKINGS
from flywheel.core.datasets import Dataset, DatasetWriter
from flywheel.core.records import DatasetRef
from flywheel.core.store import Store, read_uri
from flywheel.feedback import annotation
from flywheel.feedback.exports import ExportError, check, read_native, resubmissions
from flywheel.feedback.label_studio import LabelingConfig, is_label_studio_csv, read_label_studio

log = logging.getLogger(__name__)


@dataclass
class FileReport:
    """What one export gave: rows read, accepted, already ingested, revisions, skipped
    annotations, tasks without annotations, and quarantined rows by reason."""

    name: str
    digest: str
    format: str = "?"
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    revised: int = 0
    skipped: int = 0
    unannotated: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    error: str = ""  # why the whole file was refused

    @property
    def usable(self) -> int:
        """Judgements the file holds that count (new, already ingested, or revisions)."""
        return self.accepted + self.duplicates + self.revised

    def line(self) -> str:
        bad = sum(self.quarantined.values())
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.quarantined.items()))
        extra = "".join(
            f"; {n} {what}"
            for n, what in ((self.skipped, "skipped"), (self.unannotated, "tasks without annotations"))
            if n
        )
        return (
            f"{self.name} [{self.format}]: {self.rows} rows read, {self.accepted} accepted, "
            f"{self.duplicates} already ingested, {self.revised} revised, {bad} quarantined"
            + (f" ({reasons})" if bad else "")
            + extra
            + (f": {self.error}" if self.error else "")
        )


def file_reports(marker: Mapping[str, Any]) -> list[FileReport]:
    """The per-file reports a rankings version's commit marker holds."""
    return [FileReport(**r) for r in (marker.get("report") or {}).get("files", [])]


def file_lines(marker: Mapping[str, Any], files: list[str], new_version: bool) -> list[str]:
    """One line per export of an ingestion that gave the version of ``marker``: what it took
    from the file, or that the file was ingested before (``new_version`` False: nothing was)."""
    reports = {r.name: r for r in file_reports(marker)} if new_version else {}
    names = [Path(f).name for f in files]
    return [reports[n].line() if n in reports else f"{n}: ingested before, nothing new" for n in names]


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
    label_configs: Mapping[str, str] | None = None,
) -> tuple[DatasetRef, list[FileReport]]:
    """Commit rankings ``version``: the ``previous`` version's rows plus those of the ``new``
    (uri, sha256) exports. ``label_configs``: uri -> labeling config (XML) of the Label Studio
    project the export came from (default: the templates this project ships)."""
    registry = (
        Dataset(store, candidates.name, candidates.version).manifest().select(["candidate_id", "object_id"]).to_pandas()
    )
    object_of = dict(zip(registry["candidate_id"], registry["object_id"]))
    old = Dataset(store, previous.name, previous.version) if previous else None
    current = (
        old.manifest().select(RANKINGS.schema.names).cast(RANKINGS.schema) if old else RANKINGS.schema.empty_table()
    )
    quarantine = old.quarantine().to_pylist() if old else []
    reports = []
    for uri, digest in new:
        data = read_uri(uri, store_config)
        name = Path(uri).name
        report = FileReport(name, digest)
        reports.append(report)
        store.create_if_absent(f"rankings/raw/{digest}/{name}", data)  # as received, once
        refusal = None
        if len(data) > settings["max_file_bytes"]:
            refusal = ("file too large", f"{name}: {len(data)} bytes, over {settings['max_file_bytes']}")
        else:
            try:
                raw, problems, native = _read(data, name, report, (label_configs or {}).get(uri), object_of)
            except ExportError as e:
                refusal = ("unreadable file", str(e))
        if refusal is not None:
            reason, detail = refusal
            quarantine.append({"item_id": name, "kind": "file", "reason": reason, "detail": detail})
            report.quarantined, report.error = {reason: 1}, detail
            continue
        good, bad = check(
            raw,
            name,
            candidates=registry,
            annotators=settings["annotators"],
            max_time_spent_s=settings["max_time_spent_s"],
            duration_required=native,
        )
        current, fresh, revised, conflicts = _merge(current, good, digest)
        quarantine += [
            {
                "item_id": f"{name}:{sid}",
                "kind": "ranking",
                "reason": "conflicting resubmission",
                "detail": f"submission {sid} was ingested before with other contents and a time not later",
            }
            for sid in conflicts
        ]
        quarantine += bad.to_dict("records") + problems
        report.rows = len(raw)
        report.accepted, report.revised = fresh, revised
        report.duplicates = good.num_rows - fresh - revised - len(conflicts)
        report.quarantined = dict(
            Counter(bad["reason"])
            + Counter({"conflicting resubmission": len(conflicts)})
            + Counter(len(problems) * ["unread tag"])
        )
        log.info("%s", report.line())
    with DatasetWriter(
        store,
        RANKINGS,
        version,
        inputs=inputs,
        parents=[candidates] + ([previous] if previous else []),
        **writer_options,
    ) as writer:
        writer.add_table(current, "submission_id")
        for row in quarantine:
            writer.quarantine(**row)
        writer.report = {"files": [asdict(r) for r in reports]}
    return writer.ref, reports


def _read(
    data: bytes, name: str, report: FileReport, label_config: str | None, object_of: Mapping[str, str]
) -> tuple[Any, list[dict[str, str]], bool]:
    """Raw rows of one export, the tag-level problems (quarantine rows), and whether it is a
    native export (whose rows must say how long they took)."""
    suffix = Path(name).suffix.lower()
    if suffix == ".json" or (suffix == ".csv" and is_label_studio_csv(data)):
        config = (
            LabelingConfig.parse(label_config, f"{name}'s labeling config")
            if label_config
            else LabelingConfig.merged(annotation.LABEL_STUDIO_CONFIGS)
        )
        export = read_label_studio(data, name, config, object_of)
        report.format = f"Label Studio {export.format}"
        report.skipped, report.unannotated = export.skipped, export.unannotated
        return export.rows, export.problems, False
    report.format = f"native {suffix[1:]}"
    return read_native(data, name), [], True


def _merge(current: pa.Table, good: pa.Table, digest: str) -> tuple[pa.Table, int, int, list[str]]:
    """Add a file's checked rows to the rows ingested so far. A submission id seen before is a
    duplicate (same content), a revision (other content, later timestamp: it replaces the
    earlier row, revision + 1) or a conflict (other content, not later).
    -> (rows, new rows, revisions, conflicting submission ids)"""
    duplicate, other = resubmissions(good, current if current.num_rows else None)
    at = pc.index_in(good["submission_id"], value_set=current["submission_id"].combine_chunks())
    rows = np.flatnonzero(other)
    earlier = current.take(pc.take(at, pa.array(rows)))
    later = np.asarray(
        pc.fill_null(pc.greater(good["timestamp"].take(pa.array(rows)), earlier["timestamp"]), False), bool
    )
    revised = np.zeros(good.num_rows, bool)
    revised[rows[later]] = True
    conflicts = good["submission_id"].take(pa.array(rows[~later])).to_pylist()
    revision = np.zeros(good.num_rows, np.int32)
    revision[rows[later]] = np.asarray(earlier["revision"].to_numpy(), np.int32)[later] + 1
    added = ~duplicate & ~other | revised
    take = pa.array(np.flatnonzero(added))
    rows_in = good.take(take)
    rows_in = rows_in.append_column("source_file", pa.array([digest] * rows_in.num_rows, pa.string()))
    rows_in = rows_in.append_column("revision", pa.array(revision[added], pa.int32())).cast(RANKINGS.schema)
    superseded = good["submission_id"].filter(pa.array(revised))
    kept = current.filter(pc.invert(pc.is_in(current["submission_id"], value_set=superseded)))
    return pa.concat_tables([kept, rows_in]), int((~duplicate & ~other).sum()), int(revised.sum()), conflicts

"""Human rankings: reading native and Label Studio exports into one table, and checking
every row against the candidate registry and the annotator allow-list.

Native export (documented schema, :data:`NATIVE_SCHEMA`), as JSONL, CSV or Parquet; one
row per judgement:

====================  =========================================================================
submission_id         unique per judgement; a resubmitted id is counted once
annotator_id          must be on the allow-list
object_id             image-pool object whose candidates were compared
kind                  ``pairwise`` (winner vs one loser), ``best-of-n`` (winner vs the others
                      shown) or ``reject-all`` (no candidate acceptable; no winner)
winner                candidate id (empty for reject-all)
losers                candidate ids (CSV: separated by ``;``); for reject-all, those rejected
timestamp             ISO 8601 with time zone (UTC if none)
time_spent_s          seconds spent, > 0 and <= the configured maximum (Label Studio: null when
                      the annotation has no lead time)
geometry, texture, completeness, multiview_consistency   optional rubric scores 0-10
aligned_pose          optional, on best-of-n and pairwise rows: the winner's pose as the
                      annotator aligned it to the photo, ``{"R": 3x3, "t": [x, y, z], "s": s}``
                      (CSV: that JSON text); it becomes the winner's layout target in SFT
====================  =========================================================================

Label Studio exports (JSON, JSON_MIN, CSV) convert to the same rows
(:func:`flywheel.feedback.label_studio.read_label_studio`).

Checking is vectorised (pyarrow / pandas): every rejected row gets a reason (see
:data:`REASONS`); the rest of the file is kept.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.core.contracts import ALIGNED_POSE, RANKINGS
from flywheel.feedback.poses import PoseError, parse_pose

KINDS = ("pairwise", "best-of-n", "reject-all")
RUBRIC = ("geometry", "texture", "completeness", "multiview_consistency")

#: The native export's columns: the rankings dataset's, less its bookkeeping.
NATIVE_SCHEMA = pa.schema([f for f in RANKINGS.schema if f.name not in ("source_file", "revision")])

#: Reasons a row is quarantined, for counting.
REASONS = (
    "malformed row",
    "unknown object",
    "unknown candidate",
    "candidate of another object",
    "self-comparison",
    "unknown annotator",
    "future timestamp",
    "impossible duration",
    "conflicting resubmission",
    "file too large",
)


class ExportError(ValueError):
    """A whole file that cannot be read as an export; names the file and the reason."""


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[f.name for f in NATIVE_SCHEMA] + ["_line", "_problem"])


def _losers(value) -> list | None:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if isinstance(value, str):
        return [v for v in value.split(";") if v] if value else []
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return None


def read_native(data: bytes, name: str) -> pd.DataFrame:
    """Parse a native export (format from the file name's suffix) into raw rows; lines that
    are not records get ``_problem`` set instead of failing the file."""
    suffix = Path(name).suffix.lower()
    if suffix == ".parquet":
        try:
            df = pq.read_table(io.BytesIO(data)).to_pandas(types_mapper=pd.ArrowDtype)  # stays columnar
        except (pa.ArrowInvalid, OSError) as e:
            raise ExportError(f"{name}: not a readable Parquet file: {e}") from None
        df["_line"] = np.arange(len(df)) + 1
        df["_problem"] = None
        return df
    if suffix == ".csv":
        try:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ExportError(f"{name}: not a readable CSV file: {e}") from None
        df["_line"] = np.arange(len(df)) + 2
        df["_problem"] = None
        return df
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append({"_line": i, "_problem": f"not JSON ({e.msg})"})
                continue
            rows.append(
                {**row, "_line": i, "_problem": None}
                if isinstance(row, dict)
                else {"_line": i, "_problem": "not a JSON object"}
            )
        return pd.DataFrame(rows) if rows else _frame([])
    raise ExportError(
        f"{name}: unknown export format {suffix!r} (native: .jsonl, .csv, .parquet; Label Studio: .json, .csv)"
    )


def _loser_lists(column: pd.Series, flag) -> pa.ListArray:
    """The losers column as an Arrow list array (columnar input stays columnar); rows whose
    value is not a list of ids are flagged malformed and read as empty."""
    list_type = pa.list_(pa.string())
    if isinstance(column.dtype, pd.ArrowDtype) and pa.types.is_list(column.dtype.pyarrow_dtype):
        arr = pa.array(column.array)
        arr = (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr).cast(list_type)
        return pc.if_else(pc.is_null(arr), pa.scalar([], list_type), arr)
    lists = [_losers(v) for v in column]
    flag(
        np.fromiter((v is None for v in lists), bool, len(lists)),
        "malformed row",
        "losers must be a list of candidate ids",
    )
    return pa.array([v if isinstance(v, list) and all(isinstance(x, str) for x in v) else [] for v in lists], list_type)


def _aligned_poses(column: pd.Series, reject_all: np.ndarray, flag) -> pa.StructArray:
    """The optional aligned poses, checked (:func:`flywheel.feedback.poses.parse_pose`); a
    row with an unusable one, or with one on a reject-all, is flagged malformed."""
    values = column.to_numpy(dtype=object)
    given = np.array([v is not None and not (isinstance(v, (float, str)) and (v != v or v == "")) for v in values])
    poses: list[dict | None] = [None] * len(values)
    problems: dict[int, str] = {}
    for i in np.flatnonzero(given):
        try:
            poses[i] = parse_pose(values[i]).as_dict()
        except PoseError as e:
            problems[i] = f"aligned_pose: {e}"
    bad = np.zeros(len(values), bool)
    bad[list(problems)] = True
    flag(bad, "malformed row", lambda i: [problems[j] for j in i])
    flag(given & reject_all, "malformed row", "a reject-all has no winner to align")
    return pa.array([p if not bad[i] else None for i, p in enumerate(poses)], ALIGNED_POSE)


def arrow_text(values: pd.Series) -> pa.StringArray:
    """A column as Arrow strings; anything that is not a non-empty string becomes null.
    Arrow-backed text columns convert without Python objects."""
    if hasattr(values.array, "__arrow_array__"):
        arr = pa.array(values.array)
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
            return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    return pa.array([v if isinstance(v, str) and v else None for v in values.to_numpy(dtype=object)], pa.string())


def _mask(arr) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls as False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def submission_content(columns) -> pa.StringArray:
    """Per row, one text of what the submission says (annotator, object, kind, winner,
    losers). ``columns``: a table, or a dict of those columns as Arrow arrays."""
    return pc.binary_join_element_wise(
        *(pc.fill_null(columns[c], "") for c in ("annotator_id", "object_id", "kind", "winner")),
        pc.binary_join(columns["losers"], ";"),
        "|",
    )


def resubmissions(good: pa.Table, ingested: pa.Table | None) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate, conflicting) masks over the rows of ``good`` whose submission id is in
    ``ingested`` (the rows ingested before): with the same content a row is a duplicate,
    counted once; with other content it is a conflicting resubmission. Cumulative exports
    (Label Studio exports everything so far) make most rows duplicates: one hash lookup."""
    duplicate, conflicting = np.zeros(good.num_rows, bool), np.zeros(good.num_rows, bool)
    if ingested is None or ingested.num_rows == 0 or good.num_rows == 0:
        return duplicate, conflicting
    at = pc.index_in(good["submission_id"], value_set=ingested["submission_id"].combine_chunks())
    seen = _mask(pc.is_valid(at))
    rows = np.flatnonzero(seen)
    same = _mask(pc.equal(submission_content(good.take(rows)), submission_content(ingested.take(pc.drop_null(at)))))
    duplicate[rows], conflicting[rows] = same, ~same
    return duplicate, conflicting


def check(
    raw: pd.DataFrame,
    file_name: str,
    *,
    candidates: pd.DataFrame,
    annotators: set[str] | None,
    max_time_spent_s: float,
    now: datetime | None = None,
    clock_skew_s: float = 300.0,
    duration_required: bool = True,
) -> tuple[pa.Table, pd.DataFrame]:
    """Type and check raw rows. ``candidates``: the registry (candidate_id, object_id).
    ``duration_required``: a missing time_spent_s is malformed (native exports) or unknown
    (Label Studio: annotations made through its API have no lead time); a given one must
    always be in range.

    Returns (good rows as a NATIVE_SCHEMA table, quarantine rows: item_id, kind, reason,
    detail). Vectorised: candidate ids are flattened with pyarrow and joined against the
    registry in one hash join; detail texts are built only for the rows that fail."""
    now = now or datetime.now(UTC)
    df = raw.reset_index(drop=True)
    for col in [f.name for f in NATIVE_SCHEMA] + ["_line", "_problem"]:
        if col not in df:
            df[col] = None
    n = len(df)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    flagged = np.zeros(n, bool)

    def flag(mask, why: str, text) -> None:
        """``text``: a string, or a function of the flagged row indices giving their texts.
        A row keeps its first reason."""
        rows = np.flatnonzero(np.asarray(mask, bool) & ~flagged)
        if len(rows):
            flagged[rows] = True
            reason[rows] = why
            detail[rows] = text if isinstance(text, str) else np.asarray(text(rows), dtype=object)

    problem = df["_problem"].to_numpy(dtype=object)
    flag(pd.notna(problem), "malformed row", lambda i: [f"line {df['_line'][j]}: {problem[j]}" for j in i])
    cols = {col: arrow_text(df[col]) for col in ("submission_id", "annotator_id", "object_id", "kind", "winner")}
    for col in ("submission_id", "annotator_id", "object_id", "kind"):
        flag(~_mask(pc.is_valid(cols[col])), "malformed row", f"missing or non-text {col}")
    kind = cols["kind"]
    flag(~_mask(pc.is_in(kind, value_set=pa.array(KINDS))), "malformed row", "kind must be one of " + ", ".join(KINDS))
    flat = _loser_lists(df["losers"], flag)
    has_winner = _mask(pc.is_valid(cols["winner"]))
    count = pc.fill_null(pc.list_value_length(flat), 0).to_numpy()
    is_kind = {k: _mask(pc.equal(kind, k)) for k in KINDS}
    flag(
        (is_kind["pairwise"] | is_kind["best-of-n"]) & ~has_winner,
        "malformed row",
        "pairwise and best-of-n need a winner",
    )
    flag(is_kind["reject-all"] & has_winner, "malformed row", "reject-all has no winner")
    flag(is_kind["pairwise"] & (count != 1), "malformed row", "pairwise needs exactly one loser")
    flag(is_kind["best-of-n"] & (count < 1), "malformed row", "best-of-n needs one loser or more")
    time_spent = pd.to_numeric(df["time_spent_s"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    missing = df["time_spent_s"].isna().to_numpy() if not duration_required else np.zeros(n, bool)
    flag(np.isnan(time_spent) & ~missing, "malformed row", "time_spent_s is not a number")
    stamps = pd.to_datetime(df["timestamp"], errors="coerce", utc=True, format="mixed")
    flag(stamps.isna().to_numpy(), "malformed row", "timestamp is not an ISO 8601 time")
    rubric = {}
    for r in RUBRIC:
        given = df[r].notna().to_numpy().copy()
        if not given.any():  # the usual case: no rubric
            rubric[r] = np.full(n, np.nan)
            continue
        if not pd.api.types.is_numeric_dtype(df[r].dtype):  # CSV: empty text is "not given"
            given &= ~df[r].isin([""]).to_numpy()
        values = pd.to_numeric(df[r].where(given, None), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        flag(
            given & (np.isnan(values) | (values < 0) | (values > 10)), "malformed row", f"{r} must be a number in 0..10"
        )
        rubric[r] = values

    aligned = _aligned_poses(df["aligned_pose"], is_kind["reject-all"], flag)

    objects = cols["object_id"]
    # ids become integer codes once (registry position, registry object number); the checks
    # then compare integers
    reg_candidates = arrow_text(candidates["candidate_id"])
    reg_objects = pc.dictionary_encode(arrow_text(candidates["object_id"]))
    reg_object_code = pc.fill_null(reg_objects.indices, -1).to_numpy()
    row_object = pc.index_in(objects, value_set=reg_objects.dictionary)
    flag(
        ~_mask(pc.is_valid(row_object)),
        "unknown object",
        lambda i: [f"object {o} has no candidates in the registry" for o in objects.take(pa.array(i)).to_pylist()],
    )
    row_object = pc.fill_null(row_object, -1).to_numpy()
    # every candidate id a row names (winner + losers), flattened; one hash lookup in the registry
    parent = np.concatenate([np.flatnonzero(has_winner), pc.list_parent_indices(flat).to_numpy()])
    cand = pa.concat_arrays([cols["winner"].filter(pa.array(has_winner)), pc.list_flatten(flat)])
    position = pc.index_in(cand, value_set=reg_candidates)
    unknown = ~_mask(pc.is_valid(position))
    position = pc.fill_null(position, -1).to_numpy()
    foreign = ~unknown & (reg_object_code[position] != row_object[parent])

    def listed(mask):
        names = pd.Series(cand.filter(pa.array(mask)).to_pylist()).groupby(parent[mask]).agg(", ".join)
        return lambda i: [f"{names.get(j, '')}" for j in i]

    flag(
        np.bincount(parent[unknown], minlength=n) > 0,
        "unknown candidate",
        lambda i: ["candidates not in the registry: " + t for t in listed(unknown)(i)],
    )
    flag(
        np.bincount(parent[foreign], minlength=n) > 0,
        "candidate of another object",
        lambda i: [
            f"candidates of another object: {t} (row object {o})"
            for t, o in zip(listed(foreign)(i), objects.take(pa.array(i)).to_pylist())
        ],
    )
    # a loser that is the row's winner, or a loser listed twice (best-of-n); unknown ids share
    # position -1, but their rows are flagged already
    winners = int(has_winner.sum())
    winner_position = np.full(n, -2)
    winner_position[has_winner] = position[:winners]
    loser_row, loser_position = parent[winners:], position[winners:]
    self_compared = loser_row[loser_position == winner_position[loser_row]]
    listed_twice = count[loser_row] > 1
    if listed_twice.any():
        rows, positions = loser_row[listed_twice], loser_position[listed_twice]
        self_compared = np.r_[self_compared, rows[pd.DataFrame({"r": rows, "c": positions}).duplicated().to_numpy()]]
    flag(np.bincount(self_compared, minlength=n) > 0, "self-comparison", "a candidate is compared with itself")
    if annotators is not None:
        allowed = pc.is_in(cols["annotator_id"], value_set=pa.array(sorted(annotators), pa.string()))
        flag(
            ~_mask(allowed),
            "unknown annotator",
            lambda i: [
                f"annotator {a} is not on the allow-list" for a in cols["annotator_id"].take(pa.array(i)).to_pylist()
            ],
        )
    future = (stamps > pd.Timestamp(now) + pd.Timedelta(seconds=clock_skew_s)).to_numpy()
    flag(future, "future timestamp", lambda i: [f"timestamp {df['timestamp'][j]} is in the future" for j in i])
    flag(
        (time_spent <= 0) | (time_spent > max_time_spent_s),
        "impossible duration",
        lambda i: [f"time_spent_s {time_spent[j]} is not in (0, {max_time_spent_s}]" for j in i],
    )

    # the same submission id twice in a file: identical -> once; different -> quarantined
    key_codes = pc.dictionary_encode(pc.fill_null(cols["submission_id"], "")).indices.to_numpy()
    repeats = ~flagged & pd.Series(key_codes).duplicated(keep=False).to_numpy()
    if repeats.any():
        rows = np.flatnonzero(repeats)
        content = submission_content(
            {**{c: cols[c].take(pa.array(rows)) for c in cols}, "losers": flat.take(pa.array(rows))}
        )
        conflicting = (
            pd.Series(content.to_numpy(zero_copy_only=False), index=key_codes[rows]).groupby(level=0).nunique()
        )
        flag(
            repeats & np.isin(key_codes, conflicting[conflicting > 1].index),
            "conflicting resubmission",
            lambda i: [
                f"submission {k} appears with different contents"
                for k in cols["submission_id"].take(pa.array(i)).to_pylist()
            ],
        )
    keep = pa.array(np.flatnonzero(~flagged & ~pd.Series(key_codes).duplicated().to_numpy()))

    good = (
        pa.table(
            {
                **{c: cols[c].take(keep) for c in ("submission_id", "annotator_id", "object_id", "kind", "winner")},
                "losers": flat.take(keep),
                "timestamp": pa.array(stamps.iloc[keep.to_numpy()], pa.timestamp("us", tz="UTC")),
                "time_spent_s": pa.array(time_spent[keep.to_numpy()], pa.float64(), from_pandas=True),  # NaN: null
                **{r: pa.array(rubric[r][keep.to_numpy()], pa.float64(), from_pandas=True) for r in RUBRIC},
                "aligned_pose": aligned.take(keep),
            }
        )
        .select(NATIVE_SCHEMA.names)
        .cast(NATIVE_SCHEMA)
    )
    bad = np.flatnonzero(flagged)
    keys = cols["submission_id"].take(pa.array(bad)).to_pylist()
    quarantine = pd.DataFrame(
        {
            "item_id": [f"{file_name}:{df['_line'][j]}:{k}" for j, k in zip(bad, keys)],
            "kind": "ranking",
            "reason": reason[bad],
            "detail": detail[bad].astype(str),
        }
    )
    return good, quarantine

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
time_spent_s          seconds spent, > 0 and <= the configured maximum
geometry, texture, completeness, multiview_consistency   optional rubric scores 0-10
====================  =========================================================================

Label Studio exports of the pairwise and ranking templates made by
:mod:`flywheel.annotation` convert to the same rows (:func:`from_label_studio`).

Checking is vectorised (pyarrow / pandas): every rejected row gets a reason (see
:data:`REASONS`); the rest of the file is kept.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

KINDS = ("pairwise", "best-of-n", "reject-all")
RUBRIC = ("geometry", "texture", "completeness", "multiview_consistency")

NATIVE_SCHEMA = pa.schema([
    pa.field("submission_id", pa.string(), nullable=False),
    pa.field("annotator_id", pa.string(), nullable=False),
    pa.field("object_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("winner", pa.string()),
    pa.field("losers", pa.list_(pa.string()), nullable=False),
    pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("time_spent_s", pa.float64(), nullable=False),
    *[pa.field(r, pa.float64()) for r in RUBRIC],
])

#: Reasons a row is quarantined, for counting.
REASONS = ("malformed row", "unknown object", "unknown candidate", "candidate of another object",
           "self-comparison", "unknown annotator", "future timestamp", "impossible duration",
           "conflicting resubmission", "file too large")


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
            df = pq.read_table(io.BytesIO(data)).to_pandas()
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
            rows.append({**row, "_line": i, "_problem": None} if isinstance(row, dict)
                        else {"_line": i, "_problem": "not a JSON object"})
        return pd.DataFrame(rows) if rows else _frame([])
    raise ExportError(f"{name}: unknown export format {suffix!r} (native: .jsonl, .csv, .parquet; "
                      "Label Studio: .json)")


def from_label_studio(data: bytes, name: str) -> pd.DataFrame:
    """Label Studio JSON export (pairwise or ranking template of flywheel.annotation) ->
    native raw rows. Submission id: ``ls-<task id>-<annotation id>``."""
    try:
        tasks = json.loads(data)
    except json.JSONDecodeError as e:
        raise ExportError(f"{name}: not JSON: {e.msg}") from None
    if not isinstance(tasks, list):
        raise ExportError(f"{name}: a Label Studio export is a JSON list of tasks")
    rows = []
    for t_index, task in enumerate(tasks, 1):
        task = task if isinstance(task, dict) else {}
        d = task.get("data") or {}
        for ann in task.get("annotations") or []:
            base = {"submission_id": f"ls-{task.get('id')}-{ann.get('id')}", "annotator_id": _ls_user(ann),
                    "object_id": d.get("object_id"), "timestamp": ann.get("created_at"),
                    "time_spent_s": ann.get("lead_time"), "_line": t_index, "_problem": None}
            for result in ann.get("result") or []:
                value = result.get("value") or {}
                if result.get("type") == "pairwise" or "selected" in value:
                    side = value.get("selected")
                    winner = d.get("left_id") if side == "left" else d.get("right_id") if side == "right" else None
                    loser = d.get("right_id") if side == "left" else d.get("left_id") if side == "right" else None
                    rows.append({**base, "kind": "pairwise", "winner": winner, "losers": [loser] if loser else None})
                elif result.get("type") == "ranker" or "ranker" in value:
                    buckets = value.get("ranker") or {}
                    best, rejected = list(buckets.get("best") or []), list(buckets.get("rejected") or [])
                    if best:
                        rows.append({**base, "kind": "best-of-n", "winner": best[0], "losers": best[1:] + rejected})
                    else:
                        rows.append({**base, "kind": "reject-all", "winner": None, "losers": rejected})
    return pd.DataFrame(rows) if rows else _frame([])


def _ls_user(ann: dict):
    user = ann.get("completed_by")
    if isinstance(user, dict):
        user = user.get("email") or user.get("id")
    return None if user is None else str(user)


def check(raw: pd.DataFrame, file_name: str, *, candidates: pd.DataFrame, annotators: set[str] | None,
          max_time_spent_s: float, now: datetime | None = None,
          clock_skew_s: float = 300.0) -> tuple[pa.Table, pd.DataFrame]:
    """Type and check raw rows. ``candidates``: the registry (candidate_id, object_id).

    Returns (good rows as a NATIVE_SCHEMA table, quarantine rows: item_id, kind, reason, detail)."""
    now = now or datetime.now(timezone.utc)
    df = raw.copy()
    for col in [f.name for f in NATIVE_SCHEMA] + ["_line", "_problem"]:
        if col not in df:
            df[col] = None
    n = len(df)
    reason = pd.Series([None] * n, index=df.index, dtype=object)
    detail = pd.Series([None] * n, index=df.index, dtype=object)

    def flag(mask, why: str, text) -> None:
        mask = mask & reason.isna()
        reason[mask] = why
        detail[mask] = text if isinstance(text, str) else text[mask]

    flag(df["_problem"].notna(), "malformed row", "line " + df["_line"].astype(str) + ": " + df["_problem"].astype(str))
    for col in ("submission_id", "annotator_id", "object_id", "kind"):
        bad = df[col].isna() | (df[col].astype(str).str.len() == 0) | ~df[col].map(lambda v: isinstance(v, str))
        flag(bad, "malformed row", f"missing or non-text {col}")
    flag(~df["kind"].isin(KINDS), "malformed row", "kind must be one of " + ", ".join(KINDS))
    losers = df["losers"].map(_losers)
    flag(losers.isna(), "malformed row", "losers must be a list of candidate ids")
    losers = losers.map(lambda v: v if isinstance(v, list) else [])
    winner = df["winner"].map(lambda v: v if isinstance(v, str) and v else None).astype(object)
    needs_winner = df["kind"].isin(("pairwise", "best-of-n"))
    has_winner = winner.map(lambda w: isinstance(w, str))
    flag(needs_winner & ~has_winner, "malformed row", "pairwise and best-of-n need a winner")
    flag((df["kind"] == "reject-all") & has_winner, "malformed row", "reject-all has no winner")
    flag((df["kind"] == "pairwise") & (losers.map(len) != 1), "malformed row", "pairwise needs exactly one loser")
    flag((df["kind"] == "best-of-n") & (losers.map(len) < 1), "malformed row", "best-of-n needs one loser or more")
    time_spent = pd.to_numeric(df["time_spent_s"], errors="coerce")
    flag(time_spent.isna(), "malformed row", "time_spent_s is not a number")
    stamps = pd.to_datetime(df["timestamp"], errors="coerce", utc=True, format="mixed")
    flag(stamps.isna(), "malformed row", "timestamp is not an ISO 8601 time")
    rubric = {}
    for r in RUBRIC:
        values = pd.to_numeric(df[r].replace("", None), errors="coerce")
        flag(df[r].notna() & (df[r].astype(str) != "") & (values.isna() | (values < 0) | (values > 10)),
             "malformed row", f"{r} must be a number in 0..10")
        rubric[r] = values

    owner = dict(zip(candidates["candidate_id"], candidates["object_id"]))
    known_objects = set(candidates["object_id"])
    flag(~df["object_id"].isin(known_objects), "unknown object",
         "object " + df["object_id"].astype(str) + " has no candidates in the registry")
    ids = winner.map(lambda w: [w] if isinstance(w, str) else []) + losers
    unknown = ids.map(lambda xs: [str(x) for x in xs if x not in owner])
    flag(unknown.map(bool), "unknown candidate", "candidates not in the registry: " + unknown.map(", ".join))
    foreign = pd.Series([[str(x) for x in xs if owner.get(x) not in (None, o)] for xs, o in zip(ids, df["object_id"])],
                        index=df.index)
    flag(foreign.map(bool), "candidate of another object",
         "candidates of another object: " + foreign.map(", ".join) + " (row object " + df["object_id"].astype(str) + ")")
    flag(pd.Series([isinstance(w, str) and w in ls for w, ls in zip(winner, losers)], index=df.index, dtype=bool)
         | losers.map(lambda xs: len(set(xs)) != len(xs)), "self-comparison", "a candidate is compared with itself")
    if annotators is not None:
        flag(~df["annotator_id"].isin(annotators), "unknown annotator",
             "annotator " + df["annotator_id"].astype(str) + " is not on the allow-list")
    flag(stamps > pd.Timestamp(now) + pd.Timedelta(seconds=clock_skew_s), "future timestamp",
         "timestamp " + df["timestamp"].astype(str) + " is in the future")
    flag((time_spent <= 0) | (time_spent > max_time_spent_s), "impossible duration",
         "time_spent_s " + time_spent.astype(str) + f" is not in (0, {max_time_spent_s}]")

    # the same submission id twice in a file: identical -> once; different -> quarantined
    key = df["submission_id"].astype(str)
    content = (df["annotator_id"].astype(str) + "|" + df["object_id"].astype(str) + "|" + df["kind"].astype(str)
               + "|" + winner.astype(str) + "|" + losers.map(lambda xs: ";".join(xs)))
    ok = reason.isna()
    groups = pd.DataFrame({"key": key[ok], "content": content[ok]}).groupby("key")["content"].nunique()
    conflicting = key.isin(groups[groups > 1].index) & ok
    flag(conflicting, "conflicting resubmission", "submission " + key + " appears with different contents")
    keep = reason.isna() & ~key.duplicated()

    good = pa.table({
        "submission_id": pa.array(key[keep].tolist(), pa.string()),
        "annotator_id": pa.array(df["annotator_id"][keep].tolist(), pa.string()),
        "object_id": pa.array(df["object_id"][keep].tolist(), pa.string()),
        "kind": pa.array(df["kind"][keep].tolist(), pa.string()),
        "winner": pa.array([w if isinstance(w, str) else None for w in winner[keep]], pa.string()),
        "losers": pa.array(losers[keep].tolist(), pa.list_(pa.string())),
        "timestamp": pa.array(stamps[keep].dt.tz_convert("UTC").tolist(), pa.timestamp("us", tz="UTC")),
        "time_spent_s": pa.array(time_spent[keep].tolist(), pa.float64()),
        **{r: pa.array(rubric[r][keep].to_numpy(), pa.float64(), from_pandas=True) for r in RUBRIC},
    }, schema=NATIVE_SCHEMA)
    bad = reason.notna()
    quarantine = pd.DataFrame({
        "item_id": file_name + ":" + df["_line"][bad].astype(str) + ":" + key[bad],
        "kind": "ranking", "reason": reason[bad], "detail": detail[bad].astype(str)})
    return good, quarantine.reset_index(drop=True)

"""Reading Label Studio exports as Label Studio writes them (measured on a 1.23 server, its
REST API and its web UI; see tests/test_label_studio.py).

What a judgement is comes from the project's **labeling config**, not from fixed names:

=================  ==============================================  ====================================
control tag        result value (JSON; JSON_MIN/CSV: the same      read as
                   value under the tag's name, as a list)
=================  ==============================================  ====================================
``Pairwise``       ``{"selected": "left" | "right"}``              pairwise: the first / second object
                                                                   of ``toName`` won over the other
``Ranker``         ``{"ranker": {BUCKET: [item ids], "_": [...]}}``  best-of-n: the first item of the
                   (``_``: items left in the list; no buckets:     first ranked bucket won over every
                   ``{LIST NAME: [item ids in order]}``)           other item; a bucket whose name or
                                                                   title says none/reject rejects
                                                                   (all rejected: reject-all)
``Choices``        ``{"choices": [value]}`` (JSON_MIN/CSV: the     best-of-n: the chosen candidate won
                   value itself when single)                       over the others offered (dynamic
                                                                   options, or static choices whose
                                                                   value is a candidate id, a data key
                                                                   or an object tag's name); a
                                                                   none/reject choice: reject-all
=================  ==============================================  ====================================

Candidates are found in the task data the object tags point at (``value="$key"``): a
candidate id (``cand-`` + 20 hex digits) in the value (an id, a preview URL, a List item, a
Choices option) or in ``<key>_id``. The object id is the task's ``object_id`` when it has
one, else the candidates' object in the registry.

Formats: ``JSON`` (tasks with annotations), ``JSON_MIN`` (one flat row per annotation;
cancelled annotations are left out by Label Studio) and ``CSV`` (JSON_MIN's rows, with
lists and objects as JSON text), each with or without tasks that have no annotation.
Skipped (cancelled) annotations and tasks without annotations are counted, not judgements.
An annotation's ``updated_at`` is its judgement time: an edited annotation keeps its id and
supersedes the earlier judgement on ingestion (a revision). A result of a tag that is not a
judgement, or not in the config, is reported once per tag and file (quarantine row).
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from flywheel.feedback.exports import NATIVE_SCHEMA, ExportError

CANDIDATE = re.compile(r"cand-[0-9a-f]{20}")
#: A Ranker bucket or a Choice that says "none of them is acceptable".
REJECTING = re.compile(r"\b(none|neither|reject\w*|unacceptable|nothing|bad)\b", re.IGNORECASE)
JUDGING_TAGS = {"Pairwise": "pairwise", "Ranker": "ranker", "Choices": "choices"}
#: JSON_MIN / CSV bookkeeping columns (everything else is task data or a control tag's value).
_MIN_FIELDS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time")


@dataclass(frozen=True)
class ControlTag:
    """A judging control tag of a labeling config."""

    name: str
    kind: Literal["pairwise", "ranker", "choices"]
    to_name: tuple[str, ...]
    buckets: tuple[tuple[str, str], ...] = ()  # Ranker: (name, title), in config order
    choices: tuple[tuple[str, str], ...] = ()  # Choices: static (value, alias)
    options_key: str | None = None  # Choices value="$key": options from the task data


@dataclass(frozen=True)
class LabelingConfig:
    """The parts of a Label Studio labeling config that say what a judgement is."""

    controls: dict[str, ControlTag]
    objects: dict[str, str]  # object tag name -> task-data key ($key)
    other_controls: dict[str, str] = field(default_factory=dict)  # control tags that do not judge: name -> tag

    @classmethod
    def parse(cls, xml: str, source: str = "labeling config") -> LabelingConfig:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as e:
            raise ExportError(f"{source}: not a labeling config (XML: {e})") from None
        controls, objects, others = {}, {}, {}
        for el in root.iter():
            name, value = el.get("name"), el.get("value") or ""
            if not name:
                continue
            if el.tag in JUDGING_TAGS:
                controls[name] = ControlTag(
                    name=name,
                    kind=JUDGING_TAGS[el.tag],  # type: ignore[arg-type]
                    to_name=tuple(t.strip() for t in (el.get("toName") or "").split(",") if t.strip()),
                    buckets=tuple((b.get("name") or "", b.get("title") or "") for b in el.iter("Bucket")),
                    choices=tuple((c.get("value") or "", c.get("alias") or "") for c in el.iter("Choice")),
                    options_key=value[1:] if value.startswith("$") else None,
                )
            elif el.get("toName") is not None:
                others[name] = el.tag
            elif value.startswith("$"):
                objects[name] = value[1:]
        if not controls:
            raise ExportError(f"{source}: no Pairwise, Ranker or Choices tag: nothing in it is a judgement")
        for tag in controls.values():
            missing = [t for t in tag.to_name if t not in objects and tag.kind != "choices"]
            if missing or (tag.kind == "pairwise" and len(tag.to_name) != 2):
                raise ExportError(f"{source}: {tag.kind} tag {tag.name!r} must name two objects with toName")
        return cls(controls, objects, others)

    @classmethod
    def merged(cls, configs: Mapping[str, str]) -> LabelingConfig:
        """One config holding the tags of several (the templates this project ships)."""
        parts = [cls.parse(xml, name) for name, xml in configs.items()]
        return cls(
            {k: v for p in parts for k, v in p.controls.items()},
            {k: v for p in parts for k, v in p.objects.items()},
            {k: v for p in parts for k, v in p.other_controls.items()},
        )


@dataclass
class LabelStudioExport:
    """One export read: raw rows for :func:`flywheel.feedback.exports.check` and what else it held."""

    format: str  # JSON | JSON_MIN | CSV
    rows: pd.DataFrame
    tasks: int = 0
    unannotated: int = 0  # tasks without any annotation
    skipped: int = 0  # cancelled annotations (Label Studio's "Skip")
    problems: list[dict[str, str]] = field(default_factory=list)  # whole tags: quarantine rows


@dataclass
class _Annotation:
    task_id: Any
    data: dict[str, Any]
    annotation_id: Any
    annotator: Any
    created_at: Any
    updated_at: Any
    lead_time: Any
    results: list[tuple[str, Any]]  # (tag name, value)
    line: int


def is_label_studio_csv(data: bytes) -> bool:
    """A CSV export of Label Studio (rather than a native one): its header has annotation_id."""
    header = data[:4096].decode("utf-8", errors="replace").splitlines()[:1]
    return bool(header) and "annotation_id" in next(csv.reader(header), []) and "submission_id" not in header[0]


def read_label_studio(
    data: bytes, name: str, config: LabelingConfig, object_of: Mapping[str, str] | None = None
) -> LabelStudioExport:
    """Parse a Label Studio export (JSON, JSON_MIN or CSV) into native raw rows, one per
    judging result. ``object_of``: candidate id -> object id (the registry), for tasks whose
    data has no ``object_id``. Raises ExportError when the file is not an export at all."""
    if name.lower().endswith(".csv"):
        fmt, items = "CSV", _csv_rows(data, name)
    else:
        try:
            items = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExportError(f"{name}: not JSON: {getattr(e, 'msg', e)}") from None
        if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
            raise ExportError(f"{name}: a Label Studio export is a JSON list of tasks (JSON) or of rows (JSON_MIN)")
        fmt = "JSON" if any("annotations" in t or isinstance(t.get("data"), dict) for t in items) else "JSON_MIN"
    out = LabelStudioExport(fmt, pd.DataFrame())
    annotations = _from_json(items, out) if fmt == "JSON" else _from_min(items, config, out)
    rows, unread = [], Counter[tuple[str, str]]()
    for ann in annotations:
        judged = [(tag, value) for tag, value in ann.results if tag in config.controls]
        for tag, _ in ann.results:
            if tag not in config.controls:
                unread[(tag, config.other_controls.get(tag, ""))] += 1
        base = {
            "annotator_id": _annotator(ann.annotator),
            "timestamp": ann.updated_at or ann.created_at,
            "time_spent_s": ann.lead_time,
            "_line": ann.line,
            "_problem": None,
        }
        if not judged:
            rows.append(
                {
                    **base,
                    "submission_id": f"ls-{ann.task_id}-{ann.annotation_id}",
                    "_problem": "annotation has no result of a judging tag ("
                    + ", ".join(config.controls)
                    + "): was it exported from a project with another labeling config?",
                }
            )
        for tag, value in judged:
            row = {**base, "submission_id": f"ls-{ann.task_id}-{ann.annotation_id}-{tag}"}
            try:
                kind, winner, losers = _judgement(config.controls[tag], value, ann.data, config)
            except ValueError as e:
                rows.append({**row, "_problem": f"task {ann.task_id}, tag {tag}: {e}"})
                continue
            named = [c for c in [winner, *losers] if c]
            object_id = ann.data.get("object_id")
            if not isinstance(object_id, str) or not object_id:
                object_id = next((object_of[c] for c in named if object_of and c in object_of), None)
            rows.append({**row, "object_id": object_id, "kind": kind, "winner": winner, "losers": losers})
    for (tag, tag_type), n in sorted(unread.items()):
        why = (
            f"a {tag_type} tag is not a judgement"
            if tag_type
            else "the tag is not in the labeling config (give the project's own: rankings ingest --label-config)"
        )
        out.problems.append(
            {"item_id": f"{name}:tag:{tag}", "kind": "tag", "reason": "unread tag", "detail": f"{n} results: {why}"}
        )
    out.rows = pd.DataFrame(rows, columns=[f.name for f in NATIVE_SCHEMA] + ["_line", "_problem"])
    return out


def _csv_rows(data: bytes, name: str) -> list[dict[str, Any]]:
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ExportError(f"{name}: not a readable CSV file: {e}") from None
    if "annotation_id" not in frame.columns:
        raise ExportError(f"{name}: not a Label Studio CSV export (no annotation_id column)")

    def cell(text: str) -> Any:
        if text == "":
            return None
        if text[:1] in "[{":
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        return text

    return [{k: cell(v) for k, v in rec.items()} for rec in frame.to_dict("records")]


def _from_json(tasks: list[dict[str, Any]], out: LabelStudioExport) -> list[_Annotation]:
    found = []
    for line, task in enumerate(tasks, 1):
        out.tasks += 1
        anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        out.unannotated += not anns
        data = task["data"] if isinstance(task.get("data"), dict) else {}
        for ann in anns:
            if ann.get("was_cancelled"):
                out.skipped += 1
                continue
            results = [(r.get("from_name"), r.get("value")) for r in ann.get("result") or [] if isinstance(r, dict)]
            found.append(
                _Annotation(
                    task.get("id"),
                    data,
                    ann.get("id"),
                    ann.get("completed_by"),
                    ann.get("created_at"),
                    ann.get("updated_at"),
                    ann.get("lead_time"),
                    [(str(n), v) for n, v in results],
                    line,
                )
            )
    return found


def _from_min(rows: list[dict[str, Any]], config: LabelingConfig, out: LabelStudioExport) -> list[_Annotation]:
    found, tasks = [], set()
    tags = [*config.controls, *config.other_controls]  # config order: the same rows in the same order
    for line, row in enumerate(rows, 1):
        tasks.add(row.get("id"))
        if row.get("annotation_id") in (None, ""):
            out.unannotated += 1
            continue
        data = {k: v for k, v in row.items() if k not in _MIN_FIELDS and k not in tags}
        results = [(tag, row[tag]) for tag in tags if row.get(tag) not in (None, "")]
        found.append(
            _Annotation(
                row.get("id"),
                data,
                row.get("annotation_id"),
                row.get("annotator"),
                row.get("created_at"),
                row.get("updated_at"),
                row.get("lead_time"),
                results,
                line,
            )
        )
    out.tasks = len(tasks)
    return found


def _annotator(user: Any) -> str | None:
    """Label Studio writes the user's numeric id (an email in some exports)."""
    if isinstance(user, dict):
        user = user.get("email") or user.get("id")
    if user is None or user == "":
        return None
    text = str(user)
    return f"label-studio-user-{text}" if text.isdigit() else text


def candidate_in(value: Any) -> str | None:
    """The one candidate id a task-data value names (an id, a URL, an item or option), or None."""
    if isinstance(value, dict):
        for key in ("id", "value"):
            if (found := candidate_in(value.get(key))) is not None:
                return found
        ids = {c for v in value.values() if (c := candidate_in(v)) is not None}
        return ids.pop() if len(ids) == 1 else None
    if isinstance(value, str):
        ids = set(CANDIDATE.findall(value))
        return ids.pop() if len(ids) == 1 else None
    return None


def _object_candidate(obj: str, data: Mapping[str, Any], config: LabelingConfig) -> str:
    key = config.objects.get(obj, obj)
    found = candidate_in(data.get(key)) or candidate_in(data.get(f"{key}_id"))
    if found is None:
        raise ValueError(f"task data {key!r} names no candidate id")
    return found


def _unwrap(value: Any, key: str) -> Any:
    """JSON: {key: v}; JSON_MIN / CSV: [{key: v}] (or the bare value for single choices)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    return value.get(key, value) if isinstance(value, dict) else value


def _judgement(
    tag: ControlTag, value: Any, data: Mapping[str, Any], config: LabelingConfig
) -> tuple[str, str | None, list[str]]:
    """(kind, winner, losers) of one result; ValueError says why it cannot be read."""
    if tag.kind == "pairwise":
        side = _unwrap(value, "selected")
        if side not in ("left", "right"):
            raise ValueError(f"pairwise selection {side!r} is not left or right")
        left, right = (_object_candidate(o, data, config) for o in tag.to_name)
        return ("pairwise", left, [right]) if side == "left" else ("pairwise", right, [left])
    if tag.kind == "ranker":
        return _ranking(tag, _unwrap(value, "ranker"), data, config)
    return _choice(tag, _unwrap(value, "choices"), data, config)


def _ranking(
    tag: ControlTag, buckets: Any, data: Mapping[str, Any], config: LabelingConfig
) -> tuple[str, str | None, list[str]]:
    if not isinstance(buckets, dict) or not all(isinstance(v, list) for v in buckets.values()):
        raise ValueError("ranker value is not a mapping of buckets to item lists")
    items = data.get(config.objects.get(tag.to_name[0], "")) if tag.to_name else None
    by_item = {str(i.get("id")): candidate_in(i) for i in items or [] if isinstance(i, dict)}

    def candidates(ids: list[Any]) -> list[str]:
        out = []
        for i in ids:
            c = by_item.get(str(i)) or candidate_in(str(i))
            if c is None:
                raise ValueError(f"ranked item {i!r} names no candidate id")
            out.append(c)
        return out

    titles = dict(tag.buckets)
    order = [b for b, _ in tag.buckets] + sorted(k for k in buckets if k not in titles)
    ranked: list[str] = []
    rejected: list[str] = []
    unplaced = candidates(buckets.get("_", [])) if tag.buckets else []
    for bucket in order:
        if bucket == "_" and tag.buckets:
            continue
        ids = candidates(buckets.get(bucket, []))
        rejecting = bool(REJECTING.search(bucket) or REJECTING.search(titles.get(bucket, "")))
        (rejected if rejecting else ranked).extend(ids)
    if ranked:
        losers = ranked[1:] + [c for c in unplaced + rejected if c not in ranked]
        if not losers:
            raise ValueError("only one candidate ranked and nothing else shown")
        return "best-of-n", ranked[0], losers
    if rejected:
        return "reject-all", None, rejected
    raise ValueError("empty ranking: no candidate was ranked or rejected")


def _choice(
    tag: ControlTag, chosen: Any, data: Mapping[str, Any], config: LabelingConfig
) -> tuple[str, str | None, list[str]]:
    chosen = [chosen] if isinstance(chosen, str) else chosen
    if not isinstance(chosen, list) or not chosen:
        raise ValueError("no choice")
    options: list[tuple[str, str | None]] = []  # (value, candidate)
    if tag.options_key is not None:
        for o in data.get(tag.options_key) or []:
            value = o.get("value") if isinstance(o, dict) else o
            options.append((str(value), candidate_in(o)))
    for value, alias in tag.choices:  # a static choice names a candidate, a data key or an object tag
        key = config.objects.get(value, value)
        options.append((alias or value, candidate_in(value) or candidate_in(data.get(key))))
    offered = [c for _, c in options if c]
    mapped = dict(options)
    picks = [mapped.get(str(c)) or candidate_in(str(c)) for c in chosen]
    if len(chosen) == 1 and picks[0] is None and REJECTING.search(str(chosen[0])):
        if not offered:
            raise ValueError("reject-all, but the task offers no candidate")
        return "reject-all", None, offered
    if len(chosen) != 1:
        raise ValueError(f"{len(chosen)} choices: a best-of-n judgement picks one candidate")
    if picks[0] is None:
        raise ValueError(f"choice {chosen[0]!r} names no candidate")
    return "best-of-n", picks[0], [c for c in offered if c != picks[0]]

"""Annotation tasks: what annotators are asked to rank, as files other tools can read.

- ``tasks.jsonl``: the native task file, one JSON object per image-pool object, checked
  against :data:`TASK_SCHEMA` (documented below);
- ``label_studio_<kind>.json`` (pairwise, ranking, best-of-n): Label Studio import files
  for the three templates in :data:`LABEL_STUDIO_CONFIGS` (the labeling configs
  ``flywheel annotate publish`` creates its projects with), checked against their schemas.

Every task carries the object id and the candidate ids, so rankings exported from either
tool map back to the candidate registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import jsonschema

from flywheel.feedback.judgements import shuffled

_URI = {"type": "string", "minLength": 1}
_CANDIDATE = {
    "type": "object",
    "required": ["candidate_id", "preview", "member"],
    "properties": {
        "candidate_id": {"type": "string", "pattern": "^cand-[0-9a-f]{20}$"},
        "preview": _URI,
        "member": {"type": "string"},
    },
}

#: One native task: rank the candidates of one object (pairwise, best-of-N, or reject all).
TASK_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sam3d-flywheel annotation task",
    "type": "object",
    "required": ["task_id", "object_id", "candidates_dataset", "image", "mask", "sheet", "candidates", "kinds"],
    "additionalProperties": False,
    "properties": {
        "task_id": {"type": "string"},  # "<candidates version>/<object_id>"
        "object_id": {"type": "string"},  # image-pool object id
        "candidates_dataset": {"type": "string"},  # candidates@<version>
        "image": _URI,
        "mask": _URI,  # the input photo and object mask
        "sheet": _URI,  # contact sheet: input crop + every candidate
        "candidates": {"type": "array", "minItems": 2, "items": _CANDIDATE},
        "kinds": {"type": "array", "items": {"enum": ["pairwise", "best-of-n", "reject-all"]}},
    },
}

_ITEMS = {
    "type": "array",
    "minItems": 2,
    "items": {"type": "object", "required": ["html"], "properties": {"html": {"type": "string"}}},
}
_DATA = {"object_id": {"type": "string"}, "task_key": {"type": "string"}, "image": _URI, "mask": _URI}


def _import_schema(required: list[str], properties: dict) -> dict:
    data = {
        "type": "object",
        "required": ["object_id", "task_key", "image", *required],
        "properties": {**_DATA, **properties},
    }
    return {"type": "array", "items": {"type": "object", "required": ["data"], "properties": {"data": data}}}


#: The Label Studio import files' schemas, by template.
LABEL_STUDIO_SCHEMAS = {
    "pairwise": _import_schema(
        ["left", "right", "left_id", "right_id"],
        {"left": _URI, "right": _URI, "left_id": {"type": "string"}, "right_id": {"type": "string"}},
    ),
    "ranking": _import_schema(["items"], {"items": _ITEMS}),
    "best-of-n": _import_schema(["options"], {"options": {"type": "array", "minItems": 3}}),
}

_PHOTO = """  <Header value="$object_id: the object is the one the mask shows"/>
  <View style="display: flex; gap: 8px">
    <Image name="photo" value="$image" maxWidth="320px"/>
    <Image name="mask" value="$mask" maxWidth="320px"/>
  </View>"""

#: Labeling configs of the three templates; their tag names and task-data keys are what
#: :mod:`flywheel.feedback.label_studio` reads by default (any other config is read through
#: its own XML).
LABEL_STUDIO_CONFIGS = {
    "pairwise": f"""<View>
{_PHOTO}
  <Header value="Which 3D candidate matches the object better? Click it."/>
  <View style="display: flex; gap: 16px">
    <View style="flex: 1"><Image name="left" value="$left" maxWidth="480px"/></View>
    <View style="flex: 1"><Image name="right" value="$right" maxWidth="480px"/></View>
  </View>
  <Pairwise name="choice" toName="left,right"/>
</View>""",
    "ranking": f"""<View>
{_PHOTO}
  <Header value="Drag the acceptable candidates into 'Best first', best on top; unacceptable ones into 'None acceptable'."/>
  <List name="candidates" value="$items" title="Candidates"/>
  <Ranker name="rank" toName="candidates">
    <Bucket name="best" title="Best first"/>
    <Bucket name="rejected" title="None acceptable"/>
  </Ranker>
</View>""",
    "best-of-n": f"""<View>
{_PHOTO}
  <Header value="Pick the candidate that matches the object best, or 'None acceptable'."/>
  <Choices name="best" toName="photo" value="$options" choice="single" required="true"/>
</View>""",
}

#: The option of a best-of-n task that rejects every candidate.
NONE_ACCEPTABLE = "None acceptable"


def native_tasks(tasks: Iterable[dict]) -> str:
    """The JSONL text of native tasks, each validated against :data:`TASK_SCHEMA`."""
    lines = []
    for task in tasks:
        jsonschema.validate(task, TASK_SCHEMA)
        lines.append(json.dumps(task, sort_keys=True))
    return "\n".join(lines) + ("\n" if lines else "")


def _preview(url: str, width: int = 240) -> str:
    return f'<img src="{url}" width="{width}"/>'


def ring_pairs(candidates: list[dict]) -> list[tuple[dict, dict]]:
    """Each candidate against the next, around a ring: N comparisons per object (not N(N-1)/2),
    every candidate in two, and a connected comparison graph for the Bradley-Terry fit."""
    n = len(candidates)
    if n == 2:
        return [(candidates[0], candidates[1])]
    return [(candidates[i], candidates[(i + 1) % n]) for i in range(n)]


def _sides(pair: tuple[dict, dict], task_id: str) -> tuple[dict, dict]:
    """(left, right) of a pair, in an order fixed by the task and the two candidates."""
    by_id = {c["candidate_id"]: c for c in pair}
    left, right = shuffled(sorted(by_id), task_id)
    return by_id[left], by_id[right]


def label_studio_tasks(kind: str, tasks: Iterable[dict], url: Callable[[str], str] = str) -> list[dict]:
    """Label Studio tasks of template ``kind`` for native ``tasks``; ``url`` turns a store URI
    into one the annotator's browser can load (default: unchanged). Each task's ``task_key``
    identifies it across publications. pairwise: one task per pair of a ring over an object's
    candidates (:func:`ring_pairs`); ranking and best-of-n: one task per object. Candidates
    come in an order shuffled per task (left and right too), titled by position only: neither
    place nor title says which model made a candidate."""
    out = []
    for t in tasks:
        base = {"object_id": t["object_id"], "image": url(t["image"]), "mask": url(t["mask"])}
        order = shuffled([c["candidate_id"] for c in t["candidates"]], t["task_id"])
        cands = sorted(t["candidates"], key=lambda c: order.index(c["candidate_id"]))
        if kind == "pairwise":
            out += [
                {
                    "data": {
                        **base,
                        "task_key": f"{t['task_id']}/{a['candidate_id']}/{b['candidate_id']}",
                        "left": url(a["preview"]),
                        "right": url(b["preview"]),
                        "left_id": a["candidate_id"],
                        "right_id": b["candidate_id"],
                    }
                }
                for a, b in (_sides(pair, t["task_id"]) for pair in ring_pairs(cands))
            ]
        elif kind == "ranking":
            items = [
                {"id": c["candidate_id"], "title": f"Candidate {i}", "html": _preview(url(c["preview"]))}
                for i, c in enumerate(cands, 1)
            ]
            out.append({"data": {**base, "task_key": t["task_id"], "items": items}})
        elif kind == "best-of-n":
            options = [{"value": c["candidate_id"], "html": _preview(url(c["preview"]))} for c in cands]
            out.append({"data": {**base, "task_key": t["task_id"], "options": options + [{"value": NONE_ACCEPTABLE}]}})
        else:
            raise ValueError(f"unknown Label Studio template {kind!r} (one of {', '.join(LABEL_STUDIO_CONFIGS)})")
    jsonschema.validate(out, LABEL_STUDIO_SCHEMAS[kind])
    return out

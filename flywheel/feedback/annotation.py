"""Annotation tasks: what annotators are asked to rank, as files other tools can read.

- ``tasks.jsonl``: the native task file, one JSON object per image-pool object, checked
  against :data:`TASK_SCHEMA` (documented below);
- ``label_studio_pairwise.json`` / ``label_studio_ranking.json``: Label Studio import
  files for its pairwise-comparison and ranking templates (:data:`LABEL_STUDIO_CONFIGS`
  holds the labeling configs to create the projects with), checked against their schemas.

Every task carries the object id and the candidate ids, so rankings exported from either
tool map back to the candidate registry.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable

import jsonschema

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

LABEL_STUDIO_PAIRWISE_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "object",
                "required": ["object_id", "image", "left", "right", "left_id", "right_id"],
                "properties": {
                    "object_id": {"type": "string"},
                    "image": _URI,
                    "left": _URI,
                    "right": _URI,
                    "left_id": {"type": "string"},
                    "right_id": {"type": "string"},
                },
            }
        },
    },
}

LABEL_STUDIO_RANKING_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "object",
                "required": ["object_id", "image", "items"],
                "properties": {
                    "object_id": {"type": "string"},
                    "image": _URI,
                    "items": {
                        "type": "array",
                        "minItems": 2,
                        "items": {
                            "type": "object",
                            "required": ["id", "title", "body"],
                            "properties": {
                                "id": {"type": "string"},
                                "title": {"type": "string"},
                                "body": {"type": "string"},
                            },
                        },
                    },
                },
            }
        },
    },
}

#: Labeling configs for the two Label Studio templates these files are made for.
LABEL_STUDIO_CONFIGS = {
    "pairwise": """<View>
  <Image name="photo" value="$image"/>
  <Image name="left" value="$left"/><Image name="right" value="$right"/>
  <Pairwise name="choice" toName="left,right"/>
</View>""",
    "ranking": """<View>
  <Image name="photo" value="$image"/>
  <List name="candidates" value="$items" title="Candidates"/>
  <Ranker name="rank" toName="candidates">
    <Bucket name="best" title="Best first"/>
    <Bucket name="rejected" title="None acceptable"/>
  </Ranker>
</View>""",
}


def native_tasks(tasks: Iterable[dict]) -> str:
    """The JSONL text of native tasks, each validated against :data:`TASK_SCHEMA`."""
    lines = []
    for task in tasks:
        jsonschema.validate(task, TASK_SCHEMA)
        lines.append(json.dumps(task, sort_keys=True))
    return "\n".join(lines) + ("\n" if lines else "")


def label_studio_pairwise(tasks: Iterable[dict]) -> list[dict]:
    """One Label Studio task per candidate pair of each object."""
    out = [
        {
            "data": {
                "object_id": t["object_id"],
                "image": t["image"],
                "left": a["preview"],
                "right": b["preview"],
                "left_id": a["candidate_id"],
                "right_id": b["candidate_id"],
            }
        }
        for t in tasks
        for a, b in itertools.combinations(t["candidates"], 2)
    ]
    jsonschema.validate(out, LABEL_STUDIO_PAIRWISE_SCHEMA)
    return out


def label_studio_ranking(tasks: Iterable[dict]) -> list[dict]:
    """One Label Studio ranking task per object; items are the candidates."""
    out = [
        {
            "data": {
                "object_id": t["object_id"],
                "image": t["image"],
                "items": [
                    {"id": c["candidate_id"], "title": c["member"], "body": f'<img src="{c["preview"]}" width="100%"/>'}
                    for c in t["candidates"]
                ],
            }
        }
        for t in tasks
    ]
    jsonschema.validate(out, LABEL_STUDIO_RANKING_SCHEMA)
    return out

"""Label Studio, for real: a 1.23 server on loopback (its own venv), projects made with our
templates and with differently named tags and task-data keys, annotations submitted through
the REST API by two users and through the web UI in headless Chromium (skips, an edit, tasks
left unannotated), exported in every format the Export dialog offers, then read back: each
export must give exactly the winners and losers the annotators chose."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flywheel.feedback import annotation
from flywheel.feedback.exports import check
from flywheel.feedback.label_studio import LabelingConfig, read_label_studio
from flywheel.feedback.label_studio_api import LabelStudio

pytestmark = pytest.mark.slow

OBJECTS = {"obj-a": [f"cand-{i:020x}" for i in range(1, 5)], "obj-b": [f"cand-{i:020x}" for i in range(11, 15)]}
REGISTRY = pd.DataFrame([(c, o) for o, cs in OBJECTS.items() for c in cs], columns=["candidate_id", "object_id"])
OBJECT_OF = dict(zip(REGISTRY["candidate_id"], REGISTRY["object_id"]))
FORMATS = [("JSON", ".json"), ("JSON_MIN", ".json"), ("CSV", ".csv")]

#: Another team's project: other tag names and data keys, no object_id in the task data,
#: static choices naming object tags, a ranker without buckets, and a comment box.
RENAMED = """<View>
  <Image name="reference" value="$photo_url"/>
  <Image name="shapeA" value="$render_a"/>
  <Image name="shapeB" value="$render_b"/>
  <Pairwise name="preference" toName="shapeA,shapeB"/>
  <Choices name="overall" toName="reference" choice="single">
    <Choice value="shapeA"/><Choice value="shapeB"/><Choice value="Neither is acceptable"/>
  </Choices>
  <List name="shapes" value="$gallery" title="Shapes"/>
  <Ranker name="order" toName="shapes"/>
  <TextArea name="comment" toName="reference"/>
</View>"""


def native_task(object_id: str) -> dict:
    url = "/data/local-files/?d=previews/{}.png"
    return {
        "task_id": f"v/{object_id}",
        "object_id": object_id,
        "image": url.format(object_id),
        "mask": url.format(object_id + "-mask"),
        "candidates": [{"candidate_id": c, "preview": url.format(c), "member": "champion"} for c in OBJECTS[object_id]],
    }


def result(tag: str, to: str, kind: str, value: dict) -> dict:
    return {"from_name": tag, "to_name": to, "type": kind, "value": value}


class Studio:
    """The test's side of the server: projects, users, annotations, exports."""

    def __init__(self, server):
        self.server = server
        self.api = LabelStudio(server.url, server.token)
        self.me = self.api.call("GET", "/api/current-user/whoami")["id"]

    def project(self, title: str, config: str, tasks: list[dict]) -> tuple[int, list[dict]]:
        project = self.api.call("POST", "/api/projects", json={"title": title, "label_config": config})
        self.api.call("POST", f"/api/projects/{project['id']}/import", json=tasks)
        got = self.api.call("GET", "/api/tasks", params={"project": project["id"], "page_size": 100})["tasks"]
        return project["id"], sorted(got, key=lambda t: t["id"])

    def user(self, email: str) -> int:
        users = {u["email"]: u["id"] for u in self.api.call("GET", "/api/users")}
        if email in users:
            return users[email]
        body = {"email": email, "username": email.split("@")[0], "password": "flywheel-pw-2"}
        return int(self.api.call("POST", "/api/users", json=body)["id"])

    def annotate(self, task: dict, results: list[dict], user: int | None = None, lead_time: float = 7.5) -> int:
        body = {"result": results, "lead_time": lead_time} | ({"completed_by": user} if user else {})
        return int(self.api.call("POST", f"/api/tasks/{task['id']}/annotations", json=body)["id"])

    def skip(self, task: dict) -> None:
        self.api.call("POST", f"/api/tasks/{task['id']}/annotations", json={"result": [], "was_cancelled": True})

    def exports(self, project: int, folder: Path, all_tasks: bool) -> dict[str, Path]:
        out = {}
        for fmt, suffix in FORMATS:
            params = {"exportType": fmt} | ({"download_all_tasks": "true"} if all_tasks else {})
            data = self.api.call("GET", f"/api/projects/{project}/export", params=params)
            path = folder / f"project{project}-{fmt}-{'all' if all_tasks else 'annotated'}{suffix}"
            path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
            out[fmt] = path
        return out


@pytest.fixture(scope="module")
def studio(label_studio) -> Studio:
    return Studio(label_studio)


def judgements(path: Path, config: LabelingConfig):
    """(annotator, kind, winner, sorted losers) of every judgement the export gives, and what else it held."""
    export = read_label_studio(path.read_bytes(), path.name, config, OBJECT_OF)
    good, bad = check(export.rows, path.name, candidates=REGISTRY, annotators=None, max_time_spent_s=3600)
    assert bad.empty, bad.to_dict("records")
    rows = {(r["annotator_id"], r["kind"], r["winner"], tuple(sorted(r["losers"]))) for r in good.to_pylist()}
    assert len(rows) == good.num_rows
    return rows, export


def test_every_template_and_export_format_reads_as_annotated(studio: Studio, tmp_path):
    ours = LabelingConfig.merged(annotation.LABEL_STUDIO_CONFIGS)
    tasks = [native_task(o) for o in OBJECTS]
    a, b = OBJECTS["obj-a"], OBJECTS["obj-b"]
    other = studio.user("second@example.com")
    me, them = f"label-studio-user-{studio.me}", f"label-studio-user-{other}"
    expected: dict[str, set] = {}
    projects: dict[str, int] = {}

    # pairwise: six pairs per object; two annotated (one by each user), one skipped, the rest not
    pid, got = studio.project(
        "pairwise", annotation.LABEL_STUDIO_CONFIGS["pairwise"], annotation.label_studio_tasks("pairwise", tasks)
    )
    left_right = [(t["data"]["left_id"], t["data"]["right_id"]) for t in got]
    studio.annotate(got[0], [result("choice", "choice", "pairwise", {"selected": "right"})])
    studio.annotate(got[1], [result("choice", "choice", "pairwise", {"selected": "left"})], user=other)
    studio.skip(got[2])
    expected["pairwise"] = {
        (me, "pairwise", left_right[0][1], (left_right[0][0],)),
        (them, "pairwise", left_right[1][0], (left_right[1][1],)),
    }
    projects["pairwise"] = pid

    # ranking with buckets: one ordered ranking (one item left in the list), one reject-all
    pid, got = studio.project(
        "ranking", annotation.LABEL_STUDIO_CONFIGS["ranking"], annotation.label_studio_tasks("ranking", tasks)
    )
    ranker = {"_": [a[3]], "best": [a[2], a[0]], "rejected": [a[1]]}
    studio.annotate(got[0], [result("rank", "candidates", "ranker", {"ranker": ranker})])
    studio.annotate(
        got[1], [result("rank", "candidates", "ranker", {"ranker": {"_": [], "best": [], "rejected": b}})], user=other
    )
    expected["ranking"] = {
        (me, "best-of-n", a[2], tuple(sorted([a[0], a[1], a[3]]))),
        (them, "reject-all", None, tuple(sorted(b))),
    }
    projects["ranking"] = pid

    # best-of-n: a pick and a "None acceptable"
    pid, got = studio.project(
        "best-of-n", annotation.LABEL_STUDIO_CONFIGS["best-of-n"], annotation.label_studio_tasks("best-of-n", tasks)
    )
    studio.annotate(got[0], [result("best", "photo", "choices", {"choices": [a[1]]})])
    studio.annotate(got[1], [result("best", "photo", "choices", {"choices": [annotation.NONE_ACCEPTABLE]})], user=other)
    expected["best-of-n"] = {
        (me, "best-of-n", a[1], tuple(sorted([a[0], a[2], a[3]]))),
        (them, "reject-all", None, tuple(sorted(b))),
    }

    projects["best-of-n"] = pid
    for template, project in projects.items():
        for all_tasks in (False, True):
            for fmt, path in studio.exports(project, tmp_path, all_tasks).items():
                rows, export = judgements(path, ours)
                assert rows == expected[template], (template, fmt, all_tasks)
                assert export.format == ("JSON" if fmt == "JSON" else "JSON_MIN" if fmt == "JSON_MIN" else "CSV")
                if template == "pairwise" and fmt == "JSON":  # JSON_MIN and CSV leave skipped annotations out
                    assert export.skipped == 1
                if template == "pairwise" and all_tasks:
                    assert export.unannotated == len(left_right) - 3  # the skipped task is not among them


def test_another_teams_tag_names_and_data_keys_are_read_from_its_config(studio: Studio, tmp_path):
    a, b = OBJECTS["obj-a"], OBJECTS["obj-b"]
    gallery = [
        {"id": str(i), "title": f"shape {i}", "html": f"<img src='https://cdn.example/{c}.png'/>"}
        for i, c in enumerate(b, 1)
    ]
    data = {
        "photo_url": "https://cdn.example/photo.jpg",
        "render_a": f"https://cdn.example/renders/{a[0]}.png",
        "render_b": f"https://cdn.example/renders/{a[1]}.png",
        "gallery": gallery,
    }
    pid, got = studio.project(
        "renamed", RENAMED, [{"data": data}, {"data": {**data, "render_a": f"https://cdn.example/{a[2]}.png"}}]
    )
    studio.annotate(
        got[0],
        [
            result("preference", "preference", "pairwise", {"selected": "right"}),
            result("overall", "reference", "choices", {"choices": ["shapeA"]}),
            result("order", "shapes", "ranker", {"ranker": {"shapes": ["3", "1", "2", "4"]}}),
            {"from_name": "comment", "to_name": "reference", "type": "textarea", "value": {"text": ["looks fine"]}},
        ],
    )
    studio.annotate(got[1], [result("overall", "reference", "choices", {"choices": ["Neither is acceptable"]})])
    me = f"label-studio-user-{studio.me}"
    expected = {
        (me, "pairwise", a[1], (a[0],)),
        (me, "best-of-n", a[0], (a[1],)),
        (me, "best-of-n", b[2], tuple(sorted([b[0], b[1], b[3]]))),
        (me, "reject-all", None, tuple(sorted([a[1], a[2]]))),
    }
    config = LabelingConfig.parse(RENAMED)
    for fmt, path in studio.exports(pid, tmp_path, all_tasks=False).items():
        rows, export = judgements(path, config)
        assert rows == expected, fmt
        assert [p["reason"] for p in export.problems] == ["unread tag"], fmt  # the comment: reported, not dropped
    # read with the default (our templates') config instead, nothing is silently lost: every
    # annotation is a quarantined row and every tag is reported
    export = read_label_studio(path.read_bytes(), path.name, LabelingConfig.merged(annotation.LABEL_STUDIO_CONFIGS))
    good, bad = check(export.rows, path.name, candidates=REGISTRY, annotators=None, max_time_spent_s=3600)
    assert good.num_rows == 0 and len(bad) == 2 and set(bad["reason"]) == {"malformed row"}


def test_a_labeling_config_without_judgements_is_refused():
    from flywheel.feedback.exports import ExportError

    with pytest.raises(ExportError, match="no Pairwise, Ranker or Choices"):
        LabelingConfig.parse('<View><Image name="i" value="$image"/><TextArea name="t" toName="i"/></View>')
    with pytest.raises(ExportError, match="not a labeling config"):
        LabelingConfig.parse("<View>")

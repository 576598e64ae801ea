"""Label Studio, for real: a 1.23 server on loopback (its own venv), projects made with our
templates and with differently named tags and task-data keys, annotations submitted through
the REST API by two users and through the web UI in headless Chromium (skips, an edit, tasks
left unannotated), exported in every format the Export dialog offers, then read back: each
export must give exactly the winners and losers the annotators chose."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BUCKET, s3_store_config, write_small_round

from flywheel.core.codecs import encode_png
from flywheel.core.config import AnnotationConfig
from flywheel.core.datasets import Dataset
from flywheel.core.records import DatasetRef
from flywheel.core.store import LocalStore, S3Store
from flywheel.feedback import annotation
from flywheel.feedback.exports import check
from flywheel.feedback.label_studio import LabelingConfig, read_label_studio
from flywheel.feedback.label_studio_api import LabelStudio, publish_to_label_studio

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

    def annotate(self, task: dict, results: list[dict], user: int | None = None) -> int:
        """The admin's annotation, with a lead time as the web UI records it; or ``user``'s,
        made through the API as a script would, with no lead time."""
        body = {"result": results} | ({"completed_by": user} if user else {"lead_time": 7.5})
        return int(self.api.call("POST", f"/api/tasks/{task['id']}/annotations", json=body)["id"])

    def skip(self, task: dict) -> None:
        self.api.call("POST", f"/api/tasks/{task['id']}/annotations", json={"result": [], "was_cancelled": True})

    def exports(self, project: int, folder: Path, all_tasks: bool) -> dict[str, Path]:
        out = {}
        for fmt, suffix in FORMATS:
            params = {"exportType": fmt} | ({"download_all_tasks": "true"} if all_tasks else {})
            data = self.api.call("GET", f"/api/projects/{project}/export", params=params, raw=True)
            path = folder / f"project{project}-{fmt}-{'all' if all_tasks else 'annotated'}{suffix}"
            path.write_bytes(data)  # as Label Studio sent it
            out[fmt] = path
        return out


@pytest.fixture(scope="module")
def studio(label_studio) -> Studio:
    return Studio(label_studio)


def judgements(path: Path, config: LabelingConfig):
    """(annotator, kind, winner, sorted losers) of every judgement the export gives, and what else it held."""
    export = read_label_studio(path.read_bytes(), path.name, config, OBJECT_OF)
    good, bad = check(
        export.rows, path.name, candidates=REGISTRY, annotators=None, max_time_spent_s=3600, duration_required=False
    )
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


# -- publish, annotate in the browser, pull -----------------------------------------------------


#: (loaded, failed) images served by Label Studio's local-files serving on the page.
LOADED_PREVIEWS = """(() => { const a = [...document.images].filter(i => i.src.includes('local-files') && i.complete);
  return [a.filter(i => i.naturalWidth > 0).length, a.filter(i => !i.naturalWidth).length]; })()"""


def _browser_annotations(server, projects: dict[str, tuple[int, list[dict]]], shots: Path) -> dict[str, int]:
    """Log in to the web UI in headless Chromium and annotate the first task of each project
    the way a person does: click the better of a pair, pick an option, drag a ranking.
    Returns, per page, (loaded, failed) images served as local files."""
    from playwright.sync_api import sync_playwright

    def drag(page, source, target, dy: float = 40) -> None:
        """Drag by the mouse (Label Studio's ranker listens to pointer events), dropping ``dy``
        below the target's header: near the top goes first, further down goes anywhere."""
        a, b = source.bounding_box(), target.bounding_box()
        page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
        page.mouse.down()
        page.mouse.move(a["x"] + a["width"] / 2 + 5, a["y"] + a["height"] / 2 + 5, steps=5)
        page.mouse.move(b["x"] + b["width"] / 2, b["y"] + dy, steps=20)
        page.mouse.up()
        page.wait_for_timeout(300)

    def open_task(page, template: str) -> None:
        pid, tasks = projects[template]
        page.goto(f"{server.url}/projects/{pid}/data?task={tasks[0]['id']}")
        page.get_by_role("button", name="Submit").wait_for()
        page.wait_for_load_state("networkidle")

    def submit(page, template: str) -> None:
        page.screenshot(path=str(shots / f"{template}.png"))
        page.get_by_role("button", name="Submit").click()
        page.wait_for_load_state("networkidle")

    loaded = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{server.url}/user/login/")
        page.fill("input[name=email]", server.email)
        page.fill("input[name=password]", server.password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")

        open_task(page, "pairwise")  # photo, mask, left, right: click the right one
        images = page.locator("img[src^=blob]")
        box = images.nth(3).bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        submit(page, "pairwise")

        open_task(page, "best-of-n")  # the second option
        options = page.locator("label").filter(has=page.locator("img"))
        loaded["best-of-n"] = page.evaluate(LOADED_PREVIEWS)
        options.nth(1).click()
        submit(page, "best-of-n")

        open_task(page, "ranking")  # 3 best, then 1; 2 rejected
        best = page.get_by_text("Best first", exact=True).first
        rejected = page.get_by_text("None acceptable", exact=True).first
        drag(page, page.get_by_text("Candidate 1", exact=True).first, best)
        drag(page, page.get_by_text("Candidate 3", exact=True).first, best)
        drag(page, page.get_by_text("Candidate 2", exact=True).first, rejected)
        loaded["ranking"] = page.evaluate(LOADED_PREVIEWS)
        submit(page, "ranking")
        browser.close()
    return loaded


def publishable_round(store, version: str) -> tuple[list[str], DatasetRef, list[dict]]:
    """A small real round in ``store`` as `flywheel propose` leaves it for annotators: image
    pool, candidates (ids cand-...), previews, and the native task file.
    -> (object ids, candidates ref, candidate rows)"""
    objects = ["obj-a", "obj-b"]
    _, candidates = write_small_round(
        store, objects, lambda o, k: f"cand-{objects.index(o) * 10 + k + 1:020x}", version=version
    )
    prefix = f"annotation/{candidates.version}"
    registry = Dataset(store, candidates.name, candidates.version).manifest().to_pylist()
    colours = iter([(200, 60, 60), (60, 200, 60), (60, 60, 200)] * 2)
    for c in registry:
        store.put_bytes(f"{prefix}/previews/{c['candidate_id']}.png", encode_png(_swatch(next(colours))))
    for o in objects:
        store.put_bytes(f"{prefix}/inputs/{o}.png", encode_png(_swatch((120, 120, 120))))
    native = [
        {
            "task_id": f"{candidates.version}/{o}",
            "object_id": o,
            "candidates_dataset": str(candidates),
            "image": store.uri(f"{prefix}/inputs/{o}.png"),
            "mask": store.uri(f"{prefix}/inputs/{o}.png"),
            "sheet": store.uri(f"{prefix}/inputs/{o}.png"),
            "candidates": [
                {
                    "candidate_id": c["candidate_id"],
                    "preview": store.uri(f"{prefix}/previews/{c['candidate_id']}.png"),
                    "member": "champion",
                }
                for c in registry
                if c["object_id"] == o
            ],
            "kinds": ["pairwise", "best-of-n", "reject-all"],
        }
        for o in objects
    ]
    store.put_bytes(f"{prefix}/tasks.jsonl", annotation.native_tasks(native).encode())
    return objects, candidates, registry


def test_publish_annotate_in_the_browser_then_pull(studio: Studio, prefect_server, tmp_path, monkeypatch):
    """`flywheel annotate publish` makes the projects (again: nothing new), people annotate
    in the web UI and through the API (with a skip), `flywheel annotate pull` ingests exactly
    their judgements (again: nothing new), and an annotation edited in Label Studio becomes a
    revision that supersedes the earlier judgement."""

    from flywheel.cli.main import app
    from flywheel.core.datasets import Dataset, list_versions

    server = studio.server
    store = LocalStore(tmp_path / "store")
    objects, candidates, registry = publishable_round(store, "candidates-local")
    env = {
        "FLYWHEEL__STORE__ROOT": str(store.root),
        "FLYWHEEL__ANNOTATION__LABEL_STUDIO_URL": server.url,
        "FLYWHEEL__ANNOTATION__LOCAL_FILES_ROOT": str(server.document_root),
        "LABEL_STUDIO_API_KEY": server.token,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    def cli(*args: str) -> str:
        """The command in this process (its flows use the session's Prefect server). Its output
        is caught in a buffer that stays open: Prefect's log handlers keep the streams they were
        set up with, and a closed one (capsys's, after this test) breaks every later flow."""
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = app(list(args), standalone_mode=False)
        assert code in (0, None), buffer.getvalue()
        return buffer.getvalue()

    published = cli("annotate", "publish")
    assert [line.split(":")[1].split("(")[0].strip() for line in published.splitlines()] == [
        "6 tasks",
        "2 tasks",
        "2 tasks",
    ]
    assert cli("annotate", "publish").count("(0 new, 0 refreshed)") == 3 and server.token not in published
    projects = {}
    for p in studio.api.projects():
        if p["title"].startswith("flywheel ") and p["title"].endswith(candidates.version):
            template = p["title"].split()[1]
            projects[template] = (
                p["id"],
                sorted(
                    studio.api.call("GET", "/api/tasks", params={"project": p["id"]})["tasks"], key=lambda t: t["id"]
                ),
            )
    assert sorted(projects) == ["best-of-n", "pairwise", "ranking"]

    # before anyone annotated, and with one project annotated: only what there is is ingested
    assert "no annotations yet: nothing to ingest" in cli("annotate", "pull", "--round", "0")
    other = studio.user("second@example.com")
    pairs = projects["pairwise"][1]
    edited = studio.annotate(pairs[1], [result("choice", "choice", "pairwise", {"selected": "left"})], user=other)
    first = cli("annotate", "pull", "--round", "0")
    assert first.count("0 annotations -> nothing to ingest") == 2, first
    assert "[Label Studio JSON]: 1 rows read, 1 accepted, 0 already ingested" in first, first

    loaded = _browser_annotations(server, projects, tmp_path)
    assert all(ok >= 3 and failed == 0 for ok, failed in loaded.values()), f"previews did not load: {loaded}"
    studio.skip(pairs[2])
    studio.annotate(
        projects["best-of-n"][1][1], [result("best", "photo", "choices", {"choices": ["None acceptable"]})], user=other
    )

    a, b = ([c["candidate_id"] for c in registry if c["object_id"] == o] for o in objects)
    me, them = f"label-studio-user-{studio.me}", f"label-studio-user-{other}"
    d0, d1 = pairs[0]["data"], pairs[1]["data"]
    # the browser picked the second option shown, and ranked "Candidate 3" first: candidates
    # come in an order shuffled per task, so which ones those are is in the tasks' data
    picked = projects["best-of-n"][1][0]["data"]["options"][1]["value"]
    ranked_first = projects["ranking"][1][0]["data"]["items"][2]["id"]
    expected = {
        (me, "pairwise", d0["right_id"], (d0["left_id"],)),
        (them, "pairwise", d1["left_id"], (d1["right_id"],)),
        (me, "best-of-n", picked, tuple(sorted(c for c in a if c != picked))),
        (them, "reject-all", None, tuple(b)),
        (me, "best-of-n", ranked_first, tuple(sorted(c for c in a if c != ranked_first))),
    }

    def pulled() -> tuple[str, set]:
        output = cli("annotate", "pull", "--round", "0")
        ref = list_versions(store, "rankings")[-1]
        rows = Dataset(store, "rankings", ref["version"]).manifest().to_pylist()
        return (
            output,
            ref["version"],
            {(r["annotator_id"], r["kind"], r["winner"], tuple(sorted(r["losers"]))): r for r in rows},
        )

    output, version, rows = pulled()
    assert set(rows) == expected, output
    # the browser records how long a judgement took; an annotation made through the API has no
    # lead time: kept, with the duration unknown
    assert all((r["time_spent_s"] is None) == (r["annotator_id"] == them) for r in rows.values())
    assert all(r["time_spent_s"] > 0 for r in rows.values() if r["annotator_id"] == me)
    assert (
        "[Label Studio JSON]: 2 rows read, 1 accepted, 1 already ingested, 0 revised, 0 quarantined; 1 skipped"
        in output
    )

    output, again, _ = pulled()
    assert again == version and output.count("ingested before, nothing new") == 3

    studio.api.call(
        "PATCH",
        f"/api/annotations/{edited}",
        json={"result": [result("choice", "choice", "pairwise", {"selected": "right"})]},
    )
    output, revised, rows = pulled()
    assert revised != version and "1 revised" in output, output
    flipped = (them, "pairwise", d1["right_id"], (d1["left_id"],))
    assert set(rows) == expected - {(them, "pairwise", d1["left_id"], (d1["right_id"],))} | {flipped}
    assert rows[flipped]["revision"] == 1

    # the same annotations exported by hand as JSON_MIN and ingested with the project's config:
    # the same submission ids, so nothing new
    project = projects["best-of-n"][0]
    export = tmp_path / "best-of-n-min.json"
    export.write_bytes(
        studio.api.call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON_MIN"}, raw=True)
    )
    config = tmp_path / "best-of-n.xml"
    config.write_text(studio.api.call("GET", f"/api/projects/{project}")["label_config"])
    output = cli(
        "rankings",
        "ingest",
        str(export),
        "--label-config",
        str(config),
        "--candidates",
        candidates.version,
        "--round",
        "0",
    )
    assert "[Label Studio JSON_MIN]: 2 rows read, 0 accepted, 2 already ingested" in output, output


def _swatch(colour) -> np.ndarray:
    image = np.zeros((64, 64, 3), np.uint8)
    image[8:56, 8:56] = colour
    return image


def test_an_s3_store_publishes_presigned_urls_a_browser_can_load(studio: Studio, seaweedfs):
    """With an s3:// store, Label Studio's tasks show presigned URLs: loadable without
    credentials (as the annotator's browser loads them), and a second publish adds nothing."""
    import requests

    root = f"s3://{BUCKET}/label-studio-presigned"
    store = S3Store(root, s3_store_config(seaweedfs, root))
    _, candidates, registry = publishable_round(store, "candidates-s3")
    settings = AnnotationConfig(templates=["best-of-n"], presign_expiry_s=600)
    [project] = publish_to_label_studio(studio.api, store, candidates.version, settings)
    assert (project.tasks, project.imported) == (2, 2)
    tasks = studio.api.call("GET", "/api/tasks", params={"project": project.project_id})["tasks"]
    urls = [t["data"]["image"] for t in tasks] + [
        o["html"].split('"')[1] for t in tasks for o in t["data"]["options"] if "html" in o
    ]
    assert len(urls) == 2 + len(registry) and all("Signature=" in u for u in urls)  # SigV2 or SigV4
    for url in urls:
        response = requests.get(url, timeout=10)  # no credentials: only the signature
        assert response.ok and response.content[:8] == b"\x89PNG\r\n\x1a\n", url
    again = publish_to_label_studio(studio.api, store, candidates.version, settings)[0]
    assert again.imported == 0
    # presigned URLs expire: publishing with another lifetime gives new URLs, updated in place
    later = AnnotationConfig(templates=["best-of-n"], presign_expiry_s=1200)
    refreshed = publish_to_label_studio(studio.api, store, candidates.version, later)[0]
    assert (refreshed.imported, refreshed.refreshed) == (0, 2)
    now = studio.api.call("GET", "/api/tasks", params={"project": project.project_id})["tasks"]
    assert [t["id"] for t in now] == [t["id"] for t in tasks] and all(
        a["data"]["image"] != b["data"]["image"] for a, b in zip(now, tasks)
    )

"""The annotation app for real: uvicorn on loopback, Debian's headless Chromium through
Playwright, a small real round in the store; judgements land in the store and ingest like
any export. Security: sessions, CSRF, ids not paths, body limits, malformed submissions."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, cli_env, write_small_round
from test_feedback_domain import ingest_one

from flywheel.core.config import RankingsConfig
from flywheel.core.datasets import Dataset
from flywheel.core.store import LocalStore
from flywheel.feedback.accounts import Accounts
from flywheel.feedback.aggregate import judge_round
from flywheel.feedback.app import SESSION_COOKIE, AppSettings, create_app
from flywheel.feedback.judgements import export_rows, recorded

OBJECTS = ("obj-a", "obj-b", "obj-c", "obj-d")
VIEWER = REPO / ".cache" / "web" / "node_modules" / "three"
ARTIFACTS = REPO / ".cache" / "test-artifacts"


class Served:
    def __init__(self, url: str, store: LocalStore, version: str, tokens: dict[str, str], candidates):
        self.url, self.store, self.version, self.tokens, self.candidates = url, store, version, tokens, candidates

    def client(self, who: str | None = None) -> httpx.Client:
        """An HTTP client, logged in as ``who`` (its session cookie set)."""
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)
        if who:
            r = client.post("/login", data={"name": who, "token": self.tokens[who]})
            assert r.status_code == 303, r.text
        return client


def serve(tmp_path: Path, mode: str = "best-of-n", gold: dict[str, str] | None = None):
    """The app on a small round (4 objects, 3 candidates each) in a thread; yields Served."""
    if not (VIEWER / "build" / "three.module.js").is_file():
        pytest.fail(f"{VIEWER} is missing: run `bash scripts/setup.sh --test` (the README's test command does)")
    import uvicorn

    store = LocalStore(tmp_path / "store")
    _, candidates = write_small_round(
        store, OBJECTS, lambda o, k: f"cand-{OBJECTS.index(o) * 10 + k + 1:020x}", resolution=8
    )
    accounts = Accounts(tmp_path / "state" / "accounts.json")
    tokens = {name: accounts.add(name) for name in ("ann-a", "ann-b")}
    tokens["boss"] = accounts.add("boss", admin=True)
    app = create_app(
        AppSettings(store, candidates.version, accounts.path, "test-secret", VIEWER, mode, gold or {}, 0.5)
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", store, candidates.version, tokens, candidates)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def served(tmp_path):
    # obj-c is a gold object: its known best candidate is its second
    yield from serve(tmp_path, gold={"obj-c": f"cand-{2 * 10 + 2:020x}"})


@pytest.fixture
def served_pairwise(tmp_path):
    yield from serve(tmp_path, "pairwise")


def test_an_annotator_ranks_in_3d_viewers_in_a_real_browser_and_the_judgements_ingest(served: Served, tmp_path):
    """Log in; the first task by mouse (a candidate clicked), the second by keyboard (1,
    Enter), the third rejected (0, Enter), the fourth skipped (S): the store holds exactly
    those three judgements, and they ingest and decide like any export."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    chosen: dict[str, str] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{served.url}/")  # no session: the login page
        assert page.url.endswith("/login")
        page.fill("input[name=name]", "ann-a")
        page.fill("input[name=token]", served.tokens["ann-a"])
        page.click("button[type=submit]")

        def open_task(after: str | None = None) -> str:
            page.wait_for_url(lambda url: "/task/" in url and (after is None or f"/task/{after}" not in url))
            try:
                page.wait_for_function(
                    "window.viewersReady === document.querySelectorAll('canvas.viewer').length", timeout=120_000
                )
            except Exception:
                raise AssertionError(f"viewers not ready; console: {errors}") from None
            return page.url.rsplit("/", 1)[-1].split("?")[0]

        first = open_task()
        assert page.locator(".progress").inner_text() == f"1 / {len(OBJECTS)}"
        assert page.locator("canvas.viewer[data-ready='1']").count() == 3
        assert "champion" not in page.content()  # the member that made a candidate is never shown
        canvas = page.locator("canvas.viewer").nth(1)
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + 100, box["y"] + 130)
        page.mouse.down()
        page.mouse.move(box["x"] + 180, box["y"] + 110, steps=8)  # orbit
        page.mouse.up()
        pick = page.locator("input[name=choice]").nth(1)
        chosen[first] = pick.get_attribute("value")
        page.locator("label.candidate").nth(1).click(position={"x": 10, "y": 10})
        # align the winner: turn it 30° and move it closer; its silhouette is drawn over the photo
        assert page.locator("#align").is_enabled()
        page.locator("input[name=yaw]").fill("30")
        page.locator("input[name=dz]").fill("-0.5")
        page.wait_for_function("document.querySelector('input[name=aligned_pose]').value !== ''")
        drawn = page.evaluate(
            "(() => { const c = document.getElementById('overlay'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
            " n += d[i] > 0; return n; })()"
        )
        assert drawn > 100, drawn
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "annotate_task.png"))
        shutil.copy(ARTIFACTS / "annotate_task.png", tmp_path / "annotate_task.png")
        page.get_by_role("button", name="Submit (Enter)").click()

        second = open_task(first)
        assert second != first and page.locator(".progress").inner_text() == f"2 / {len(OBJECTS)}"
        chosen[second] = page.locator("input[name=choice]").nth(0).get_attribute("value")
        page.keyboard.press("1")
        page.keyboard.press("Enter")

        # undo: the last judgement comes back, its choice checked, and is changed (a revision)
        page.wait_for_url(lambda url: f"/task/{second}" not in url)
        page.keyboard.press("u")
        page.wait_for_url(f"**/task/{second}?revise=*")
        assert page.locator("input[name=choice]:checked").get_attribute("value") == chosen[second]
        assert page.locator(".progress").inner_text() == f"2 / {len(OBJECTS)}"
        chosen[second] = page.locator("input[name=choice]").nth(1).get_attribute("value")
        page.keyboard.press("2")
        page.keyboard.press("Enter")

        third = open_task(second)
        chosen[third] = "none"
        page.keyboard.press("0")
        page.keyboard.press("Enter")

        fourth = open_task(third)
        page.keyboard.press("s")
        page.wait_for_selector("text=Nothing left to judge")
        assert "3 of 4 tasks judged; 1 skipped" in page.content()
        browser.close()
    assert not errors, errors

    rows = {r["object_id"]: r for r in recorded(served.store, served.version, "ann-a")}
    assert set(rows) == {first, second, third} and fourth not in rows
    for oid, choice in chosen.items():
        r = rows[oid]
        if choice == "none":
            assert r["kind"] == "reject-all" and r["winner"] is None and len(r["losers"]) == 3
        else:
            assert r["kind"] == "best-of-n" and r["winner"] == choice and choice not in r["losers"]
            assert len(r["losers"]) == 2
        assert r["annotator_id"] == "ann-a" and 0 < r["time_spent_s"] < 600
    # the aligned pose: the candidate's (R = I, t = (0, 0, 2.5), s = 1) turned 30° about the camera's y axis, closer
    aligned = rows[first]["aligned_pose"]
    turn = np.radians(30)
    expected = [np.cos(turn), 0, np.sin(turn), 0, 1, 0, -np.sin(turn), 0, np.cos(turn)]
    assert (
        np.allclose(aligned["R"], expected, atol=1e-6) and np.allclose(aligned["t"], [0, 0, 2.0]) and aligned["s"] == 1
    )
    assert all("aligned_pose" not in rows[o] for o in (second, third))

    revisions = [i.key for i in served.store.list(f"annotation/{served.version}/judgements/ann-a/")]
    assert len(revisions) == 4 and sum(k.endswith("/0001.json") for k in revisions) == 1  # the undone one kept

    # the app's judgements are one native export: they ingest and decide like any other (the
    # aligned pose included: it becomes the winner's layout target if the winner is accepted)
    export = tmp_path / "app.jsonl"
    export.write_text(export_rows(served.store, served.version))
    ref, [report] = ingest_one(served.store, served.candidates, str(export), "app-1", None)
    assert (report.rows, report.accepted, report.quarantined) == (3, 3, {})
    registry = Dataset(served.store, "candidates", served.version).manifest().to_pandas()
    judged = judge_round(
        Dataset(served.store, ref.name, ref.version).manifest(), registry, 0, **RankingsConfig().rules()
    )
    decisions = judged.decisions.set_index("object_id")["decision"]
    assert decisions[third] == "hard-case"
    assert {decisions[first], decisions[second]} <= {"accept", "undecided", "reject"}
    assert set(judged.preferences["winner"]) <= {chosen[first], chosen[second]}


def test_sessions_csrf_ids_not_paths_limits_and_malformed_submissions_write_nothing(served: Served):
    store, version = served.store, served.version
    anonymous = served.client()
    assert anonymous.get("/task/obj-a").status_code == 401
    assert anonymous.get(f"/glb/cand-{1:020x}.glb").status_code == 401
    assert anonymous.post("/login", data={"name": "ann-a", "token": "wrong"}).status_code == 401
    forged = httpx.Client(base_url=served.url, cookies={SESSION_COOKIE: "eyJ1c2VyIjoiYW5uLWEifQ.forged"})
    assert forged.get("/").status_code == 401

    a = served.client("ann-a")
    page = a.get("/task/obj-a").text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    candidate = f"cand-{1:020x}"
    good = {"csrf": csrf, "submission_id": "sub-00000001", "choice": candidate, "time_spent_s": "4.2"}

    # ids, never paths: nothing outside the round or the viewer package is served
    for path in (
        "/vendor/three/../../../../../etc/passwd",
        "/vendor/three/%2e%2e/%2e%2e/package.json",
        "/vendor/three/package.json",  # inside, but not a script
        "/glb/..%2F..%2Fstore.glb",
        "/glb/cand-ffffffffffffffffffff.glb",
        "/photo/..%2Fobj-a.png",
        "/static/..%2Fapp.py",
        "/static/app.py",
    ):
        assert a.get(path).status_code == 404, path
    assert a.get("/vendor/three/build/three.module.js").status_code == 200
    assert a.get(f"/glb/{candidate}.glb").content[:4] == b"glTF"

    # refused: no CSRF token, a wrong one, too large a body, malformed fields; nothing written
    assert a.post("/task/obj-a", data={**good, "csrf": ""}).status_code == 403
    assert a.post("/task/obj-a", data={**good, "csrf": "x" * 32}).status_code == 403
    big = a.post("/task/obj-a", data={**good, "note": "x" * 20_000})
    assert big.status_code == 413

    def chunks():  # no Content-Length: the limit holds on what arrives
        yield f"csrf={csrf}&choice={candidate}&note=".encode()
        yield from (b"x" * 1000 for _ in range(40))

    chunked = a.post("/task/obj-a", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 413
    for field, value, message in (
        ("choice", f"cand-{11:020x}", "not a candidate of object obj-a"),  # obj-b's candidate
        ("choice", "", "not a candidate"),
        ("submission_id", "../../x", "submission_id"),
        ("time_spent_s", "abc", "time_spent_s"),
        ("time_spent_s", "-1", "time_spent_s"),
    ):
        r = a.post("/task/obj-a", data={**good, field: value})
        assert r.status_code == 400 and message in r.text, (field, r.text)
    assert a.post("/task/obj-zzz", data=good).status_code == 404
    assert recorded(store, version) == []

    # recorded once however often it is sent; the same id with another choice is refused
    assert a.post("/task/obj-a", data=good).status_code == 303
    assert a.post("/task/obj-a", data=good).status_code == 303
    assert a.post("/task/obj-a", data={**good, "choice": "none"}).status_code == 409
    assert [r["submission_id"] for r in recorded(store, version)] == ["sub-00000001"]
    # a revision only of a judgement one made, of the same object
    assert a.post("/task/obj-a", data={**good, "submission_id": "sub-00000009", "revise": "1"}).status_code == 400
    assert a.post("/task/obj-b", data={**good, "choice": f"cand-{11:020x}", "revise": "1"}).status_code == 400
    assert a.get("/task/obj-b?revise=sub-00000001").status_code == 404

    # another annotator: their own session, CSRF token, queue and progress; ann-a's CSRF token fails
    b = served.client("ann-b")
    assert b.post("/task/obj-a", data={**good, "submission_id": "sub-00000002"}).status_code == 403
    b_page = b.get("/task/obj-a").text
    assert f"1 / {len(OBJECTS)}" in b_page  # ann-a's judgement is not ann-b's progress
    b_csrf = b_page.split('name="csrf" value="')[1].split('"')[0]
    assert b.post("/task/obj-a", data={**good, "csrf": b_csrf, "submission_id": "sub-00000002"}).status_code == 303
    by = {r["submission_id"]: r["annotator_id"] for r in recorded(store, version)}
    assert by == {"sub-00000001": "ann-a", "sub-00000002": "ann-b"}
    orders = [[line.split("/task/")[1].split("?")[0] for line in [c.get("/").headers["location"]]] for c in (a, b)]
    assert orders[0] != ["obj-a"] or orders[1] != ["obj-a"]  # both moved on from obj-a
    assert (
        json.loads(store.get_bytes(f"annotation/{version}/judgements/ann-b/sub-00000002/0000.json"))["kind"]
        == "best-of-n"
    )


def test_the_cli_serves_the_app_makes_accounts_and_exports_judgements(tmp_path):
    """`flywheel annotate serve` on a store with candidates prints the URL and, with no account
    yet, the admin's first token; `users add` makes an annotator; `export` writes the judgements."""
    import os
    import subprocess
    import sys

    store = LocalStore(tmp_path / "store")
    _, candidates = write_small_round(store, OBJECTS[:2], lambda o, k: f"cand-{OBJECTS.index(o) * 10 + k + 1:020x}")
    env = {
        **os.environ,
        "FLYWHEEL__STORE__ROOT": str(tmp_path / "store"),
        "FLYWHEEL__PROJECT__STATE_DIR": str(tmp_path / "state"),
        "FLYWHEEL__ANNOTATION__VIEWER_DIR": str(VIEWER),
    }
    flywheel = str(Path(sys.executable).parent / "flywheel")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [flywheel, "annotate", "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = [server.stdout.readline(), server.stdout.readline()]
        assert lines[0].startswith("no annotator accounts yet: made `admin`, token "), lines
        assert f"annotation app for candidates {candidates.version} (best-of-n): http://127.0.0.1:{port}/" in lines[1]
        admin_token = lines[0].rsplit(" ", 1)[-1].strip()
        added = subprocess.run(
            [flywheel, "annotate", "users", "add", "ann-x"], env=env, capture_output=True, text=True, check=True
        )
        token = added.stdout.rsplit(" ", 1)[-1].strip()
        taken = subprocess.run([flywheel, "annotate", "users", "add", "ann-x"], env=env, capture_output=True, text=True)
        assert taken.returncode == 2 and "exists already" in taken.stderr
        served = Served(
            f"http://127.0.0.1:{port}", store, candidates.version, {"ann-x": token, "admin": admin_token}, None
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client = served.client("ann-x")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the app did not answer"
                time.sleep(0.2)
        first = client.get("/").headers["location"].split("/task/")[1]
        page = client.get(f"/task/{first}").text
        fields = dict(re.findall(r'name="(csrf|submission_id)" value="([^"]*)"', page))
        assert client.post(f"/task/{first}", data={**fields, "choice": "none", "time_spent_s": "2"}).status_code == 303
    finally:
        server.terminate()
        server.wait(timeout=30)
    out = tmp_path / "app.jsonl"
    exported = subprocess.run(
        [flywheel, "annotate", "export", "-o", str(out)], env=env, capture_output=True, text=True, check=True
    )
    assert exported.stdout.startswith("1 judgements -> ")
    assert [json.loads(line)["kind"] for line in out.read_text().splitlines()] == ["reject-all"]


def _fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'name="(csrf|submission_id|shown|revise)" value="([^"]*)"', page))


def test_a_pairwise_tournament_compares_the_winner_with_the_next_candidate_until_one_is_left(served_pairwise):
    """Pairwise mode: 3 candidates take 2 comparisons, the first's winner meets the third; a
    stale page is refused (409), a resent one recorded once; 'none acceptable' ends a task
    with a reject-all; the rows ingest and the tournament's winner is the accepted one."""
    s = served_pairwise
    a = s.client("ann-a")
    tournaments = {}
    for _ in range(3):  # three tasks by tournament, the fourth rejected at its first comparison
        location = a.get("/").headers["location"]
        object_id = location.split("/task/")[1]
        page = a.get(location).text
        assert "comparison 1 / 2" in page and page.count('class="viewer"') == 2
        first = _fields(page)
        pair = first["shown"].split(",")
        assert a.post(location, data={**first, "choice": pair[1], "time_spent_s": "3"}).status_code == 303
        assert a.post(location, data={**first, "choice": pair[1], "time_spent_s": "3"}).status_code == 303  # resent
        assert a.post(location, data={**first, "choice": pair[0], "time_spent_s": "3"}).status_code == 409
        page = a.get(location).text
        assert "comparison 2 / 2" in page
        second = _fields(page)
        assert pair[1] in second["shown"].split(",")  # the winner meets the next candidate
        challenger = next(c for c in second["shown"].split(",") if c != pair[1])
        stale = {**second, "shown": first["shown"], "submission_id": "stale-000001"}
        assert a.post(location, data={**stale, "choice": pair[0], "time_spent_s": "3"}).status_code == 409
        assert a.post(location, data={**second, "choice": challenger, "time_spent_s": "3"}).status_code == 303
        tournaments[object_id] = challenger
        assert a.get(location).headers["location"] == "/"  # finished: back to the queue
    location = a.get("/").headers["location"]
    last = location.split("/task/")[1]
    form = _fields(a.get(location).text)
    assert a.post(location, data={**form, "choice": "none", "time_spent_s": "3"}).status_code == 303
    assert "Nothing left to judge" in a.get("/", follow_redirects=True).text

    rows = recorded(s.store, s.version, "ann-a")
    assert sorted(r["kind"] for r in rows) == ["pairwise"] * 6 + ["reject-all"]
    assert all(len(r["losers"]) == 1 for r in rows if r["kind"] == "pairwise")
    rejected = next(r for r in rows if r["object_id"] == last)
    assert rejected["kind"] == "reject-all" and len(rejected["losers"]) == 3  # every candidate of the task
    export = Path(s.store.root) / "app.jsonl"
    export.write_text(export_rows(s.store, s.version))
    ref, [report] = ingest_one(s.store, s.candidates, str(export), "pairwise-1", None)
    assert (report.rows, report.accepted) == (7, 7)
    registry = Dataset(s.store, "candidates", s.version).manifest().to_pandas()
    judged = judge_round(Dataset(s.store, ref.name, ref.version).manifest(), registry, 0, **RankingsConfig().rules())
    decisions = judged.decisions.set_index("object_id")
    assert decisions.loc[last, "decision"] == "hard-case"
    for object_id, winner in tournaments.items():
        assert decisions.loc[object_id, "winner"] == winner


def test_gold_objects_come_at_the_gold_rate_and_the_admin_page_reports_each_annotator(served: Served):
    from flywheel.feedback.judgements import with_gold

    assert with_gold(list("abcdefgh"), {"g", "h"}, 0.25) == list("abcgdefh")
    assert with_gold(list("abcd"), set(), 0.5) == list("abcd")
    gold = f"cand-{2 * 10 + 2:020x}"
    for who in ("ann-a", "ann-b"):
        c = served.client(who)
        order = []
        for _ in range(len(OBJECTS)):
            location = c.get("/").headers["location"]
            object_id = location.split("/task/")[1]
            order.append(object_id)
            fields = _fields(c.get(location).text)
            # ann-a picks the gold answer on obj-c; both pick the first candidate (by id) elsewhere
            choice = gold if (who == "ann-a" and object_id == "obj-c") else min(round_candidates(served, object_id))
            assert c.post(location, data={**fields, "choice": choice, "time_spent_s": "5"}).status_code == 303
        assert order[1] == "obj-c"  # gold rate 0.5: the second task is the gold one
    assert served.client("ann-a").get("/admin").status_code == 403
    page = served.client("boss").get("/admin").text
    rows = {cells[0]: cells[1:] for cells in re.findall(r"<tr><td>([^<]*)</td>" + r"<td>([^<]*)</td>" * 5, page)}
    assert rows["ann-a"][0] == "4 / 4" and rows["ann-a"][4] == "1.00 (1)" and rows["ann-b"][4] == "0.00 (1)"
    assert rows["ann-a"][3] == "0.75 (4)" and rows["ann-b"][3] == "0.75 (4)"  # they differ on obj-c only


def round_candidates(served: Served, object_id: str) -> list[str]:
    m = Dataset(served.store, "candidates", served.version).manifest().to_pylist()
    return [r["candidate_id"] for r in m if r["object_id"] == object_id]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_people_close_a_round_propose_judge_in_the_app_export_and_close(tmp_path):
    """`flywheel run --propose-only`, the app (annotators judging over HTTP), `flywheel annotate
    export`, `flywheel run --exports`: round 0 is closed on exactly those judgements."""
    import subprocess
    import sys

    env = cli_env(tmp_path / "store", FLYWHEEL__PROJECT__STATE_DIR=str(tmp_path / "state"))
    flywheel = str(Path(sys.executable).parent / "flywheel")

    def cli(*args: str) -> str:
        done = subprocess.run([flywheel, *args], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    proposed = cli("run", "--propose-only")
    version = proposed.split("flywheel annotate serve --candidates ")[1].split()[0]
    store = LocalStore(tmp_path / "store")
    accounts = Accounts(tmp_path / "state" / "annotate" / "accounts.json")
    tokens = {name: accounts.add(name) for name in ("ann-a", "ann-b")}
    served = next(serve_version(store, version, accounts, tokens))
    judged = {}
    for who in tokens:  # ann-a rejects everything, ann-b picks each task's first candidate shown
        c = served.client(who)
        while (nxt := c.get("/")).status_code == 303:
            location = nxt.headers["location"]
            page = c.get(location).text
            first = re.search(r'name="choice" value="(cand-[0-9a-f]{20})"', page).group(1)
            choice = "none" if who == "ann-a" else first
            assert c.post(location, data={**_fields(page), "choice": choice, "time_spent_s": "4"}).status_code == 303
            judged[(who, location.split("/task/")[1])] = choice
    exported = cli("annotate", "export", "--candidates", version)
    uri = exported.split(" -> ")[1].strip()
    closed = cli("run", "--exports", uri)
    assert "round 0" in closed or "champion:" in closed
    from flywheel.core.config import load_config
    from flywheel.rounds import ledger

    cfg = load_config(environ=env)
    record = ledger.committed_rounds(store, ledger.series_id(cfg))[0]
    objects = {o for _, o in judged}
    assert record.datasets["candidates"].version == version
    assert record.rankings["objects_judged"] == len(objects) and record.volumes["rankings"] == len(judged)
    hard = Dataset(store, "hard-cases", record.datasets["hard-cases"].version).manifest().to_pylist()
    assert all(h["object_id"] in objects and h["reject_share"] >= 0.5 for h in hard)  # half the votes: ann-a's


def serve_version(store: LocalStore, version: str, accounts: Accounts, tokens: dict[str, str]):
    """The app on a committed candidates version, in a thread; yields Served."""
    import uvicorn

    app = create_app(AppSettings(store, version, accounts.path, "test-secret", VIEWER))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", store, version, tokens, None)
    server.should_exit = True

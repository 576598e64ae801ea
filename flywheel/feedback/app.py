"""The annotation app (``flywheel annotate serve``): annotators rank the 3D candidates of a
candidates version in their browser.

A task page shows the photo with the target object's outline, a crop of it, and each
candidate in an interactive 3D viewer (three.js, installed from npm at set-up and served by
the app: nothing comes from a CDN), in an order shuffled per annotator and task, with no
word of the model that made it. The annotator picks the best candidate or "none acceptable"
(keys 1-9 and 0, Enter submits, S skips, U undoes the last judgement: it is shown again to
be changed, a revision); the judgement is written to the store before the app answers
(:mod:`flywheel.feedback.judgements`).

Safety: every page but the login needs a session (a signed cookie made from the annotator's
token, :mod:`flywheel.feedback.accounts`); every form carries the session's CSRF token;
assets are looked up by id (candidate ids of this version, object ids of its pool), never
by path, and the viewer's files are served only from inside the three.js package; request
bodies over a limit get 413; a malformed submission gets 400 naming the field and writes
nothing.
"""

from __future__ import annotations

import hmac
import html
import io
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from PIL import Image
from scipy import ndimage

from flywheel.core.codecs import decode_npy, decode_png
from flywheel.core.datasets import Dataset
from flywheel.core.store import Store
from flywheel.feedback.accounts import Account, Accounts
from flywheel.feedback.judgements import (
    NONE_ACCEPTABLE,
    AppTask,
    Conflict,
    JudgementError,
    annotator_report,
    best_of_n_row,
    next_pair,
    pairwise_row,
    record,
    recorded,
    shuffled,
    with_gold,
)
from flywheel.feedback.poses import PoseError, parse_pose

WEB = Path(__file__).resolve().parent / "web"
SESSION_COOKIE = "flywheel_session"
SESSION_MAX_AGE_S = 12 * 3600
MAX_BODY_BYTES = 16 * 1024


@dataclass(frozen=True)
class AppSettings:
    """What an app serves: a candidates version of a store, to the accounts in a file."""

    store: Store
    candidates_version: str
    accounts: Path
    secret_key: str  # signs session cookies
    viewer: Path  # the three.js npm package folder (node_modules/three)
    mode: Literal["best-of-n", "pairwise"] = "best-of-n"
    gold: dict[str, str] = field(default_factory=dict)  # gold objects: object id -> best candidate id
    gold_rate: float = 0.1  # an annotator meets a gold object every round(1 / gold_rate) tasks


def occupancy_glb(occupancy: np.ndarray) -> bytes:
    """A GLB of an occupancy grid's surface (marching cubes), centred, in a unit cube."""
    import trimesh
    from trimesh.voxel import ops

    grid = np.pad(occupancy.astype(bool), 1)
    if not grid.any():
        grid[grid.shape[0] // 2, grid.shape[1] // 2, grid.shape[2] // 2] = True
    mesh = ops.matrix_to_marching_cubes(grid)
    mesh.apply_translation(-np.asarray(grid.shape) / 2)
    mesh.apply_scale(1.0 / max(occupancy.shape))
    mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=[176, 190, 210, 255])
    return bytes(mesh.export(file_type="glb"))


def outlined(rgb: np.ndarray, mask: np.ndarray, scale: int) -> bytes:
    """The photo (enlarged ``scale`` x) with the mask's boundary drawn over it, as PNG."""
    big_rgb = np.kron(rgb[..., :3], np.ones((scale, scale, 1), np.uint8))
    big_mask = np.kron(mask.astype(np.uint8), np.ones((scale, scale), np.uint8)).astype(bool)
    edge = big_mask & ~ndimage.binary_erosion(big_mask, iterations=max(1, scale // 2))
    big_rgb[edge] = (255, 40, 200)
    out = io.BytesIO()
    Image.fromarray(big_rgb).save(out, format="PNG")
    return out.getvalue()


def crop_png(rgb: np.ndarray, mask: np.ndarray, size: int = 256) -> bytes:
    """The object's bounding square (with a margin), resized to ``size``, as PNG."""
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(4.0, 0.6 * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    box = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
    out = io.BytesIO()
    Image.fromarray(rgb[..., :3]).crop(box).resize((size, size), Image.Resampling.NEAREST).save(out, format="PNG")
    return out.getvalue()


class Round:
    """The candidates version being judged: its tasks, candidates and photos, read once."""

    def __init__(self, store: Store, version: str):
        candidates = Dataset(store, "candidates", version)
        rows = candidates.manifest().to_pylist()
        by_object: dict[str, list[str]] = {}
        for r in rows:
            by_object.setdefault(r["object_id"], []).append(r["candidate_id"])
        self.tasks = {o: AppTask(o, tuple(ids)) for o, ids in sorted(by_object.items())}
        self._sample_of = {r["candidate_id"]: r["sample_key"] for r in rows}
        self.poses = {r["candidate_id"]: {"R": list(r["R"]), "t": list(r["t"]), "s": r["s"]} for r in rows}
        self.candidates, self.store, self.version = candidates, store, version
        pool = next(p for p in candidates.marker["parents"] if p["name"] == "image-pool")
        self.pool = Dataset(store, pool["name"], pool["version"])
        self._cache: dict[str, bytes] = {}
        self._cameras: dict[str, tuple[list[float], int, bool]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: str, make) -> bytes:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def glb(self, candidate_id: str) -> bytes:
        if candidate_id not in self._sample_of:
            raise KeyError(candidate_id)

        def make() -> bytes:
            sample = next(self.candidates.samples(keys=[self._sample_of[candidate_id]]))
            return occupancy_glb(decode_npy(sample["occ.npy"]))

        return self._cached(f"glb/{candidate_id}", make)

    def voxels(self, candidate_id: str) -> bytes:
        """The centres of a candidate's occupied voxels in the unit cube, as JSON (its silhouette)."""
        if candidate_id not in self._sample_of:
            raise KeyError(candidate_id)

        def make() -> bytes:
            sample = next(self.candidates.samples(keys=[self._sample_of[candidate_id]]))
            occ = decode_npy(sample["occ.npy"]).astype(bool)
            centres = (np.argwhere(occ) + 0.5) / occ.shape[0] - 0.5
            return json.dumps({"resolution": occ.shape[0], "points": np.round(centres, 4).tolist()}).encode()

        return self._cached(f"voxels/{candidate_id}", make)

    def intrinsics(self, object_id: str) -> tuple[list[float], int, bool]:
        """(K row-major, the photo's width, known): the camera of a composite from its dataset;
        otherwise a 50° horizontal field of view (``known`` False). Read once per object."""
        if object_id not in self._cameras:
            self._cameras[object_id] = self._camera(object_id)
        return self._cameras[object_id]

    def _camera(self, object_id: str) -> tuple[list[float], int, bool]:
        row = next(r for r in self.pool.manifest().to_pylist() if r["object_id"] == object_id)
        name, _, rest = row["source"].partition("@")
        version, _, key = rest.partition("/")
        try:
            source = Dataset(self.store, name, version).manifest().to_pylist()
            found = next((r for r in source if r.get("sample_key") == key and "K" in r), None)
        except Exception:  # a manifest photo, or a dataset that is gone: the default camera
            found = None
        if found is not None:
            return [float(v) for v in found["K"]], int(row["width"]), True
        w, h = int(row["width"]), int(row["height"])
        f = 0.5 * w / float(np.tan(np.radians(25)))
        return [f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0], w, False

    def photo(self, object_id: str, kind: str) -> bytes:
        if object_id not in self.tasks or kind not in ("photo", "crop"):
            raise KeyError(object_id)

        def make() -> bytes:
            sample = next(self.pool.samples(keys=[object_id]))
            rgb, mask = decode_png(sample["rgb.png"])[..., :3], decode_png(sample["mask.png"]) > 127
            scale = max(1, 384 // max(rgb.shape[:2]))
            return outlined(rgb, mask, scale) if kind == "photo" else crop_png(rgb, mask)

        return self._cached(f"{kind}/{object_id}", make)


def _page(title: str, body: str, head: str = "") -> HTMLResponse:
    return HTMLResponse(
        f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/app.css">{head}</head><body>{body}</body></html>"""
    )


def create_app(settings: AppSettings) -> FastAPI:
    """The app for ``settings`` (uvicorn serves it)."""
    if not (settings.viewer / "build" / "three.module.js").is_file():
        raise FileNotFoundError(
            f"the 3D viewer (three.js) is not installed at {settings.viewer}: run `bash scripts/setup.sh`"
        )
    app = FastAPI(title="sam3d-flywheel annotation", docs_url=None, redoc_url=None, openapi_url=None)
    round_ = Round(settings.store, settings.candidates_version)
    accounts = Accounts(settings.accounts)
    signer = URLSafeTimedSerializer(settings.secret_key, salt="flywheel-annotate")
    write_lock = threading.Lock()

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return Response(f"request body over {MAX_BODY_BYTES} bytes", status_code=413)
        return await call_next(request)

    def session(request: Request) -> tuple[Account, str]:
        """(account, CSRF token) of the request's session; 401 without a valid one."""
        try:
            data = signer.loads(request.cookies.get(SESSION_COOKIE, ""), max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            raise HTTPException(401, "log in first (/login)") from None
        account = accounts.get(data.get("user", ""))
        if account is None:
            raise HTTPException(401, "unknown annotator; log in again")
        return account, data["csrf"]

    async def read_form(request: Request) -> dict[str, str]:
        """An urlencoded form body (a chunked body without a length is limited here too)."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        except UnicodeDecodeError:
            raise HTTPException(400, "the form is not UTF-8 text") from None

    async def form(request: Request, csrf: str) -> dict[str, str]:
        """The form of a request that changes something: its CSRF token checked."""
        fields = await read_form(request)
        if not hmac.compare_digest(fields.get("csrf", ""), csrf):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")
        return fields

    def queue(account: Account) -> list[str]:
        """The annotator's task order: shuffled per annotator, gold objects at the gold rate."""
        order = shuffled(list(round_.tasks), account.name, settings.candidates_version)
        return with_gold(order, set(settings.gold) & set(round_.tasks), settings.gold_rate)

    @app.exception_handler(HTTPException)
    async def plain_error(request: Request, exc: HTTPException):
        if exc.status_code == 401 and request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/login", status_code=303)
        return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")

    @app.get("/login")
    def login_page() -> HTMLResponse:
        return _page(
            "Log in",
            """<main class="login"><h1>Rank 3D candidates</h1>
<form method="post" action="/login"><label>Name <input name="name" autofocus required></label>
<label>Token <input name="token" type="password" required></label><button type="submit">Log in</button></form></main>""",
        )

    @app.post("/login")
    async def login(request: Request) -> Response:
        fields = await read_form(request)
        account = accounts.verify(fields.get("name", ""), fields.get("token", ""))
        if account is None:
            return Response("wrong name or token", status_code=401, media_type="text/plain")
        response = RedirectResponse("/", status_code=303)
        cookie = signer.dumps({"user": account.name, "csrf": secrets.token_urlsafe(24)})
        response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="strict")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        _, csrf = session(request)
        await form(request, csrf)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    def judged(account: Account) -> tuple[list[dict], set[str]]:
        """(the annotator's judgements, the objects they have finished)."""
        mine = recorded(settings.store, settings.candidates_version, account.name)
        if settings.mode == "best-of-n":
            return mine, {r["object_id"] for r in mine}
        return mine, {o for o in {r["object_id"] for r in mine} if comparison(account, o, mine) is None}

    def comparison(account: Account, object_id: str, rows: list[dict]) -> tuple[str, str] | None:
        """The next pair of the annotator's tournament for ``object_id`` (pairwise mode)."""
        order = shuffled(round_.tasks[object_id].candidates, account.name, settings.candidates_version, object_id)
        return next_pair(order, [r for r in rows if r["object_id"] == object_id])

    def shown_for(account: Account, object_id: str, mine: list[dict], revising: dict | None) -> list[str]:
        """The candidates a task page shows: all of them (best-of-N), or the pair to compare."""
        task = round_.tasks[object_id]
        if settings.mode == "best-of-n":
            return shuffled(task.candidates, account.name, settings.candidates_version, object_id)
        before = [r for r in mine if revising is None or r["submission_id"] != revising["submission_id"]]
        pair = comparison(account, object_id, before)
        if pair is None:
            return []
        return shuffled(list(pair), account.name, settings.candidates_version, object_id, *sorted(pair))

    @app.get("/")
    def next_task(request: Request, skip: str = "") -> Response:
        """The annotator's next task: the first in their order not finished and not skipped."""
        account, _ = session(request)
        _, done = judged(account)
        skipped = set(skip.split(",")) if skip else set()
        for object_id in queue(account):
            if object_id not in done and object_id not in skipped:
                suffix = f"?skip={skip}" if skip else ""
                return RedirectResponse(f"/task/{object_id}{suffix}", status_code=303)
        left = len(round_.tasks) - len(done)
        return _page(
            "Done",
            f"<main><h1>Nothing left to judge</h1><p>{len(done)} of {len(round_.tasks)} tasks judged"
            + (f"; {left} skipped (<a href='/'>see them again</a>)" if left else "")
            + "</p></main>",
        )

    @app.get("/admin")
    def admin(request: Request) -> HTMLResponse:
        """Progress, agreement and gold accuracy per annotator (admins only)."""
        account, _ = session(request)
        if not account.admin:
            raise HTTPException(403, "the admin page is for admin accounts")
        rows = recorded(settings.store, settings.candidates_version)
        e = html.escape
        table = "".join(
            f"<tr><td>{e(r['annotator'])}</td><td>{r['tasks']} / {len(round_.tasks)}</td><td>{r['judgements']}</td>"
            f"<td>{r['median_s']:.1f}</td><td>{r['agreement']:.2f} ({r['shared_tasks']})</td>"
            f"<td>{r['gold_accuracy']:.2f} ({r['gold_tasks']})</td></tr>"
            for r in annotator_report(rows, settings.gold)
        )
        return _page(
            "Annotators",
            f"""<main><h1>Candidates {e(settings.candidates_version)}: {len(rows)} judgements, {settings.mode}</h1>
<table class="admin"><tr><th>annotator</th><th>tasks finished</th><th>judgements</th><th>median s</th>
<th>agreement (shared tasks)</th><th>gold accuracy (gold tasks)</th></tr>{table}</table>
<p>Accounts: {e(", ".join(accounts.names()))}. Add one: <code>flywheel annotate users add NAME</code>.</p></main>""",
        )

    @app.post("/undo")
    async def undo(request: Request) -> Response:
        """Back to the annotator's last judgement, to change it (its next revision)."""
        account, csrf = session(request)
        await form(request, csrf)
        mine = recorded(settings.store, settings.candidates_version, account.name)
        if not mine:
            raise HTTPException(409, "nothing to undo: no judgement recorded yet")
        last = mine[-1]
        return RedirectResponse(f"/task/{last['object_id']}?revise={last['submission_id']}", status_code=303)

    @app.get("/task/{object_id}")
    def task_page(request: Request, object_id: str, skip: str = "", revise: str = "") -> Response:
        account, csrf = session(request)
        if object_id not in round_.tasks:
            raise HTTPException(404, f"no task for object {object_id!r} in candidates {settings.candidates_version}")
        mine, done = judged(account)
        earlier = next((r for r in mine if r["submission_id"] == revise and r["object_id"] == object_id), None)
        if revise and earlier is None:
            raise HTTPException(404, f"no judgement {revise!r} of yours for object {object_id!r} to change")
        shown = shown_for(account, object_id, mine, earlier)
        if not shown:  # a finished tournament
            return RedirectResponse("/", status_code=303)
        e = html.escape
        was = (earlier["winner"] or NONE_ACCEPTABLE) if earlier else None
        viewers = "".join(
            f"""<label class="candidate" data-pose='{
                e(json.dumps(round_.poses[cid]))
            }'><input type="radio" name="choice" value="{e(cid)}" required{" checked" if cid == was else ""}>
<span class="key">{i + 1}</span><canvas class="viewer" data-glb="/glb/{
                e(cid)
            }.glb" width="260" height="260"></canvas></label>"""
            for i, cid in enumerate(shown)
        )
        skip_next = ",".join(sorted({*(skip.split(",") if skip else []), object_id}))
        camera, width, known = round_.intrinsics(object_id)
        sliders = "".join(
            f"""<label>{label} <input type="range" class="pose" name="{key}" min="{low}" max="{high}" step="{step}"
value="0"></label>"""
            for key, label, low, high, step in (
                ("yaw", "turn (°)", -180, 180, 1),
                ("pitch", "tilt (°)", -90, 90, 1),
                ("roll", "roll (°)", -180, 180, 1),
                ("dx", "right", -0.5, 0.5, 0.005),
                ("dy", "down", -0.5, 0.5, 0.005),
                ("dz", "farther", -1.5, 1.5, 0.01),
                ("ds", "size (log)", -1, 1, 0.01),
            )
        )
        question = (
            "Which of the two 3D shapes matches the outlined object better?"
            if settings.mode == "pairwise"
            else "Which 3D shape matches the outlined object best?"
        )
        heading = f"Change your judgement: {question[0].lower()}{question[1:]}" if earlier else question
        progress = f"{len(done) + (0 if object_id in done else 1)} / {len(round_.tasks)}"
        if settings.mode == "pairwise":
            compared = sum(r["object_id"] == object_id and r["kind"] == "pairwise" for r in mine)
            progress += (
                f" · comparison {compared + (0 if earlier else 1)} / {len(round_.tasks[object_id].candidates) - 1}"
            )
        undo = (
            f"""<form method="post" action="/undo" id="undo"><input type="hidden" name="csrf" value="{e(csrf)}">
<button type="submit">Undo last (U)</button></form>"""
            if mine and not earlier
            else ""
        )
        body = f"""<main class="task">
<header><h1>{heading}</h1>{undo}
<span class="progress">{progress}</span></header>
<section class="inputs"><div class="photo-frame"><img src="/photo/{
            e(object_id)
        }.png" alt="the photo, the object outlined"
class="photo" id="photo" data-k='{e(json.dumps(camera))}' data-width="{width}"><canvas id="overlay"></canvas></div>
<img src="/crop/{e(object_id)}.png" alt="the object" class="crop">
<fieldset class="align" id="align" disabled><legend>Align the chosen shape to the photo{
            "" if known else " (camera assumed: 50° field of view)"
        }</legend>
{sliders}<button type="button" id="align-reset">Reset</button></fieldset></section>
<form method="post" action="/task/{e(object_id)}" id="judgement">
<input type="hidden" name="csrf" value="{e(csrf)}">
<input type="hidden" name="submission_id" value="{
            e(earlier["submission_id"]) if earlier else secrets.token_urlsafe(16)
        }">
<input type="hidden" name="revise" value="{"1" if earlier else ""}">
<input type="hidden" name="shown" value="{e(",".join(shown))}">
<input type="hidden" name="time_spent_s" value="0">
<input type="hidden" name="aligned_pose" value="">
<section class="candidates">{viewers}
<label class="candidate none"><input type="radio" name="choice" value="{NONE_ACCEPTABLE}" required{
            " checked" if was == NONE_ACCEPTABLE else ""
        }>
<span class="key">0</span><span>None acceptable</span></label></section>
<footer><button type="submit">Submit (Enter)</button> <a href="/?skip={e(skip_next)}" id="skip">Skip (S)</a>
<span class="hint">Drag a shape to turn it, scroll to zoom; keys 1-{len(shown)} pick, 0 none.</span></footer>
</form></main>"""
        head = """<script type="importmap">{"imports": {"three": "/vendor/three/build/three.module.js",
"three/addons/": "/vendor/three/examples/jsm/"}}</script><script type="module" src="/static/app.js"></script>"""
        return _page(f"Task {object_id}", body, head)

    @app.post("/task/{object_id}")
    async def submit(request: Request, object_id: str) -> Response:
        account, csrf = session(request)
        fields = await form(request, csrf)
        task = round_.tasks.get(object_id)
        if task is None:
            raise HTTPException(404, f"no task for object {object_id!r}")
        try:
            spent = float(fields.get("time_spent_s", "nan"))
        except ValueError:
            raise HTTPException(400, "time_spent_s: not a number") from None
        revise = fields.get("revise") == "1"
        submission, choice = fields.get("submission_id", ""), fields.get("choice", "")
        try:
            with write_lock:
                if settings.mode == "pairwise":
                    mine = recorded(settings.store, settings.candidates_version, account.name)
                    earlier = next((r for r in mine if r["submission_id"] == submission), None) if revise else None
                    pair = shown_for(account, object_id, mine, earlier)
                    if sorted(pair) != sorted(fields.get("shown", "").split(",")):
                        retried = any(r["submission_id"] == submission for r in mine) and not revise
                        if not retried:
                            raise HTTPException(409, "this comparison is no longer the next one; reload the page")
                        row = next(r for r in mine if r["submission_id"] == submission)
                        if (row["winner"] or NONE_ACCEPTABLE) != choice:
                            raise Conflict(f"submission {submission}: already recorded with another choice")
                        return RedirectResponse("/", status_code=303)  # a resent form: recorded already
                    row = pairwise_row(task, account.name, submission, (pair[0], pair[1]), choice, spent)
                else:
                    row = best_of_n_row(task, account.name, submission, choice, spent)
                if fields.get("aligned_pose"):
                    if row["winner"] is None:
                        raise JudgementError("aligned_pose: only a chosen winner can be aligned")
                    try:
                        row["aligned_pose"] = parse_pose(fields["aligned_pose"]).as_dict()
                    except PoseError as e:
                        raise JudgementError(f"aligned_pose: {e}") from None
                record(settings.store, settings.candidates_version, row, revise=revise)
        except Conflict as e:
            raise HTTPException(409, str(e)) from None
        except JudgementError as e:
            raise HTTPException(400, str(e)) from None
        return RedirectResponse("/", status_code=303)

    def candidate_file(request: Request, make, candidate_id: str, media_type: str) -> Response:
        session(request)
        try:
            return Response(make(candidate_id), media_type=media_type)
        except KeyError:
            raise HTTPException(404, f"no candidate {candidate_id!r} in this round") from None

    @app.get("/glb/{candidate_id}.glb")
    def glb(request: Request, candidate_id: str) -> Response:
        """The candidate's surface, for its 3D viewer."""
        return candidate_file(request, round_.glb, candidate_id, "model/gltf-binary")

    @app.get("/voxels/{candidate_id}.json")
    def voxels(request: Request, candidate_id: str) -> Response:
        """The candidate's occupied voxel centres, for its silhouette over the photo."""
        return candidate_file(request, round_.voxels, candidate_id, "application/json")

    @app.get("/{kind}/{object_id}.png")
    def picture(request: Request, kind: str, object_id: str) -> Response:
        session(request)
        try:
            return Response(round_.photo(object_id, kind), media_type="image/png")
        except KeyError:
            raise HTTPException(404, f"no {kind} of object {object_id!r}") from None

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        files = {"app.js": "text/javascript", "app.css": "text/css"}
        if name not in files:
            raise HTTPException(404, f"no static file {name!r}")
        return Response((WEB / name).read_bytes(), media_type=files[name])

    @app.get("/vendor/three/{path:path}")
    def vendor(path: str) -> Response:
        root = settings.viewer.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or target.suffix != ".js" or not target.is_file():
            raise HTTPException(404, f"no viewer file {path!r}")
        return Response(target.read_bytes(), media_type="text/javascript")

    return app

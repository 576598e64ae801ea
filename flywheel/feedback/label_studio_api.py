"""The live annotation tool: publishing a candidates version to a Label Studio server and
pulling its annotations back, through Label Studio's REST API (plain HTTP).

One project per template (:data:`flywheel.feedback.annotation.LABEL_STUDIO_CONFIGS`) and
candidates version, titled ``flywheel <template> <version>``. Both directions are
idempotent: publishing again imports only the tasks the project does not have yet (by the
task data's ``task_key``), updates the data of tasks whose image URLs changed (presigned
URLs expire: publish again to refresh them; annotations are kept) and keeps the labeling
config in step; pulling exports every
annotation so far (Label Studio exports are cumulative; ingestion counts each submission
once and takes an edited one as a revision).

Images must be URLs the annotator's browser can load: presigned URLs for an ``s3://``
store, Label Studio's own local-files serving for a local store (start Label Studio with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` = a folder holding the store root, and set
``annotation.local_files_root`` to it; publishing adds a local storage to each project so
that Label Studio lets its users read the files). The API token comes from the environment
and is never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from flywheel.core.config import AnnotationConfig
from flywheel.core.store import LocalStore, S3Store, Store
from flywheel.feedback import annotation

log = logging.getLogger(__name__)

TOKEN_ENV = "LABEL_STUDIO_API_KEY"


class LabelStudioError(RuntimeError):
    """The server refused or could not be reached; says which call and why (never the token)."""


class LabelStudio:
    """A Label Studio server's REST API (``Authorization: Token ...``)."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0):
        if not token:
            raise LabelStudioError(f"no API token: set {TOKEN_ENV} (Label Studio: Account & Settings > Access Token)")
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Token {token}"

    def __repr__(self) -> str:
        return f"LabelStudio({self.url!r})"

    def call(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        """One API call: the decoded JSON body (``raw``: the bytes as sent)."""
        try:
            r = self._session.request(method, f"{self.url}{path}", timeout=self.timeout_s, **kwargs)
        except requests.RequestException as e:
            raise LabelStudioError(f"Label Studio at {self.url} cannot be reached ({type(e).__name__})") from None
        if r.status_code >= 400:
            raise LabelStudioError(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        if raw or not r.content or "json" not in r.headers.get("content-type", ""):
            return r.content
        return r.json()

    def projects(self) -> list[dict[str, Any]]:
        out, page = [], 1
        while True:
            body = self.call("GET", "/api/projects", params={"page": page, "page_size": 100})
            out += body["results"]
            if not body.get("next"):
                return out
            page += 1

    def tasks(self, project: int) -> dict[str, dict[str, Any]]:
        """Every task of ``project`` (id, data) by its data's ``task_key``."""
        tasks: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            try:
                body = self.call("GET", "/api/tasks", params={"project": project, "page": page, "page_size": 500})
            except LabelStudioError as e:  # past the last page
                if "404" in str(e):
                    return tasks
                raise
            tasks |= {t["data"].get("task_key"): t for t in body.get("tasks", [])}
            if len(body.get("tasks", [])) < 500:
                return tasks
            page += 1

    def export(self, project: int, export_type: str = "JSON") -> bytes:
        """An export of every annotated task, as Label Studio's Export dialog writes it."""
        return bytes(self.call("GET", f"/api/projects/{project}/export", params={"exportType": export_type}, raw=True))


@dataclass(frozen=True)
class PublishedProject:
    """A Label Studio project of one template and candidates version."""

    template: str
    project_id: int
    title: str
    url: str
    tasks: int
    imported: int
    refreshed: int  # existing tasks whose data (image URLs) were updated


def project_title(template: str, candidates_version: str) -> str:
    return f"flywheel {template} {candidates_version}"


def image_urls(store: Store, settings: AnnotationConfig) -> Callable[[str], str]:
    """store URI -> a URL Label Studio shows (presigned for S3, local-files for a local store)."""
    if isinstance(store, S3Store):
        root = store.root_uri.rstrip("/") + "/"
        return lambda uri: store.presigned_url(uri.removeprefix(root), settings.presign_expiry_s)
    if not isinstance(store, LocalStore):
        raise LabelStudioError(f"{store!r}: no way to show its images in Label Studio")
    doc_root = settings.local_files_root
    if doc_root is None or not store.root.is_relative_to(Path(doc_root).resolve()):
        raise LabelStudioError(
            f"the local store {store.root} must be inside Label Studio's local-files document root: set "
            "annotation.local_files_root to the LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT Label Studio was started with"
        )
    base = Path(doc_root).resolve()
    return lambda uri: (
        "/data/local-files/?d=" + urllib.parse.quote(str(Path(uri.removeprefix("file://")).resolve().relative_to(base)))
    )


def publish_to_label_studio(
    client: LabelStudio, store: Store, candidates_version: str, settings: AnnotationConfig
) -> list[PublishedProject]:
    """Create (or update) one project per template for the candidates version's published
    annotation tasks (``annotation/<version>/tasks.jsonl``) and import the missing tasks."""
    key = f"annotation/{candidates_version}/tasks.jsonl"
    if not store.exists(key):
        raise LabelStudioError(f"no annotation tasks at {store.uri(key)}: run `flywheel propose` first")
    native = [json.loads(line) for line in store.get_bytes(key).decode().splitlines() if line.strip()]
    url = image_urls(store, settings)
    existing = {p["title"]: p for p in client.projects()}
    published = []
    for template in settings.templates:
        title = project_title(template, candidates_version)
        config = annotation.LABEL_STUDIO_CONFIGS[template]
        project = existing.get(title)
        if project is None:
            project = client.call("POST", "/api/projects", json={"title": title, "label_config": config})
            log.info("created Label Studio project %s (%s)", project["id"], title)
        elif project.get("label_config") != config:
            client.call("PATCH", f"/api/projects/{project['id']}", json={"label_config": config})
        if isinstance(store, LocalStore):
            _local_storage(client, project["id"], store.root / "annotation" / candidates_version)
        tasks = annotation.label_studio_tasks(template, native, url)
        have = client.tasks(project["id"])
        missing = [t for t in tasks if t["data"]["task_key"] not in have]
        if missing:
            client.call("POST", f"/api/projects/{project['id']}/import", json=missing)
        # tasks whose data changed since (new presigned URLs): updated in place, annotations kept
        stale = [
            (have[key]["id"], t)
            for t in tasks
            if (key := t["data"]["task_key"]) in have and have[key]["data"] != t["data"]
        ]
        for task_id, task in stale:
            client.call("PATCH", f"/api/tasks/{task_id}", json={"data": task["data"]})
        published.append(
            PublishedProject(
                template,
                project["id"],
                title,
                f"{client.url}/projects/{project['id']}/data",
                len(tasks),
                len(missing),
                len(stale),
            )
        )
    return published


def _local_storage(client: LabelStudio, project: int, folder: Path) -> None:
    """Label Studio serves a local file only to users of a project with a local storage
    holding it (it need not be synced)."""
    have = client.call("GET", "/api/storages/localfiles", params={"project": project})
    if not any(Path(s.get("path", "")) == folder for s in have):
        client.call(
            "POST",
            "/api/storages/localfiles",
            json={"project": project, "path": str(folder), "use_blob_urls": False, "title": "flywheel previews"},
        )


@dataclass(frozen=True)
class PulledExport:
    """One project's export, saved in the store (``uri``; None when it holds no submitted
    annotation yet: nothing to ingest), with its labeling config."""

    template: str
    project_id: int
    uri: str | None
    label_config: str
    annotations: int  # submitted (not skipped)


def pull_from_label_studio(
    client: LabelStudio, store: Store, candidates_version: str, settings: AnnotationConfig
) -> list[PulledExport]:
    """Export every project of the candidates version (JSON) into
    ``annotation/<version>/exports/label-studio/<template>-<project>-<sha12>.json``: the same
    annotations give the same file, so pulling again re-ingests nothing."""
    by_title = {p["title"]: p for p in client.projects()}
    pulled = []
    for template in settings.templates:
        project = by_title.get(project_title(template, candidates_version))
        if project is None:
            log.warning("no Label Studio project %r: publish first", project_title(template, candidates_version))
            continue
        tasks = json.loads(client.export(project["id"], "JSON"))
        submitted = sum(not a.get("was_cancelled") for t in tasks for a in t.get("annotations") or [])
        uri = None
        if submitted:  # (an export with nothing to ingest would fail the rankings gate)
            stable = _without_volatile(tasks)
            key = (
                f"annotation/{candidates_version}/exports/label-studio/"
                f"{template}-{project['id']}-{hashlib.sha256(stable).hexdigest()[:12]}.json"
            )
            store.create_if_absent(key, stable)
            uri = store.uri(key)
        pulled.append(PulledExport(template, project["id"], uri, project["label_config"], submitted))
    return pulled


def _without_volatile(tasks: list[dict[str, Any]]) -> bytes:
    """The export less what changes without any annotation changing (task bookkeeping that
    Label Studio refreshes), so an unchanged project pulls to the same bytes."""
    for t in tasks:
        for k in ("updated_at", "updated_by", "comment_authors", "last_comment_updated_at"):
            t.pop(k, None)
    return json.dumps(tasks, indent=1, sort_keys=True).encode()

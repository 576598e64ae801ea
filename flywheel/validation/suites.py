"""Dataset validation with Great Expectations: one suite per dataset kind.

A dataset version is turned into a few pandas tables and each table gets a suite:

- ``manifest``   the Parquet manifest plus derived columns (rotation error, ...): types,
                 non-null keys, unique ids, value ranges, referential integrity with the
                 parent datasets;
- ``groups``     per-group aggregates (views per object, share per mesh family);
- ``samples``    pixel-level statistics of up to ``sample_checks`` streamed samples
                 (image size, depth > 0 inside the mask, modal mask inside the amodal one);
- ``integrity``  one row per shard and per problem found by :meth:`Dataset.verify` and the
                 schema check (every manifest row in a shard and vice versa, checksums);
- ``stage``      one row of stage-level rates (quarantined fraction, accept rate).

What the data should look like (views per object, image size, visible band) is read from
the settings recorded in the dataset's own commit marker; tolerances and rates come from
:class:`~flywheel.core.config.ValidationConfig`. Results come back as a :class:`Report` with the
failing expectations and example rows; Great Expectations' HTML Data Docs are built on
request. Nothing here imports Prefect.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.config import WEB_MODULES, ValidationConfig
from flywheel.core.datasets import Dataset, DatasetCorrupt
from flywheel.feedback.ingest import file_reports
from flywheel.validation.docs_assets import make_self_contained

log = logging.getLogger(__name__)


@dataclass
class Failure:
    table: str
    expectation: str
    column: str | None
    unexpected_count: int | None
    examples: list

    def __str__(self) -> str:
        col = f"[{self.column}]" if self.column else ""
        n = f"{self.unexpected_count} unexpected, " if self.unexpected_count is not None else ""
        return f"{self.table}{col} {self.expectation}: {n}e.g. {self.examples[:5]}"


@dataclass
class Report:
    dataset: str
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    results: dict = field(default_factory=dict)  # Great Expectations' JSON, per table
    docs: Path | None = None  # Data Docs index.html, when built

    def summary(self) -> str:
        head = f"{self.dataset}: {'PASSED' if self.success else 'FAILED'} ({self.evaluated} expectations"
        head += f", {len(self.failures)} failed)" if self.failures else ")"
        return "\n".join([head] + [f"  - {f}" for f in self.failures])

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "success": self.success,
            "evaluated": self.evaluated,
            "failures": [f.__dict__ for f in self.failures],
            "results": self.results,
        }


# -- tables -----------------------------------------------------------------------------------


def _rotation_error(flat: pd.Series) -> np.ndarray:
    """max(|R R^T - I|, |det R - 1|) per row of row-major 3x3 lists (NaN stays NaN)."""
    if len(flat) == 0:
        return np.zeros(0)
    r = np.array(flat.tolist(), dtype=np.float64).reshape(-1, 3, 3)
    ortho = np.abs(r @ r.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    return np.maximum(ortho, np.abs(np.linalg.det(r) - 1))


def _integrity(ds: Dataset) -> pd.DataFrame:
    problems: list[str] = []
    try:
        manifest = ds.manifest()
        if manifest.schema.remove_metadata() != ds.spec.manifest_schema:
            problems.append(f"manifest schema differs from the contract of {ds.spec.name}")
    except DatasetCorrupt as e:
        problems.append(str(e))
    problems += ds.verify()
    rows = [{"item": s["name"], "problem": None} for s in ds.marker["shards"]]
    rows += [{"item": p.split(":")[0], "problem": p} for p in problems]
    return pd.DataFrame(rows, columns=["item", "problem"]).astype({"problem": object})


def _parent_ids(ds: Dataset, parent_name: str, column: str) -> list[str]:
    """``column`` of every parent named ``parent_name``."""
    return [
        value
        for parent in ds.marker.get("parents", [])
        if parent["name"] == parent_name
        for value in Dataset(ds.store, parent["name"], parent["version"]).manifest().column(column).to_pylist()
    ]


def _stream_stats(ds: Dataset, limit: int, fn: Callable[[dict], dict]) -> pd.DataFrame:
    rows = []
    if limit <= 0:
        return pd.DataFrame()
    for sample in ds.samples():
        rows.append({"sample_key": sample["__key__"], **fn(sample)})
        if len(rows) >= limit:
            break
    return pd.DataFrame(rows)


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _quarantined(ds: Dataset, kind: str | None = None) -> int:
    if kind is None:
        return (ds.marker.get("quarantine") or {}).get("rows", 0)
    q = ds.quarantine()
    return sum(1 for k in q.column("kind").to_pylist() if k == kind)


# -- suites -----------------------------------------------------------------------------------


def _great_expectations() -> Any:
    """The library, imported with its analytics off (it reads the setting on import)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations

    return great_expectations


def _gx() -> Any:
    return _great_expectations().expectations


def _common(ds: Dataset, m: pd.DataFrame, id_column: str) -> list:
    E = _gx()
    names = list(ds.spec.manifest_schema.names)
    out = [
        E.ExpectTableColumnsToMatchSet(column_set=names, exact_match=False),
        E.ExpectColumnValuesToBeUnique(column="sample_key"),
        E.ExpectColumnValuesToBeUnique(column=id_column) if id_column != "sample_key" else None,
    ]
    out += [E.ExpectColumnValuesToNotBeNull(column=f.name) for f in ds.spec.manifest_schema if not f.nullable]
    return [e for e in out if e is not None]


def _meshes(ds: Dataset, cfg: ValidationConfig) -> dict:
    E = _gx()
    m = ds.manifest().to_pandas()
    families = m["family"].value_counts(normalize=True) if len(m) else pd.Series(dtype=float)
    groups = pd.DataFrame({"family": families.index, "share": families.values})
    seen = len(m) + _quarantined(ds)
    stage = pd.DataFrame([{"quarantined_fraction": _quarantined(ds) / seen if seen else 0.0}])
    samples = _stream_stats(
        ds,
        cfg.sample_checks,
        lambda s: {
            "occupied_fraction_file": float(_npy(s["occ.npy"]).mean()),
            "faces": int(np.load(io.BytesIO(s["mesh.npz"]))["faces"].shape[0]),
        },
    )
    sample_suite = []
    if len(samples):
        samples = samples.merge(m[["sample_key", "occupied_fraction", "num_faces"]], on="sample_key")
        samples["occupancy_mismatch"] = (samples["occupied_fraction_file"] - samples["occupied_fraction"]).abs()
        samples["faces_mismatch"] = (samples["faces"] - samples["num_faces"]).abs()
        sample_suite = [
            E.ExpectColumnValuesToBeBetween(column="occupancy_mismatch", max_value=1e-4),
            E.ExpectColumnValuesToBeBetween(column="faces_mismatch", max_value=0),
        ]
    # A family share is only meaningful with enough meshes to balance, and for a library whose
    # families are meant to be balanced: the procedural one, or a user source that asks for it.
    inputs = ds.marker.get("inputs") or {}
    balanced = inputs.get("family_balance", inputs.get("source") is None)
    balance = (
        [E.ExpectColumnValuesToBeBetween(column="share", max_value=cfg.max_family_share)]
        if balanced and len(m) >= 10
        else []
    )
    return {
        "manifest": (
            m,
            _common(ds, m, "mesh_id")
            + [
                E.ExpectColumnValuesToBeBetween(column="num_faces", min_value=1),
                E.ExpectColumnValuesToBeBetween(column="num_vertices", min_value=3),
                E.ExpectColumnValuesToBeBetween(column="occupied_fraction", min_value=0, max_value=1, strict_min=True),
                E.ExpectColumnValuesToBeInSet(column="occupancy_resolution", value_set=[16, 32, 64]),
            ],
        ),
        "groups": (groups, balance),
        "samples": (samples, sample_suite),
        "stage": (
            stage,
            [E.ExpectColumnValuesToBeBetween(column="quarantined_fraction", max_value=cfg.max_quarantine_fraction)],
        ),
    }


def _pose_columns(m: pd.DataFrame, prefix: str = "") -> None:
    m[f"{prefix}rotation_error"] = _rotation_error(m[f"{prefix}R"])
    t = np.array(m[f"{prefix}t"].tolist(), dtype=np.float64).reshape(-1, 3)
    m[f"{prefix}depth"] = t[:, 2] if len(t) else []
    m[f"{prefix}t_finite"] = np.isfinite(t).all(axis=1) if len(t) else []


def _pose_suite(cfg: ValidationConfig, prefix: str = "") -> list:
    E = _gx()
    return [
        E.ExpectColumnValuesToNotBeNull(column=f"{prefix}rotation_error"),  # NaN poses are null
        E.ExpectColumnValuesToBeBetween(column=f"{prefix}rotation_error", max_value=cfg.rotation_tolerance),
        E.ExpectColumnValuesToBeInSet(column=f"{prefix}t_finite", value_set=[True]),
        E.ExpectColumnValuesToBeBetween(column=f"{prefix}depth", min_value=0, strict_min=True),
        E.ExpectColumnValuesToBeBetween(column=f"{prefix}s", min_value=0, strict_min=True),
    ]


def _iso3do(ds: Dataset, cfg: ValidationConfig) -> dict:
    def stats(s):
        rgb, mask, depth = _png(s["rgb.png"]), _png(s["mask.png"]) > 127, _npy(s["depth.npy"])
        inside = depth[mask] if mask.shape == depth.shape else np.array([-1.0])
        return {
            "rgb_height": rgb.shape[0],
            "rgb_width": rgb.shape[1],
            "mask_pixels_file": int(mask.sum()),
            "depth_positive_in_mask": float((inside > 0).mean()) if inside.size else 0.0,
            "depth_finite": bool(np.isfinite(depth).all()),
        }

    return iso3do_tables(
        ds.manifest().to_pandas(),
        ds.marker["inputs"].get("settings", {}),
        _parent_ids(ds, "meshes", "mesh_id"),
        _stream_stats(ds, cfg.sample_checks, stats),
        _quarantined(ds, "object"),
        cfg,
        _common(ds, pd.DataFrame(), "sample_key"),
    )


def iso3do_tables(
    m: pd.DataFrame,
    settings: dict,
    mesh_ids: list[str],
    samples: pd.DataFrame,
    quarantined_objects: int,
    cfg: ValidationConfig,
    common: list,
) -> dict:
    """The Iso-3DO tables and suites from plain inputs (also used by the benchmark)."""
    E = _gx()
    views, res = settings.get("views"), settings.get("resolution")
    _pose_columns(m)
    per_object = m.groupby("object_id").size() if len(m) else pd.Series(dtype=int)
    groups = pd.DataFrame({"object_id": per_object.index, "views": per_object.values})
    sample_suite = []
    if len(samples):
        sample_suite = [
            E.ExpectColumnValuesToBeBetween(column="depth_positive_in_mask", min_value=1.0),
            E.ExpectColumnValuesToBeInSet(column="depth_finite", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="mask_pixels_file", min_value=1),
        ]
        if res:
            sample_suite += [
                E.ExpectColumnValuesToBeBetween(column=c, min_value=res, max_value=res)
                for c in ("rgb_height", "rgb_width")
            ]
    manifest_suite = (
        common
        + _pose_suite(cfg)
        + [
            E.ExpectCompoundColumnsToBeUnique(column_list=["object_id", "view"]),
            E.ExpectColumnValuesToBeBetween(column="mask_pixels", min_value=1),
        ]
    )
    if res:
        manifest_suite += [
            E.ExpectColumnValuesToBeBetween(column=c, min_value=res, max_value=res) for c in ("width", "height")
        ]
    if mesh_ids:
        manifest_suite.append(E.ExpectColumnValuesToBeInSet(column="object_id", value_set=mesh_ids))
    seen = len(groups) + quarantined_objects
    stage = pd.DataFrame([{"quarantined_fraction": quarantined_objects / seen if seen else 0.0}])
    return {
        "manifest": (m, manifest_suite),
        "groups": (
            groups,
            [E.ExpectColumnValuesToBeBetween(column="views", min_value=views, max_value=views)] if views else [],
        ),
        "samples": (samples, sample_suite),
        "stage": (
            stage,
            [E.ExpectColumnValuesToBeBetween(column="quarantined_fraction", max_value=cfg.max_quarantine_fraction)],
        ),
    }


def _occlusions(ds: Dataset, cfg: ValidationConfig) -> dict:
    E = _gx()
    settings = ds.marker["inputs"].get("settings", {})
    band, res = settings.get("visible_band"), settings.get("resolution")
    m = ds.manifest().to_pandas()
    for prefix in ("occludee_", "occluder_"):
        _pose_columns(m, prefix)
    m["modal_le_amodal"] = m["modal_pixels"] <= m["amodal_pixels"]
    m["distinct_objects"] = m["occludee_id"] != m["occluder_id"]
    mesh_ids = _parent_ids(ds, "meshes", "mesh_id")

    def stats(s):
        modal, amodal = _png(s["modal.png"]) > 127, _png(s["amodal.png"]) > 127
        rgb, depth = _png(s["rgb.png"]), _npy(s["depth.npy"])
        return {
            "rgb_height": rgb.shape[0],
            "rgb_width": rgb.shape[1],
            "rgb_channels": rgb.shape[2] if rgb.ndim == 3 else 1,
            "modal_inside_amodal": bool((modal <= amodal).all()),
            "depth_positive_in_modal": float((depth[modal] > 0).mean()) if modal.any() else 0.0,
        }

    samples = _stream_stats(ds, cfg.sample_checks, stats)
    sample_suite = []
    if len(samples):
        sample_suite = [
            E.ExpectColumnValuesToBeInSet(column="modal_inside_amodal", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="depth_positive_in_modal", min_value=1.0),
            E.ExpectColumnValuesToBeInSet(column="rgb_channels", value_set=[3]),
        ]
        if res:
            sample_suite += [
                E.ExpectColumnValuesToBeBetween(column=c, min_value=res, max_value=res)
                for c in ("rgb_height", "rgb_width")
            ]
    manifest_suite = (
        _common(ds, m, "sample_id")
        + _pose_suite(cfg, "occludee_")
        + _pose_suite(cfg, "occluder_")
        + [
            E.ExpectColumnValuesToBeInSet(column="modal_le_amodal", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="distinct_objects", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="amodal_pixels", min_value=1),
            E.ExpectColumnValuesToBeBetween(column="tries", min_value=1),
        ]
    )
    if band:
        manifest_suite.append(
            E.ExpectColumnValuesToBeBetween(
                column="visible_fraction",
                min_value=band[0] - cfg.band_tolerance,
                max_value=band[1] + cfg.band_tolerance,
            )
        )
    if mesh_ids:
        manifest_suite += [
            E.ExpectColumnValuesToBeInSet(column=c, value_set=mesh_ids) for c in ("occludee_id", "occluder_id")
        ]
    attempted = len(m) + _quarantined(ds, "sample")
    stage = pd.DataFrame([{"accept_rate": len(m) / attempted if attempted else 1.0}])
    return {
        "manifest": (m, manifest_suite),
        "samples": (samples, sample_suite),
        "stage": (stage, [E.ExpectColumnValuesToBeBetween(column="accept_rate", min_value=cfg.min_accept_rate)]),
    }


def _image_pool(ds: Dataset, cfg: ValidationConfig) -> dict:
    E = _gx()
    m = ds.manifest().to_pandas()
    m["mask_fits"] = m["mask_pixels"] <= m["width"] * m["height"]

    def stats(s):
        rgb, mask = _png(s["rgb.png"]), _png(s["mask.png"])
        return {
            "rgb_channels": rgb.shape[2] if rgb.ndim == 3 else 1,
            "mask_matches_image": mask.shape[:2] == rgb.shape[:2],
            "mask_pixels_file": int((mask > 127).sum()),
        }

    samples = _stream_stats(ds, cfg.sample_checks, stats)
    sample_suite = []
    if len(samples):
        samples = samples.merge(m[["sample_key", "mask_pixels"]], on="sample_key")
        samples["mask_count_matches"] = samples["mask_pixels_file"] == samples["mask_pixels"]
        sample_suite = [
            E.ExpectColumnValuesToBeInSet(column="rgb_channels", value_set=[3]),
            E.ExpectColumnValuesToBeInSet(column="mask_matches_image", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="mask_count_matches", value_set=[True]),
        ]
    seen = len(m) + _quarantined(ds)
    stage = pd.DataFrame([{"quarantined_fraction": _quarantined(ds) / seen if seen else 0.0}])
    return {
        "manifest": (
            m,
            _common(ds, m, "object_id")
            + [
                E.ExpectColumnValuesToBeBetween(column="width", min_value=1),
                E.ExpectColumnValuesToBeBetween(column="height", min_value=1),
                E.ExpectColumnValuesToBeBetween(column="mask_pixels", min_value=1),
                E.ExpectColumnValuesToBeInSet(column="mask_fits", value_set=[True]),
            ],
        ),
        "samples": (samples, sample_suite),
        "stage": (
            stage,
            [E.ExpectColumnValuesToBeBetween(column="quarantined_fraction", max_value=cfg.max_quarantine_fraction)],
        ),
    }


def _candidates(ds: Dataset, cfg: ValidationConfig) -> dict:
    """Candidates: poses, N per object, and the chain candidates -> objects (image pool) and
    retrieved meshes -> mesh library."""
    E = _gx()
    m = ds.manifest().to_pandas()
    m["rotation_error"] = _rotation_error(m["R"])
    t = np.array(m["t"].tolist(), dtype=np.float64).reshape(-1, 3)
    m["t_finite"] = np.isfinite(t).all(axis=1) if len(t) else []
    n = ds.marker["inputs"].get("settings", {}).get("num_candidates")
    per_object = m.groupby("object_id").size() if len(m) else pd.Series(dtype=int)
    groups = pd.DataFrame({"object_id": per_object.index, "candidates": per_object.values})
    object_ids = _parent_ids(ds, "image-pool", "object_id")
    mesh_ids = _parent_ids(ds, "meshes", "mesh_id") + [
        key for name in ("sft", "art3do") for key in _parent_ids(ds, name, "sample_key")
    ]  # a retrieval library also holds accepted winners and artist meshes
    retrieved = m[m["kind"] == "retrieval"][["sample_key", "retrieved_mesh_id"]]

    def stats(s):
        occ = _npy(s["occ.npy"])
        return {"occ_cubic": occ.ndim == 3 and len(set(occ.shape)) == 1, "occ_fraction_file": float(occ.mean())}

    samples = _stream_stats(ds, cfg.sample_checks, stats)
    sample_suite = []
    if len(samples):
        samples = samples.merge(m[["sample_key", "occupied_fraction"]], on="sample_key")
        samples["occupancy_mismatch"] = (samples["occ_fraction_file"] - samples["occupied_fraction"]).abs()
        sample_suite = [
            E.ExpectColumnValuesToBeInSet(column="occ_cubic", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="occupancy_mismatch", max_value=1e-4),
        ]
    manifest_suite = _common(ds, m, "candidate_id") + [
        E.ExpectColumnValuesToNotBeNull(column="rotation_error"),
        E.ExpectColumnValuesToBeBetween(column="rotation_error", max_value=cfg.rotation_tolerance),
        E.ExpectColumnValuesToBeInSet(column="t_finite", value_set=[True]),
        E.ExpectColumnValuesToBeBetween(column="s", min_value=0, strict_min=True),
        E.ExpectColumnValuesToBeBetween(column="occupied_fraction", min_value=0, max_value=1),
        E.ExpectColumnValuesToBeInSet(column="kind", value_set=["model", "retrieval"]),
    ]
    if object_ids:
        manifest_suite.append(E.ExpectColumnValuesToBeInSet(column="object_id", value_set=object_ids))
    proposed = _parent_ids(ds, "proposals", "candidate_id")  # the candidates shown were proposed
    if proposed:
        manifest_suite.append(E.ExpectColumnValuesToBeInSet(column="candidate_id", value_set=proposed))
    refs = (
        retrieved,
        [E.ExpectColumnValuesToBeInSet(column="retrieved_mesh_id", value_set=mesh_ids)]
        if mesh_ids and len(retrieved)
        else [],
    )
    seen = len(groups) + _quarantined(ds, "object")
    stage = pd.DataFrame([{"quarantined_fraction": _quarantined(ds, "object") / seen if seen else 0.0}])
    return {
        "manifest": (m, manifest_suite),
        "groups": (
            groups,
            [E.ExpectColumnValuesToBeBetween(column="candidates", min_value=n, max_value=n)] if n else [],
        ),
        "references": refs,
        "samples": (samples, sample_suite),
        "stage": (
            stage,
            [E.ExpectColumnValuesToBeBetween(column="quarantined_fraction", max_value=cfg.max_quarantine_fraction)],
        ),
    }


def _rankings(ds: Dataset, cfg: ValidationConfig) -> dict:
    """Judgements: kinds, durations, and the chain rankings -> candidates (every candidate id
    named belongs to the row's object in a candidate registry of this or an earlier round)."""
    E = _gx()
    m = ds.manifest().to_pandas()
    # rankings accumulate over rounds: each version's parents are its round's candidates and the
    # previous rankings version, whose rows refer to earlier rounds' candidates
    registry: dict[str, Any] = {}
    chain = [ds]
    while chain:
        for parent in chain.pop().marker.get("parents", []):
            if parent["name"] == "candidates":
                reg = (
                    Dataset(ds.store, "candidates", parent["version"]).manifest().select(["candidate_id", "object_id"])
                )
                registry.update(zip(reg["candidate_id"].to_pylist(), reg["object_id"].to_pylist()))
            elif parent["name"] == "rankings":
                chain.append(Dataset(ds.store, "rankings", parent["version"]))
    named = pd.DataFrame(
        [
            (r.sample_key, c, r.object_id)
            for r in m.itertuples()
            for c in ([r.winner] if isinstance(r.winner, str) else []) + list(r.losers)
        ],
        columns=["sample_key", "candidate_id", "object_id"],
    )
    named["owner_matches"] = named["candidate_id"].map(registry) == named["object_id"]
    refs = (
        (named, [E.ExpectColumnValuesToBeInSet(column="owner_matches", value_set=[True])]) if registry else (named, [])
    )
    # the exports this version added: each must hold a usable judgement, and their reject-all
    # share must not jump above that of the judgements before them
    reports = file_reports(ds.marker)
    files = pd.DataFrame([(r.name, r.usable) for r in reports], columns=["file", "usable"])
    new = m["source_file"].isin([r.digest for r in reports])
    rejects = m["kind"] == "reject-all"
    jump = float(rejects[new].mean() - rejects[~new].mean()) if new.any() and (~new).any() else 0.0
    return {
        "files": (files, [E.ExpectColumnValuesToBeBetween(column="usable", min_value=1)]),
        "reject_share": (
            pd.DataFrame({"reject_share_jump": [jump]}),
            [E.ExpectColumnValuesToBeBetween(column="reject_share_jump", max_value=cfg.max_reject_share_jump)],
        ),
        "manifest": (
            m,
            _common(ds, m, "submission_id")
            + [
                E.ExpectColumnValuesToBeInSet(column="kind", value_set=["pairwise", "best-of-n", "reject-all"]),
                E.ExpectColumnValuesToBeBetween(column="time_spent_s", min_value=0, strict_min=True),
            ],
        ),
        "references": refs,
    }


def _decision_refs(ds: Dataset, m: pd.DataFrame, candidate_columns: tuple[str, ...]) -> list:
    """Objects of the round's image pool; candidates of the candidate registry."""
    E = _gx()
    out = []
    objects = _parent_ids(ds, "image-pool", "object_id")
    if objects:
        out.append(E.ExpectColumnValuesToBeInSet(column="object_id", value_set=objects))
    candidates = _parent_ids(ds, "candidates", "candidate_id")
    if candidates:
        out += [E.ExpectColumnValuesToBeInSet(column=c, value_set=candidates) for c in candidate_columns]
    return out


def _sft(ds: Dataset, cfg: ValidationConfig) -> dict:
    E = _gx()
    m = ds.manifest().to_pandas()
    m["rotation_error"] = _rotation_error(m["R"])
    return {
        "manifest": (
            m,
            _common(ds, m, "candidate_id")
            + _decision_refs(ds, m, ("candidate_id",))
            + [
                E.ExpectColumnValuesToBeUnique(column="object_id"),
                E.ExpectColumnValuesToNotBeNull(column="rotation_error"),
                E.ExpectColumnValuesToBeBetween(column="rotation_error", max_value=cfg.rotation_tolerance),
                E.ExpectColumnValuesToBeBetween(column="s", min_value=0, strict_min=True),
                E.ExpectColumnValuesToBeBetween(column="score", min_value=0.5, max_value=1),
                E.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1),
            ],
        )
    }


def _preferences(ds: Dataset, cfg: ValidationConfig) -> dict:
    E = _gx()
    m = ds.manifest().to_pandas()
    m["distinct"] = m["winner"] != m["loser"]
    return {
        "manifest": (
            m,
            _common(ds, m, "sample_key")
            + _decision_refs(ds, m, ("winner", "loser"))
            + [
                E.ExpectCompoundColumnsToBeUnique(column_list=["winner", "loser"]),
                E.ExpectColumnValuesToBeInSet(column="distinct", value_set=[True]),
                E.ExpectColumnValuesToBeBetween(column="times", min_value=1),
                E.ExpectColumnValuesToBeBetween(column="score", min_value=0.5, max_value=1),
            ],
        )
    }


def _hard_cases(ds: Dataset, cfg: ValidationConfig) -> dict:
    E = _gx()
    m = ds.manifest().to_pandas()
    m["rejects_le_judgements"] = m["rejects"] <= m["judgements"]
    return {
        "manifest": (
            m,
            _common(ds, m, "object_id")
            + _decision_refs(ds, m, ())
            + [
                E.ExpectColumnValuesToBeBetween(column="reject_share", min_value=0, max_value=1),
                E.ExpectColumnValuesToBeInSet(column="rejects_le_judgements", value_set=[True]),
            ],
        )
    }


def _art3do(ds: Dataset, cfg: ValidationConfig) -> dict:
    """Artist meshes: one per object, a valid pose, occupancy that matches its file; refused
    deliveries within the quarantine allowance (all refused is a failure, not an empty pass)."""
    E = _gx()
    m = ds.manifest().to_pandas()
    _pose_columns(m)
    seen = len(m) + _quarantined(ds)
    stage = pd.DataFrame([{"quarantined_fraction": _quarantined(ds) / seen if seen else 0.0}])
    samples = _stream_stats(ds, cfg.sample_checks, lambda s: {"occupied": float(_npy(s["occ.npy"]).mean())})
    return {
        "manifest": (
            m,
            _common(ds, m, "object_id")
            + _pose_suite(cfg)
            + [E.ExpectColumnValuesToBeBetween(column="cost", min_value=0)],
        ),
        "samples": (
            samples,
            [E.ExpectColumnValuesToBeBetween(column="occupied", min_value=0, max_value=1, strict_min=True)]
            if len(samples)
            else [],
        ),
        "stage": (
            stage,
            [E.ExpectColumnValuesToBeBetween(column="quarantined_fraction", max_value=cfg.max_quarantine_fraction)],
        ),
    }


def _generic(ds: Dataset, cfg: ValidationConfig) -> dict:
    m = ds.manifest().to_pandas()
    return {"manifest": (m, _common(ds, m, "sample_key"))}


SUITES: dict[str, Callable[[Dataset, ValidationConfig], dict]] = {
    "meshes": _meshes,
    "iso3do": _iso3do,
    "iso3do-part": _iso3do,
    "occlusions": _occlusions,
    "occlusions-part": _occlusions,
    "image-pool": _image_pool,
    "proposals": _candidates,
    "candidates": _candidates,
    "rankings": _rankings,
    "sft": _sft,
    "preferences": _preferences,
    "hard-cases": _hard_cases,
    "art3do": _art3do,
}


# -- running ----------------------------------------------------------------------------------


def _examples(result: dict, df: pd.DataFrame, column: str | None) -> list:
    """Example offending rows: ids (and the value) rather than bare row numbers."""
    idx = result.get("unexpected_index_list") or []
    if idx and len(df):
        key = next((c for c in ("sample_key", "item", "object_id", "family") if c in df.columns), None)
        rows = df.iloc[[i for i in idx[:5] if isinstance(i, (int, np.integer)) and i < len(df)]]
        cols = [c for c in (key, column) if c and c in df.columns]
        cols += ["problem"] if "problem" in df.columns and "problem" not in cols else []
        return rows[list(dict.fromkeys(cols))].to_dict("records") if cols else []
    return list(result.get("partial_unexpected_list") or [])[:5] or (
        [result.get("observed_value")] if "observed_value" in result else []
    )


#: Dataset kinds that are of no use empty (an empty mesh folder, every render failed): their
#: gate fails on zero rows, whatever their quarantine says. Others may be empty in a round
#: (no accepted objects, no artist deliveries).
NEVER_EMPTY = frozenset({"meshes", "iso3do", "occlusions", "image-pool", "candidates", "proposals"})


def validate(ds: Dataset, cfg: ValidationConfig, docs_dir: str | Path | None = None) -> Report:
    """Validate one committed dataset version; build Data Docs into ``docs_dir`` if given. A
    damaged version (a shard or manifest that does not match its checksums, or cannot be read)
    fails the integrity expectation, naming the damage; its content is not checked."""
    integrity = _integrity(ds)
    if ds.spec.name in NEVER_EMPTY and ds.ref.num_rows == 0:
        refused = _quarantined(ds)
        integrity = pd.concat(
            [
                integrity,
                pd.DataFrame(
                    [{"item": "rows", "problem": f"no rows ({refused} quarantined): nothing downstream can use it"}]
                ),
            ]
        )
    tables: dict = {}
    if integrity["problem"].isna().all():
        try:
            tables = SUITES.get(ds.spec.name, _generic)(ds, cfg)
        except DatasetCorrupt as e:  # a parent it reads is damaged
            integrity = pd.concat([integrity, pd.DataFrame([{"item": "parent", "problem": str(e)}])])
    tables["integrity"] = (integrity, [_gx().ExpectColumnValuesToBeNull(column="problem")])
    return run_suites(str(ds.ref), ds.spec.name, tables, docs_dir, cfg.docs_assets_dir)


def run_suites(
    dataset: str,
    kind: str,
    tables: dict,
    docs_dir: str | Path | None = None,
    docs_assets: Path = WEB_MODULES,
) -> Report:
    """Run each table's expectations with Great Expectations and collect the failures.

    With ``docs_dir`` the GX project and its Data Docs (self-contained: their styles and
    scripts copied from ``docs_assets``) stay there; without, it lives in a temporary folder
    removed on return.
    """
    if docs_dir:
        return _run_suites(dataset, kind, tables, Path(docs_dir), docs_assets)
    with tempfile.TemporaryDirectory(prefix="flywheel-gx-") as tmp:
        return _run_suites(dataset, kind, tables, Path(tmp), None)


def _run_suites(dataset: str, kind: str, tables: dict, root: Path, docs_assets: Path | None) -> Report:
    gx = _great_expectations()
    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_or_update_pandas("flywheel")
    name = dataset.replace("@", "-")
    report = Report(dataset, True, 0)
    definitions, frames = [], {}
    for table, (frame, expectations) in tables.items():
        if not expectations:
            continue
        asset = source.add_dataframe_asset(f"{name}.{table}")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=f"{kind}.{table}", expectations=expectations))
        batch = asset.add_batch_definition_whole_dataframe("whole")
        definitions.append(
            context.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=f"{name}.{table}", data=batch, suite=suite)
            )
        )
        frames[f"{name}.{table}"] = frame.reset_index(drop=True)

    for definition in definitions:
        table = definition.name.rsplit(".", 1)[1]
        frame = frames[definition.name]
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
        )
        report.results[table] = result.describe_dict()
        for r in result.results:
            report.evaluated += 1
            if r.success:
                continue
            cfg_ = r.expectation_config
            assert cfg_ is not None, "a result of a configured expectation"
            column = cfg_.kwargs.get("column")
            report.failures.append(
                Failure(table, cfg_.type, column, r.result.get("unexpected_count"), _examples(r.result, frame, column))
            )
    report.success = not report.failures
    if docs_assets is not None:
        context.build_data_docs()
        index = root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        make_self_contained(index.parent, docs_assets)
        report.docs = index if index.exists() else None
    log.info(report.summary())
    return report


def write_json(report: Report, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.to_json(), indent=1, default=str))
    return path

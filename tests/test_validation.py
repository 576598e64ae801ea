"""Validation suites: a good dataset passes; each kind of corruption fails with the right
expectation named. Small datasets are built without Blender (synthetic but contract-true
renders), corrupted, and validated with the real Great Expectations."""

from __future__ import annotations

import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from flywheel.core.codecs import encode_npy
from flywheel.core.config import ValidationConfig
from flywheel.core.contracts import ISO3DO, MESHES, OCCLUSIONS
from flywheel.core.datasets import Dataset, DatasetWriter, write_dataset
from flywheel.core.store import LocalStore
from flywheel.validation.suites import validate
from rendering.mesh_library import library_samples, procedural_items
from rendering.meshes import MeshFilter
from rendering.scene import intrinsics, look_at

RES, VIEWS = 16, 3


def png(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def disc_sample(depth_value=2.5):
    yy, xx = np.mgrid[0:RES, 0:RES]
    mask = (yy - RES / 2) ** 2 + (xx - RES / 2) ** 2 < (RES / 3) ** 2
    rgba = np.zeros((RES, RES, 4), np.uint8)
    rgba[mask] = [200, 100, 50, 255]
    depth = np.where(mask, depth_value, 0).astype(np.float32)
    return mask, rgba, depth


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


@pytest.fixture
def meshes(store):
    samples = [(o.key, o.row, o.files) for o in library_samples(procedural_items(0, 4), 16, MeshFilter())]
    return write_dataset(store, MESHES, "meshes-v1", samples, inputs={"n": 4})


def iso_rows(mesh_ids, corrupt=None):
    mask, rgba, depth = disc_sample()
    K = np.ravel(intrinsics(40, RES, RES)).tolist()
    for oid in mesh_ids:
        for view in range(VIEWS):
            w2c = np.asarray(look_at([3 * np.cos(view), 3 * np.sin(view), 1.0]))
            row = {
                "object_id": oid,
                "view": view,
                "width": RES,
                "height": RES,
                "K": K,
                "world_to_cam": w2c.ravel().tolist(),
                "R": w2c[:3, :3].ravel().tolist(),
                "t": w2c[:3, 3].tolist(),
                "s": 1.0,
                "mask_pixels": int(mask.sum()),
                "num_lights": 2,
                "env_strength": 0.4,
                "samples": 4,
            }
            files = {
                "rgb.png": png(rgba),
                "mask.png": png(mask.astype(np.uint8) * 255),
                "depth.npy": encode_npy(depth),
                "occ.npy": encode_npy(np.ones((16,) * 3, bool)),
            }
            key = f"{oid}-v{view:03d}"
            if corrupt:
                out = corrupt(key, row, files)
                if out is None:
                    continue
                key, row, files = out
            yield key, row, files


def write_iso(store, meshes, corrupt=None, version="iso-v1"):
    ids = Dataset(store, "meshes", meshes.version).manifest().column("mesh_id").to_pylist()
    with DatasetWriter(
        store,
        ISO3DO,
        version,
        inputs={"settings": {"views": VIEWS, "resolution": RES}},
        parents=[meshes],
        shard_max_samples=4,
    ) as w:
        for sample in iso_rows(ids, corrupt):
            w.add(*sample)
    return Dataset(store, "iso3do", version)


def failed(report):
    return {(f.table, f.expectation, f.column) for f in report.failures}


def test_good_datasets_pass(store, meshes):
    cfg = ValidationConfig()
    assert validate(Dataset(store, "meshes", meshes.version), cfg).success
    report = validate(write_iso(store, meshes), cfg)
    assert report.success, report.summary()
    assert report.evaluated > 30


def _first(key):
    return key.endswith("-v001")


CORRUPTIONS = {
    "missing view": (
        lambda k, r, f: None if _first(k) and k.startswith(FIRST[0]) else (k, r, f),
        ("groups", "expect_column_values_to_be_between", "views"),
    ),
    "nan pose": (
        lambda k, r, f: (k, {**r, "R": [float("nan")] * 9} if _first(k) else r, f),
        ("manifest", "expect_column_values_to_not_be_null", "rotation_error"),
    ),
    "not a rotation": (
        lambda k, r, f: (k, {**r, "R": [2.0, 0, 0, 0, 1, 0, 0, 0, 1]} if _first(k) else r, f),
        ("manifest", "expect_column_values_to_be_between", "rotation_error"),
    ),
    "dangling object id": (
        lambda k, r, f: (k, {**r, "object_id": "mesh-0000000000000000"} if _first(k) else r, f),
        ("manifest", "expect_column_values_to_be_in_set", "object_id"),
    ),
    "duplicate id": (
        lambda k, r, f: (k + "-copy" if _first(k) else k, {**r, "view": 0} if _first(k) else r, f),
        ("manifest", "expect_compound_columns_to_be_unique", None),
    ),
    "behind the camera": (
        lambda k, r, f: (k, {**r, "t": [0, 0, -3.0]} if _first(k) else r, f),
        ("manifest", "expect_column_values_to_be_between", "depth"),
    ),
    "zero depth in mask": (
        lambda k, r, f: (k, r, {**f, "depth.npy": encode_npy(disc_sample(0.0)[2])} if _first(k) else f),
        ("samples", "expect_column_values_to_be_between", "depth_positive_in_mask"),
    ),
    "wrong image size": (
        lambda k, r, f: (k, r, {**f, "rgb.png": png(np.zeros((8, 8, 4), np.uint8))} if _first(k) else f),
        ("samples", "expect_column_values_to_be_between", "rgb_height"),
    ),
}
FIRST: list[str] = []


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_iso3do_corruption_fails_with_the_right_expectation(store, meshes, name):
    FIRST[:] = [Dataset(store, "meshes", meshes.version).manifest().column("mesh_id").to_pylist()[0]]
    corrupt, expected = CORRUPTIONS[name]
    report = validate(write_iso(store, meshes, corrupt), ValidationConfig())
    assert not report.success
    assert expected in failed(report), report.summary()
    failure = next(f for f in report.failures if (f.table, f.expectation, f.column) == expected)
    assert failure.examples, "the report shows example rows"


def test_truncated_shard_fails_integrity(store, meshes):
    ds = write_iso(store, meshes)
    shard = store.local_path(f"datasets/iso3do/{ds.ref.version}/{ds.marker['attempt']}/shards/shard-000001.tar")
    shard.write_bytes(shard.read_bytes()[:2048])
    report = validate(Dataset(store, "iso3do", ds.ref.version), ValidationConfig(sample_checks=0))
    assert ("integrity", "expect_column_values_to_be_null", "problem") in failed(report)
    failure = next(f for f in report.failures if f.table == "integrity")
    assert any("checksum mismatch" in str(e) for e in failure.examples)


def test_mesh_library_balance_and_duplicates(store):
    rows = [(o.key, o.row, o.files) for o in library_samples(procedural_items(0, 12), 16, MeshFilter())]
    same_family = [(k, {**r, "family": "torus"}, f) for k, r, f in rows]
    report = validate(
        Dataset(store, "meshes", write_dataset(store, MESHES, "unbalanced", same_family).version),
        ValidationConfig(max_family_share=0.5),
    )
    assert ("groups", "expect_column_values_to_be_between", "share") in failed(report)
    # a user library is one family ("user"): balance is not asked of it, unless its config asks
    user = [(k, {**r, "family": "user"}, f) for k, r, f in rows]
    for balance, passes in ((None, True), (True, False)):
        inputs = {"source": "/assets", "contents": "ab" * 32}
        if balance is not None:
            inputs["family_balance"] = balance
        written = write_dataset(store, MESHES, f"user-{balance}", user, inputs=inputs)
        share_failed = ("groups", "expect_column_values_to_be_between", "share") in failed(
            validate(Dataset(store, "meshes", written.version), ValidationConfig(max_family_share=0.5))
        )
        assert share_failed is not passes
    dup = rows[:3] + [(rows[3][0], {**rows[3][1], "mesh_id": rows[0][1]["mesh_id"]}, rows[3][2])]
    report = validate(Dataset(store, "meshes", write_dataset(store, MESHES, "dup", dup).version), ValidationConfig())
    assert ("manifest", "expect_column_values_to_be_unique", "mesh_id") in failed(report)
    lie = [(rows[0][0], {**rows[0][1], "occupied_fraction": 0.99}, rows[0][2])]
    report = validate(Dataset(store, "meshes", write_dataset(store, MESHES, "lie", lie).version), ValidationConfig())
    assert ("samples", "expect_column_values_to_be_between", "occupancy_mismatch") in failed(report)


def occ_rows(mesh_ids, corrupt=None, n=4):
    mask, rgba, depth = disc_sample()
    amodal = mask.copy()
    modal = mask.copy()
    modal[:, : RES // 2] = False
    eye = np.eye(3).ravel().tolist()
    for i in range(n):
        row = {
            "sample_id": f"fo-{i:06d}",
            "occludee_id": mesh_ids[0],
            "occluder_id": mesh_ids[1],
            "background_id": "skimage:coffee",
            "width": RES,
            "height": RES,
            "K": np.ravel(intrinsics(50, RES, RES)).tolist(),
            "occludee_R": eye,
            "occludee_t": [0, 0, 3.0],
            "occludee_s": 1.0,
            "occluder_R": eye,
            "occluder_t": [0, 0, 2.0],
            "occluder_s": 0.5,
            "visible_fraction": float(modal.sum() / amodal.sum()),
            "amodal_pixels": int(amodal.sum()),
            "modal_pixels": int(modal.sum()),
            "tries": 2,
        }
        files = {
            "rgb.png": png(rgba[..., :3].copy()),
            "modal.png": png(modal.astype(np.uint8) * 255),
            "amodal.png": png(amodal.astype(np.uint8) * 255),
            "depth.npy": encode_npy(depth),
            "occ.npy": encode_npy(np.ones((16,) * 3, bool)),
        }
        out = (row["sample_id"], row, files)
        yield corrupt(*out) if corrupt and i == 1 else out


def write_occ(store, meshes, corrupt=None, version="occ-v1", quarantined=0):
    ids = Dataset(store, "meshes", meshes.version).manifest().column("mesh_id").to_pylist()
    with DatasetWriter(
        store,
        OCCLUSIONS,
        version,
        parents=[meshes],
        inputs={"settings": {"visible_band": [0.3, 0.8], "resolution": RES}},
    ) as w:
        for sample in occ_rows(ids, corrupt):
            w.add(*sample)
        for i in range(quarantined):
            w.quarantine(f"fo-9{i:05d}", "sample", "no layout in band", "no layout")
    return Dataset(store, "occlusions", version)


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (None, None),
        (
            lambda k, r, f: (k, {**r, "visible_fraction": 0.97}, f),
            ("manifest", "expect_column_values_to_be_between", "visible_fraction"),
        ),
        (
            lambda k, r, f: (k, {**r, "modal_pixels": r["amodal_pixels"] + 5}, f),
            ("manifest", "expect_column_values_to_be_in_set", "modal_le_amodal"),
        ),
        (
            lambda k, r, f: (k, {**r, "occluder_id": r["occludee_id"]}, f),
            ("manifest", "expect_column_values_to_be_in_set", "distinct_objects"),
        ),
        (
            lambda k, r, f: (k, {**r, "occluder_id": "mesh-ffffffffffffffff"}, f),
            ("manifest", "expect_column_values_to_be_in_set", "occluder_id"),
        ),
        (
            lambda k, r, f: (k, {**r, "occludee_s": -1.0}, f),
            ("manifest", "expect_column_values_to_be_between", "occludee_s"),
        ),
        (
            lambda k, r, f: (k, r, {**f, "modal.png": png(np.full((RES, RES), 255, np.uint8))}),
            ("samples", "expect_column_values_to_be_in_set", "modal_inside_amodal"),
        ),
    ],
)
def test_occlusions_suite(store, meshes, corrupt, expected):
    report = validate(write_occ(store, meshes, corrupt), ValidationConfig())
    if expected is None:
        assert report.success, report.summary()
    else:
        assert expected in failed(report), report.summary()


def test_low_accept_rate_fails_the_stage_check(store, meshes):
    report = validate(write_occ(store, meshes, quarantined=30), ValidationConfig(min_accept_rate=0.2))
    assert ("stage", "expect_column_values_to_be_between", "accept_rate") in failed(report)


def test_data_docs_open_offline_with_their_styles_and_scripts(store, meshes, tmp_path):
    """The site is built, copied elsewhere (as from an MLflow download) and opened in a real
    browser that may not reach the network: no page asks for anything remote, Bootstrap's
    styles apply, and the table and chart scripts are there."""
    from playwright.sync_api import sync_playwright

    report = validate(Dataset(store, "meshes", meshes.version), ValidationConfig(), docs_dir=tmp_path / "docs")
    assert report.docs is not None and report.docs.name == "index.html"
    site = shutil.copytree(report.docs.parent, tmp_path / "downloaded")
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 3  # the index, the suites, the validation results
    remote: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.route(re.compile(r"^https?://"), lambda route: (remote.append(route.request.url), route.abort()))
        for html in pages:
            page.goto(html.as_uri(), wait_until="load")
            assert page.evaluate("getComputedStyle(document.body).marginTop") == "0px", html  # Bootstrap's reboot
            assert page.evaluate("typeof jQuery === 'function' && typeof jQuery.fn.bootstrapTable === 'function'")
            assert page.evaluate("typeof vega === 'object' && typeof vegaEmbed === 'function'")
        browser.close()
    assert remote == [], "Data Docs reached for the network"
    assert "meshes" in report.docs.read_text()


def test_data_docs_without_the_web_assets_say_so(store, meshes, tmp_path, caplog):
    """A set-up without npm: the site still builds, loading its assets from CDNs, and a
    warning names what is missing and how to install it."""
    cfg = ValidationConfig(docs_assets_dir=tmp_path / "no-node-modules")
    report = validate(Dataset(store, "meshes", meshes.version), cfg, docs_dir=tmp_path / "docs")
    assert report.docs is not None
    assert "scripts/setup.sh" in caplog.text and "load their styles and scripts from CDNs" in caplog.text
    assert "still load" in caplog.text


# -- image pool and candidates ---------------------------------------------------------------------


def write_pool(store, objects=3):
    from flywheel.core.contracts import IMAGE_POOL

    mask, rgba, _ = disc_sample()
    samples = [
        (
            f"obj-{i}",
            {
                "object_id": f"obj-{i}",
                "source": f"test/{i}",
                "width": RES,
                "height": RES,
                "mask_pixels": int(mask.sum()),
            },
            {"rgb.png": png(rgba[..., :3].copy()), "mask.png": png(mask.astype(np.uint8) * 255)},
        )
        for i in range(objects)
    ]
    return write_dataset(store, IMAGE_POOL, "pool-v1", samples, inputs={"source": "test"})


def write_candidates(store, pool, meshes, corrupt=None, n=3, version="cand-v1"):
    from flywheel.core.contracts import CANDIDATES

    mesh_ids = Dataset(store, "meshes", meshes.version).manifest().column("mesh_id").to_pylist()
    occ = np.zeros((16,) * 3, bool)
    occ[4:12, 4:12, 4:12] = True
    with DatasetWriter(
        store,
        CANDIDATES,
        version,
        inputs={"settings": {"num_candidates": n}},
        parents=[pool, meshes],
        shard_max_samples=4,
    ) as w:
        for oid in Dataset(store, pool.name, pool.version).manifest().column("object_id").to_pylist():
            for j in range(n):
                cid = f"cand-{oid[-1]}{j:019x}"
                row = {
                    "candidate_id": cid,
                    "object_id": oid,
                    "member": "retrieval" if j == 0 else "champion",
                    "kind": "retrieval" if j == 0 else "model",
                    "model_version": "sam3d/1",
                    "seed": -1 if j == 0 else j,
                    "guidance": 1.0,
                    "steps": 25,
                    "retrieved_mesh_id": mesh_ids[0] if j == 0 else "",
                    "R": np.eye(3).ravel().tolist(),
                    "t": [0.0, 0.0, 2.5],
                    "s": 1.0,
                    "occupied_fraction": float(occ.mean()),
                }
                key, row, files = cid, row, {"occ.npy": encode_npy(occ)}
                if corrupt:
                    out = corrupt(key, row, files)
                    if out is None:
                        continue
                    key, row, files = out
                w.add(key, row, files)
    return Dataset(store, "candidates", version)


def _c1(key):
    return key.startswith("cand-0") and key.endswith("1")


CANDIDATE_CORRUPTIONS = {
    "dangling object id": (
        lambda k, r, f: (k, {**r, "object_id": "obj-unknown"} if _c1(k) else r, f),
        ("manifest", "expect_column_values_to_be_in_set", "object_id"),
    ),
    "dangling mesh id": (
        lambda k, r, f: (k, {**r, "retrieved_mesh_id": "mesh-gone"} if r["kind"] == "retrieval" else r, f),
        ("references", "expect_column_values_to_be_in_set", "retrieved_mesh_id"),
    ),
    "missing candidate": (
        lambda k, r, f: None if _c1(k) else (k, r, f),
        ("groups", "expect_column_values_to_be_between", "candidates"),
    ),
    "duplicate id": (
        lambda k, r, f: (
            (k + "x", {**r, "candidate_id": "cand-00000000000000000000"}, f) if k.startswith("cand-0") else (k, r, f)
        ),
        ("manifest", "expect_column_values_to_be_unique", "candidate_id"),
    ),
    "nan pose": (
        lambda k, r, f: (k, {**r, "R": [float("nan")] * 9} if _c1(k) else r, f),
        ("manifest", "expect_column_values_to_not_be_null", "rotation_error"),
    ),
    "occupancy file disagrees": (
        lambda k, r, f: (k, r, {**f, "occ.npy": encode_npy(np.ones((16,) * 3, bool))} if _c1(k) else f),
        ("samples", "expect_column_values_to_be_between", "occupancy_mismatch"),
    ),
}


def test_good_pool_and_candidates_pass(store, meshes):
    pool = write_pool(store)
    assert validate(Dataset(store, pool.name, pool.version), ValidationConfig()).success
    report = validate(write_candidates(store, pool, meshes), ValidationConfig())
    assert report.success, report.summary()


@pytest.mark.parametrize("name", list(CANDIDATE_CORRUPTIONS))
def test_candidates_corruption_fails_with_the_right_expectation(store, meshes, name):
    corrupt, expected = CANDIDATE_CORRUPTIONS[name]
    report = validate(write_candidates(store, write_pool(store), meshes, corrupt), ValidationConfig())
    assert not report.success
    assert expected in failed(report), report.summary()


def test_rankings_suite_checks_the_chain_to_candidates(store, meshes):
    import pyarrow as pa

    from flywheel.core.contracts import RANKINGS

    pool = write_pool(store)
    cands = write_candidates(store, pool, meshes)
    ids = cands.manifest().select(["candidate_id", "object_id"]).to_pylist()

    def rankings(winner_of_obj0, version):
        a, b = ids[0]["candidate_id"], ids[1]["candidate_id"]
        table = pa.table(
            {
                "submission_id": ["s1"],
                "annotator_id": ["x"],
                "object_id": [ids[0]["object_id"]],
                "kind": ["pairwise"],
                "winner": [winner_of_obj0 or a],
                "losers": [[b]],
                "timestamp": pa.array([0], pa.timestamp("us", tz="UTC")),
                "time_spent_s": [3.0],
                "geometry": [None],
                "texture": [None],
                "completeness": [None],
                "multiview_consistency": [None],
                "aligned_pose": [None],
                "source_file": ["f"],
                "revision": [0],
            },
            schema=RANKINGS.schema,
        )
        with DatasetWriter(store, RANKINGS, version, parents=[cands.ref]) as w:
            w.add_table(table, "submission_id")
        return Dataset(store, "rankings", version)

    good = rankings(None, "r-good")
    assert good.verify() == [] and validate(good, ValidationConfig()).success
    other_object = next(r["candidate_id"] for r in ids if r["object_id"] != ids[0]["object_id"])
    report = validate(rankings(other_object, "r-bad"), ValidationConfig())
    assert ("references", "expect_column_values_to_be_in_set", "owner_matches") in failed(report)


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (None, None),
        ("self-pair", ("manifest", "expect_column_values_to_be_in_set", "distinct")),
        ("dangling loser", ("manifest", "expect_column_values_to_be_in_set", "loser")),
    ],
)
def test_preferences_suite(store, meshes, corrupt, expected):
    from flywheel.core.contracts import PREFERENCES

    pool = write_pool(store)
    cands = write_candidates(store, pool, meshes)
    rows = cands.manifest().to_pylist()
    winner, loser = rows[0]["candidate_id"], rows[1]["candidate_id"]
    if corrupt == "self-pair":
        loser = winner
    elif corrupt == "dangling loser":
        loser = "cand-ffffffffffffffffffff"
    occ = encode_npy(np.zeros((16,) * 3, bool))
    mask, rgba, _ = disc_sample()
    with DatasetWriter(store, PREFERENCES, "p-v1", parents=[pool, cands.ref]) as w:
        w.add(
            "pair-1",
            {"object_id": rows[0]["object_id"], "round": 0, "score": 0.8, "winner": winner, "loser": loser, "times": 2},
            {
                "rgb.png": png(rgba[..., :3].copy()),
                "mask.png": png(mask.astype(np.uint8) * 255),
                "winner.npy": occ,
                "loser.npy": occ,
            },
        )
    report = validate(Dataset(store, "preferences", "p-v1"), ValidationConfig())
    if expected is None:
        assert report.success, report.summary()
    else:
        assert expected in failed(report), report.summary()

"""Tasks of the demo round's synthetic-shape stages."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import mlflow
import numpy as np

from flywheel.config import FlywheelConfig
from flywheel.contracts import SHAPE_STATS, SHAPES
from flywheel.datasets import Dataset, DatasetRef, decode_npy, encode_npy, version_of, write_dataset
from flywheel.plots import occupancy_sheet
from rendering.procedural_shapes import shape_samples
from tasks.conventions import flywheel_task, log_datasets, stage, store_for, writer_options

SHEET_SIZE = 32  # objects shown in a contact sheet


@flywheel_task(name="make-shapes", version="1")
def make_shapes(cfg: FlywheelConfig, num_objects: int, resolution: int, seed: int,
                parent_run_id: str | None = None) -> DatasetRef:
    """Generate ``num_objects`` seeded procedural shapes as a versioned ``shapes`` dataset."""
    store = store_for(cfg)
    inputs = {"num_objects": num_objects, "resolution": resolution, "seed": seed}
    version = version_of(SHAPES, inputs=inputs, code_version="1")
    with stage(cfg, parent_run_id, "make-shapes", params=inputs) as run_id:
        ref = write_dataset(store, SHAPES, version, shape_samples(seed, num_objects, resolution),
                            inputs=inputs, **writer_options(cfg))
        log_datasets(run_id, outputs=[ref])
        _log_sheet(Dataset(store, ref.name, ref.version), "shapes_sheet.png")
    return ref


@flywheel_task(name="summarise-shapes", version="1")
def summarise_shapes(cfg: FlywheelConfig, shapes: DatasetRef,
                     parent_run_id: str | None = None) -> DatasetRef:
    """Per-family counts and mean occupancy of a shapes dataset (streamed via webdataset)."""
    store = store_for(cfg)
    version = version_of(SHAPE_STATS, inputs={"shapes": shapes}, code_version="1")
    with stage(cfg, parent_run_id, "summarise-shapes") as run_id:
        dataset = Dataset(store, shapes.name, shapes.version)
        family = dict(zip(*dataset.manifest().select(["sample_key", "family"]).to_pydict().values()))
        sums: dict[str, np.ndarray] = {}
        fractions: dict[str, list[float]] = defaultdict(list)
        for sample in dataset.samples():
            grid = decode_npy(sample["occ.npy"]).astype(np.float32)
            fam = family[sample["__key__"]]
            sums[fam] = sums.get(fam, 0) + grid
            fractions[fam].append(float(grid.mean()))

        def rows():
            for fam in sorted(sums):
                count = len(fractions[fam])
                yield fam, {"family": fam, "count": count,
                            "mean_occupied_fraction": float(np.mean(fractions[fam]))}, \
                    {"mean_occ.npy": encode_npy((sums[fam] / count).astype(np.float32))}

        ref = write_dataset(store, SHAPE_STATS, version, rows(), inputs={"shapes": shapes},
                            parents=[shapes], **writer_options(cfg))
        log_datasets(run_id, inputs=[shapes], outputs=[ref])
        for fam in sorted(fractions):
            mlflow.log_metric(f"count_{fam}", len(fractions[fam]))
            mlflow.log_metric(f"mean_occupied_fraction_{fam}", float(np.mean(fractions[fam])))
        mlflow.log_metric("num_objects", sum(len(v) for v in fractions.values()))
    return ref


def _log_sheet(dataset: Dataset, filename: str) -> None:
    """Contact sheet of the first objects of a dataset, logged to the active stage run."""
    grids, titles = [], []
    manifest = {r["sample_key"]: r for r in dataset.manifest().to_pylist()}
    for sample in dataset.samples():
        grids.append(decode_npy(sample["occ.npy"]))
        titles.append(f"{sample['__key__'][-6:]} {manifest[sample['__key__']]['family']}")
        if len(grids) >= SHEET_SIZE:
            break
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(occupancy_sheet(grids, titles, Path(tmp) / filename)))

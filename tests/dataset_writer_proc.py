"""A dataset writer in its own process, for the kill and race tests.

    python dataset_writer_proc.py ROOT ENDPOINT|- COUNT SHARD_SIZE SIGNAL_DIR MODE

MODE "slow": after the first shard is uploaded, touch SIGNAL_DIR/ready and keep adding
slowly (the test kills it). MODE "race": add everything, touch SIGNAL_DIR/ready-<pid>,
wait for SIGNAL_DIR/go, then commit; print the committed ref as JSON.
"""

import json
import os
import sys
import time
from pathlib import Path

from flywheel.core.config import StoreConfig
from flywheel.core.contracts import SHAPES
from flywheel.core.datasets import DatasetWriter, version_of
from flywheel.core.store import open_store
from rendering.procedural_shapes import shape_samples


def main() -> None:
    root, endpoint, count, shard, signal_dir, mode = sys.argv[1:7]
    count, shard, signal_dir = int(count), int(shard), Path(signal_dir)
    cfg = StoreConfig(root=root, endpoint_url=None if endpoint == "-" else endpoint)
    store = open_store(root, cfg)
    inputs = {"count": count, "seed": 7}
    version = version_of(SHAPES, inputs=inputs)
    writer = DatasetWriter(store, SHAPES, version, inputs=inputs, shard_max_samples=shard)
    for i, (key, row, files) in enumerate(shape_samples(7, count, 16)):
        writer.add(key, row, files)
        if mode == "slow" and i == shard:  # the first shard was uploaded when this one opened
            (signal_dir / "ready").touch()
        if mode == "slow" and i >= shard:
            time.sleep(0.5)
    if mode == "race":
        (signal_dir / f"ready-{os.getpid()}").touch()
        while not (signal_dir / "go").exists():
            time.sleep(0.01)
    ref = writer.commit()
    print(json.dumps(ref.to_dict()))


if __name__ == "__main__":
    main()

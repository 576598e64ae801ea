"""Load on the annotation app: N simulated annotators (async HTTP clients on loopback) log in
and judge tasks as fast as the app lets them, each sending some submissions twice (a double
click). Prints judgements/s and p50/p99 latency of a submission, against the baseline of
writing the same judgements straight to the store in the same run, and checks that the
store holds every acknowledged judgement exactly once.

    .venv/bin/python bench/annotate.py [--annotators 8] [--objects 60] [--seconds 30]

Exit codes: 0 done; 1 the store does not hold exactly the acknowledged judgements.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

from flywheel.core.codecs import encode_npy, encode_png
from flywheel.core.contracts import CANDIDATES, IMAGE_POOL
from flywheel.core.datasets import write_dataset
from flywheel.core.store import LocalStore
from flywheel.feedback.accounts import Accounts
from flywheel.feedback.app import AppSettings, create_app
from flywheel.feedback.judgements import AppTask, best_of_n_row, record, recorded

FIELD = re.compile(r'name="(csrf|submission_id)" value="([^"]*)"')
CHOICE = re.compile(r'name="choice" value="(cand-[0-9a-f]{20})"')


def small_round(store: LocalStore, objects: int, per_object: int = 4):
    """An image pool of ``objects`` 32-pixel photos and ``per_object`` candidates each."""
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    ids = [f"obj-{i:04d}" for i in range(objects)]
    pool_rows = [
        (
            o,
            {"object_id": o, "source": f"bench/{o}", "width": 32, "height": 32, "mask_pixels": 256},
            {"rgb.png": encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), "mask.png": encode_png(mask)},
        )
        for o in ids
    ]
    pool = write_dataset(store, IMAGE_POOL, "bench-pool", pool_rows)
    candidate_rows = []
    for n, o in enumerate(ids):
        for k in range(per_object):
            occ = rng.random((8, 8, 8)) < 0.3
            row = {
                "candidate_id": f"cand-{n * per_object + k:020x}",
                "object_id": o,
                "member": "champion",
                "kind": "model",
                "model_version": "bench/1",
                "seed": k,
                "guidance": 0.0,
                "steps": 25,
                "retrieved_mesh_id": "",
                "R": np.eye(3).ravel().tolist(),
                "t": [0.0, 0.0, 2.5],
                "s": 1.0,
                "occupied_fraction": float(occ.mean()),
            }
            candidate_rows.append((row["candidate_id"], row, {"occ.npy": encode_npy(occ)}))
    return write_dataset(store, CANDIDATES, "bench-candidates", candidate_rows, parents=[pool])


async def annotator(url: str, name: str, token: str, until: float, latencies: list[float], acked: set[str]) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await client.post("/login", data={"name": name, "token": token})
        n = 0
        while time.perf_counter() < until:
            nxt = await client.get("/")
            if nxt.status_code != 303:
                return  # nothing left
            page = (await client.get(nxt.headers["location"])).text
            fields = dict(FIELD.findall(page))
            choices = CHOICE.findall(page)
            form = {**fields, "choice": choices[n % len(choices)], "time_spent_s": "3.0", "revise": ""}
            started = time.perf_counter()
            sent = await client.post(nxt.headers["location"].split("?")[0], data=form)
            latencies.append(time.perf_counter() - started)
            if sent.status_code == 303:
                acked.add(fields["submission_id"])
            if n % 5 == 0:  # a double click: the same submission again
                again = await client.post(nxt.headers["location"].split("?")[0], data=form)
                assert again.status_code == 303, again.text
            n += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--objects", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="bench-annotate-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        candidates = small_round(store, args.objects)
        accounts = Accounts(Path(tmp) / "accounts.json")
        tokens = {f"ann-{i:02d}": accounts.add(f"ann-{i:02d}") for i in range(args.annotators)}
        viewer = REPO / ".cache" / "web" / "node_modules" / "three"
        app = create_app(AppSettings(store, candidates.version, accounts.path, "bench", viewer))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        latencies: list[float] = []
        acked: set[str] = set()

        async def everyone() -> None:
            until = time.perf_counter() + args.seconds
            await asyncio.gather(
                *(annotator(f"http://127.0.0.1:{port}", n, t, until, latencies, acked) for n, t in tokens.items())
            )

        started = time.perf_counter()
        asyncio.run(everyone())
        elapsed = time.perf_counter() - started
        server.should_exit = True
        thread.join(timeout=10)
        stored = recorded(store, candidates.version)
        exact = sorted(r["submission_id"] for r in stored) == sorted(acked)

        # baseline: the same number of judgements written straight to the store
        task = AppTask("obj-0000", tuple(f"cand-{k:020x}" for k in range(4)))
        direct = LocalStore(Path(tmp) / "direct")
        t0 = time.perf_counter()
        for i in range(len(acked)):
            record(direct, "v", best_of_n_row(task, "ann", f"direct-{i:06d}", task.candidates[0], 3.0))
        direct_rate = len(acked) / max(time.perf_counter() - t0, 1e-9)

    rate = len(acked) / elapsed
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99)) if latencies else (float("nan"),) * 2
    print(f"{args.annotators} annotators, {args.objects} tasks each at most, {elapsed:.1f} s")
    print(f"  app:    {rate:8.1f} judgements/s acknowledged; submission latency p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"  direct: {direct_rate:8.1f} judgements/s written straight to the store")
    print(f"  ratio app / direct: {rate / direct_rate:.3f}")
    print(
        f"  store holds every acknowledged judgement exactly once: {exact} ({len(stored)} stored, {len(acked)} acked)"
    )
    raise SystemExit(0 if exact else 1)


if __name__ == "__main__":
    main()

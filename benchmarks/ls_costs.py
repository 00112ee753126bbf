"""What Label Studio's own API costs per prediction at a project's size: the floor under a whole-pool re-score.

    python benchmarks/ls_costs.py --db postgres --pool 100001

A re-score puts one prediction of the new version on every unlabelled task and deletes the older version's. Whatever
the backend does, LS then validates and inserts each new prediction, recounts the project's tasks on each bulk
import request, and runs one ``pre_delete`` signal per deleted prediction (``Project.delete_predictions``; LS 1.23
has no signal-free path). This script measures those costs on a project of ``--pool`` texts (Rotten Tomatoes, the
same pool as ``benchmarks/server.py``) in the state a re-score meets, every task holding a prediction of an older
version:

1. the older version on every task, in bulk import requests of ``--old-batch`` (each request timed);
2. ``--rounds`` times, bulk import requests of ``--sizes`` predictions of a fresh version each: the slope between
   the sizes is LS's cost per prediction (validation and insert), the intercept its recount per request;
3. single creates (``POST /api/predictions/``, ``--threads`` at a time) of ``--singles`` predictions;
4. the deletion of the versions of steps 2 and 3, one ``DELETE /api/projects/{id}/model-versions/`` each.

It prints the floor of a whole-pool re-score of the pool's size: one recount + n x (cost per prediction +
deletion per prediction), the LS time no client can avoid (all predictions in one request; the backend's own work
comes on top), and what each import request costs on top of it. One JSON line per measurement; all of them, with
the machine's 1-minute load average, go to ``--out`` (``python benchmarks/ls_costs.py --summary FILE`` prints the
floor of a saved run again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.front_create import predictions  # noqa: E402
from benchmarks.server import LS, extend_pool  # noqa: E402
from ml_backend.labelstudio.client import LabelStudioClient  # noqa: E402
from ml_backend.simulation import datasets  # noqa: E402


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of seconds against predictions per request."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx


def floor(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """LS's own share of a whole-pool re-score of the run's pool, from its measurements (see the module doc)."""
    per_prediction, recount = fit_line([(r["predictions"], r["seconds"]) for r in rows if r["step"] == "bulk import"])
    single = next(r for r in rows if r["step"] == "single creates")
    deletion = next(r for r in rows if r["step"] == "delete versions")
    per_delete = deletion["seconds"] / max(deletion["predictions"], 1)
    pool = rows[0]["pool"]
    return {
        "step": "floor",
        "ms_per_prediction": round(1000 * per_prediction, 2),
        "recount_seconds_per_request": round(recount, 1),
        "ms_per_single_create": round(1000 * single["seconds"] / single["predictions"], 1),
        "ms_per_deleted_prediction": round(1000 * per_delete, 2),
        "whole_pool_floor_minutes": round((recount + pool * (max(per_prediction, 0.0) + per_delete)) / 60, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from tests.lsserver import LabelStudioServer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    ap.add_argument("--pool", type=int, default=100001)
    ap.add_argument("--old-batch", type=int, default=25000, help="predictions per request of the older version")
    ap.add_argument("--sizes", default="100,5000", help="predictions per timed bulk request (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--singles", type=int, default=400, help="single creates (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=8, help="single creates at a time (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ls_costs.json")
    ap.add_argument("--summary", type=Path, default=None, help="print the floor of a saved run and exit")
    args = ap.parse_args(argv)
    if args.summary:
        print(json.dumps(floor(json.loads(args.summary.read_text()))))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    data = datasets.rotten_tomatoes(full=args.pool > 4800, seed=0)
    texts, _ = extend_pool(data.texts, data.labels, args.pool, seed=0)
    rows: list[dict[str, Any]] = []

    def record(**row: Any) -> None:
        row.update(db=args.db, pool=args.pool, load_1min=round(os.getloadavg()[0], 2))
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")

    with LabelStudioServer(db=args.db) as server:
        ls = LS(server.url, server.token)
        client = LabelStudioClient(server.url, server.token, timeout=3600.0)
        pid = ls.create_project("ls-costs")["id"]
        t0 = time.monotonic()
        ids = ls.import_tasks(pid, texts)
        record(step="import tasks", tasks=len(ids), seconds=round(time.monotonic() - t0, 1))
        for start in range(0, len(ids), args.old_batch):
            chunk = predictions(ids[start : start + args.old_batch], "old")
            t0 = time.monotonic()
            client.import_predictions(pid, chunk, batch_size=len(chunk))
            record(step="older version, bulk", first=start, predictions=len(chunk), seconds=time.monotonic() - t0)
        free = iter(ids)
        versions: list[str] = []
        for rnd in range(args.rounds):
            for size in sizes:
                version = f"bulk{size}-r{rnd}"
                chunk = predictions([next(free) for _ in range(size)], version)
                t0 = time.monotonic()
                created = client.import_predictions(pid, chunk, batch_size=size)
                versions.append(version)
                record(step="bulk import", predictions=size, created=created, seconds=time.monotonic() - t0)
        singles = predictions([next(free) for _ in range(args.singles)], "singles")
        t0 = time.monotonic()
        client.create_predictions(pid, singles, args.threads)
        versions.append("singles")
        record(step="single creates", predictions=args.singles, threads=args.threads, seconds=time.monotonic() - t0)
        deleted = 0
        t0 = time.monotonic()
        for version in versions:
            deleted += client.delete_model_version(pid, version)
        record(step="delete versions", predictions=deleted, versions=len(versions), seconds=time.monotonic() - t0)
        ls.close()
    record(**floor(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

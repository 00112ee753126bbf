"""What the front of a new version costs in a real Label Studio: one bulk import against single creates.

    PYTHONPATH=. python benchmarks/front_create.py --db sqlite --pool 10001 --front 100 --rounds 2
    PYTHONPATH=. python benchmarks/front_create.py --db postgres

Starts LS 1.23.2 (``tests/lsserver.py``), creates a project of ``--pool`` texts (Rotten Tomatoes) and times, for
``--front`` predictions of a fresh version each, on tasks no earlier measurement used:

- ``bulk n``: one ``POST /api/projects/{id}/import/predictions`` of n predictions
  (``LabelStudioClient.import_predictions``; ``--bulk-sizes``);
- ``single xk``: one ``POST /api/predictions/`` per prediction, k requests at a time
  (``LabelStudioClient.create_predictions``; ``--threads``).

With ``--old`` (the default) every task first gets a prediction of an older version in one bulk import, as after
an annotation (the old version stays in place during the fill); ``--no-old`` is the first connection.

The methods alternate within each round (the machine is shared: its 1-minute load average is printed with every
figure). Last, it deletes a task and creates a prediction for it, to show what LS answers. Prints one JSON line per
measurement and writes them to ``--out`` (``benchmarks/results/front_create_<db>.json``).
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

from benchmarks.server import LS  # noqa: E402
from ml_backend.labelstudio.client import LabelStudioClient  # noqa: E402
from ml_backend.simulation import datasets  # noqa: E402

RESULT = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["fresh"]}}]


def predictions(task_ids: list[int], version: str) -> list[dict[str, Any]]:
    """One prediction of ``version`` (score 0.5) per task."""
    return [{"task": t, "result": RESULT, "score": 0.5, "model_version": version} for t in task_ids]


def main(argv: list[str] | None = None) -> int:
    from tests.lsserver import LabelStudioServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--pool", type=int, default=10001)
    ap.add_argument("--front", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", default="1,4", help="concurrencies of the single creates ('' for none)")
    ap.add_argument("--bulk-sizes", default="100,500", help="predictions per bulk import request")
    ap.add_argument("--old", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    methods = [f"bulk {n}" for n in args.bulk_sizes.split(",") if n] + [
        f"single x{k}" for k in args.threads.split(",") if k
    ]
    texts = datasets.rotten_tomatoes(full=args.pool > 4800, seed=0).texts[: args.pool]
    rows: list[dict] = []
    with LabelStudioServer(db=args.db) as server:
        ls = LS(server.url, server.token)
        client = LabelStudioClient(server.url, server.token, timeout=600.0)
        pid = ls.create_project("front-create")["id"]
        started = time.monotonic()
        ids = ls.import_tasks(pid, texts)
        print(f"imported {len(ids)} tasks in {time.monotonic() - started:.1f} s", flush=True)
        if args.old:
            t0 = time.monotonic()
            client.import_predictions(pid, predictions(ids, "old"), batch_size=5000)
            print(f"old version on every task in {time.monotonic() - t0:.1f} s", flush=True)
        free = iter(ids)
        for rnd in range(args.rounds):
            for method in methods:
                version = f"{method.replace(' ', '')}-r{rnd}"
                size = int(method.split()[1]) if method.startswith("bulk") else args.front
                front = [
                    {"task": next(free), "result": RESULT, "score": 0.001 * i, "model_version": version}
                    for i in range(size)
                ]
                load = os.getloadavg()[0]
                t0 = time.monotonic()
                if method.startswith("bulk"):
                    created = client.import_predictions(pid, front, batch_size=len(front))
                else:
                    created, _ = client.create_predictions(pid, front, int(method.split("x")[1]))
                seconds = time.monotonic() - t0
                row = {"db": args.db, "pool": len(ids), "old": args.old, "round": rnd, "method": method}
                row["predictions"] = len(front)
                row.update(created=created, seconds=round(seconds, 2), load_1min=round(load, 2))
                row["load_1min_after"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
        gone = next(free)
        ls.call("DELETE", f"/api/tasks/{gone}/", (204,))
        created, refused = client.create_predictions(
            pid, [{"task": gone, "result": RESULT, "score": 0.5, "model_version": "deleted"}]
        )
        rows.append({"db": args.db, "deleted_task": gone, "created": created, "refused": refused})
        print(json.dumps(rows[-1]), flush=True)
    out = args.out or ROOT / "benchmarks" / "results" / f"front_create_{args.db}_{'old' if args.old else 'fresh'}.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Aggregate pool-embedding throughput through the embedding chunk jobs, with 1 and with 2 worker processes.

    python benchmarks/fanout.py                                  # 2400 review snippets, chunks of 200, 2 repeats
    python benchmarks/fanout.py --tasks 4800 --chunk 400 --workers 1,2,3 --out benchmarks/results

What one run is: a fresh DATA_DIR (empty embedding cache) and queue, N real ``ml-backend worker`` processes (each
torch on 1 thread, models preloaded before they listen), a text project registered in the registry, then the pool
split into ``embed_chunk`` jobs exactly as a fanned-out re-score enqueues them (``JobQueue.enqueue_chunks``). The
clock runs from the enqueue until the last chunk has counted itself finished; tasks/s and tokens/s (real tokens
after truncation, padding excluded) are aggregate figures over all workers. Label Studio is not involved: the
chunks carry the texts, and a text is never downloaded.

The machine is shared: the 1-minute load average before and after every run is saved with its figure. Writes
``fanout.json`` and ``fanout.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402
from rq import Queue, Worker  # noqa: E402
from rq.job import Job  # noqa: E402

from ml_backend.jobs.queue import JobQueue  # noqa: E402
from ml_backend.labelstudio.labelconfig import parse_label_config  # noqa: E402
from ml_backend.learning.registry import Registry  # noqa: E402
from ml_backend.learning.service import ScoringService  # noqa: E402
from ml_backend.models.config import load_model_config  # noqa: E402
from ml_backend.models.pool import EncoderPool  # noqa: E402
from ml_backend.settings import Settings  # noqa: E402
from ml_backend.simulation import datasets  # noqa: E402

LABEL_CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="sentiment" toName="text">'
    '<Choice value="fresh"/><Choice value="rotten"/></Choices></View>'
)
PROJECT = 1


def start_workers(n: int, env: dict[str, str], log_dir: Path) -> list[subprocess.Popen[bytes]]:
    """``n`` worker processes, each the leader of its own process group (stopped by that group, never by name)."""
    procs = []
    for i in range(n):
        with open(log_dir / f"worker-{i}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ml_backend.cli", "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=ROOT,
                )
            )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(what: str, check: Any, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker exited while waiting for {what} (see its log)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run(texts: list[str], tokens: int, n_workers: int, chunk: int, redis_url: str) -> dict[str, Any]:
    """One timed fan-out of ``texts`` over ``n_workers`` fresh worker processes."""
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        queue_name = f"bench-fanout-{uuid.uuid4().hex[:8]}"
        settings = Settings(data_dir=data_dir, redis_url=redis_url, queue_name=queue_name, job_retries=0)
        service = ScoringService(settings, Registry(settings.projects_dir), EncoderPool(), None, parse_label_config)
        state, _ = service.register(PROJECT, f"{PROJECT}.0", LABEL_CONFIG)
        env = {
            **os.environ,
            "DATA_DIR": str(data_dir),
            "REDIS_URL": redis_url,
            "QUEUE_NAME": queue_name,
            "TORCH_THREADS": "1",
            "JOB_RETRIES": "0",
            "LOG_LEVEL": "WARNING",
            # never contacted (text tasks are not downloaded); the worker's scoring service wants an LS client
            "LABEL_STUDIO_URL": "http://127.0.0.1:9",
            "LABEL_STUDIO_API_KEY": "0" * 40,
            "PYTHONPATH": str(ROOT),
        }
        redis = Redis.from_url(redis_url)
        procs = start_workers(n_workers, env, Path(tmp))
        try:
            wait_until(
                f"{n_workers} workers to listen",
                lambda: len(Worker.all(queue=Queue(queue_name, connection=redis))) == n_workers,
                300,
                procs,
            )
            queue = JobQueue.from_settings(redis, settings)
            tasks = [{"id": i + 1, "data": {"text": t}} for i, t in enumerate(texts)]
            chunks = [tasks[s : s + chunk] for s in range(0, len(tasks), chunk)]
            gather_id = f"bench-{uuid.uuid4().hex[:8]}"
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            chunk_ids = queue.enqueue_chunks(PROJECT, state.version.version, chunks, gather_id)
            wait_until("the chunks", lambda: queue.chunks_done(gather_id) >= len(chunks), 1800, procs)
            seconds = time.perf_counter() - started
            load_after = os.getloadavg()[0]
            results = [Job.fetch(i, connection=redis).return_value() for i in chunk_ids]
        finally:
            stop_workers(procs)
    embedded = sum(r["embedded"] for r in results)
    if embedded != len(texts):
        raise RuntimeError(f"only {embedded} of {len(texts)} texts were embedded: {results}")
    per_worker: dict[str, int] = {}
    for r in results:
        per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
    row = {
        "workers": n_workers,
        "tasks": len(texts),
        "chunk": chunk,
        "chunks": len(chunks),
        "seconds": round(seconds, 2),
        "tasks_per_s": round(len(texts) / seconds, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds),
        "chunks_per_worker": sorted(per_worker.values(), reverse=True),
        "load1_before": round(load_before, 2),
        "load1_after": round(load_after, 2),
    }
    print(
        f"{n_workers} worker(s): {len(texts)} texts in {seconds:6.1f} s = {row['tasks_per_s']:6.1f} tasks/s, "
        f"{row['tokens_per_s']:6,} tokens/s; chunks per worker {row['chunks_per_worker']}; "
        f"load {load_before:.2f} -> {load_after:.2f}",
        flush=True,
    )
    return row


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "# Pool embedding fanned out over worker processes (`benchmarks/fanout.py`)",
        "",
        "| workers | tasks | chunks of | tasks/s | tokens/s | seconds | chunks per worker | load avg before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['tasks']} | {r['chunk']} | {r['tasks_per_s']} | {r['tokens_per_s']:,} | "
            f"{r['seconds']} | {', '.join(map(str, r['chunks_per_worker']))} | "
            f"{r['load1_before']} → {r['load1_after']} |"
        )
    medians = {
        n: statistics.median(r["tasks_per_s"] for r in rows if r["workers"] == n)
        for n in sorted({r["workers"] for r in rows})
    }
    base = medians[min(medians)]
    lines += [
        "",
        "Median tasks/s over the repeats: "
        + ", ".join(f"{n} worker(s) {m:.1f} ({m / base:.2f}x)" for n, m in medians.items())
        + ".",
    ]
    lines += [
        "",
        f"Machine: {info['cores']} cores, Python {info['python']}, {info['platform']}; shared with other jobs while "
        "measured (the load average is the whole machine's). Each worker: its own process, torch on 1 thread, "
        "MiniLM preloaded. Text: Rotten Tomatoes review snippets, real tokens counted after truncation. "
        f"Command: `{info['command']}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=2400)
    p.add_argument("--chunk", type=int, default=200)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts, run in this order per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)

    texts = list(datasets.rotten_tomatoes(n=args.tasks, seed=0).texts)
    settings = Settings()
    encoder = EncoderPool().get(load_model_config(settings.model_configs_dir, settings.text_model_config))
    tokens = encoder.count_tokens(texts)
    rows = [
        run(texts, tokens, int(n), args.chunk, args.redis_url)
        for _ in range(args.repeats)
        for n in args.workers.split(",")
    ]
    info = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": " ".join(["python benchmarks/fanout.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fanout.json").write_text(json.dumps({"machine": info, "results": rows}, indent=1) + "\n")
    (args.out / "fanout.md").write_text(markdown(rows, info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

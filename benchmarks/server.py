"""Server-level benchmarks against a real Label Studio and a real ``ml-backend serve`` (web app + worker + Redis).

    python benchmarks/server.py                         # pools of 1,001 and 10,001 texts, LS on SQLite
    python benchmarks/server.py --db postgres           # LS on PostgreSQL (127.0.0.1:5432, a fresh database)
    python benchmarks/server.py --pools 1000 --repeats 2

Starts Label Studio 1.23.2 with ``tests/lsserver.py`` (its own virtualenv, installed on first use; SQLite, or with
``--db postgres`` a fresh PostgreSQL database cloned from a migrated template) and
``ml-backend serve --host 127.0.0.1 --port P`` with DATA_DIR, LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set (no
REDIS_URL: serve starts a local Redis and one worker). Everything runs on 127.0.0.1 and is stopped at the end.

For each pool size N (Rotten Tomatoes review snippets, text classification fresh/rotten, default MiniLM model):

1. create an LS project, import N tasks, connect the backend (LS calls /setup, the backend scores the pool);
   measured: connect -> every task has a cold-start prediction in LS (includes embedding the whole pool once);
2. annotate a few tasks (both classes) and wait until a trained version's predictions are all in LS;
3. **retrain-to-LS latency**: annotate one more task (LS sends the webhook) and time (a) until LS serves the next
   100 tasks by the new version (the project points at it and holds 100 predictions of it; checked afterwards to
   be the version's 100 lowest scores, the ones uncertainty sampling serves first), and (b) until LS holds a
   prediction of that version for every unlabelled task and none of the previous version
   (``/api/projects/{id}/model-versions/``); repeated ``--repeats`` times (connect is timed the same way);
4. with ``--stream-labels K``: K more labels, one every ``--stream-interval`` seconds, without waiting for the
   backend (annotators do not wait): for each label, the time until LS serves the next 100 tasks by a version
   trained on it (while earlier versions still fill the pool);
5. on the first pool only, with the server warm and the model trained: ``/predict`` latency (p50/p95) for 1 and
   100 tasks, both for pool tasks whose embeddings are cached and for texts never seen; and ``/webhook``
   latency (p50/p95/p99) of ANNOTATION_CREATED payloads as LS sends them.

Pools larger than the corpus (10,752 snippets besides the 2,000 kept for never-seen texts) continue with two
snippets of the same class joined into one text (a seeded draw; every text distinct), so a pool of 100k tasks is
100k different texts the encoder has to embed once.

Big pools (``--lean``): each whole-pool wait also waits for LS to delete the previous version's predictions, one
signal per prediction (about 2.5 minutes per 10k on PostgreSQL), so ``--lean`` waits for the whole pool only after
the last timed label: the connect and the first trained version are timed to their front only, and the first
timed label arrives while the previous version still fills the pool (the fill yields to its training, as when
annotators do not wait); later timed labels wait for the backend to be idle first. ``--workers N`` runs N-1
``ml-backend worker`` processes beside serve's own (on the machine's Redis, database ``--redis-db``), so the
connect's pool embedding fans out over N processes. ``--lean`` skips the check that the front held the version's
lowest scores (it lists every prediction of the project).

Writes ``server.json`` and ``server.md`` into ``--out``: one entry per database, a run replacing only its own
database's entry. The machine (cores, torch threads) and the 1-minute load average around each timed step (the
machine may be shared) are in both.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_backend.simulation import datasets  # noqa: E402

LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="fresh"/>
    <Choice value="rotten"/>
  </Choices>
</View>"""


#: "the next tasks LS serves": how many of the lowest scores must be of the new version in LS
NEXT_TASKS = 100


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000.0
    return {
        "n": len(values),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


class LabelStudioBusy(RuntimeError):
    """LS answered 5xx: on SQLite, "database is locked" while another request holds the write lock for more than
    5 s (deleting or importing thousands of predictions); polling tries again."""


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, LabelStudioBusy) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Backend:
    """``ml-backend serve`` as a child process in its own process group (stopped by that group only)."""

    def __init__(
        self, data_dir: Path, ls_url: str, ls_token: str, log_path: Path, workers: int = 1, redis_url: str = ""
    ):
        from tests.lsserver import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
        env.update(
            DATA_DIR=str(data_dir),
            LABEL_STUDIO_URL=ls_url,
            LABEL_STUDIO_API_KEY=ls_token,
            TORCH_THREADS="1",
            LOG_LEVEL="INFO",
        )
        if workers > 1:  # serve and the other workers must share a Redis: serve's own local one is private
            import redis

            redis.Redis.from_url(redis_url).flushdb()
            env["REDIS_URL"] = redis_url
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ml_backend.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers = [
            subprocess.Popen(
                [sys.executable, "-m", "ml_backend.cli", "worker"],
                env=env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for _ in range(workers - 1)
        ]
        self.http = httpx.Client(base_url=self.url, timeout=120.0, trust_env=False)
        wait_for(lambda: self.http.get("/health").status_code == 200, 120, "the backend's /health", 0.5)

    def status(self, pid: int) -> dict:
        r = self.http.get(f"/projects/{pid}/status")
        return r.json() if r.status_code == 200 else {}

    def stop(self) -> None:
        from tests.lsserver import stop_process_group

        self.http.close()
        for proc in [self.proc, *self.workers]:
            stop_process_group(proc, timeout=30)
        self.log.close()


class LS:
    """The few Label Studio API calls the benchmark needs (legacy token auth)."""

    def __init__(self, url: str, token: str):
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Token {token}"}, timeout=300.0, trust_env=False
        )

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200,), **kw) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 500 and r.status_code not in expect:
            raise LabelStudioBusy(f"Label Studio: {method} {path} -> {r.status_code}")
        if r.status_code not in expect:
            raise RuntimeError(f"Label Studio: {method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def create_project(self, title: str) -> dict:
        return self.call("POST", "/api/projects/", (201,), json={"title": title, "label_config": LABEL_CONFIG})

    def import_tasks(self, pid: int, texts: list[str], batch: int = 2000) -> list[int]:
        ids: list[int] = []
        for i in range(0, len(texts), batch):
            body = self.call(
                "POST",
                f"/api/projects/{pid}/import",
                (201,),
                params={"return_task_ids": "true"},
                json=[{"text": t} for t in texts[i : i + batch]],
            )
            ids.extend(body.get("task_ids") or [])
        return ids

    def task(self, task_id: int) -> dict:
        return self.call("GET", f"/api/tasks/{task_id}/")

    def connect(self, pid: int, url: str) -> dict:
        return self.call(
            "POST",
            "/api/ml/",
            (200, 201),
            json={"project": pid, "url": url, "title": "al-backend", "is_interactive": False},
        )

    def model_versions(self, pid: int) -> dict[str, int]:
        return self.call("GET", f"/api/projects/{pid}/model-versions/") or {}

    def project_version(self, pid: int) -> str | None:
        return self.call("GET", f"/api/projects/{pid}/").get("model_version")

    def scores_of(self, pid: int, version: str) -> dict[int, float]:
        """{task id: score} of the version's predictions (LS lists a project's predictions in one response)."""
        items = self.call("GET", "/api/predictions/", params={"project": pid}) or []
        return {int(p["task"]): p["score"] for p in items if p.get("model_version") == version}

    def annotate(self, task_id: int, label: str) -> dict:
        result = [{"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]
        return self.call(
            "POST",
            f"/api/tasks/{task_id}/annotations/",
            (201,),
            json={"result": result, "was_cancelled": False, "lead_time": 1.0},
        )

    def close(self) -> None:
        self.http.close()


def wait_all_predictions(
    ls: LS,
    be: Backend,
    pid: int,
    n_unlabelled: int,
    timeout: float,
    not_version: str | None = None,
    min_labels: int = 0,
    interval: float = 0.25,
) -> tuple[str, float]:
    """Wait until the backend's current version, trained on at least ``min_labels`` labels (0: the untrained
    cold-start version) and other than ``not_version``, has ``n_unlabelled`` predictions in LS. ``interval``: seconds
    between polls (each asks LS to count the project's predictions by version: a longer one on big pools)."""
    t0 = time.perf_counter()
    seen_errors: set = set()
    short_since: list[float] = []

    def check():
        st = be.status(pid)
        busy = any(j.get("status") in ("queued", "started", "deferred", "scheduled") for j in st.get("jobs") or [])
        short = min_labels and st.get("trained") and int(st.get("n_labels") or 0) < min_labels and not busy
        if short and not short_since:
            short_since.append(time.monotonic())
        if short and time.monotonic() - short_since[0] > 10:
            # a label the last training of a burst did not read, and no webhook follows: should not happen (the
            # training reads a reported annotation the labelled listing lacks one by one); printed, then "Start
            # Training" catches up so that the run goes on
            print(
                f"  LOST LABEL: {st.get('n_labels')} of {min_labels} labels trained: sending START_TRAINING",
                file=sys.stderr,
            )
            be.http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": pid}})
            short_since.clear()
        for job in st.get("jobs") or []:
            if job.get("error") and job.get("id") not in seen_errors:
                seen_errors.add(job.get("id"))
                print(f"  backend job {job.get('id')} ({job.get('status')}): {job['error']}", file=sys.stderr)
                if job.get("status") == "failed":
                    raise RuntimeError(f"backend job {job.get('id')} failed: {job['error']}")
        version = st.get("current_version")
        if not version or version == not_version:
            return None
        if min_labels and (not st.get("trained") or int(st.get("n_labels") or 0) < min_labels):
            return None
        # the whole pool is on the new version once LS serves it, holds it for every task and nothing else
        counts = ls.model_versions(pid)
        if set(counts) != {version} or int(counts[version]) < n_unlabelled:
            return None
        return version if ls.project_version(pid) == version else None

    version = wait_for(check, timeout, f"all {n_unlabelled} predictions of a new version in LS", interval)
    return version, time.perf_counter() - t0


def wait_front(
    ls: LS,
    pid: int,
    old: str | None,
    n_front: int,
    timeout: float,
    be: Backend | None = None,
    min_labels: int = 0,
    scores: bool = True,
) -> tuple[str, float, dict[int, float]]:
    """Wait until LS serves the next ``n_front`` tasks by a new version: the project points at a version other than
    ``old`` (and, with ``be``, trained on at least ``min_labels`` labels) and holds at least ``n_front`` predictions
    of it. Returns the version, the seconds waited and, with ``scores``, the version's scores in LS at that moment
    (to check afterwards that they were the version's ``n_front`` lowest)."""
    t0 = time.perf_counter()

    def check():
        # LS's project answer costs 0.3 s at 100k tasks (it counts the project's tasks), the version counts 0.02 s:
        # ask for the project only once a new version holds its front (the worker switches right after it)
        counts = ls.model_versions(pid)
        if not any(v != old and int(c) >= n_front for v, c in counts.items()):
            return None
        version = ls.project_version(pid)
        if not version or version == old or int(counts.get(version, 0)) < n_front:
            return None
        if be is not None:
            rows = {v["version"]: v for v in be.status(pid).get("versions") or []}
            row = rows.get(version) or {}
            if not row.get("trained") or int(row.get("n_labels") or 0) < min_labels:
                return None
        return version, time.perf_counter() - t0

    version, seconds = wait_for(check, timeout, f"LS to serve {n_front} tasks by a new version", 0.25)
    return version, seconds, ls.scores_of(pid, version) if scores else {}


def front_was_ordered(ls: LS, pid: int, version: str, seen: dict[int, float], n_front: int) -> bool:
    """Whether the tasks LS held at the switch were the version's ``n_front`` lowest scores once the pool is in."""
    final = ls.scores_of(pid, version)
    lowest = sorted(final, key=lambda t: (final[t], t))[:n_front]
    return all(t in seen for t in lowest)


def bench_pool(
    ls: LS, be: Backend, texts: list[str], labels: list[str], n: int, repeats: int, timeout: float, extra: dict
) -> dict:
    """One pool's measurements into ``extra["out"]`` (saved with ``extra["save"]()`` after each stage: a big pool
    runs for an hour or more, and a failure late in it keeps what was measured)."""
    out: dict[str, Any] = extra["out"]
    out["pool"] = n
    save: Callable[[], None] = extra["save"]
    lean = bool(extra.get("lean"))
    poll = 0.25 if n <= 20_000 else 2.0  # whole-pool polls count the project's predictions in LS
    project = ls.create_project(f"bench pool {n}")
    pid = project["id"]
    t0 = time.perf_counter()
    ids = ls.import_tasks(pid, texts[:n])
    out["import_seconds"] = time.perf_counter() - t0
    assert len(ids) == n, f"imported {len(ids)} of {n} tasks"
    n_front = min(NEXT_TASKS, n)
    out["load_1min"] = [os.getloadavg()[0]]
    save()
    t0 = time.perf_counter()
    ls.connect(pid, be.url)
    # LS points the project at the backend's title on connect (see the protocol notes): that is the "old" version
    front_version, front_s, seen = wait_front(ls, pid, "al-backend", n_front, timeout, scores=not lean)
    out["connect_to_next_tasks_seconds"] = front_s
    print(
        f"  pool {n}: connect -> LS serves the next {n_front} tasks by {front_version}: {front_s:.1f} s",
        file=sys.stderr,
    )
    if not lean:
        version, _ = wait_all_predictions(ls, be, pid, n, timeout, interval=poll)
        out["connect_to_cold_start_predictions_seconds"] = time.perf_counter() - t0
        out["connect_front_ordered"] = front_version == version and front_was_ordered(ls, pid, version, seen, n_front)
        print(
            f"  pool {n}: cold-start predictions of {version} for all tasks "
            f"{out['connect_to_cold_start_predictions_seconds']:.1f} s after connecting",
            file=sys.stderr,
        )
    out["load_1min"].append(os.getloadavg()[0])
    save()

    # a few labels of both classes, then wait for the trained version to be fully in LS (lean: to serve its front)
    by_class = {c: [i for i, label in zip(ids, labels[:n]) if label == c] for c in ("fresh", "rotten")}
    order = [x for pair in zip(by_class["fresh"], by_class["rotten"]) for x in pair]
    labelled = 0
    t0 = time.perf_counter()
    for task_id in order[:6]:
        ls.annotate(task_id, labels[ids.index(task_id)])
        labelled += 1
    if lean:
        previous, first_s, _ = wait_front(ls, pid, None, n_front, timeout, be, labelled, scores=False)
        out["first_labels_to_next_tasks_seconds"] = first_s
        print(f"  pool {n}: {labelled} labels -> the first trained version's front: {first_s:.1f} s", file=sys.stderr)
    else:
        previous, _ = wait_all_predictions(
            ls, be, pid, n - labelled, timeout, not_version=version, min_labels=labelled, interval=poll
        )
    out["first_trained_version"] = previous
    out["retrain_to_ls_seconds"] = []
    out["retrain_to_next_tasks_seconds"] = []
    out["retrain_front_ordered"] = []
    out["retrain_backend_idle"] = []
    save()
    for k in range(repeats):
        task_id = order[6 + k]
        idle = not lean or k > 0
        if idle:
            wait_idle(be, pid, timeout)  # no training or re-score left over from the previous labels
        out["retrain_backend_idle"].append(idle)
        old = ls.project_version(pid)
        t0 = time.perf_counter()
        ls.annotate(task_id, labels[ids.index(task_id)])
        labelled += 1
        n_next = min(NEXT_TASKS, n - labelled)
        front_version, front_s, seen = wait_front(ls, pid, old, n_next, timeout, scores=not lean)
        out["retrain_to_next_tasks_seconds"].append(front_s)
        print(
            f"  pool {n}: annotation -> LS serves the next {NEXT_TASKS} tasks by {front_version}: {front_s:.1f} s"
            f"{'' if idle else ' (while the previous version filled the pool)'}",
            file=sys.stderr,
        )
        save()
        # rows of the new version land for unlabelled tasks only: the labelled ones are skipped by the rescore
        new, _ = wait_all_predictions(
            ls, be, pid, n - labelled, timeout, not_version=previous, min_labels=labelled, interval=poll
        )
        out["retrain_to_ls_seconds"].append(time.perf_counter() - t0)
        out["retrain_front_ordered"].append(
            None if lean else front_version == new and front_was_ordered(ls, pid, new, seen, n_next)
        )
        print(
            f"  pool {n}: annotation -> all {n - labelled} predictions of {new} in LS: "
            f"{out['retrain_to_ls_seconds'][-1]:.1f} s (ordered: {out['retrain_front_ordered'][-1]})",
            file=sys.stderr,
        )
        out["load_1min"].append(os.getloadavg()[0])
        save()
        previous = new
    if extra.get("stream_labels"):
        wait_all_predictions(ls, be, pid, n - labelled, timeout, min_labels=labelled, interval=poll)
        wait_idle(be, pid, timeout)
        start = 6 + repeats
        stream = [(t, labels[ids.index(t)]) for t in order[start : start + extra["stream_labels"]]]
        out["stream"] = label_stream(ls, be, pid, stream, labelled, extra["stream_interval"], timeout)
        out["load_1min"].append(os.getloadavg()[0])
        save()
    if extra.get("latency"):
        out.update(latency_benchmarks(be, ls, pid, ids, texts, labels, extra))
        wait_idle(be, pid, timeout)  # the webhooks queued trainings: let them finish before the next pool
        save()
    return out


def label_stream(
    ls: LS, be: Backend, pid: int, tasks: list[tuple[int, str]], labelled: int, interval: float, timeout: float
) -> dict:
    """Annotators who do not wait for the backend: one label every ``interval`` seconds, whatever runs. For each
    label, the time until LS serves the next tasks by a version that learned from it: the project points at a
    version trained on at least that many labels and LS holds ``NEXT_TASKS`` predictions of it (a later version
    counts for every label it includes; a label no promoted version includes before the end has no latency)."""
    sent: list[tuple[float, int]] = []  # (monotonic time of the annotation, labels in the project after it)
    served: dict[int, float] = {}  # label count -> first time a served version included it
    first_count = labelled + 1

    def poll() -> None:
        version = ls.project_version(pid)
        rows = {v["version"]: v for v in be.status(pid).get("versions") or []}
        if version not in rows or not rows[version].get("trained"):
            return
        if int(ls.model_versions(pid).get(version, 0)) < NEXT_TASKS:
            return
        now = time.monotonic()
        for count in range(first_count, int(rows[version]["n_labels"]) + 1):
            served.setdefault(count, now)

    next_at = time.monotonic()
    for task_id, label in tasks:
        while time.monotonic() < next_at:
            poll()
            time.sleep(0.25)
        ls.annotate(task_id, label)
        labelled += 1
        sent.append((time.monotonic(), labelled))
        next_at = sent[-1][0] + interval
    deadline = time.monotonic() + timeout
    while labelled not in served and time.monotonic() < deadline:
        poll()
        time.sleep(0.25)
    latencies = [served[count] - t if count in served else None for t, count in sent]
    result = {"interval_seconds": interval, "labels": len(sent), "latencies_seconds": latencies}
    print(f"  stream of {len(sent)} labels every {interval:.0f} s: {stream_summary(result)}", file=sys.stderr)
    return result


def stream_summary(stream: dict) -> str:
    done = [x for x in stream["latencies_seconds"] if x is not None]
    figures = f"median {np.median(done):.1f} s, max {max(done):.1f} s, " if done else ""
    return f"{figures}{len(done)} of {stream['labels']} labels served by a version trained on them"


def wait_idle(be: Backend, pid: int, timeout: float) -> None:
    """Wait until none of the project's recent jobs is queued, started, deferred or scheduled."""
    busy = {"queued", "started", "deferred", "scheduled"}

    def idle():
        jobs = be.status(pid).get("jobs")
        return jobs is not None and not any(j.get("status") in busy for j in jobs)

    wait_for(idle, timeout, f"project {pid}'s jobs to finish", 1.0)


def latency_benchmarks(
    be: Backend, ls: LS, pid: int, ids: list[int], texts: list[str], labels: list[str], extra: dict
) -> dict:
    """/predict (1 and 100 tasks; cached pool tasks and never-seen texts) and /webhook, on the warm server."""
    n_pool = len(ids)
    unseen = texts[len(texts) - 2000 :]  # texts not imported into this pool
    key = str(pid)
    res: dict[str, Any] = {}

    def predict(tasks: list[dict]) -> float:
        t0 = time.perf_counter()
        r = be.http.post("/predict", json={"tasks": tasks, "project": key, "label_config": LABEL_CONFIG})
        dt = time.perf_counter() - t0
        body = r.json()
        assert r.status_code == 200 and len(body["results"]) == len(tasks), r.text[:300]
        assert all(isinstance(x, dict) and "score" in x for x in body["results"]), body["results"][:2]
        return dt

    pool_tasks = [{"id": i, "project": pid, "data": {"text": t}} for i, t in zip(ids, texts[:n_pool])]
    new_tasks = [{"id": 10_000_000 + j, "project": pid, "data": {"text": t}} for j, t in enumerate(unseen)]
    rng = np.random.default_rng(0)
    r1 = extra["predict_repeats"]
    for _ in range(3):  # warm-up: the web process loads the encoder and the current head on first use
        predict([pool_tasks[0]])
        predict(new_tasks[-100:])
    res["predict_1_cached"] = percentiles([predict([pool_tasks[int(rng.integers(n_pool))]]) for _ in range(r1)])
    res["predict_100_cached"] = percentiles(
        [predict([pool_tasks[int(i)] for i in rng.choice(n_pool, 100, replace=False)]) for _ in range(r1 // 3)]
    )
    res["predict_1_new"] = percentiles([predict([new_tasks[j]]) for j in range(r1)])
    res["predict_100_new"] = percentiles(
        [
            predict(new_tasks[r1 + 100 * j : r1 + 100 * (j + 1)])
            for j in range(min(r1 // 3, (len(new_tasks) - r1) // 100))
        ]
    )

    def webhook(task_id: int, text: str, label: str) -> float:
        payload = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": pid},
            "task": {"id": task_id, "project": pid, "data": {"text": text}},
            "annotation": {
                "id": 1,
                "task": task_id,
                "project": pid,
                "was_cancelled": False,
                "result": [
                    {"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": [label]}}
                ],
            },
        }
        t0 = time.perf_counter()
        r = be.http.post("/webhook", json=payload)
        dt = time.perf_counter() - t0
        assert r.status_code in (200, 201), r.text[:300]
        return dt

    res["webhook"] = percentiles(
        [webhook(ids[j % n_pool], texts[j % n_pool], labels[j % n_pool]) for j in range(extra["webhook_repeats"])]
    )
    for name, v in res.items():
        print(
            f"  {name}: p50 {v['p50_ms']:.1f} ms, p95 {v['p95_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms (n={v['n']})",
            file=sys.stderr,
        )
    return res


def markdown(result: dict) -> str:
    """Both tables, one row per database and pool."""
    m = result["machine"]
    runs = result["runs"]
    lines = ["| measurement | LS database | pool | n | p50 | p95 | p99 |", "|---|---|---|---|---|---|---|"]
    names = {
        "predict_1_cached": "/predict, 1 task (pool task, embedding cached)",
        "predict_100_cached": "/predict, 100 tasks (pool tasks, embeddings cached)",
        "predict_1_new": "/predict, 1 task (text never seen)",
        "predict_100_new": "/predict, 100 tasks (texts never seen)",
        "webhook": "/webhook ANNOTATION_CREATED (enqueue only)",
    }
    for db, run in runs.items():
        for pool in run["pools"]:
            for key, label in names.items():
                if key in pool:
                    v = pool[key]
                    lines.append(
                        f"| {label} | {db} | {pool['pool']:,} | {v['n']} | {v['p50_ms']:.0f} ms "
                        f"| {v['p95_ms']:.0f} ms | {v['p99_ms']:.0f} ms |"
                    )
    lines += [
        "",
        f"| LS database | pool | connect -> LS serves the next {NEXT_TASKS} tasks by the first version | connect -> "
        f"cold-start predictions of all tasks in LS | annotation -> LS serves the next {NEXT_TASKS} tasks by the new "
        "version (each run) | annotation -> whole pool on the new version, old version deleted (each run) "
        "| 1-min load average during the run |",
        "|---|---|---|---|---|---|---|",
    ]

    def each(values: list[float], ordered: list[bool | None], idle: list[bool] | None = None) -> str:
        flags = [*ordered, *[True] * (len(values) - len(ordered))]  # a run stopped early: its last not checked
        busy = [not x for x in [*(idle or []), *[True] * (len(values) - len(idle or []))]]
        return ", ".join(
            f"{x:.1f} s" + (" (not in order)" if ok is False else "") + (" (during a fill)" if b else "")
            for x, ok, b in zip(values, flags, busy)
        )

    def seconds(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} s"

    for db, run in runs.items():
        for pool in run["pools"]:
            front = pool.get("retrain_to_next_tasks_seconds") or []
            connect_front = pool.get("connect_to_next_tasks_seconds")
            load = pool.get("load_1min") or []
            lines.append(
                f"| {db} | {pool['pool']:,} | "
                + (f"{connect_front:.1f} s" if connect_front is not None else "-")
                + ("" if pool.get("connect_front_ordered", True) else " (not in order)")
                + f" | {seconds(pool.get('connect_to_cold_start_predictions_seconds'))} | "
                f"{each(front, pool.get('retrain_front_ordered') or [], pool.get('retrain_backend_idle')) or '-'} | "
                f"{each(pool.get('retrain_to_ls_seconds') or [], [], pool.get('retrain_backend_idle')) or '-'} | "
                + (f"{min(load):.1f}-{max(load):.1f}" if load else "-")
                + " |"
            )
    streams = [(db, pool) for db, run in runs.items() for pool in run["pools"] if pool.get("stream")]
    if streams:
        lines += [
            "",
            f"| LS database | pool | a label every | label -> LS serves the next {NEXT_TASKS} tasks by a version "
            "trained on it (annotators not waiting) |",
            "|---|---|---|---|",
        ]
        for db, pool in streams:
            st = pool["stream"]
            lines.append(f"| {db} | {pool['pool']:,} | {st['interval_seconds']:.0f} s | {stream_summary(st)} |")
    versions = sorted({run["ls_version"] for run in runs.values()})
    lines += [
        "",
        f"Machine: {m['cores']} cores, no GPU, torch threads 1 in the web app and the worker (TORCH_THREADS=1), "
        f"shared with other work (see the load average); Label Studio {', '.join(versions)} on the same machine, "
        "on the database named in each row (PostgreSQL 127.0.0.1:5432). Default text model (MiniLM), Rotten "
        f'Tomatoes review snippets. "In order": once the pool is in, the tasks LS held at the switch were the new '
        f"version's {NEXT_TASKS} lowest scores (the ones uncertainty sampling serves first); not checked with "
        '--lean. "During a fill": the label arrived while the previous version still filled the pool.',
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pools",
        default="1001,10001",
        help="pool sizes (default: %(default)s; not multiples of 500: the worker's task listing then "
        "asks LS for a page past the end, see README-benchmarks)",
    )
    p.add_argument("--repeats", type=int, default=3, help="retrain-to-LS measurements per pool (default: %(default)s)")
    p.add_argument("--predict-repeats", type=int, default=60, help="/predict requests of 1 task (default: %(default)s)")
    p.add_argument("--webhook-repeats", type=int, default=300, help="/webhook requests (default: %(default)s)")
    p.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds to wait for each stage (default: %(default)s)"
    )
    p.add_argument(
        "--stream-labels",
        type=int,
        default=0,
        help="after the timed repeats, this many labels at a steady pace without waiting for the backend (default: "
        "%(default)s, none)",
    )
    p.add_argument("--stream-interval", type=float, default=5.0, help="seconds between the stream's labels")
    p.add_argument(
        "--lean",
        action="store_true",
        help="wait for the whole pool only after the last timed label (big pools; see above)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes, serve's included (default: %(default)s)")
    p.add_argument(
        "--redis-db",
        type=int,
        default=9,
        help="with --workers > 1: the database of the Redis at 127.0.0.1:6379 they share, emptied first "
        "(default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument(
        "--db", choices=("sqlite", "postgres"), default="sqlite", help="LS's database (default: %(default)s)"
    )
    args = p.parse_args(argv)

    from tests.lsserver import LabelStudioServer

    pools = [int(x) for x in args.pools.split(",")]
    data = datasets.rotten_tomatoes(full=max(pools) + 2000 > 4800, seed=0)
    unseen = 2000  # the corpus's last texts: never in a pool (``latency_benchmarks``'s new texts)
    pool_texts, pool_labels = extend_pool(data.texts[:-unseen], data.labels[:-unseen], max(pools), seed=0)
    texts, labels = pool_texts + data.texts[-unseen:], pool_labels + data.labels[-unseen:]
    result: dict[str, Any] = {"pools": [], "options": {"lean": args.lean, "workers": args.workers}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "server.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}

    def save() -> None:
        """Write what was measured so far (this database's entry replaces the file's earlier one)."""
        merged = {
            "machine": {"cores": os.cpu_count(), "torch_threads": 1},
            "runs": {**saved.get("runs", {}), args.db: result},
        }
        path.write_text(json.dumps(merged, indent=1) + "\n")
        (args.out / "server.md").write_text(markdown(merged) + "\n")

    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    print(f"work dir {work}", file=sys.stderr)
    with LabelStudioServer(db=args.db) as ls_server:
        result["ls_version"] = ls_server.version
        ls = LS(ls_server.url, ls_server.token)
        be = Backend(
            work / "data",
            ls_server.url,
            ls_server.token,
            work / "backend.log",
            workers=args.workers,
            redis_url=f"redis://127.0.0.1:6379/{args.redis_db}",
        )
        try:
            for k, n in enumerate(pools):
                result["pools"].append({})
                bench_pool(
                    ls,
                    be,
                    texts,
                    labels,
                    n,
                    args.repeats,
                    args.timeout,
                    {
                        "out": result["pools"][-1],
                        "save": save,
                        "lean": args.lean,
                        "latency": k == 0,
                        "stream_labels": args.stream_labels,
                        "stream_interval": args.stream_interval,
                        "predict_repeats": args.predict_repeats,
                        "webhook_repeats": args.webhook_repeats,
                    },
                )
        except BaseException:
            print(f"backend log tail:\n{Path(work / 'backend.log').read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            be.stop()
            ls.close()
    save()
    print((args.out / "server.md").read_text())
    return 0


def extend_pool(texts: list[str], labels: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """The first ``n`` pool texts: the corpus's own, then two texts of the same class joined (a seeded draw, each
    joined text distinct from every other), for pools larger than the corpus."""
    out, out_labels = list(texts[:n]), list(labels[:n])
    if n <= len(texts):
        return out, out_labels
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    seen = set(out)
    while len(out) < n:
        i = int(rng.integers(len(texts)))
        same = by_class[labels[i]]
        j = same[int(rng.integers(len(same)))]
        text = f"{texts[i]} {texts[j]}"
        if i != j and text not in seen:
            seen.add(text)
            out.append(text)
            out_labels.append(labels[i])
    return out, out_labels


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanup (stop LS and the backend) on SIGTERM
    raise SystemExit(main())

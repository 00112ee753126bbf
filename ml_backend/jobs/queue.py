"""Enqueueing with coalescing, and job status for the HTTP layer.

Label Studio sends one webhook per saved annotation, inside the annotator's own request, with a 1 s timeout and
no retry. So the web process only records the event and enqueues; per project at most one training runs and at
most one waits. The waiting job has not fetched labels yet, so a label that arrives while a training runs is
picked up by it: nothing is lost, and a burst of N webhooks costs at most two trainings.

Redis keys, namespaced by queue name so that several deployments (or test sessions) can share one Redis:
``al:<queue>:pending:<p>`` = id of the waiting training job (cleared by that job when it starts),
``al:<queue>:labels:<p>`` = new labels since the last training started, ``al:<queue>:jobs:<p>`` = recent job ids,
``al:<queue>:lock:<train|score>:<p>`` = the project locks of running jobs.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

TRAIN = "ml_backend.jobs.tasks.train_project"
RESCORE = "ml_backend.jobs.tasks.rescore_project"
SCORE_NEW = "ml_backend.jobs.tasks.score_new_tasks"
_KIND = {TRAIN: "train", RESCORE: "rescore", SCORE_NEW: "score_new_tasks"}
_WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
_RECENT_JOBS = 50


def connect(redis_url: str) -> Redis:
    """A Redis client that fails fast: /webhook must answer 503 at once when Redis is down, not hang."""
    return Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=30)


class JobQueue:
    """The project's jobs on one rq queue, with explicit ids, timeouts, retries and meta."""

    def __init__(self, redis: Redis, name: str, job_timeout: int, retries: int, retrain_every: int):
        self.redis = redis
        self.queue = Queue(name, connection=redis)
        self.job_timeout = job_timeout
        self.retry = Retry(max=retries, interval=[5, 30, 120][:retries]) if retries > 0 else None
        self.retrain_every = retrain_every

    def key(self, kind: str, project_id: int) -> str:
        """A Redis key of this queue's namespace: ``pending``, ``labels``, ``jobs``, ``lock:train``, ``lock:score``."""
        return f"al:{self.queue.name}:{kind}:{project_id}"

    def _enqueue(self, func: str, project_id: int, *args: Any, job_id: str | None = None) -> Job:
        kind = _KIND[func]
        job = self.queue.enqueue(
            func, project_id, *args,
            job_id=job_id or f"{kind}-{project_id}-{uuid.uuid4().hex[:12]}",
            job_timeout=self.job_timeout, retry=self.retry, result_ttl=7 * 86400, failure_ttl=7 * 86400,
            meta={"project": project_id, "kind": kind, "stage": "queued", "enqueued": time.time()},
            description=f"{kind} project {project_id}",
        )
        with self.redis.pipeline() as pipe:
            pipe.lpush(self.key("jobs", project_id), job.id)
            pipe.ltrim(self.key("jobs", project_id), 0, _RECENT_JOBS - 1)
            pipe.execute()
        return job

    # -- training, coalesced ----------------------------------------------------------------------------------
    def add_labels(self, project_id: int, n: int, force: bool = False) -> str | None:
        """Count ``n`` new labels; enqueue a training when enough arrived (or ``force``). Returns the job id
        that will include these labels (a new or an already-waiting one), or None if it is not yet time."""
        count = int(self.redis.incrby(self.key("labels", project_id), max(n, 0)))
        if not force and count < self.retrain_every:
            return None
        return self.request_training(project_id)

    def request_training(self, project_id: int) -> str:
        """The id of the waiting training job of the project, enqueuing one if none waits."""
        key = self.key("pending", project_id)
        for _ in range(3):
            job_id = f"train-{project_id}-{uuid.uuid4().hex[:12]}"
            if self.redis.set(key, job_id, nx=True, ex=self.job_timeout * 4):
                self._enqueue(TRAIN, project_id, job_id=job_id)
                return job_id
            waiting = self.redis.get(key)
            if waiting is None:
                continue
            waiting_id = waiting.decode()
            if self._is_waiting(waiting_id):
                return waiting_id
            # the recorded job is gone or finished without clearing the key (e.g. Redis lost it): replace it
            self.redis.delete(key)
        raise RuntimeError(f"could not enqueue a training for project {project_id}")

    def _is_waiting(self, job_id: str) -> bool:
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return False
        status = job.get_status()
        # STARTED still counts as waiting until the job takes the project lock and clears the key itself
        return status in _WAITING or status == JobStatus.STARTED

    # -- scoring ----------------------------------------------------------------------------------------------
    def request_rescore(self, project_id: int, version: str) -> str:
        return self._enqueue(RESCORE, project_id, version).id

    def request_score_new(self, project_id: int, tasks: list[dict[str, Any]]) -> str:
        return self._enqueue(SCORE_NEW, project_id, tasks).id

    # -- status -----------------------------------------------------------------------------------------------
    def recent_jobs(self, project_id: int) -> list[dict[str, Any]]:
        """The project's recent jobs, newest first: id, kind, status, stage and progress (rq job meta)."""
        ids = [i.decode() for i in self.redis.lrange(self.key("jobs", project_id), 0, _RECENT_JOBS - 1)]
        jobs = []
        for job in Job.fetch_many(ids, connection=self.redis):
            if job is None:
                continue
            result = job.latest_result()  # the last attempt: a failure shows here while a retry is scheduled
            exc = result.exc_string if result is not None and result.type == Result.Type.FAILED else None
            jobs.append({
                "id": job.id,
                "kind": job.meta.get("kind"),
                "status": str(job.get_status().value),
                "meta": job.meta,
                "retries_left": job.retries_left,
                "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
                "ended_at": job.ended_at.isoformat() if job.ended_at else None,
                "error": exc.strip().splitlines()[-1] if exc else None,
            })
        return jobs

"""Enqueueing with coalescing, and job status for the HTTP layer.

Label Studio sends one webhook per saved annotation, inside the annotator's own request, with a 1 s timeout and
no retry. So the web process only records the event and enqueues; per project at most one training runs and at
most one waits. The waiting job has not fetched labels yet, so a label that arrives while a training runs is
picked up by it: nothing is lost, and a burst of N webhooks costs at most two trainings.

Re-scores are coalesced the same way: a waiting re-score brings LS up to the version that is current when it
*starts*, so a burst of versions (or of requests) costs at most two re-scores per project.

Redis keys, namespaced by queue name so that several deployments (or test sessions) can share one Redis:
``al:<queue>:pending[:rescore|:dedupe]:<p>`` = id of the waiting training / re-score / duplicate clean-up (cleared
by that job when it starts), ``al:<queue>:labels:<p>`` = new labels since the last training started,
``al:<queue>:annotations:<p>`` = ids of the annotations webhooks reported since then (the training waits for LS to
list them: LS may send the webhook before the annotation is readable, seen with PostgreSQL),
``al:<queue>:predicted:<p>`` = when LS should have saved what /predict last returned, ``al:<queue>:jobs:<p>`` =
recent job ids, ``al:<queue>:lock:<train|score>:<p>`` = the project locks of running jobs,
``al:<queue>:fanout:<job id>`` = how many embedding chunks of a fanned-out re-score have finished,
``al:<queue>:fanout-of:<p>`` = the project's last fanned-out re-score (the one gathering its pool's embedding).

A re-score of a large pool fans its embedding out (``fan_out_embedding``): chunk jobs, which any worker on any
machine sharing Redis and DATA_DIR takes, and a re-score that rq enqueues once every chunk has ended (rq
dependencies: no worker waits on another job, so one worker alone finishes it too). The chunks wait on a queue of
their own, ``<queue>-embed``, which every worker serves after the main queue (rq's queue order): a training or a
re-score requested while a 100k pool is being embedded runs at the next free worker instead of after every chunk
(15 to 22 minutes at 100k on 2 workers, measured).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.results import Result

from ml_backend.settings import Settings

#: what the web app catches when the queue cannot be reached (it never imports redis itself)
QueueUnavailable = RedisError

TRAIN = "ml_backend.jobs.tasks.train_project"
RESCORE = "ml_backend.jobs.tasks.rescore_project"
SCORE_NEW = "ml_backend.jobs.tasks.score_new_tasks"
DEDUPE = "ml_backend.jobs.tasks.dedupe_predictions"
EMBED = "ml_backend.jobs.tasks.embed_chunk"
_KIND = {TRAIN: "train", RESCORE: "rescore", SCORE_NEW: "score_new_tasks", DEDUPE: "dedupe", EMBED: "embed"}
_WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
_RECENT_JOBS = 50
#: slots of the coalesced job kinds: the Redis key (under ``al:<queue>:``) naming the one waiting job
TRAIN_SLOT, RESCORE_SLOT, DEDUPE_SLOT = "pending", "pending:rescore", "pending:dedupe"
#: seconds a finished embedding chunk keeps its result (the name of its vectors' object in the model store) for the
#: re-score that gathers it, which deletes both; a day covers a fan-out that runs for hours on few workers
CHUNK_RESULT_TTL = 86400
#: LS saves what /predict returned only after our answer, one prediction at a time (~0.1 s each measured on
#: SQLite, 2 cores), e.g. "Retrieve predictions" racing our own import of the version: duplicates are looked for
#: ``DEDUPE_AFTER`` seconds plus ``DEDUPE_PER_TASK`` per returned prediction after the last /predict answered
DEDUPE_AFTER, DEDUPE_PER_TASK = 10.0, 0.25
#: seconds before each extra re-score once rq's own retries are spent (LS down for longer than ~3 minutes):
#: bounded, so a project whose LS is gone for good stops costing work after about a day
LATE_RETRIES = (600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600)
_CLEAR_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_SET_MAX = (
    "local cur = tonumber(redis.call('get', KEYS[1]) or '0') "
    "if tonumber(ARGV[1]) > cur then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end return 0"
)


#: socket timeout of the web process's Redis client: a hung Redis (accepting, never answering) must cost a
#: request well under LS's 1 s webhook budget, not 5 s
WEB_SOCKET_TIMEOUT = 0.5


def connect(redis_url: str, socket_timeout: float = 5.0) -> Redis:
    """A Redis client that fails fast: /webhook must answer 503 at once when Redis is down, not hang.

    Workers keep 5 s (a job's Redis writes may wait behind a busy server); the web app uses
    ``WEB_SOCKET_TIMEOUT``.
    """
    return Redis.from_url(
        redis_url,
        socket_connect_timeout=min(1.0, socket_timeout * 2),
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )


def last_error(jobs: list[dict[str, Any]]) -> str | None:
    """The newest error among ``recent_jobs`` of a job kind that has not finished a job since: while a retry
    waits (rq's backoff, or a late re-score after LS stayed down) the status says what went wrong."""
    settled: set[str] = set()
    for job in jobs:  # newest first
        if job["kind"] in settled:
            continue
        if job["status"] == JobStatus.FINISHED.value:
            settled.add(job["kind"])
            continue
        error = job["error"] or job["meta"].get("last_error")
        if error:
            return f"{job['kind']}: {error}"
    return None


class JobQueue:
    """The project's jobs on one rq queue, with explicit ids, timeouts, retries and meta."""

    def __init__(
        self,
        redis: Redis,
        name: str,
        job_timeout: int,
        retries: int,
        retrain_every: int,
        late_retries: Sequence[int] = LATE_RETRIES,
    ):
        self.redis = redis
        self.queue = Queue(name, connection=redis)
        #: the embedding chunks: served after ``queue`` by every worker, so the project's other jobs go first
        self.chunks = Queue(f"{name}-embed", connection=redis)
        self.job_timeout = job_timeout
        self.retry = Retry(max=retries, interval=[5, 30, 120][:retries]) if retries > 0 else None
        self.retrain_every = retrain_every
        self.late_retries = tuple(late_retries)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> JobQueue:
        """The queue the web app and the workers share: same name, timeouts, retries (one place builds it)."""
        return cls(
            redis,
            settings.queue_name,
            settings.job_timeout,
            settings.job_retries,
            settings.retrain_every,
            late_retries=settings.late_retries,
        )

    @property
    def queues(self) -> list[Queue]:
        """The queues a worker serves, in priority order: the jobs of the learning loop, then embedding chunks."""
        return [self.queue, self.chunks]

    def key(self, kind: str, project_id: int) -> str:
        """A Redis key of this queue's namespace: ``pending``, ``labels``, ``jobs``, ``lock:train``, ``lock:score``."""
        return f"al:{self.queue.name}:{kind}:{project_id}"

    def _options(self, func: str, project_id: int, job_id: str | None, meta: dict[str, Any]) -> dict[str, Any]:
        """Id, timeout, retries, TTLs, meta and description every job of this queue gets (rq's option names)."""
        kind = _KIND[func]
        return dict(
            job_id=job_id or f"{kind}-{project_id}-{uuid.uuid4().hex[:12]}",
            retry=self.retry,
            result_ttl=7 * 86400,
            failure_ttl=7 * 86400,
            meta={"project": project_id, "kind": kind, "stage": "queued", "enqueued": time.time(), **meta},
            description=f"{kind} project {project_id}",
        )

    def _enqueue(
        self,
        func: str,
        project_id: int,
        *args: Any,
        job_id: str | None = None,
        delay: float | None = None,
        depends_on: Dependency | None = None,
        **meta: Any,
    ) -> Job:
        """Enqueue (or schedule in ``delay`` seconds, or once ``depends_on`` is met) a job and list it among the
        project's recent jobs."""
        options = self._options(func, project_id, job_id, meta)
        options.update(job_timeout=self.job_timeout, depends_on=depends_on)
        if delay is None:
            job = self.queue.enqueue(func, project_id, *args, **options)
        else:
            job = self.queue.enqueue_in(timedelta(seconds=delay), func, project_id, *args, **options)
        with self.redis.pipeline() as pipe:
            pipe.lpush(self.key("jobs", project_id), job.id)
            pipe.ltrim(self.key("jobs", project_id), 0, _RECENT_JOBS - 1)
            pipe.execute()
        return job

    # -- training, coalesced ----------------------------------------------------------------------------------
    def add_labels(
        self, project_id: int, n: int, force: bool = False, annotation_ids: Sequence[int] = ()
    ) -> str | None:
        """Count ``n`` new labels (and remember their ``annotation_ids``); enqueue a training when enough arrived
        (or ``force``). Returns the job id that will include these labels (a new or an already-waiting one), or
        None if it is not yet time."""
        if annotation_ids:
            with self.redis.pipeline() as pipe:
                pipe.sadd(self.key("annotations", project_id), *annotation_ids)
                pipe.expire(self.key("annotations", project_id), self.job_timeout * 4)
                pipe.execute()
        count = int(self.redis.incrby(self.key("labels", project_id), max(n, 0)))
        if not force and count < self.retrain_every:
            return None
        return self.request_training(project_id)

    def take_reported_labels(self, project_id: int) -> set[int]:
        """For a training that starts: reset the count of new labels (later ones go to a new waiting job) and take
        the annotation ids reported so far, in one transaction."""
        with self.redis.pipeline() as pipe:  # MULTI/EXEC
            pipe.set(self.key("labels", project_id), 0)
            pipe.smembers(self.key("annotations", project_id))
            pipe.delete(self.key("annotations", project_id))
            _, ids, _ = pipe.execute()
        return {int(i) for i in ids}

    def request_training(self, project_id: int) -> str:
        """The id of the waiting training job of the project, enqueuing one if none waits."""
        return self._coalesced(TRAIN_SLOT, TRAIN, project_id)

    def _coalesced(self, slot: str, func: str, project_id: int, delay: float | None = None) -> str:
        """The id of the project's waiting job in ``slot``, enqueuing ``func`` (in ``delay`` s) if none waits."""
        key = self.key(slot, project_id)
        for _ in range(3):
            job_id = f"{_KIND[func]}-{project_id}-{uuid.uuid4().hex[:12]}"
            if self.redis.set(key, job_id, nx=True, ex=self.job_timeout * 4):
                self._enqueue(func, project_id, job_id=job_id, delay=delay)
                return job_id
            waiting = self.redis.get(key)
            if waiting is None:
                continue
            waiting_id = waiting.decode()
            if self._is_waiting(waiting_id):
                return waiting_id
            # the recorded job is gone or finished without clearing the key (e.g. Redis lost it): replace it
            self.redis.eval(_CLEAR_IF, 1, key, waiting_id)
        raise RuntimeError(f"could not enqueue a {_KIND[func]} job for project {project_id}")

    def hold_for_retry(self, slot: str, project_id: int, job_id: str) -> str | None:
        """A coalesced job failed and rq will retry it: make the retry the project's waiting job, so requests
        during the backoff join it instead of running more jobs that fail the same way (a burst of webhooks while
        LS is down is then one job and its retries). A job waiting in the slot has not read anything yet: it is
        cancelled, the retry does its work. Returns the id of a job that already *runs* in the slot's place (then
        this one need not be retried), else None."""
        key = self.key(slot, project_id)
        for _ in range(3):
            if self.redis.set(key, job_id, nx=True, ex=self.job_timeout * 4):
                return None
            recorded = self.redis.get(key)
            if recorded is None:
                continue
            other = recorded.decode()
            if other == job_id:
                return None
            if self._take_over(other):
                self.redis.eval(_CLEAR_IF, 1, key, other)
                continue
            if self._is_waiting(other):
                return other  # it started meanwhile: it does the work now
            self.redis.eval(_CLEAR_IF, 1, key, other)  # a stale record: take the slot over
        return None

    def _take_over(self, job_id: str) -> bool:
        """Cancel a job that is still queued or scheduled (not picked by a worker); True if it was."""
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return False
        # removing it from its list is atomic: 0 means a worker took it first (it runs; leave it alone)
        removed = self.queue.remove(job) or ScheduledJobRegistry(queue=self.queue).remove(job)
        if not removed:
            return False
        job.cancel()
        return True

    def started(self, slot: str, project_id: int, job_id: str) -> None:
        """Called by a coalesced job once it holds its project lock: the slot is free for the next request,
        which must wait for a new job (this one has already read what it works on)."""
        self.redis.eval(_CLEAR_IF, 1, self.key(slot, project_id), job_id)

    def ready(self, slot: str, project_id: int) -> str | None:
        """The id of the project's job in ``slot`` if it is ready to run: queued for a worker, or started and not
        yet past its project lock. None if none is, or if it waits out a delay, a retry's backoff or a dependency
        (a long job yields to it only when a worker would run it now)."""
        job = self._recorded_job(self.key(slot, project_id))
        return job.id if job is not None and job.get_status() in (JobStatus.QUEUED, JobStatus.STARTED) else None

    def _recorded_job(self, key: str) -> Job | None:
        """The job whose id the Redis ``key`` holds, or None (no id, or rq no longer has the job)."""
        recorded = self.redis.get(key)
        if recorded is None:
            return None
        try:
            return Job.fetch(recorded.decode(), connection=self.redis)
        except NoSuchJobError:
            return None

    def _is_waiting(self, job_id: str) -> bool:
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return False
        status = job.get_status()
        # STARTED still counts as waiting until the job takes the project lock and clears the key itself
        return status in _WAITING or status == JobStatus.STARTED

    # -- scoring ----------------------------------------------------------------------------------------------
    def request_rescore(self, project_id: int) -> str:
        """The waiting re-score of the project (enqueued if none waits): it scores with the version that is current
        when it starts, the whole pool if the project does not point at that version yet, else only the unlabelled
        tasks that lack a prediction of it (deleted annotations, new tasks, failed scorings)."""
        return self._coalesced(RESCORE_SLOT, RESCORE, project_id)

    def schedule_late_rescore(self, project_id: int, late_round: int, error: str) -> str | None:
        """After rq's retries of a re-score are spent: schedule another one ``LATE_RETRIES[late_round]`` seconds
        later, so the pool gets scored when LS comes back instead of at the next label. None once the rounds are
        spent. ``error`` stays in the job's meta, so the status shows why it waits."""
        if late_round >= len(self.late_retries):
            return None
        delay = self.late_retries[late_round]
        job = self._enqueue(
            RESCORE,
            project_id,
            delay=delay,
            late_round=late_round + 1,
            last_error=error,
            stage=f"scheduled in {delay} s after: {error}",
        )
        return job.id

    def fan_out_embedding(self, project_id: int, version: str, chunks: list[list[dict[str, Any]]]) -> str:
        """Enqueue one embedding job per chunk and the re-score that gathers them; returns the re-score's id.

        The chunks are not listed among the project's recent jobs (hundreds would push out the trainings); the
        re-score's meta names them and ``recent_jobs`` shows how many finished. rq enqueues the re-score once every
        chunk has ended, finished or failed for good (``allow_failure``: a failed chunk must not lose the others;
        the re-score embeds what is still missing itself). It is recorded as the project's fan-out in flight
        (:meth:`fanout_in_flight`), not as its waiting re-score: a re-score requested meanwhile (a new version)
        runs at once on what is embedded and leaves the rest of the pool to this one instead of fanning it out
        again.
        """
        gather_id = f"{_KIND[RESCORE]}-{project_id}-{uuid.uuid4().hex[:12]}"
        self.redis.set(self.key("fanout-of", project_id), gather_id, ex=CHUNK_RESULT_TTL)
        chunk_ids = self.enqueue_chunks(project_id, version, chunks, gather_id)
        total = len(chunk_ids)
        self._enqueue(
            RESCORE,
            project_id,
            job_id=gather_id,
            depends_on=Dependency(jobs=chunk_ids, allow_failure=True),
            fanout=chunk_ids,
            stage=f"waiting for {total} embedding chunks",
            done=0,
            total=total,
        )
        return gather_id

    def enqueue_chunks(
        self, project_id: int, version: str, chunks: list[list[dict[str, Any]]], gather_id: str
    ) -> list[str]:
        """Enqueue the embedding jobs of ``chunks`` in one round trip (ids ``embed-<gather_id>-<i>``), counted as
        they finish under ``gather_id`` (``chunks_done``); returns their ids."""
        datas = []
        for i, chunk in enumerate(chunks):
            options = self._options(EMBED, project_id, f"{_KIND[EMBED]}-{gather_id}-{i}", {"chunk": i + 1})
            options["result_ttl"] = CHUNK_RESULT_TTL
            datas.append(
                Queue.prepare_data(EMBED, (project_id, version, chunk, gather_id), timeout=self.job_timeout, **options)
            )
        return [job.id for job in self.chunks.enqueue_many(datas)]

    def fanout_in_flight(self, project_id: int) -> str | None:
        """The id of the project's fanned-out re-score if it has not ended (its chunks still run, or it waits for
        a worker, or it runs), else None."""
        job = self._recorded_job(self.key("fanout-of", project_id))
        return job.id if job is not None and job.get_status() in (*_WAITING, JobStatus.STARTED) else None

    def chunk_done(self, gather_id: str) -> int:
        """Count one finished embedding chunk of the re-score ``gather_id``; returns how many have finished."""
        key = f"al:{self.queue.name}:fanout:{gather_id}"
        with self.redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, 7 * 86400)
            return int(pipe.execute()[0])

    def chunks_done(self, gather_id: str) -> int:
        return int(self.redis.get(f"al:{self.queue.name}:fanout:{gather_id}") or 0)

    def request_score_new(self, project_id: int, tasks: list[dict[str, Any]]) -> str:
        return self._enqueue(SCORE_NEW, project_id, tasks).id

    def predicted(self, project_id: int, n_predictions: int) -> str:
        """Record that /predict returned ``n_predictions`` for the project and make sure a duplicate clean-up
        follows once LS should have saved them: one waiting job (it postpones itself past later /predicts)."""
        delay = DEDUPE_AFTER + DEDUPE_PER_TASK * n_predictions
        self.redis.eval(_SET_MAX, 1, self.key("predicted", project_id), time.time() + delay, self.job_timeout)
        return self.request_dedupe(project_id, delay)

    def request_dedupe(self, project_id: int, delay: float) -> str:
        """The waiting duplicate clean-up of the project, scheduled in ``delay`` seconds if none waits."""
        return self._coalesced(DEDUPE_SLOT, DEDUPE, project_id, delay=delay)

    def dedupe_wait(self, project_id: int) -> float:
        """Seconds until LS should have saved what the project's last /predict answers returned (<= 0: now)."""
        until = self.redis.get(self.key("predicted", project_id))
        return float(until) - time.time() if until is not None else 0.0

    # -- metrics ----------------------------------------------------------------------------------------------
    def record_duration(self, kind: str, seconds: float, outcome: str) -> None:
        """Add a finished job's run time to the queue's totals (read by the web app's /metrics)."""
        key = f"al:{self.queue.name}:durations"
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, f"{kind}|{outcome}|count", 1)
            pipe.hincrbyfloat(key, f"{kind}|{outcome}|sum", seconds)
            pipe.execute()

    def durations(self) -> dict[tuple[str, str], tuple[int, float]]:
        """(kind, outcome) -> (jobs, total seconds) since the queue's Redis was created."""
        raw = {k.decode(): float(v) for k, v in self.redis.hgetall(f"al:{self.queue.name}:durations").items()}
        out: dict[tuple[str, str], tuple[int, float]] = {}
        for field, value in raw.items():
            kind, outcome, what = field.rsplit("|", 2)
            count, total = out.get((kind, outcome), (0, 0.0))
            out[(kind, outcome)] = (int(value), total) if what == "count" else (count, value)
        return out

    def depth(self) -> dict[str, int]:
        """Jobs by state: queued (ready), queued embedding chunks, scheduled (delayed retries and clean-ups),
        started, failed (the last two of both queues)."""
        q = self.queue
        return {
            "queued": q.count,
            "queued_chunks": self.chunks.count,
            "scheduled": ScheduledJobRegistry(queue=q).count,
            "started": sum(StartedJobRegistry(queue=x).count for x in self.queues),
            "failed": sum(FailedJobRegistry(queue=x).count for x in self.queues),
        }

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
            status = job.get_status()
            meta = job.meta
            if status == JobStatus.DEFERRED and "fanout" in meta:  # the chunks count themselves (no meta race)
                meta = {**meta, "done": self.chunks_done(job.id)}
            jobs.append(
                {
                    "id": job.id,
                    "kind": job.meta.get("kind"),
                    "status": str(status.value),
                    "meta": meta,
                    "retries_left": job.retries_left,
                    "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
                    "ended_at": job.ended_at.isoformat() if job.ended_at else None,
                    # a retried attempt leaves no rq result: the worker keeps its error in the meta
                    "error": exc.strip().splitlines()[-1] if exc else job.meta.get("last_error"),
                }
            )
        return jobs

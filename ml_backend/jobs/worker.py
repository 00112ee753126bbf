"""Running workers: the rq worker process, the supervisor that restarts it, and a local Redis for one machine.

The worker loads the models before rq forks its work horses, so every job starts warm (copy-on-write).
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import Any

from redis import Redis
from rq import Worker
from rq.job import Job

from ml_backend.jobs import context
from ml_backend.jobs.queue import JobQueue, connect
from ml_backend.labelstudio.client import LabelStudioError, LabelStudioNotConfigured
from ml_backend.learning.service import InvalidModelConfig
from ml_backend.learning.store import StoreError
from ml_backend.models.config import UnknownModelConfig
from ml_backend.settings import Settings

log = logging.getLogger(__name__)

#: errors no retry can fix: LS's URL or token missing, a project's model config missing or invalid
CONFIGURATION_ERRORS = (LabelStudioNotConfigured, UnknownModelConfig, InvalidModelConfig)
#: how often the worker checks its rq scheduler (the process that enqueues due retries) and restarts it: the
#: scheduler dies with its Redis connection (a Redis restart) and rq's default check runs every 10 minutes
MAINTENANCE_INTERVAL = 20
#: worker heartbeat TTL; the idle dequeue waits ``WORKER_TTL - 15`` s, so maintenance runs at least that often
WORKER_TTL = 35


class BackendWorker(Worker):
    """rq's worker with errors an admin can read: LS or the model store being down, LS unconfigured, is one log line
    (the message says what to check), not a traceback per attempt; a job failing on configuration (LS's URL and
    token, a model config) is not retried, whatever its kind; and every failed attempt's error lands in the job's
    meta, so the project status shows it while a retry waits (rq keeps no result for a retried attempt)."""

    def handle_exception(
        self, job: Job, *exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        exc = exc_info[1] if len(exc_info) > 1 else None
        message = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        try:
            job.meta["last_error"] = message.splitlines()[0][:500]
            job.save_meta()
        except Exception as err:  # Redis itself may be the problem: the log line below still says what failed
            log.warning("job %s: could not record its error: %s", job.id, err)
        if isinstance(exc, CONFIGURATION_ERRORS):
            job.retries_left = 0  # no attempt can succeed until the admin fixes the configuration
        if isinstance(exc, (LabelStudioError, StoreError, *CONFIGURATION_ERRORS)):
            retrying = "retrying later" if job.should_retry else "no retry left"
            log.error("job %s (%s) failed: %s (%s)", job.id, job.meta.get("kind"), message, retrying)
            return
        super().handle_exception(job, *exc_info)


def run_worker(settings: Settings, burst: bool = False, preload: bool = True) -> None:
    """Serve the queue's jobs in this process until stopped (or until the queue is empty with ``burst``)."""
    context.install(context.WorkerContext.build(settings, preload=preload))
    redis = connect(settings.redis_url or "")
    options: dict[str, Any] = {"maintenance_interval": MAINTENANCE_INTERVAL, "worker_ttl": WORKER_TTL}
    worker = BackendWorker(JobQueue.from_settings(redis, settings).queues, connection=redis, **options)
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level.upper())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """A Redis for single-machine use: the real server if installed, else an embedded compatible one."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self._server = None
        binary = shutil.which("redis-server")
        if binary:
            workdir = tempfile.mkdtemp(prefix="ml-backend-redis-")
            self._proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    workdir,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            kind = f"redis-server (PID {self._proc.pid})"
        else:
            from fakeredis import TcpFakeServer

            self._server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
            threading.Thread(target=self._server.serve_forever, daemon=True, name="fakeredis").start()
            kind = "embedded fakeredis server"
        self._wait()
        log.info("no REDIS_URL: started a local %s at %s", kind, self.url)

    def _wait(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the local Redis at {self.url} did not start") from exc
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._server:
            self._server.shutdown()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the serving process dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerSupervisor:
    """Runs ``ml-backend worker`` as a child process and restarts it (with backoff) if it dies."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="worker-supervisor")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ml_backend.cli", "worker"], env=self.env, preexec_fn=_die_with_parent
            )
            log.info("started worker process %s", self.proc.pid)
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            log.error("worker process exited with %s; restarting in %.0f s", code, backoff)
            self._stopping.wait(backoff)

    def stop(self) -> None:
        self._stopping.set()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

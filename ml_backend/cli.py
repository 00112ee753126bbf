"""``ml-backend``: serve (web app + worker [+ a local Redis]), worker, simulate (active-learning simulator).

``ml-backend serve`` alone gives a working loop on one machine: with no REDIS_URL it starts a local Redis
(``redis-server`` when installed, else fakeredis's embedded TCP server) and one worker process next to the web
app, restarting the worker if it dies. Production runs ``serve --no-worker`` plus separate ``worker``
processes against an external Redis; the rq code path is the same either way.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ml_backend.settings import Settings
from ml_backend.simulation import add_simulate_parser

log = logging.getLogger("ml_backend")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")


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
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            kind = f"redis-server (PID {self._proc.pid})"
        else:
            from fakeredis import TcpFakeServer

            self._server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
            threading.Thread(target=self._server.serve_forever, daemon=True, name="fakeredis").start()
            kind = "embedded fakeredis server"
        self._wait()
        log.info("no REDIS_URL: started a local %s at %s", kind, self.url)

    def _wait(self) -> None:
        from redis import Redis

        deadline = time.monotonic() + 10
        while True:
            try:
                Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the local Redis at {self.url} did not start")
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
            self.proc = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker"], env=self.env,
                                         preexec_fn=_die_with_parent)
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


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ml_backend.api.app import create_app

    local_redis = None
    if not os.environ.get("REDIS_URL"):
        local_redis = LocalRedis()
        os.environ["REDIS_URL"] = local_redis.url
    settings = Settings()
    supervisor = None
    if not args.no_worker:
        supervisor = WorkerSupervisor(dict(os.environ))
        supervisor.start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into SystemExit so the cleanup below runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower(),
                    timeout_keep_alive=75)
    finally:
        if supervisor:
            supervisor.stop()
        if local_redis:
            local_redis.stop()


def cmd_worker(args: argparse.Namespace) -> None:
    from rq import Queue, Worker

    from ml_backend.jobs import context
    from ml_backend.jobs.queue import connect

    settings = Settings()
    if not settings.redis_url:
        sys.exit("ml-backend worker needs REDIS_URL (or use `ml-backend serve`, which starts one)")
    # load models once, before rq forks a work horse per job: every job starts warm (copy-on-write)
    context.install(context.WorkerContext.build(settings, preload=not args.no_preload))
    redis = connect(settings.redis_url)
    worker = Worker([Queue(settings.queue_name, connection=redis)], connection=redis)
    worker.work(burst=args.burst, with_scheduler=True, logging_level=settings.log_level.upper())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ml-backend", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP backend (and a worker, and a local Redis if REDIS_URL is unset)")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9090")))
    serve.add_argument("--no-worker", action="store_true", help="do not start a worker (run `ml-backend worker` apart)")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run an rq worker for training and scoring jobs")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--no-preload", action="store_true", help="load models on first use instead of at start")
    worker.set_defaults(func=cmd_worker)
    add_simulate_parser(sub)
    args = parser.parse_args(argv)
    _setup_logging(Settings().log_level)
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()

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
import signal
import sys

from pydantic import ValidationError

from ml_backend import __version__
from ml_backend.exports.cli import add_export_parser
from ml_backend.settings import Settings
from ml_backend.simulation.cli import add_simulate_parser, plain_help

log = logging.getLogger("ml_backend")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ml_backend.api.app import create_app
    from ml_backend.jobs.worker import LocalRedis, WorkerSupervisor

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
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=settings.log_level.lower(),
            timeout_keep_alive=75,
        )
    finally:
        if supervisor:
            supervisor.stop()
        if local_redis:
            local_redis.stop()


def cmd_worker(args: argparse.Namespace) -> None:
    from ml_backend.jobs.worker import run_worker

    settings = Settings()
    if not settings.redis_url:
        sys.exit("ml-backend worker needs REDIS_URL (or use `ml-backend serve`, which starts one)")
    run_worker(settings, burst=args.burst, preload=not args.no_preload)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ml-backend", description=plain_help(__doc__.split("\n")[0]))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP backend (and a worker, and a local Redis if REDIS_URL is unset)")
    serve.add_argument(
        "--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to listen on (env HOST; default 0.0.0.0)"
    )
    serve.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "9090")), help="port (env PORT; default 9090)"
    )
    serve.add_argument("--no-worker", action="store_true", help="do not start a worker (run `ml-backend worker` apart)")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run an rq worker for training and scoring jobs")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--no-preload", action="store_true", help="load models on first use instead of at start")
    worker.set_defaults(func=cmd_worker)
    add_simulate_parser(sub)
    add_export_parser(sub)
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:  # e.g. half-set Basic auth: refuse to start, say what to fix, no traceback
        # only the messages: pydantic's own text would echo the values, passwords included
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        sys.exit(f"ml-backend: invalid configuration: {problems}")
    _setup_logging(settings.log_level)
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()

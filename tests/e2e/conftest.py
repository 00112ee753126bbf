"""Fixtures of the end-to-end suite: a real Label Studio 1.23.2 and real backend processes.

* ``ls_server`` (session): ``tests.lsserver.LabelStudioServer`` on a free loopback port (installs LS into its own
  venv under ``~/.cache/al-backend-ls`` on first use, ~3 min once; ~6 s per start after that).
* ``start_backend`` (per test): starts ``ml-backend serve --host 127.0.0.1 --port <free>`` from the environment
  running pytest, exactly as a user would, with its own DATA_DIR and a flushed Redis db; stops every process it
  started (process group) after the test.
* on a failure the tails of every server log (LS, each backend) and the last LS API calls are added to the report.

Redis: ``E2E_REDIS_URL`` (default ``redis://127.0.0.1:6379/5``), with a fresh QUEUE_NAME (and so key namespace) per
backend. When no Redis answers there, REDIS_URL is left unset and ``ml-backend serve`` starts its own local one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # make `tests.lsserver` importable however pytest was started
    sys.path.insert(0, str(ROOT))

from tests.e2e.lsapi import LSApi  # noqa: E402
from tests.lsserver import LabelStudioServer, free_port, stop_process_group, tail_file, wait_healthy  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/5"
LOG_TAIL_LINES = int(os.environ.get("E2E_LOG_TAIL", "80"))

# name -> callable returning the text to show when a test fails (LS session-wide, backends per test)
_LOG_SOURCES: dict[str, callable] = {}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not _LOG_SOURCES:
        return
    for name, source in list(_LOG_SOURCES.items()):
        try:
            text = source()
        except Exception as e:  # never hide the real failure behind a reporting error
            text = f"(could not read: {e!r})"
        report.sections.append((f"{name} ({report.when})", text or "(empty)"))


# --------------------------------------------------------------------------------------------- Label Studio


@pytest.fixture(scope="session")
def ls_server():
    server = LabelStudioServer()
    try:
        server.start()
    except Exception as e:
        pytest.fail(f"could not start Label Studio: {e}", pytrace=False)
    _LOG_SOURCES["Label Studio log tail"] = lambda: f"{server.log_path}\n{server.tail_log(LOG_TAIL_LINES)}"
    yield server
    _LOG_SOURCES.pop("Label Studio log tail", None)
    server.stop()


@pytest.fixture()
def ls_api(ls_server):
    api = LSApi(ls_server.url, ls_server.token)
    _LOG_SOURCES["last Label Studio API calls"] = lambda: "\n".join(api.calls)
    yield api
    _LOG_SOURCES.pop("last Label Studio API calls", None)
    api.close()


# --------------------------------------------------------------------------------------------- the backend


def _redis_url() -> str | None:
    url = os.environ.get("E2E_REDIS_URL", DEFAULT_REDIS_URL)
    if url in ("", "local"):
        return None
    try:
        from redis import Redis

        Redis.from_url(url, socket_connect_timeout=1).ping()
        return url
    except Exception:
        return None


@dataclass
class Backend:
    """One ``ml-backend serve`` process group."""

    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    data_dir: Path
    env: dict = field(repr=False, default_factory=dict)

    def tail_log(self, n: int = LOG_TAIL_LINES) -> str:
        return tail_file(self.log_path, n)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)

    def status(self, project_id: int) -> dict:
        with self.client() as c:
            r = c.get(f"/projects/{project_id}/status")
            if r.status_code != 200:
                raise AssertionError(f"backend GET /projects/{project_id}/status -> {r.status_code}: {r.text[:1000]}")
            return r.json()

    def stop(self) -> None:
        stop_process_group(self.proc, timeout=20)


@pytest.fixture()
def start_backend(ls_server, tmp_path, request):
    """``start_backend(api_key=None, **env) -> Backend``: ``ml-backend serve`` as a user starts it."""
    exe = Path(sys.executable).parent / "ml-backend"
    if not exe.exists():
        pytest.fail(
            f"console script {exe} is missing: install the package (pip install -e .) in this environment",
            pytrace=False,
        )
    started: list[Backend] = []

    def start(api_key: str | None = None, name: str | None = None, **extra_env: str) -> Backend:
        name = name or f"backend{len(started) + 1}"
        port = free_port()
        data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-data-", dir=tmp_path))
        log_path = tmp_path / f"{name}-{port}.log"
        env = dict(os.environ)
        for k in ("REDIS_URL", "LABEL_STUDIO_ACCESS_TOKEN", "LABEL_STUDIO_HOST", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
            env.pop(k, None)
        redis_url = _redis_url()
        if redis_url:
            env["REDIS_URL"] = redis_url
            # a queue (and Redis key namespace) of its own: no leftovers of earlier runs, no clash with a
            # concurrent test session on the same Redis
            env["QUEUE_NAME"] = f"e2e-{name}-{uuid.uuid4().hex[:8]}"
        no_proxy = ",".join(x for x in (env.get("NO_PROXY"), "127.0.0.1,localhost") if x)
        env.update(
            {
                "DATA_DIR": str(data_dir),
                "LABEL_STUDIO_URL": ls_server.url,
                "LABEL_STUDIO_API_KEY": api_key or ls_server.token,
                "TORCH_THREADS": "1",
                "NO_PROXY": no_proxy,
                "no_proxy": no_proxy,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update({k: str(v) for k, v in extra_env.items()})
        log_file = open(log_path, "w")
        proc = subprocess.Popen(
            [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(data_dir),
            start_new_session=True,
        )
        log_file.close()
        backend = Backend(name, f"http://127.0.0.1:{port}", proc, log_path, data_dir, env)
        started.append(backend)
        _LOG_SOURCES[f"{name} log tail"] = lambda b=backend: f"{b.log_path}\n{b.tail_log()}"
        wait_healthy(
            f"{backend.url}/health",
            backend.proc,
            "`ml-backend serve`",
            backend.log_path,
            timeout=float(os.environ.get("E2E_BACKEND_STARTUP_TIMEOUT", "120")),
        )
        return backend

    yield start
    for b in started:
        b.stop()
        _LOG_SOURCES.pop(f"{b.name} log tail", None)
        shutil.rmtree(b.data_dir, ignore_errors=True)

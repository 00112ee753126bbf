"""Shared fixtures: real models loaded once per session, test model configs, a local HTTP file server."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from redis import Redis

from ml_backend.api.app import create_app
from ml_backend.models.encoders import configure_threads
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings
from tests.lsserver import free_port

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "model_configs"


@pytest.fixture(scope="session")
def ls_server():
    """A real Label Studio 1.23.2 for the whole integration session (tests.lsserver installs it on first use)."""
    from tests.lsserver import LabelStudioServer

    server = LabelStudioServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def encoders() -> EncoderPool:
    configure_threads(1)
    return EncoderPool()


@pytest.fixture(scope="session")
def configs_dir(tmp_path_factory) -> Path:
    """The shipped configs plus variants the tests need (another strategy, a slow training)."""
    folder = tmp_path_factory.mktemp("model_configs")
    for f in REPO_CONFIGS.glob("*.yaml"):
        shutil.copy(f, folder)
    base = yaml.safe_load((REPO_CONFIGS / "text-minilm.yaml").read_text())
    for strategy in ("entropy", "margin", "least_confidence"):
        variant = {
            **base,
            "name": f"minilm-{strategy.replace('_', '')}",
            "acquisition": {**base["acquisition"], "strategy": strategy},
        }
        (folder / f"text-minilm-{strategy}.yaml").write_text(yaml.safe_dump(variant))
    full = {**base, "name": "minilm-full", "training": {**base["training"], "mode": "full", "full_epochs": 1}}
    (folder / "text-minilm-full.yaml").write_text(yaml.safe_dump(full))
    return folder


class FileServer:
    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def file_server(tmp_path_factory) -> FileServer:
    server = FileServer(tmp_path_factory.mktemp("files"))
    yield server
    server.httpd.shutdown()


@pytest.fixture()
def make_client(tmp_path, configs_dir, encoders, file_server):
    """A TestClient on the real app; ``label_studio_url`` points at the local file server so images download."""
    from fastapi.testclient import TestClient

    def make(**overrides) -> TestClient:
        values = dict(
            data_dir=tmp_path / "data",
            model_configs_dir=configs_dir,
            redis_url="redis://127.0.0.1:6379/14",
            label_studio_url=file_server.url,
            label_studio_api_key="not-used-by-the-file-server",
        )
        values.update(overrides)
        return TestClient(create_app(Settings(**values), encoders=encoders))

    return make


class OwnRedis:
    """A redis-server of this test alone on a fixed port, so it can be frozen, stopped and started again."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> OwnRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.workdir)]
            + ["--appendonly", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except Exception:
                assert time.monotonic() < deadline, "the test's redis-server did not start"
                time.sleep(0.05)

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture()
def own_redis(tmp_path):
    redis = OwnRedis(tmp_path).start()
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's, over HTTP) for the model store tests, with an empty bucket ``models``."""
    from tests.s3server import S3Server

    with S3Server() as server:
        server.create_bucket("models")
        yield server

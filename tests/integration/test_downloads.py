"""Image downloads under hostile servers, through the real app: SSRF targets refused (and never hit), total
deadlines on trickling servers, byte caps, parallel downloads within one budget, nothing broken left cached."""

from __future__ import annotations

import contextlib
import http.server
import io
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from ml_backend.labelstudio.downloads import DownloadPolicy, DownloadRefused
from tests.integration.test_api import IMAGE, predict, setup


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (20, 120, 220)).save(buf, format="PNG")
    return buf.getvalue()


class _Server:
    """A local HTTP server whose handler is ``handle(request_handler)``; records every path it is asked for."""

    def __init__(self, handle):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:  # noqa: N802
                hits.append(self.path)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    handle(self)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _label_studio(h: http.server.BaseHTTPRequestHandler) -> None:
    """The LS host of these tests: good and hostile files, and redirects."""
    path, query = urlsplit(h.path).path, parse_qs(urlsplit(h.path).query)
    if path.startswith("/ok"):
        body = _png()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    elif path == "/trickle":  # one byte every 0.5 s, for a minute: each read is quick, the whole never ends
        h.send_response(200)
        h.end_headers()
        for _ in range(120):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.5)
    elif path in ("/huge", "/huge-declared"):
        h.send_response(200)
        if path == "/huge-declared":
            h.send_header("Content-Length", str(50 * 2**20))
        h.end_headers()
        for _ in range(50):
            h.wfile.write(b"\0" * 2**20)
    elif path == "/broken.png":
        h.send_response(200)
        h.end_headers()
        h.wfile.write(b"not an image " * 100_000)
    elif path == "/redirect":
        h.send_response(302)
        h.send_header("Location", query["to"][0])
        h.end_headers()
    else:
        h.send_response(404)
        h.end_headers()


@pytest.fixture()
def ls():
    server = _Server(_label_studio)
    yield server
    server.close()


@pytest.fixture()
def target():
    """An SSRF target: a local HTTP service that must never be reached through the backend."""

    def answer(h):
        h.send_response(200)
        h.end_headers()
        h.wfile.write(_png())

    server = _Server(answer)
    yield server
    server.close()


def _tasks(urls: list[str]) -> list[dict]:
    return [{"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)]


def _reasons(client, urls: list[str]) -> list[str | None]:
    """The per-task outcome of scoring ``urls`` (None = scored), straight from the service /predict uses."""
    backend = client.app.state.backend
    outcomes = backend.service.score(backend.service.state(40), _tasks(urls))
    return [o.reason for o in outcomes]


def test_files_come_only_from_the_label_studio_host(make_client, ls, target):
    client = make_client(label_studio_url=ls.url)
    setup(client, "40.1", IMAGE)
    urls = [
        f"{ls.url}/ok.png",  # LS itself (here on 127.0.0.1): allowed
        f"{target.url}/secret.png",  # another local service
        "http://127.0.0.1:6379/",  # the Redis port
        f"{ls.url}/redirect?to={target.url}/via-redirect.png",  # LS redirecting elsewhere
        f"{ls.url}/redirect?to={ls.url}/ok-again.png",  # a redirect within LS: fine
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "file:///etc/passwd",
    ]
    reasons = _reasons(client, urls)
    assert reasons[0] is None and reasons[4] is None, reasons
    for reason in reasons[1:4] + reasons[5:]:
        assert reason and "refused" in reason, reasons
    assert target.hits == []  # never contacted, not even by the redirect
    results = predict(client, "40.1", IMAGE, _tasks(urls[:2]))
    assert results[0]["score"] >= 0 and results[1] == []


def test_the_allow_list_admits_public_hosts_only():
    policy = DownloadPolicy("http://ls.internal:8080", allowed_hosts=["93.184.216.*", "10.0.0.*"])
    assert policy.check("http://ls.internal:8080/data/upload/1/x.png") is True  # LS: gets the token
    assert policy.check("https://93.184.216.34/bucket/x.png?X-Amz-Signature=s") is False  # allowed, no token
    with pytest.raises(DownloadRefused, match="non-public"):
        policy.check("http://10.0.0.5/x.png")  # allow-listed but private: refused
    with pytest.raises(DownloadRefused, match="DOWNLOAD_ALLOWED_HOSTS"):
        policy.check("http://ls.internal:9090/x.png")  # LS's host name on another port is another service


def test_a_trickling_server_is_cut_off_at_the_total_deadline(make_client, ls):
    client = make_client(label_studio_url=ls.url, download_timeout=2.0)
    setup(client, "40.1", IMAGE)
    started = time.perf_counter()
    (reason,) = _reasons(client, [f"{ls.url}/trickle"])
    elapsed = time.perf_counter() - started
    print(f"trickling download cut off after {elapsed:.2f} s (DOWNLOAD_TIMEOUT 2 s)")
    assert "time" in reason and elapsed < 4.0


def test_downloads_run_in_parallel_within_one_budget(make_client, ls):
    client = make_client(label_studio_url=ls.url, download_timeout=3.0, download_concurrency=8)
    setup(client, "40.1", IMAGE)
    urls = [f"{ls.url}/trickle?{i}" for i in range(6)] + [f"{ls.url}/ok.png"]
    started = time.perf_counter()
    results = predict(client, "40.1", IMAGE, _tasks(urls))
    elapsed = time.perf_counter() - started
    print(f"6 dead downloads + 1 good one: /predict in {elapsed:.2f} s (sequential: > 18 s)")
    assert elapsed < 6.0 and results[-1]["score"] >= 0 and all(r == [] for r in results[:-1])
    # the request's budget caps the whole, whatever the per-download timeout
    client = make_client(label_studio_url=ls.url, download_timeout=30.0, download_budget=2.0, download_concurrency=2)
    setup(client, "40.1", IMAGE)
    started = time.perf_counter()
    results = predict(client, "40.1", IMAGE, _tasks(urls))
    elapsed = time.perf_counter() - started
    print(f"same with DOWNLOAD_BUDGET 2 s and 2 parallel downloads: {elapsed:.2f} s")
    assert elapsed < 5.0 and all(r == [] for r in results[:-1])


@pytest.mark.parametrize("path", ["/huge", "/huge-declared"])
def test_oversized_downloads_are_refused_and_never_cached(make_client, ls, tmp_path, path):
    client = make_client(label_studio_url=ls.url, download_max_bytes=2**20)
    setup(client, "40.1", IMAGE)
    started = time.perf_counter()
    (reason,) = _reasons(client, [f"{ls.url}{path}"])
    assert "DOWNLOAD_MAX_BYTES" in reason and time.perf_counter() - started < 5
    files = client.app.state.backend.settings.files_dir
    assert not files.exists() or list(files.iterdir()) == []


def test_an_undecodable_file_does_not_stay_in_the_cache(make_client, ls):
    client = make_client(label_studio_url=ls.url)
    setup(client, "40.1", IMAGE)
    reasons = _reasons(client, [f"{ls.url}/broken.png", f"{ls.url}/ok.png"])
    assert "cannot decode" in reasons[0] and reasons[1] is None
    files = client.app.state.backend.settings.files_dir
    assert [p.name for p in files.iterdir()] == [p.name for p in files.iterdir() if "ok" in p.name]
    assert len(list(files.iterdir())) == 1  # the good file stays cached

"""Run a real Label Studio server for tests (end-to-end and integration).

``LabelStudioServer`` installs ``label-studio`` into a virtualenv of its own (never the backend's), builds a migrated
template data dir once, copies it for every fresh start (~6 s instead of ~64 s of migrations), starts LS on
``127.0.0.1:<free port>`` with SQLite (or PostgreSQL) and a known admin + legacy API token, and stops exactly the
process it started (by PID and process group).

    from tests.lsserver import LabelStudioServer

    with LabelStudioServer() as ls:          # or: ls = LabelStudioServer().start(); ...; ls.stop()
        ls.url, ls.token                     # http://127.0.0.1:PORT, 40 hex chars (legacy "Token" auth)
        pat = ls.create_pat()                # personal access token (JWT refresh token)
        ls.tail_log(50)

    with LabelStudioServer(db="postgres") as ls:   # LS on PostgreSQL (127.0.0.1:5432), a fresh database per run

Environment variables (all optional):
  LS_CACHE_DIR   where the venv and the template live [$XDG_CACHE_HOME or ~/.cache]/al-backend-ls
  LS_VENV        venv holding label-studio [$LS_CACHE_DIR/ls-venv]; created (``pip install label-studio==X``) if missing
  LS_VERSION     label-studio version [1.23.2]
  LS_STARTUP_TIMEOUT  seconds to wait for /health [180]
  LS_KEEP_DATA   1 = keep each run's data dir (and PostgreSQL database) after stop (for debugging)
  LS_POSTGRES_HOST / LS_POSTGRES_PORT / LS_POSTGRES_USER  the PostgreSQL server for ``db="postgres"``
                 [127.0.0.1 / 5432 / postgres; trust auth, or LS_POSTGRES_PASSWORD]

Facts this relies on (Label Studio 1.23.2): LABEL_STUDIO_USERNAME/PASSWORD/USER_TOKEN create the admin with no
prompt; legacy token auth is off for new orgs unless LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true at org creation
(``init --enable-legacy-api-token``); ML backends and webhooks on 127.0.0.1 need ML_BLOCK_LOCAL_IP=false and
SSRF_PROTECTION_ENABLED=false; a PAT is signed with SECRET_KEY (fixed here) and only one valid PAT per user may exist
(POST /api/token/ answers 409 for a second one), so ``create_pat`` caches it.

PostgreSQL (verified in LS 1.23.2's ``core/settings/label_studio.py`` and ``base.py``): ``DJANGO_DB`` selects the
database, ``sqlite`` by default in ``label-studio start``; ``postgresql`` (or ``default``) uses
``POSTGRE_NAME/USER/PASSWORD/HOST/PORT``. LS ships the driver (``psycopg[binary]`` 3). The migrated, initialised
database is built once as a PostgreSQL template database; each start clones it (``CREATE DATABASE ... TEMPLATE``,
about a second instead of a minute of migrations) under a fresh name, dropped again at stop.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

import httpx

DEFAULT_VERSION = "1.23.2"
DEFAULT_USER = "admin@example.com"
DEFAULT_PASSWORD = "admin12345"
DEFAULT_TOKEN = "0123456789abcdef0123456789abcdef01234567"
DEFAULT_SECRET_KEY = "al-backend-tests-secret-key-not-for-production"
DATABASES = ("sqlite", "postgres")

# Environment variables of the calling process that must not leak into LS's interpreter.
_SCRUB_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "DJANGO_SETTINGS_MODULE",
    "LABEL_STUDIO_URL",
    "LABEL_STUDIO_API_KEY",
    "LABEL_STUDIO_HOST",
    "DATABASE_URL",
    "POSTGRE_HOST",
    "POSTGRE_PORT",
    "POSTGRE_NAME",
    "POSTGRE_USER",
    "POSTGRE_PASSWORD",
    "DJANGO_DB",
    "LABEL_STUDIO_BASE_DATA_DIR",
    "LOCAL_FILES_DOCUMENT_ROOT",
    "LOCAL_FILES_SERVING_ENABLED",
)


class LabelStudioError(RuntimeError):
    """Label Studio could not be installed, started or reached; the message carries the evidence."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_cache_dir() -> Path:
    if os.environ.get("LS_CACHE_DIR"):
        return Path(os.environ["LS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "al-backend-ls"


def tail_file(path: Path | str | None, n: int = 40) -> str:
    """The last ``n`` lines of a text file ('' if it does not exist)."""
    if not path or not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(deque(f, maxlen=n))


def wait_healthy(
    url: str,
    proc: subprocess.Popen,
    what: str,
    log_path: Path | str | None,
    timeout: float,
    error: type[Exception] = AssertionError,
    expect: str = "",
) -> None:
    """Poll ``url`` until it answers 200 (with ``expect`` in the body); fail early if ``proc`` exits, and always
    say what the server last answered and the tail of its log."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(timeout=3.0, trust_env=False) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise error(
                    f"{what} exited with code {proc.returncode} before it was ready; "
                    f"tail of {log_path}:\n{tail_file(log_path, 60)}"
                )
            try:
                r = c.get(url)
                if r.status_code == 200 and expect in r.text:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.25)
    raise error(
        f"{what} did not answer {url} within {timeout:.0f} s (last: {last}); "
        f"tail of {log_path}:\n{tail_file(log_path, 60)}"
    )


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with start_new_session=True), SIGKILL after ``timeout``.

    Only that group is signalled: the PID is the one this process started, never looked up by name.
    """
    if proc is None:
        return
    pgid = proc.pid

    def group_alive() -> bool:
        proc.poll()  # reap the leader so that it does not linger as a zombie
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    if group_alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def run_with_progress(cmd: list[str], log: Path, what: str, timeout: float, every: float = 15.0, **kwargs):
    """``subprocess.run`` into ``log``, printing a progress line to stderr every ``every`` seconds (elapsed time
    and the log's last line): installing LS takes minutes, and a silent test run looks hung."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **kwargs)
        while True:
            try:
                proc.wait(timeout=every)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - t0
                if elapsed > timeout:
                    proc.kill()
                    proc.wait()
                    raise
                last = tail_file(log, 1).strip()[:100]
                print(f"[lsserver] {what}: {elapsed:.0f} s ... {last}", file=sys.stderr, flush=True)
    return subprocess.CompletedProcess(cmd, proc.returncode)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock, so that parallel test processes install/build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class LabelStudioServer:
    """One Label Studio process on 127.0.0.1 with a fresh copy of a migrated data dir (and, with
    ``db="postgres"``, a fresh clone of a migrated PostgreSQL database)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        cache_dir: Path | str | None = None,
        venv: Path | str | None = None,
        version: str | None = None,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        token: str = DEFAULT_TOKEN,
        secret_key: str = DEFAULT_SECRET_KEY,
        run_dir: Path | str | None = None,
        startup_timeout: float | None = None,
        extra_env: dict[str, str] | None = None,
        keep_data: bool | None = None,
        db: str = "sqlite",
    ) -> None:
        if db not in DATABASES:
            raise LabelStudioError(f"db must be one of {DATABASES}, got {db!r}")
        self.db = db
        self.pg = {
            "host": os.environ.get("LS_POSTGRES_HOST", "127.0.0.1"),
            "port": os.environ.get("LS_POSTGRES_PORT", "5432"),
            "user": os.environ.get("LS_POSTGRES_USER", "postgres"),
            "password": os.environ.get("LS_POSTGRES_PASSWORD", ""),
        }
        self.pg_database: str | None = None
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.venv = Path(venv or os.environ.get("LS_VENV") or self.cache_dir / "ls-venv").expanduser()
        self.version = version or os.environ.get("LS_VERSION") or DEFAULT_VERSION
        self.user, self.password, self.token, self.secret_key = user, password, token, secret_key
        self.port = port
        self.startup_timeout = float(startup_timeout or os.environ.get("LS_STARTUP_TIMEOUT") or 180)
        self.extra_env = dict(extra_env or {})
        self.keep_data = bool(int(os.environ.get("LS_KEEP_DATA", "0"))) if keep_data is None else keep_data
        self._run_dir_arg = Path(run_dir) if run_dir else None
        self.run_dir: Path | None = None
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._pat: str | None = None
        self._session: httpx.Client | None = None

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        if self.port is None:
            raise LabelStudioError("Label Studio has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def label_studio_bin(self) -> Path:
        return self.venv / "bin" / "label-studio"

    @property
    def template_dir(self) -> Path:
        return self.cache_dir / f"data-template-{self.version}-{self._template_key}"

    @property
    def _template_key(self) -> str:
        parts = [self.version, self.user, self.password, self.token, self.secret_key]
        if self.db == "postgres":
            parts += ["postgres", self.pg["host"], self.pg["port"]]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:10]

    @property
    def pg_template(self) -> str:
        """The migrated PostgreSQL database every run clones (one per LS version and admin)."""
        return f"ls_template_{self.version.replace('.', '_')}_{self._template_key}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def headers(self, token: str | None = None) -> dict[str, str]:
        """``Authorization`` header for a legacy token (default: the admin's) or a JWT access token."""
        token = token or self.token
        scheme = "Bearer" if token.count(".") == 2 else "Token"
        return {"Authorization": f"{scheme} {token}"}

    def client(self, token: str | None = None, timeout: float = 60.0) -> httpx.Client:
        """An httpx client on ``url`` with the admin's token; ignores proxy env vars (loopback only)."""
        return httpx.Client(base_url=self.url, headers=self.headers(token), timeout=timeout, trust_env=False)

    def sdk(self, api_key: str | None = None):
        """A label-studio-sdk client (imported lazily: only tests that want it need the SDK)."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(
            base_url=self.url, api_key=api_key or self.token, httpx_client=httpx.Client(timeout=60.0, trust_env=False)
        )

    def tail_log(self, n: int = 40) -> str:
        return tail_file(self.log_path, n)

    # ------------------------------------------------------------------ install + template
    def _ls_installed(self) -> bool:
        if not self.label_studio_bin.exists():
            return False
        pattern = str(self.venv / "lib" / "python*" / "site-packages" / f"label_studio-{self.version}.dist-info")
        return bool(glob.glob(pattern))

    def ensure_installed(self) -> Path:
        """Create the venv and ``pip install label-studio==VERSION`` unless it is already there (~90 s, ~1 GB)."""
        if self._ls_installed():
            return self.venv
        with _file_lock(self.cache_dir / ".install.lock"):
            if self._ls_installed():
                return self.venv
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            log = self.cache_dir / "pip-install.log"
            if not (self.venv / "bin" / "python").exists():
                base_python = getattr(sys, "_base_executable", None) or sys.executable
                r = subprocess.run([base_python, "-m", "venv", str(self.venv)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise LabelStudioError(f"could not create venv {self.venv}:\n{r.stdout}\n{r.stderr}")
            env = _scrubbed_env()
            cmd = [
                str(self.venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                f"label-studio=={self.version}",
            ]
            t0 = time.monotonic()
            print(f"[lsserver] installing label-studio {self.version} into {self.venv} (once, ~2 min)", file=sys.stderr)
            r = run_with_progress(cmd, log, f"installing label-studio {self.version}", timeout=1800, env=env)
            if r.returncode != 0 or not self._ls_installed():
                raise LabelStudioError(
                    f"pip install label-studio=={self.version} into {self.venv} failed "
                    f"(exit {r.returncode}); tail of {log}:\n{tail_file(log, 30)}"
                )
            print(
                f"[lsserver] installed label-studio {self.version} into {self.venv} in {time.monotonic() - t0:.0f} s",
                file=sys.stderr,
            )
        return self.venv

    def ensure_template(self) -> Path:
        """Build the migrated data dir (admin user, legacy token on) once (~60 s); later starts copy it."""
        tpl = self.template_dir
        if (tpl / "TEMPLATE_OK").exists():
            return tpl
        self.ensure_installed()
        with _file_lock(self.cache_dir / ".template.lock"):
            if (tpl / "TEMPLATE_OK").exists():
                return tpl
            tmp = Path(tempfile.mkdtemp(prefix="tpl-build-", dir=self.cache_dir))
            data = tmp / "data"
            data.mkdir()
            log = self.cache_dir / "ls-template-init.log"
            if self.db == "postgres":  # `init` migrates into the template database itself
                self._sql(f'DROP DATABASE IF EXISTS "{self.pg_template}"', f'CREATE DATABASE "{self.pg_template}"')
            env = self._ls_env(data, tmp / "home", self.pg_template)
            cmd = [
                str(self.label_studio_bin),
                "init",
                "--username",
                self.user,
                "--password",
                self.password,
                "--user-token",
                self.token,
                "--enable-legacy-api-token",
                "--quiet",
                "--no-browser",
            ]
            t0 = time.monotonic()
            print("[lsserver] building the migrated LS data template (once, ~1 min)", file=sys.stderr)
            try:
                r = run_with_progress(
                    cmd, log, "migrating LS's database", timeout=900, env=env, cwd=tmp, stdin=subprocess.DEVNULL
                )
            except subprocess.TimeoutExpired:
                r = None
            built = self.db == "postgres" or (data / "label_studio.sqlite3").exists()
            if r is None or r.returncode != 0 or not built:
                shutil.rmtree(tmp, ignore_errors=True)
                raise LabelStudioError(f"`label-studio init` failed; tail of {log}:\n{tail_file(log, 40)}")
            (data / "TEMPLATE_OK").write_text(json.dumps({"version": self.version, "user": self.user}))
            shutil.rmtree(tpl, ignore_errors=True)
            os.replace(data, tpl)
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"[lsserver] built template {tpl} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        return tpl

    # ------------------------------------------------------------------ start / stop
    def _sql(self, *statements: str) -> None:
        """Run statements on the PostgreSQL server's ``postgres`` database, outside a transaction (CREATE and DROP
        DATABASE refuse one), with the driver LS ships (psycopg 3) in LS's own virtualenv."""
        script = (
            "import sys, psycopg\n"
            "h, p, u, pw, *sql = sys.argv[1:]\n"
            "with psycopg.connect(host=h, port=int(p), user=u, password=pw or None, dbname='postgres',"
            " autocommit=True, connect_timeout=10) as c:\n"
            "    for s in sql: c.execute(s)\n"
        )
        pg = self.pg
        cmd = [str(self.venv / "bin" / "python"), "-c", script, pg["host"], pg["port"], pg["user"], pg["password"]]
        r = subprocess.run([*cmd, *statements], capture_output=True, text=True, env=_scrubbed_env(), timeout=120)
        if r.returncode != 0:
            raise LabelStudioError(
                f"PostgreSQL at {pg['host']}:{pg['port']} (user {pg['user']}) refused {statements}: {r.stderr[-800:]}"
            )

    def _ls_env(self, data_dir: Path, home: Path, pg_database: str | None = None) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        env = _scrubbed_env()
        if self.db == "postgres":
            database = {
                "DJANGO_DB": "postgresql",
                "POSTGRE_NAME": pg_database or "",
                "POSTGRE_HOST": self.pg["host"],
                "POSTGRE_PORT": self.pg["port"],
                "POSTGRE_USER": self.pg["user"],
                "POSTGRE_PASSWORD": self.pg["password"],
            }
        else:
            database = {"DJANGO_DB": "sqlite"}
        env.update(
            {
                "HOME": str(home),  # LS writes ~/.config/label-studio/
                "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
                **database,
                # no outbound calls: version check, Sentry, analytics; any other stray request dies on a dead port
                "LATEST_VERSION_CHECK": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "COLLECT_ANALYTICS": "false",
                "HTTP_PROXY": "http://127.0.0.1:9",
                "HTTPS_PROXY": "http://127.0.0.1:9",
                "http_proxy": "http://127.0.0.1:9",
                "https_proxy": "http://127.0.0.1:9",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
                "LABEL_STUDIO_USERNAME": self.user,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_USER_TOKEN": self.token,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "ML_BLOCK_LOCAL_IP": "false",
                "SSRF_PROTECTION_ENABLED": "false",
                "SECRET_KEY": self.secret_key,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> LabelStudioServer:
        if self.running:
            return self
        template = self.ensure_template()
        if self._run_dir_arg:
            self.run_dir = self._run_dir_arg
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.run_dir = Path(tempfile.mkdtemp(prefix="ls-run-"))
        self.data_dir = self.run_dir / "data"
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.copytree(template, self.data_dir, symlinks=True)
        if self.port is None:
            self.port = free_port()
        if _port_answers(self.port):
            raise LabelStudioError(f"port {self.port} on 127.0.0.1 is already in use")
        if self.db == "postgres":
            self.pg_database = f"ls_run_{uuid.uuid4().hex[:12]}"
            self._sql(f'CREATE DATABASE "{self.pg_database}" TEMPLATE "{self.pg_template}"')
        self.log_path = self.run_dir / f"ls-{self.port}.log"
        self._log_file = open(self.log_path, "w")
        env = self._ls_env(self.data_dir, self.run_dir / "home", self.pg_database)
        cmd = [
            str(self.label_studio_bin),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.run_dir,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_healthy(
                f"{self.url}/health",
                self.proc,
                "Label Studio",
                self.log_path,
                self.startup_timeout - (time.monotonic() - t0),
                LabelStudioError,
                expect="UP",
            )
            self._ensure_token()
        except BaseException:
            self.stop()
            raise
        print(
            f"[lsserver] Label Studio {self.version} up at {self.url} in {time.monotonic() - t0:.1f} s "
            f"(PID {self.proc.pid}, log {self.log_path})",
            file=sys.stderr,
        )
        return self

    def _ensure_token(self) -> None:
        """Make sure ``Token <token>`` works; enable legacy tokens as the logged-in admin if they are off."""
        with self.client() as c:
            r = c.get("/api/current-user/whoami")
            if r.status_code == 200 and r.json().get("email") == self.user:
                return
            first = f"{r.status_code} {r.text[:300]}"
            s = self._login()
            if "legacy token authentication has been disabled" in r.text:
                s.post(
                    "/api/jwt/settings",
                    json={"legacy_api_tokens_enabled": True, "api_tokens_enabled": True},
                    headers=self._csrf_headers(s),
                )
            else:
                rt = s.get("/api/current-user/token")
                if rt.status_code == 200 and rt.json().get("token"):
                    self.token = rt.json()["token"]
            with self.client() as c2:
                r = c2.get("/api/current-user/whoami")
            if r.status_code != 200:
                raise LabelStudioError(
                    f"the admin token is rejected: first {first}; after repair {r.status_code} {r.text[:300]}"
                )

    def _login(self) -> httpx.Client:
        """A cookie session logged in as the admin (Django form login with CSRF)."""
        if self._session is not None:
            return self._session
        s = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False, follow_redirects=False)
        s.get("/user/login/")
        csrf = s.cookies.get("csrftoken")
        if not csrf:
            raise LabelStudioError("no csrftoken cookie from /user/login/")
        r = s.post(
            "/user/login/",
            data={"email": self.user, "password": self.password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{self.url}/user/login/"},
        )
        if r.status_code not in (200, 302) or not s.cookies.get("sessionid"):
            raise LabelStudioError(f"login as {self.user} failed: {r.status_code} {r.text[:300]}")
        self._session = s
        return s

    def _csrf_headers(self, s: httpx.Client) -> dict[str, str]:
        return {"X-CSRFToken": s.cookies.get("csrftoken") or "", "Referer": f"{self.url}/"}

    def create_pat(self) -> str:
        """The admin's personal access token (JWT refresh token), minted once per server (LS allows one)."""
        if self._pat:
            return self._pat
        s = self._login()
        r = s.post("/api/token/", headers=self._csrf_headers(s))
        if r.status_code not in (200, 201) or "token" not in r.text:
            raise LabelStudioError(f"POST /api/token/ -> {r.status_code} {r.text[:300]}")
        self._pat = r.json()["token"]
        return self._pat

    def access_token(self, pat: str | None = None) -> str:
        """A short-lived (300 s) JWT access token exchanged for the PAT."""
        with httpx.Client(base_url=self.url, timeout=30.0, trust_env=False) as c:
            r = c.post("/api/token/refresh/", json={"refresh": pat or self.create_pat()})
            if r.status_code != 200:
                raise LabelStudioError(f"POST /api/token/refresh/ -> {r.status_code} {r.text[:300]}")
            return r.json()["access"]

    def stop(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.close()
            self._session = None
        stop_process_group(self.proc)
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.close()
            self._log_file = None
        if self.data_dir is not None and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.pg_database is not None and not self.keep_data:
            try:
                self._sql(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
            except LabelStudioError as exc:  # stopping must go on; the database is only disk space
                print(f"[lsserver] could not drop {self.pg_database}: {exc}", file=sys.stderr)
            self.pg_database = None
        self._pat = None

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"PID {self.proc.pid}" if self.running else "stopped"
        return f"<LabelStudioServer {self.port and self.url} {self.db} {state}>"


def _scrubbed_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in _SCRUB_ENV:
        env.pop(k, None)
    return env


def _port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":  # smoke run: python tests/lsserver.py [sqlite|postgres]
    with LabelStudioServer(db=sys.argv[1] if len(sys.argv) > 1 else "sqlite") as ls:
        print("url", ls.url, "token", ls.token)
        print("pat", ls.create_pat()[:24], "...")
        print(ls.client().get("/api/current-user/whoami").json()["email"])

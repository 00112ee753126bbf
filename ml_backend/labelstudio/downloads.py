"""Guarded file downloads for task data: only from Label Studio (and hosts the admin allows), bounded in time
and size.

Task data is written by any LS user, so an image URL is untrusted input: fetched blindly it reaches the backend's
own network (Redis, metadata services, other hosts' admin pages: SSRF), and a slow or endless server holds a
request past LS's 100 s. Every download here:

- goes to the LS origin (scheme, host, port of ``LABEL_STUDIO_URL``) or a host on ``DOWNLOAD_ALLOWED_HOSTS``;
- never to a private, loopback, link-local or otherwise non-public address unless that is the LS origin itself;
- follows redirects only to targets passing the same checks (LS's cloud-storage presign answers with one), and
  sends LS's token only to the LS origin;
- ends at a total deadline (not a per-read timeout: a server trickling a byte every few seconds would never trip
  that) and at a byte cap, before anything is written to the file cache.

label-studio-sdk's ``get_local_path`` still resolves LS's URL forms (uploads, local storage, cloud presign) and
writes the cache file; it downloads through :class:`GuardedSession`, so a refused or failed download raises
before the SDK writes anything, and nothing half-downloaded is ever cached.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import requests

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5


class DownloadRefused(OSError):
    """A download the policy does not allow or that broke a limit; the message says which rule (no contents)."""


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass
class DownloadPolicy:
    """Where files may come from and how much of them: built from the settings and the LS URL."""

    ls_url: str
    allowed_hosts: list[str] = field(default_factory=list)
    timeout: float = 20.0
    max_bytes: int = 30 * 2**20

    def check(self, url: str) -> bool:
        """Raise DownloadRefused unless ``url`` may be fetched; True if it is the LS origin (gets the token)."""
        scheme, host, port = _origin(url)
        if scheme not in ("http", "https") or not host:
            raise DownloadRefused(f"refused to download {_short(url)}: only http(s) URLs are fetched")
        if (scheme, host, port) == _origin(self.ls_url):
            return True
        if not any(fnmatch.fnmatch(host, pattern.lower()) for pattern in self.allowed_hosts):
            raise DownloadRefused(
                f"refused to download from {host}: files come from Label Studio's host or DOWNLOAD_ALLOWED_HOSTS"
            )
        for address in self._addresses(host, port):
            if not _public(address):
                raise DownloadRefused(f"refused to download from {host}: it resolves to a non-public address")
        return False

    @staticmethod
    def _addresses(host: str, port: int) -> Iterable[str]:
        try:
            return {info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
        except socket.gaierror as exc:
            raise DownloadRefused(f"cannot resolve {host}: {exc.strerror}") from exc

    def fetch(
        self, url: str, headers: dict[str, str], deadline: float | None = None, verify: bool = True
    ) -> tuple[int, bytes, str]:
        """(status, body, final URL) of a GET under the policy; the deadline is the earlier of ``timeout`` from now
        and ``deadline`` (time.monotonic). Error statuses come back with an empty body (the caller raises)."""
        end = time.monotonic() + self.timeout
        end = min(end, deadline) if deadline is not None else end
        for _ in range(_MAX_REDIRECTS + 1):
            trusted = self.check(url)
            sent = headers if trusted else {k: v for k, v in headers.items() if k.lower() != "authorization"}
            status, body, location = self._get(url, sent, end, verify)
            if status not in _REDIRECTS or not location:
                return status, body, url
            url = urljoin(url, location)
        raise DownloadRefused(f"refused to download {_short(url)}: more than {_MAX_REDIRECTS} redirects")

    def _get(self, url: str, headers: dict[str, str], end: float, verify: bool) -> tuple[int, bytes, str | None]:
        left = end - time.monotonic()
        if left <= 0:
            raise DownloadRefused(f"download of {_short(url)} ran out of time")
        # each read waits at most the time left; the loop checks the deadline between reads, so a trickling
        # server is cut off within a read of the deadline
        timeout = httpx.Timeout(min(left, 10.0), connect=min(left, 5.0))
        try:
            with (
                httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=verify) as client,
                client.stream("GET", url, headers=headers) as resp,
            ):
                if resp.status_code in _REDIRECTS or resp.status_code >= 400:
                    return resp.status_code, b"", resp.headers.get("location")
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise DownloadRefused(f"{_short(url)} is {declared} bytes, over DOWNLOAD_MAX_BYTES")
                chunks, size = [], 0
                for chunk in resp.iter_raw():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise DownloadRefused(f"{_short(url)} is over DOWNLOAD_MAX_BYTES ({self.max_bytes} bytes)")
                    if time.monotonic() > end:
                        raise DownloadRefused(f"download of {_short(url)} ran out of time")
                    chunks.append(chunk)
                return resp.status_code, b"".join(chunks), None
        except httpx.TimeoutException as exc:
            raise DownloadRefused(f"download of {_short(url)} timed out") from exc
        except httpx.HTTPError as exc:
            raise OSError(f"cannot download {_short(url)}: {type(exc).__name__}") from exc


def _short(url: str) -> str:
    """A URL for messages: no query string (presigned URLs carry credentials there), at most 200 characters."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:200]


class GuardedSession(requests.Session):
    """What label-studio-sdk's downloader calls (``session.get``): answers from :meth:`DownloadPolicy.fetch`."""

    def __init__(self, policy: DownloadPolicy, deadline: float | None = None):
        super().__init__()
        self.policy = policy
        self.deadline = deadline

    def get(self, url: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        # the SDK passes verify=VERIFY_SSL (its setting for LS behind a self-signed certificate)
        verify = kwargs.get("verify", True) is not False
        status, body, final = self.policy.fetch(str(url), dict(kwargs.get("headers") or {}), self.deadline, verify)
        resp = requests.Response()
        resp.status_code, resp._content, resp.url = status, body, _short(final)
        resp.reason = "" if status < 400 else "refused"
        return resp

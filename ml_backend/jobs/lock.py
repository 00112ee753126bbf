"""A per-project Redis lock owned by an rq job id, kept alive by a heartbeat thread that knows when it lost it.

The lock expires a few seconds after its holder dies (SIGKILL, OOM), and the retry of the *same* job takes it
over at once, so a killed training does not block its own retry for the length of the job timeout.

The heartbeat must neither die on a transient Redis error (a dead heartbeat lets the key expire under a job that
still runs, and a second job then trains or imports beside it) nor pretend the lock is still held when it is not.
So it retries with a short backoff, and records the loss (``lost`` is set, ``owned()`` turns False) when the key is
gone, belongs to another owner, or could not be extended for longer than its TTL (another job may hold it since).
Jobs check ``owned()`` before anything they publish, and raise :class:`LockLost` to stop without publishing.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)

_EXTEND = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
#: seconds between heartbeat retries after a Redis error, doubling up to a third of the TTL
_FIRST_BACKOFF = 0.1


class LockTimeout(TimeoutError):
    """Another job held the lock for longer than we were willing to wait."""


class LockLost(RuntimeError):
    """The job no longer owns its project lock; it stops before publishing (rq retries it)."""


def _fail_fast_client(redis: Redis, timeout: float) -> Redis:
    """A client to the same Redis whose calls give up after ``timeout`` with no retry of their own.

    redis-py's default retries make one call against a frozen server block for many seconds (6 s measured with a
    0.2 s socket timeout), longer than the TTL: the heartbeat could neither extend in time nor notice the loss.
    """
    kwargs = {
        **redis.connection_pool.connection_kwargs,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    pool = type(redis.connection_pool)(connection_class=redis.connection_pool.connection_class, **kwargs)
    return Redis(connection_pool=pool)


class ProjectLock:
    def __init__(self, redis: Redis, key: str, owner: str, ttl: float = 15.0, wait: float = 3600.0):
        self.redis = _fail_fast_client(redis, min(ttl / 4, 2.0))
        self.key, self.owner = key, owner
        self.ttl, self.wait = ttl, wait
        self.lost = threading.Event()
        self.lost_reason = ""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._confirmed = 0.0  # monotonic time of the last successful extension: the key lives until + ttl

    def __enter__(self) -> ProjectLock:
        deadline = time.monotonic() + self.wait
        ttl_ms = int(self.ttl * 1000)
        while True:
            now = time.monotonic()
            if self.redis.set(self.key, self.owner, nx=True, px=ttl_ms):
                break
            holder = self.redis.get(self.key)
            if holder is not None and holder.decode() == self.owner:  # our own earlier attempt died: take over
                self.redis.set(self.key, self.owner, px=ttl_ms)
                break
            if now > deadline:
                raise LockTimeout(f"{self.key} is held by {holder!r}")
            time.sleep(0.25)
        self._confirmed = now
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.key}", daemon=True)
        self._beat.start()
        return self

    def _extend(self) -> bool:
        """Push the expiry one TTL further if we still hold the key; False if it is gone or someone else's."""
        started = time.monotonic()
        if self.redis.eval(_EXTEND, 1, self.key, self.owner, int(self.ttl * 1000)):
            self._confirmed = started
            return True
        return False

    def _mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            log.error("lock %s of %s lost: %s", self.key, self.owner, reason)

    def _expired(self) -> bool:
        """Past the TTL since the last confirmation: the key may have expired and been taken by another job."""
        return time.monotonic() - self._confirmed >= self.ttl

    def _heartbeat(self) -> None:
        interval = self.ttl / 3
        delay, failures = interval, 0
        while not self._stop.wait(delay) and not self.lost.is_set():
            try:
                if not self._extend():
                    self._mark_lost("the key is gone or held by another owner")
                    return
                delay, failures = interval, 0
            except Exception as exc:  # RedisError above all; whatever it is, this thread must not die silently
                if self._expired():
                    self._mark_lost(f"Redis unreachable for {self.ttl:.0f} s (the TTL): {type(exc).__name__}: {exc}")
                    return
                log.warning("lock %s: heartbeat failed (%s: %s), retrying", self.key, type(exc).__name__, exc)
                delay, failures = min(_FIRST_BACKOFF * 2**failures, interval), failures + 1

    def owned(self) -> bool:
        """Whether we still hold the lock, checked against Redis now (this also extends it).

        If Redis cannot be asked, we still own it while the last confirmation is younger than the TTL: nobody else
        can have taken the key before it expires.
        """
        if self.lost.is_set():
            return False
        try:
            if self._extend():
                return True
            self._mark_lost("the key is gone or held by another owner")
        except RedisError as exc:
            if not self._expired():
                return True
            self._mark_lost(f"Redis unreachable past the TTL: {exc}")
        return False

    def ensure_owned(self, before: str) -> None:
        """Raise :class:`LockLost` unless we still hold the lock; ``before`` says what is not done then."""
        if not self.owned():
            raise LockLost(f"{self.key}: lost the project lock ({self.lost_reason}); stopped before {before}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._beat:
            self._beat.join(timeout=self.ttl)
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.owner)
        except RedisError as err:  # the key expires by itself; do not hide the job's own outcome behind this
            log.warning("lock %s: could not release (%s); it expires within %.0f s", self.key, err, self.ttl)
        finally:
            self.redis.connection_pool.disconnect()

"""A per-project Redis lock owned by an rq job id, kept alive by a heartbeat thread.

The lock expires a few seconds after its holder dies (SIGKILL, OOM), and the retry of the *same* job takes it
over at once, so a killed training does not block its own retry for the length of the job timeout.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from redis import Redis

_EXTEND = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class LockTimeout(TimeoutError):
    pass


class ProjectLock:
    def __init__(self, redis: Redis, key: str, owner: str, ttl: float = 15.0, wait: float = 3600.0):
        self.redis, self.key, self.owner = redis, key, owner
        self.ttl_ms, self.wait = int(ttl * 1000), wait
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "ProjectLock":
        deadline = time.monotonic() + self.wait
        while True:
            if self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms):
                break
            holder = self.redis.get(self.key)
            if holder is not None and holder.decode() == self.owner:  # our own earlier attempt died: take over
                self.redis.set(self.key, self.owner, px=self.ttl_ms)
                break
            if time.monotonic() > deadline:
                raise LockTimeout(f"{self.key} is held by {holder!r}")
            time.sleep(0.25)
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{self.key}", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            self.redis.eval(_EXTEND, 1, self.key, self.owner, self.ttl_ms)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._beat:
            self._beat.join(timeout=2)
        self.redis.eval(_RELEASE, 1, self.key, self.owner)

"""Embeddings cached by content: a frozen encoder gives the same vector for the same input forever.

One SQLite file per encoder fingerprint, shared by the web app and the workers (WAL mode allows concurrent
readers with one writer). Re-scoring a pool after retraining then runs only the head.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def content_key(kind: str, value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha1(kind.encode() + b"\0" + data).hexdigest()


class EmbeddingCache:
    def __init__(self, folder: Path, fingerprint: str):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / f"{fingerprint}.sqlite"
        # one connection per process, shared by the web app's threads: serialise its use
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._conn.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        if items:
            with self._lock, self._conn:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)",
                    [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
                )

"""Embeddings cached by content: a frozen encoder gives the same vector for the same input forever.

One SQLite file per encoder fingerprint, shared by the web app and the workers (WAL mode allows concurrent
readers with one writer), also by workers on other machines when the data folder is a shared mount. Re-scoring a
pool after retraining then runs only the head.

An image's content key is known only once the file is downloaded; the ``source`` table remembers which key an
image URL last had, so a re-score can tell without downloading how much of its pool still needs the encoder (and
whether fanning the embedding out over the workers pays). It is a hint: the scoring path always hashes the file.

Workers on other machines have caches of their own: an embedding chunk job also leaves its vectors in the model
store as one object (:func:`pack`, under ``embeddings/<fingerprint>/``), and every machine merges the packs it has
not merged yet into its cache (:meth:`EmbeddingCache.merge`, which remembers their names): the gathering re-score
wherever it runs, and any re-score before it decides how much of its pool still needs the encoder.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def content_key(kind: str, value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha1(kind.encode() + b"\0" + data).hexdigest()


def pack(vectors: dict[str, np.ndarray]) -> bytes:
    """Embeddings by content key as one .npz object, in float32 (the cache's own precision: a gathered pool scores
    bit for bit as if embedded on the gathering machine)."""
    buf = io.BytesIO()
    keys = list(vectors)
    matrix = np.stack([np.asarray(vectors[k], dtype=np.float32) for k in keys]) if keys else np.zeros((0, 0))
    np.savez(buf, keys=np.asarray(keys, dtype=str), vectors=matrix.astype(np.float32))
    return buf.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    """The embeddings of a :func:`pack` object."""
    with np.load(io.BytesIO(data)) as stored:
        return dict(zip(stored["keys"].tolist(), stored["vectors"]))


class EmbeddingCache:
    def __init__(self, folder: Path, fingerprint: str):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / f"{fingerprint}.sqlite"
        # one connection per process, shared by the web app's threads: serialise its use
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS source (locator TEXT PRIMARY KEY, key TEXT NOT NULL)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS pack (name TEXT PRIMARY KEY)")
        self._conn.commit()

    def _select(self, sql: str, keys: Iterable[str]) -> list[tuple[str, Any]]:
        """Rows of ``sql`` (a SELECT ending in ``IN``) for ``keys``, 500 at a time (SQLite's variable limit)."""
        keys = list(dict.fromkeys(keys))
        rows: list[tuple[str, Any]] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            with self._lock:
                rows.extend(self._conn.execute(f"{sql} ({','.join('?' * len(chunk))})", chunk).fetchall())
        return rows

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        rows = self._select("SELECT key, vec FROM emb WHERE key IN", keys)
        return {k: np.frombuffer(v, dtype=np.float32) for k, v in rows}

    def present(self, keys: Iterable[str]) -> set[str]:
        """The keys that have an embedding, without reading the vectors (a pool-sized check)."""
        return {k for (k,) in self._select("SELECT key FROM emb WHERE key IN", keys)}

    def sources(self, locators: Iterable[str]) -> dict[str, str]:
        """The content key each locator (an image URL) had when it was last embedded, for those recorded."""
        return dict(self._select("SELECT locator, key FROM source WHERE locator IN", locators))

    def remember_sources(self, items: dict[str, str]) -> None:
        if items:
            with self._lock, self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO source (locator, key) VALUES (?, ?)", items.items())

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        if items:
            with self._lock, self._conn:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)",
                    [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()],
                )

    def merged(self) -> set[str]:
        """Names of the packs of the model store this cache holds (merged, or written from here)."""
        with self._lock:
            return {name for (name,) in self._conn.execute("SELECT name FROM pack").fetchall()}

    def merge(self, name: str, vectors: dict[str, np.ndarray]) -> int:
        """Add the embeddings of the pack ``name`` this cache lacks and remember the pack as merged, in one
        transaction (a crash merges it again, harmlessly); returns how many were added."""
        present = self.present(vectors)
        missing = {k: np.asarray(v, dtype=np.float32).tobytes() for k, v in vectors.items() if k not in present}
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)", missing.items())
            self._conn.execute("INSERT OR IGNORE INTO pack (name) VALUES (?)", (name,))
        return len(missing)

"""The model store: where versions, current pointers, pool orders and embedding chunks live for every process.

Two kinds, one interface (:class:`ModelStore`), chosen by ``MODEL_STORE_URL``:

- :class:`LocalStore`, a folder (``DATA_DIR`` by default, or a shared mount): objects are files replaced
  atomically (``os.replace``) and a version is written into a ``.tmp-*`` folder renamed into place;
- :class:`ObjectStore`, S3-compatible object storage (``s3://bucket/prefix`` through fsspec/s3fs; endpoint and
  credentials from the usual ``AWS_*`` environment). Objects are replaced atomically by a PUT, but there is no
  rename: a version's files are uploaded first and its commit marker (``meta.json``) last, and readers only see
  versions that have it. Immutable objects (a committed version's files) are kept in a per-machine cache folder
  once read, keyed by their path, so a worker downloads a version's weights once.

Every failure to reach or use object storage (bucket missing, credentials refused, endpoint down) is raised as
:class:`StoreError` naming the store: a job fails and rq retries it, nothing already published is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ml_backend.settings import Settings

_T = TypeVar("_T")


class StoreError(RuntimeError):
    """The model store cannot be used (unreachable, refused, missing bucket); the message says which and why."""


class ModelStore(ABC):
    """Keys are ``/``-separated paths relative to the store's root."""

    url: str

    @abstractmethod
    def child(self, prefix: str) -> ModelStore:
        """The same store rooted at ``prefix`` (the registry's projects, the embedding chunks)."""

    @abstractmethod
    def read(self, key: str, immutable: bool = False) -> bytes | None:
        """The object's bytes, None if absent. ``immutable``: the object never changes once written (a
        committed version's file), so a copy kept on this machine may answer."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Create or replace one object atomically: a reader sees the old bytes or the new ones, never a part."""

    @abstractmethod
    def mtime(self, key: str) -> float:
        """When the object was last written (0.0: absent)."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names of the objects and folders directly under ``prefix`` ([] if none)."""

    @abstractmethod
    def publish(self, prefix: str, files: dict[str, bytes], marker: str) -> None:
        """Write the folder ``prefix`` so that readers never see a part of it: ``files`` (``marker`` among them,
        the file a reader checks) appear together or, on object storage, the marker is written last.
        FileExistsError if the folder is already committed."""

    @abstractmethod
    def delete(self, prefix: str) -> None:
        """Remove an object or a folder with everything under it (absent: nothing to do)."""

    @abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Move a folder (a replaced project's state set aside); absent: nothing to do."""


class LocalStore(ModelStore):
    """A folder on this machine or on a shared mount (NFS and the like: rename and replace are atomic there)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = str(self.root)

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self.root / prefix)

    def read(self, key: str, immutable: bool = False) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, key: str, data: bytes) -> None:
        write_atomic(self.root / key, data)

    def mtime(self, key: str) -> float:
        path = self.root / key
        return path.stat().st_mtime if path.is_file() else 0.0

    def children(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def publish(self, prefix: str, files: dict[str, bytes], marker: str) -> None:
        final = self.root / prefix
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise FileExistsError(f"{prefix} already exists")
        # written into a hidden folder and renamed into place: a crash (even SIGKILL) leaves nothing visible
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
        try:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def delete(self, prefix: str) -> None:
        path = self.root / prefix
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def move(self, src: str, dst: str) -> None:
        if (self.root / src).exists():
            (self.root / src).rename(self.root / dst)


class ObjectStore(ModelStore):
    """S3-compatible object storage through fsspec (s3fs): AWS S3, MinIO, Ceph, ...

    ``cache_dir`` keeps the immutable objects this machine has read (a version's weights, embeddings, meta.json):
    a version never changes once committed, so its copy never goes stale. The filesystem object is made per
    process (rq forks a work horse per job; an s3fs client's event loop and connections do not survive a fork)
    and without listing caches (another machine publishes at any time).
    """

    def __init__(self, url: str, cache_dir: Path, storage_options: dict[str, Any] | None = None):
        if not url.startswith("s3://") or not url[5:].strip("/"):
            raise StoreError(f"model store {url!r}: expected s3://bucket[/prefix]")
        self.url = url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.storage_options = storage_options or {}
        self._path = self.url[5:]
        self._bucket = self._path.split("/", 1)[0]
        # shared with the children: one client (and connection pool) per process, one bucket check
        self._client: dict[str, Any] = {"pid": -1, "fs": None, "bucket_ok": False}

    def child(self, prefix: str) -> ObjectStore:
        store = ObjectStore(f"{self.url}/{prefix}", self.cache_dir, self.storage_options)
        store._client = self._client
        return store

    @property
    def fs(self) -> Any:
        if self._client["fs"] is None or self._client["pid"] != os.getpid():
            try:
                import s3fs
            except ImportError as exc:
                raise StoreError(
                    f"model store {self.url}: s3fs is not installed (pip install 'al-ml-backend[s3]')"
                ) from exc
            options = {
                # a dead endpoint must fail a job within seconds, not botocore's minutes of retries
                "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}},
                **self.storage_options,
            }
            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)
            self._client.update(pid=os.getpid(), fs=fs)
        return self._client["fs"]

    def _key(self, key: str) -> str:
        return f"{self._path}/{key}".rstrip("/")

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run one storage call; every failure but an absent object becomes a StoreError that says what failed."""
        try:
            return fn()
        except FileNotFoundError:
            self._check_bucket()
            raise
        except StoreError:
            raise
        except Exception as exc:  # botocore, aiohttp and OSError subclasses: the boundary of the storage library
            raise StoreError(f"model store {self.url}: could not {what}: {type(exc).__name__}: {exc}") from exc

    def _check_bucket(self) -> None:
        """An absent object in an absent bucket is a deployment error, not "no version yet"."""
        if self._client["bucket_ok"]:
            return
        if not self._call("check its bucket", lambda: self.fs.exists(self._bucket)):
            raise StoreError(f"model store {self.url}: bucket {self._bucket!r} does not exist (create it first)")
        self._client["bucket_ok"] = True

    def read(self, key: str, immutable: bool = False) -> bytes | None:
        cached = self.cache_dir / self._key(key)
        if immutable and cached.is_file():
            return cached.read_bytes()
        try:
            data = self._call(f"read {key}", lambda: self.fs.cat_file(self._key(key)))
        except FileNotFoundError:
            return None
        if immutable:
            write_atomic(cached, data)
        return data

    def write(self, key: str, data: bytes) -> None:
        self._call(f"write {key}", lambda: self.fs.pipe_file(self._key(key), data))

    def mtime(self, key: str) -> float:
        try:
            info = self._call(f"look up {key}", lambda: self.fs.info(self._key(key)))
        except FileNotFoundError:
            return 0.0
        modified = info.get("LastModified")
        return modified.timestamp() if modified is not None else 0.0

    def children(self, prefix: str) -> list[str]:
        try:
            listed = self._call(f"list {prefix or '/'}", lambda: self.fs.ls(self._key(prefix), detail=False))
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listed)

    def publish(self, prefix: str, files: dict[str, bytes], marker: str) -> None:
        if self.read(f"{prefix}/{marker}") is not None:
            raise FileExistsError(f"{prefix} already exists")
        for name, data in files.items():
            if name != marker:
                self.write(f"{prefix}/{name}", data)
        self.write(f"{prefix}/{marker}", files[marker])  # the commit: readers list only folders that have it

    def delete(self, prefix: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(f"delete {prefix}", lambda: self.fs.rm(self._key(prefix), recursive=True))

    def move(self, src: str, dst: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call(f"move {src}", lambda: self.fs.mv(self._key(src), self._key(dst), recursive=True))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace a file so that readers see the old or the new bytes (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_store(settings: Settings) -> ModelStore:
    """The store ``MODEL_STORE_URL`` names: ``s3://bucket/prefix``, else a folder (default ``DATA_DIR``)."""
    url = settings.model_store_url
    if url and "://" in url:
        if not url.startswith("s3://"):
            raise StoreError(f"MODEL_STORE_URL={url!r}: only folders and s3:// URLs are supported")
        return ObjectStore(url, settings.store_cache_dir)
    return LocalStore(Path(url) if url else settings.data_dir)

"""Model versions in the model store: the single truth about which versions exist and which one serves.

Layout under the store's ``projects/<project id>/`` (``MODEL_STORE_URL``: ``DATA_DIR`` by default, or
``s3://bucket/prefix``; see ``learning.store``), shared by every process on every machine::

    project.json              label config, model config name, LS project key
    current.json              {"version": ...}: the serving version, one object replaced atomically
    versions/<version>/       meta.json (config, seed, metrics, labelled task ids), model.pt (weights),
                              labelled.npy (embeddings of the labelled tasks: novelty and coverage are measured
                              against them), ranking.npz (the pool order of the version's last pool scoring, with
                              each task's predicted label and uncertainty: the stopping rule compares versions),
                              labelled_predictions.npz (the model's label and confidence on each labelled task:
                              possible label errors)
    pool_reference.npy        a sample of the project's pool embeddings: the one reference for density

and under the local ``<data_dir>/projects/<project id>/`` (the same folder with the default store), what belongs to
the web process that wrote it::

    rescore-pending           a pool scoring /setup or a TASKS_CREATED webhook could not enqueue (Redis down)
    deferred-labels.jsonl     labels of annotation webhooks that could not be enqueued (Redis down)

A version is published so that no reader sees a part of it: in a folder, written into a temporary folder and
renamed into place; in object storage, its files first and its ``meta.json`` last (the commit marker: readers list
only versions that have one). A crash (even SIGKILL) in the middle of publishing leaves the previous versions and
the current pointer untouched. The pointer is written after the version is committed. Every process (web, workers)
reads ``current.json`` on each request: no per-process copy of "the current version" can go stale; a committed
version never changes (apart from its pool order, ``ranking.npz``), so its files may be cached by version name.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.learning.store import LocalStore, ModelStore, open_store
from ml_backend.models.config import ModelConfig
from ml_backend.settings import Settings

#: the file of a version holding :class:`LabelPredictions`
LABEL_PREDICTIONS = "labelled_predictions.npz"
DEFERRED_LABELS = "deferred-labels.jsonl"
#: a version's commit marker: the file written last, whose presence makes the version exist
META = "meta.json"


def label_predictions_bytes(predictions: LabelPredictions) -> bytes:
    """:class:`LabelPredictions` as the .npz file a version is published with."""
    buf = io.BytesIO()
    np.savez(
        buf,
        task_ids=np.asarray(predictions.task_ids, dtype=np.int64),
        predicted=np.asarray(predictions.predicted, dtype=str),
        confidence=np.asarray(predictions.confidence, dtype=np.float64),
        human=np.asarray(predictions.human, dtype=str),
    )
    return buf.getvalue()


def embeddings_bytes(embeddings: np.ndarray) -> bytes:
    """Embeddings as .npy bytes in float16: half the disk, far below the precision the ranking needs."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(embeddings, dtype=np.float16))
    return buf.getvalue()


@dataclass
class StoredRanking:
    """The pool order a version's pool scoring produced: /predict serves these very scores (one score per task per
    version), and tasks outside it are scored above ``rest_floor`` like the rest of the pool."""

    scores: dict[int, float]
    rest_floor: float


@dataclass
class PoolPredictions:
    """A version's view of the unlabelled pool at its last pool scoring, per task (same order): the LS score, why
    it got its place, the predicted label(s) joined by ``|`` ("" from an untrained version) and the normalised
    uncertainty (NaN from an untrained version); ``rest_floor`` as in :class:`StoredRanking`. Rankings stored
    before predictions were kept have them empty."""

    version: str
    task_ids: list[int]
    scores: np.ndarray
    reasons: list[str]
    predicted: list[str]
    uncertainty: np.ndarray
    rest_floor: float
    written_at: float


@dataclass
class LabelPredictions:
    """A trained version's own label (``|``-joined) and confidence on each task it was trained on, beside the
    human label: a confident disagreement, despite training on that label, points at a possible label error."""

    task_ids: list[int]
    predicted: list[str]
    confidence: np.ndarray
    human: list[str]


@dataclass
class ProjectRecord:
    project_id: int
    project_key: str
    label_config: str
    model_config: str
    created_at: float = field(default_factory=time.time)
    label_budget: int | None = None  # labels the project may spend (LS extra params), else the model config's


@dataclass
class VersionInfo:
    version: str
    number: int
    created_at: float
    model_config: dict[str, Any]
    seed: int
    trained: bool
    promoted: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    n_labels: int = 0
    labelled_task_ids: list[int] = field(default_factory=list)
    note: str = ""


def _deferred_lines(path: Path) -> list[dict[str, Any]]:
    """The webhooks recorded in a deferred-labels file, one JSON object a line."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Registry:
    """Per-project versions, metrics and the current pointer in ``store`` (shared by all processes), and the web
    process's own flags in the folder ``root``. Without a store, both are ``root`` (one folder, as on one machine)."""

    def __init__(self, root: Path, store: ModelStore | None = None):
        self.root = Path(root)
        self.store = store or LocalStore(self.root)

    @classmethod
    def from_settings(cls, settings: Settings, store: ModelStore | None = None) -> Registry:
        """The registry of a deployment: local flags in ``DATA_DIR/projects``, the rest in the model store's
        ``projects/`` (``store``: the one ``MODEL_STORE_URL`` names, already open)."""
        return cls(settings.projects_dir, (store or open_store(settings)).child("projects"))

    def _dir(self, project_id: int) -> Path:
        return self.root / str(int(project_id))

    @staticmethod
    def _key(project_id: int, *parts: str) -> str:
        return "/".join((str(int(project_id)), *parts))

    def _read_json(self, key: str, immutable: bool = False) -> Any:
        data = self.store.read(key, immutable)
        return None if data is None else json.loads(data)

    # -- projects ---------------------------------------------------------------------------------------------
    def get_project(self, project_id: int) -> ProjectRecord | None:
        saved = self._read_json(self._key(project_id, "project.json"))
        return None if saved is None else ProjectRecord(**saved)

    def save_project(self, record: ProjectRecord) -> None:
        self.store.write(self._key(record.project_id, "project.json"), json.dumps(asdict(record), indent=1).encode())

    def archive_project(self, project_id: int) -> Path:
        """Move a project's state aside (its LS project was replaced by another with the same id): in the store,
        and its local flags (already moved when the store is the same folder)."""
        archived = f"{project_id}.archived-{int(time.time())}"
        self.store.move(str(int(project_id)), archived)
        if self._dir(project_id).exists():
            self._dir(project_id).rename(self.root / archived)
        return self.root / archived

    def mark_rescore_pending(self, project_id: int, pending: bool = True) -> None:
        """Remember on disk that a project's pool scoring could not be enqueued (Redis down during /setup or a
        TASKS_CREATED webhook), so it is enqueued once Redis is back instead of waiting for the next label."""
        flag = self._dir(project_id) / "rescore-pending"
        if pending:
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def is_rescore_pending(self, project_id: int) -> bool:
        """Whether the project's pool scoring still has to be enqueued (see :meth:`mark_rescore_pending`)."""
        return (self._dir(project_id) / "rescore-pending").is_file()

    def _local_project_ids(self) -> list[int]:
        """Projects with a local folder (flags of this web process)."""
        return sorted(int(p.name) for p in self.root.glob("*") if p.name.isdigit()) if self.root.is_dir() else []

    def rescore_pending(self) -> list[int]:
        """Projects whose pool scoring still has to be enqueued."""
        return [p for p in self._local_project_ids() if self.is_rescore_pending(p)]

    def defer_labels(self, project_id: int, labels: int, force: bool) -> None:
        """Keep on disk the labels of a webhook whose job could not be enqueued (Redis down): LS sends a webhook
        once and never again, so answering 503 would lose the retraining until the next label. One appended line
        per webhook (appends of one short line are atomic, so concurrent webhooks never overwrite each other)."""
        path = self._dir(project_id) / DEFERRED_LABELS
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps({"labels": labels, "force": force}) + "\n")

    def take_deferred_labels(self, project_id: int) -> tuple[int, bool] | None:
        """The deferred labels of a project (their sum, and whether any webhook forced training), removed from
        disk; None if there are none. Renamed aside before reading, so a webhook deferred meanwhile starts a new
        file instead of being truncated away. The caller defers them again if it cannot enqueue them."""
        path = self._dir(project_id) / DEFERRED_LABELS
        taken = path.with_name(f".{DEFERRED_LABELS}.{os.getpid()}.{threading.get_ident()}")
        try:
            path.rename(taken)
        except FileNotFoundError:
            return None
        lines = _deferred_lines(taken)
        taken.unlink()
        return sum(int(x["labels"]) for x in lines), any(bool(x["force"]) for x in lines)

    def deferred_labels(self, project_id: int) -> int:
        """How many labels wait on disk for Redis (0: none)."""
        path = self._dir(project_id) / DEFERRED_LABELS
        return sum(int(x["labels"]) for x in _deferred_lines(path)) if path.is_file() else 0

    def projects_with_deferred_labels(self) -> list[int]:
        return [p for p in self._local_project_ids() if (self._dir(p) / DEFERRED_LABELS).is_file()]

    def save_ls_connection(self, url: str, token: str) -> None:
        """Keep the LS URL and token /setup brought (used only when the environment names no LS): the workers
        read them here. Owner-only permissions: the token is a credential."""
        path = self.root / "ls-connection.json"
        if self.ls_connection() == (url, token):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": url, "token": token}, f)
        os.replace(path.with_suffix(".tmp"), path)

    def ls_connection(self) -> tuple[str | None, str | None]:
        """(url, token) saved by :meth:`save_ls_connection`, else (None, None)."""
        path = self.root / "ls-connection.json"
        if not path.is_file():
            return None, None
        saved = json.loads(path.read_text())
        return saved.get("url"), saved.get("token")

    def project_ids(self) -> list[int]:
        """The projects registered in the store."""
        return sorted(int(name) for name in self.store.children("") if name.isdigit())

    # -- versions ---------------------------------------------------------------------------------------------
    def current(self, project_id: int) -> VersionInfo | None:
        pointer = self._read_json(self._key(project_id, "current.json"))
        return None if pointer is None else self.get_version(project_id, pointer["version"])

    def _meta(self, project_id: int, version: str) -> dict[str, Any] | None:
        """A committed version's meta.json (None: no such version, or not committed yet)."""
        return self._read_json(self._key(project_id, "versions", version, META), immutable=True)

    def get_version(self, project_id: int, version: str) -> VersionInfo:
        meta = self._meta(project_id, version)
        if meta is None:
            raise FileNotFoundError(f"no version {version} in project {project_id}")
        return VersionInfo(**meta)

    def versions(self, project_id: int) -> list[VersionInfo]:
        """Every version ever published for the project (promoted or not), oldest first."""
        # skip the hidden ``.tmp-*`` folder a publish is writing in a folder store (its meta.json may be empty at
        # this instant; the status page read one and failed while the worker published), and, in object storage,
        # a version whose meta.json (written last) is not there yet
        names = [n for n in self.store.children(self._key(project_id, "versions")) if not n.startswith(".")]
        metas = [m for m in (self._meta(project_id, n) for n in names) if m is not None]
        return sorted((VersionInfo(**m) for m in metas), key=lambda v: v.number)

    def next_number(self, project_id: int) -> int:
        return max((v.number for v in self.versions(project_id)), default=-1) + 1

    @staticmethod
    def version_name(config_name: str, number: int) -> str:
        """``<config>-v<n>-<UTC time>``: monotonic per project and unique even if the data folder is reset."""
        return f"{config_name}-v{number}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"

    def publish_next(
        self,
        project_id: int,
        config: ModelConfig,
        *,
        trained: bool,
        promote: bool,
        note: str,
        files: dict[str, bytes],
        metrics: dict[str, Any] | None = None,
        labelled_task_ids: Sequence[int] = (),
    ) -> VersionInfo:
        """Publish the project's next version of ``config`` (number, name and time given here), trained with the
        config's seed on ``labelled_task_ids``: everything needed to rebuild it is in its meta.json."""
        number = self.next_number(project_id)
        info = VersionInfo(
            version=self.version_name(config.name, number),
            number=number,
            created_at=time.time(),
            model_config=config.model_dump(),
            seed=config.training.seed,
            trained=trained,
            promoted=promote,
            metrics=metrics or {},
            n_labels=len(labelled_task_ids),
            labelled_task_ids=list(labelled_task_ids),
            note=note,
        )
        return self.publish(project_id, info, files, promote=promote)

    def publish(self, project_id: int, info: VersionInfo, files: dict[str, bytes], promote: bool) -> VersionInfo:
        """Write a version atomically (its meta.json committing it); make it current if ``promote``. Returns the
        stored info."""
        info.promoted = promote
        meta = json.dumps(asdict(info), indent=1).encode()
        try:
            self.store.publish(self._key(project_id, "versions", info.version), {**files, META: meta}, META)
        except FileExistsError:
            raise FileExistsError(f"version {info.version} already exists") from None
        if promote:
            self.set_current(project_id, info.version)
        return info

    def set_current(self, project_id: int, version: str) -> None:
        """Point the project at a committed version: one small object, written after the version is complete."""
        self.get_version(project_id, version)
        self.store.write(self._key(project_id, "current.json"), json.dumps({"version": version}).encode())

    def _version_file(self, project_id: int, version: str, name: str) -> bytes | None:
        """A committed version's file (immutable: this machine's copy answers once read)."""
        return self.store.read(self._key(project_id, "versions", version, name), immutable=True)

    def read_file(self, project_id: int, version: str, name: str) -> bytes:
        data = self._version_file(project_id, version, name)
        if data is None:
            raise FileNotFoundError(f"version {version} of project {project_id} has no {name}")
        return data

    # -- pool reference for cold start ------------------------------------------------------------------------
    def save_pool_reference(self, project_id: int, embeddings: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, embeddings.astype(np.float32))
        self.store.write(self._key(project_id, "pool_reference.npy"), buf.getvalue())

    def pool_reference_mtime(self, project_id: int) -> float:
        """When the project's pool reference was last written (0.0: never)."""
        return self.store.mtime(self._key(project_id, "pool_reference.npy"))

    def pool_reference(self, project_id: int) -> np.ndarray | None:
        data = self.store.read(self._key(project_id, "pool_reference.npy"))
        return None if data is None else np.load(io.BytesIO(data))

    def labelled_embeddings(self, project_id: int, version: str) -> np.ndarray | None:
        data = self._version_file(project_id, version, "labelled.npy")
        return None if data is None else np.load(io.BytesIO(data)).astype(np.float32)

    def save_ranking(
        self,
        project_id: int,
        version: str,
        task_ids: list[int],
        scores: np.ndarray,
        reasons: list[str],
        rest_floor: float,
        predicted: Sequence[str] | None = None,
        uncertainty: np.ndarray | None = None,
    ) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            task_ids=np.asarray(task_ids, dtype=np.int64),
            scores=np.asarray(scores, dtype=np.float64),
            reasons=np.asarray(reasons, dtype=str),
            rest_floor=np.float64(rest_floor),
            predicted=np.asarray(list(predicted) if predicted is not None else [""] * len(task_ids), dtype=str),
            uncertainty=np.asarray(uncertainty if uncertainty is not None else np.full(len(task_ids), np.nan), float),
        )
        self.store.write(self._ranking_key(project_id, version), buf.getvalue())

    def _ranking_key(self, project_id: int, version: str) -> str:
        """The version's pool order: the one file of a version rewritten after it is committed (never cached)."""
        return self._key(project_id, "versions", version, "ranking.npz")

    def ranking_mtime(self, project_id: int, version: str) -> float:
        """When the version's stored pool order was last written (0.0: never)."""
        return self.store.mtime(self._ranking_key(project_id, version))

    def ranking(self, project_id: int, version: str) -> StoredRanking | None:
        """The version's stored LS score per task and the floor of the rest of the pool (None: never scored)."""
        pool = self.pool_predictions(project_id, version)
        if pool is None:
            return None
        return StoredRanking(dict(zip(pool.task_ids, pool.scores.tolist())), pool.rest_floor)

    def pool_predictions(self, project_id: int, version: str) -> PoolPredictions | None:
        """The version's stored pool view for the dashboard and the stopping rule (None: never scored the pool)."""
        key = self._ranking_key(project_id, version)
        written_at = self.store.mtime(key)
        stored = self.store.read(key) if written_at else None
        if stored is None:
            return None
        with np.load(io.BytesIO(stored)) as data:
            n = len(data["task_ids"])
            return PoolPredictions(
                version,
                data["task_ids"].tolist(),
                data["scores"],
                data["reasons"].tolist(),
                data["predicted"].tolist() if "predicted" in data else [""] * n,
                data["uncertainty"] if "uncertainty" in data else np.full(n, np.nan),
                float(data["rest_floor"]),
                written_at,
            )

    def label_predictions(self, project_id: int, version: str) -> LabelPredictions | None:
        stored = self._version_file(project_id, version, LABEL_PREDICTIONS)
        if stored is None:
            return None
        with np.load(io.BytesIO(stored)) as data:
            return LabelPredictions(
                data["task_ids"].tolist(), data["predicted"].tolist(), data["confidence"], data["human"].tolist()
            )

    def cleanup_temp(self, project_id: int) -> None:
        """Remove half-written versions left by a crashed job (they were never visible): a folder store's
        ``.tmp-*`` folders, an object store's versions without their meta.json. Called under the training lock,
        the only publisher of versions with files (an untrained version is its meta.json alone)."""
        prefix = self._key(project_id, "versions")
        for name in self.store.children(prefix):
            if name.startswith(".tmp-") or (not name.startswith(".") and self._meta(project_id, name) is None):
                self.store.delete(f"{prefix}/{name}")

"""Model versions on disk: the single truth about which versions exist and which one serves.

Layout under ``<data_dir>/projects/<project id>/``::

    project.json              label config, model config name, LS project key
    current.json              {"version": ...}: the serving version, replaced atomically (os.replace)
    versions/<version>/       meta.json (config, seed, metrics, labelled task ids), model.pt (weights),
                              labelled.npy (embeddings of the labelled tasks: novelty and coverage are measured
                              against them), ranking.npz (the pool order of the version's last pool scoring, with
                              each task's predicted label and uncertainty: the stopping rule compares versions),
                              labelled_predictions.npz (the model's label and confidence on each labelled task:
                              possible label errors)
    pool_reference.npy        a sample of the project's pool embeddings: the one reference for density
    rescore-pending           a pool scoring /setup or a TASKS_CREATED webhook could not enqueue (Redis down)
    deferred-labels.jsonl     labels of annotation webhooks that could not be enqueued (Redis down)

A version is written into a temporary folder and renamed into place, so a crash (even SIGKILL) in the middle
of publishing leaves the previous versions and the current pointer untouched. Every process (web, workers)
reads ``current.json`` on each request: no per-process copy of "the current version" can go stale.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.models.config import ModelConfig

#: the file of a version holding :class:`LabelPredictions`
LABEL_PREDICTIONS = "labelled_predictions.npz"
DEFERRED_LABELS = "deferred-labels.jsonl"


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


def _write_atomic(path: Path, data: bytes) -> None:
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


class Registry:
    """Per-project versions, metrics and the current pointer, on a folder shared by all processes."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, project_id: int) -> Path:
        return self.root / str(int(project_id))

    # -- projects ---------------------------------------------------------------------------------------------
    def get_project(self, project_id: int) -> ProjectRecord | None:
        path = self._dir(project_id) / "project.json"
        if not path.is_file():
            return None
        return ProjectRecord(**json.loads(path.read_text()))

    def save_project(self, record: ProjectRecord) -> None:
        _write_atomic(self._dir(record.project_id) / "project.json", json.dumps(asdict(record), indent=1).encode())

    def archive_project(self, project_id: int) -> Path:
        """Move a project's state aside (its LS project was replaced by another with the same id)."""
        src = self._dir(project_id)
        dst = self.root / f"{project_id}.archived-{int(time.time())}"
        src.rename(dst)
        return dst

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

    def rescore_pending(self) -> list[int]:
        """Projects whose pool scoring still has to be enqueued."""
        return [p for p in self.project_ids() if self.is_rescore_pending(p)]

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
        return [p for p in self.project_ids() if (self._dir(p) / DEFERRED_LABELS).is_file()]

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
        return sorted(int(p.name) for p in self.root.glob("*") if p.name.isdigit()) if self.root.is_dir() else []

    # -- versions ---------------------------------------------------------------------------------------------
    def current(self, project_id: int) -> VersionInfo | None:
        path = self._dir(project_id) / "current.json"
        if not path.is_file():
            return None
        return self.get_version(project_id, json.loads(path.read_text())["version"])

    def get_version(self, project_id: int, version: str) -> VersionInfo:
        meta = self._dir(project_id) / "versions" / version / "meta.json"
        return VersionInfo(**json.loads(meta.read_text()))

    def versions(self, project_id: int) -> list[VersionInfo]:
        """Every version ever published for the project (promoted or not), oldest first."""
        vdir = self._dir(project_id) / "versions"
        # pathlib's glob matches hidden folders: skip the ``.tmp-*`` one a publish is writing (its meta.json may be
        # empty at this instant; the status page read one and failed while the worker published)
        metas = [m for m in vdir.glob("*/meta.json") if not m.parent.name.startswith(".")] if vdir.is_dir() else []
        return sorted((VersionInfo(**json.loads(m.read_text())) for m in metas), key=lambda v: v.number)

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
        """Write a version atomically; make it current if ``promote``. Returns the stored info."""
        vroot = self._dir(project_id) / "versions"
        vroot.mkdir(parents=True, exist_ok=True)
        final = vroot / info.version
        if final.exists():
            raise FileExistsError(f"version {info.version} already exists")
        info.promoted = promote
        tmp = Path(tempfile.mkdtemp(dir=vroot, prefix=".tmp-"))
        try:
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            (tmp / "meta.json").write_text(json.dumps(asdict(info), indent=1))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if promote:
            self.set_current(project_id, info.version)
        return info

    def set_current(self, project_id: int, version: str) -> None:
        if not (self._dir(project_id) / "versions" / version / "meta.json").is_file():
            raise FileNotFoundError(f"no version {version} in project {project_id}")
        _write_atomic(self._dir(project_id) / "current.json", json.dumps({"version": version}).encode())

    def read_file(self, project_id: int, version: str, name: str) -> bytes:
        return (self._dir(project_id) / "versions" / version / name).read_bytes()

    # -- pool reference for cold start ------------------------------------------------------------------------
    def save_pool_reference(self, project_id: int, embeddings: np.ndarray) -> None:
        path = self._dir(project_id) / "pool_reference.npy"
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, embeddings.astype(np.float32))
        os.replace(tmp, path)

    def pool_reference(self, project_id: int) -> np.ndarray | None:
        path = self._dir(project_id) / "pool_reference.npy"
        return np.load(path) if path.is_file() else None

    def labelled_embeddings(self, project_id: int, version: str) -> np.ndarray | None:
        path = self._dir(project_id) / "versions" / version / "labelled.npy"
        return np.load(path).astype(np.float32) if path.is_file() else None

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
        _write_atomic(self._ranking_path(project_id, version), buf.getvalue())

    def _ranking_path(self, project_id: int, version: str) -> Path:
        return self._dir(project_id) / "versions" / version / "ranking.npz"

    def ranking_mtime(self, project_id: int, version: str) -> float:
        """When the version's stored pool order was last written (0.0: never)."""
        path = self._ranking_path(project_id, version)
        return path.stat().st_mtime if path.is_file() else 0.0

    def ranking(self, project_id: int, version: str) -> StoredRanking | None:
        """The version's stored LS score per task and the floor of the rest of the pool (None: never scored)."""
        pool = self.pool_predictions(project_id, version)
        if pool is None:
            return None
        return StoredRanking(dict(zip(pool.task_ids, pool.scores.tolist())), pool.rest_floor)

    def pool_predictions(self, project_id: int, version: str) -> PoolPredictions | None:
        """The version's stored pool view for the dashboard and the stopping rule (None: never scored the pool)."""
        path = self._ranking_path(project_id, version)
        if not path.is_file():
            return None
        with np.load(path) as data:
            n = len(data["task_ids"])
            return PoolPredictions(
                version,
                data["task_ids"].tolist(),
                data["scores"],
                data["reasons"].tolist(),
                data["predicted"].tolist() if "predicted" in data else [""] * n,
                data["uncertainty"] if "uncertainty" in data else np.full(n, np.nan),
                float(data["rest_floor"]),
                path.stat().st_mtime,
            )

    def label_predictions(self, project_id: int, version: str) -> LabelPredictions | None:
        path = self._dir(project_id) / "versions" / version / LABEL_PREDICTIONS
        if not path.is_file():
            return None
        with np.load(path) as data:
            return LabelPredictions(
                data["task_ids"].tolist(), data["predicted"].tolist(), data["confidence"], data["human"].tolist()
            )

    def cleanup_temp(self, project_id: int) -> None:
        """Remove half-written versions left by a crashed job (they were never visible)."""
        for tmp in (self._dir(project_id) / "versions").glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

"""The project's task list in our own store, so a re-score does not list every task of the project in LS.

Listing tasks is the dearest thing LS does: 5-8 ms per task whatever the fields asked for (measured, LS 1.23.2 on
SQLite, 2 shared cores: 50-100 s for 10k tasks), more than all the rest a re-score asks of LS. The store keeps,
per project, the task ids and their data, which tasks are labelled and which model versions LS holds a
prediction of for each task (with its score). It is an SQLite file in the project's folder of ``DATA_DIR``,
shared by the web app and the workers like the rest of that folder.

LS stays the truth; the store only spares listings. It is kept true by:

- the web app: ``TASKS_CREATED`` adds the payload's tasks, ``TASKS_DELETED`` removes them (LS sends a webhook
  once, with a 1 s timeout, so either may be lost: the sync below does not rely on them);
- the worker: what it imports is recorded, a deleted version is forgotten;
- :meth:`TaskList.sync`, before each re-score and fill, which asks LS only cheap questions (measured on 10k
  tasks: about 0.1 s each, against a minute for a listing):

  1. the tasks above the highest id a sync has seen in LS (a Data Manager filter on ``tasks:id``; LS ids only
     grow), so a task whose webhook was lost is found even when a later task's webhook arrived;
  2. the project's task count (``GET /api/projects/{id}/``); if it differs from the store's, the tasks deleted
     in LS (below that id, only deletions can be missed) are found by bisection on id ranges with LS's count of
     each range (one single-task request per range; ranges of ``LEAF`` known tasks or fewer are listed). Should
     a deleted task still be missed, LS refuses the import of a prediction for it, and the worker asks for a
     full listing;
  3. the labelled tasks, with their annotations (Data Manager filter ``total_annotations > 0``; it costs what
     the training's own listing costs, in proportion to the labelled tasks): labels always come from LS;
  4. per-version prediction counts (``/model-versions/``) against the store's; on any difference, every
     prediction of the project (one unpaginated request, 2-3 s for 10k) replaces the store's.

  A store that is missing or was never filled, or whose task count still differs from LS's after this, is
  filled from a full listing (the fallback): LS's export of every task, 2.6 times faster than its task listing
  (its predictions are ids only, so step 4 reads them). A task whose *data* is edited in LS is not seen (LS sends no
  webhook for it and no count changes): deleting the store file makes the next sync list the project again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_backend.labelstudio.annotations import is_labelled
from ml_backend.labelstudio.client import LabelStudioClient

log = logging.getLogger(__name__)

#: the store's file name inside a project's folder
FILE_NAME = "tasklist.sqlite3"
#: id ranges with at most this many known tasks are listed instead of bisected further (listing one task costs
#: about what one count request costs over 20-40 tasks, measured)
LEAF = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, data TEXT NOT NULL, labelled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS predictions (
    task INTEGER NOT NULL, version TEXT NOT NULL, score REAL, PRIMARY KEY (task, version)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class SyncReport:
    """What a sync found and what it cost in LS requests (logged by the jobs, shown in their result)."""

    full: bool = False
    added: int = 0
    removed: int = 0
    labelled: int = 0
    predictions_reloaded: bool = False
    requests: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, what: str, n: int = 1) -> None:
        self.requests[what] = self.requests.get(what, 0) + n


class TaskList:
    """One project's tasks as LS last told us (see the module docstring for how it stays true)."""

    def __init__(self, path: Path, timeout: float = 30.0):
        """``timeout``: seconds to wait for another process's write to finish (SQLite's busy timeout)."""
        self.path = Path(path)
        self.timeout = timeout

    @classmethod
    def of_project(cls, projects_dir: Path, project_id: int, timeout: float = 30.0) -> TaskList:
        """The store of a project, in its folder of the registry (``<projects_dir>/<id>/``)."""
        return cls(Path(projects_dir) / str(int(project_id)) / FILE_NAME, timeout)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One transaction; WAL and a busy timeout, since the web app and several workers share the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.timeout)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            with conn:
                yield conn
        finally:
            conn.close()

    # -- what the web app's webhooks tell -------------------------------------------------------------------
    def add(self, tasks: Iterable[dict[str, Any]]) -> int:
        """Add (or refresh) tasks as LS describes them (a TASKS_CREATED payload or a listing): id, data, labelled
        from their annotations, and the predictions they carry. Returns how many were added or refreshed."""
        rows, preds = [], []
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            if not isinstance(task_id, int) or isinstance(task_id, bool) or not isinstance(task.get("data"), dict):
                continue  # not a task LS would send: the sync finds the real one
            rows.append((task_id, json.dumps(task["data"]), int(is_labelled(task))))
            preds.extend(
                (task_id, str(p["model_version"]), p.get("score"))
                for p in task.get("predictions") or []
                if isinstance(p, dict) and p.get("model_version") is not None
            )
        with self._db() as db:
            db.executemany(
                "INSERT INTO tasks (id, data, labelled) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "data = excluded.data, labelled = excluded.labelled",
                rows,
            )
            db.executemany("INSERT OR REPLACE INTO predictions (task, version, score) VALUES (?, ?, ?)", preds)
        return len(rows)

    def remove(self, task_ids: Iterable[int]) -> int:
        """Forget deleted tasks (and their predictions); returns how many the store held."""
        ids = [(int(i),) for i in task_ids]
        with self._db() as db:
            before = db.total_changes
            db.executemany("DELETE FROM tasks WHERE id = ?", ids)
            removed = db.total_changes - before
            db.executemany("DELETE FROM predictions WHERE task = ?", ids)
        return removed

    # -- what the worker does in LS -------------------------------------------------------------------------
    def record_predictions(self, version: str, scores: dict[int, float | None]) -> None:
        """LS now holds these predictions of ``version`` (imported by us)."""
        with self._db() as db:
            db.executemany(
                "INSERT OR REPLACE INTO predictions (task, version, score) VALUES (?, ?, ?)",
                [(int(t), version, s) for t, s in scores.items()],
            )

    def forget_version(self, version: str) -> None:
        """LS deleted every prediction of ``version``."""
        with self._db() as db:
            db.execute("DELETE FROM predictions WHERE version = ?", (version,))

    # -- reading --------------------------------------------------------------------------------------------
    def unlabelled(self) -> list[dict[str, Any]]:
        """The unlabelled tasks, shaped as LS lists them (id, data, and predictions with model_version and score),
        by id."""
        with self._db() as db:
            tasks = {
                task_id: {"id": task_id, "data": json.loads(data), "predictions": []}
                for task_id, data in db.execute("SELECT id, data FROM tasks WHERE labelled = 0 ORDER BY id")
            }
            rows = db.execute(
                "SELECT p.task, p.version, p.score FROM predictions p JOIN tasks t ON t.id = p.task "
                "WHERE t.labelled = 0"
            )
            for task_id, version, score in rows:
                tasks[task_id]["predictions"].append({"model_version": version, "score": score})
        return list(tasks.values())

    def ids(self) -> list[int]:
        with self._db() as db:
            return [row[0] for row in db.execute("SELECT id FROM tasks ORDER BY id")]

    def labelled_ids(self) -> set[int]:
        with self._db() as db:
            return {row[0] for row in db.execute("SELECT id FROM tasks WHERE labelled = 1")}

    def version_counts(self) -> dict[str, int]:
        """{model_version: tasks holding a prediction of it}, as LS's ``/model-versions/`` counts them."""
        with self._db() as db:
            return dict(db.execute("SELECT version, COUNT(*) FROM predictions GROUP BY version").fetchall())

    def _watermark(self) -> int | None:
        """The highest task id a sync has seen in LS; None until a full listing has filled the store (until then
        it holds only what webhooks brought)."""
        if not self.path.is_file():
            return None
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
        return int(row[0]) if row else None

    def _set_watermark(self, task_id: int) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('watermark', ?)", (str(int(task_id)),))

    # -- keeping it true ------------------------------------------------------------------------------------
    def sync(self, ls: LabelStudioClient, project_id: int, full: bool = False) -> SyncReport:
        """Bring the store up to LS with the cheap questions of the module docstring; a full listing when asked
        (``full``), when the store was never filled or when the counts still disagree afterwards."""
        started = time.monotonic()
        report = SyncReport()
        watermark = self._watermark()
        if full or watermark is None:
            self._full_listing(ls, project_id, report)
        else:
            self._new_tasks(ls, project_id, watermark, report)
            in_ls = self._task_number(ls, project_id, report)
            if in_ls != len(self.ids()):
                self._repair(ls, project_id, report)
                in_ls = self._task_number(ls, project_id, report)
            if in_ls != len(self.ids()):
                log.warning("project %s: the task list disagrees with Label Studio's count: listing it", project_id)
                self._full_listing(ls, project_id, report)
            else:
                self._labels(ls, project_id, report)
        self._predictions(ls, project_id, report)
        report.seconds = time.monotonic() - started
        log.info(
            "project %s: task list synced in %.1f s (%s): +%d -%d tasks, %d labelled, requests %s",
            project_id,
            report.seconds,
            "full listing" if report.full else "incremental",
            report.added,
            report.removed,
            report.labelled,
            report.requests,
        )
        return report

    def _full_listing(self, ls: LabelStudioClient, project_id: int, report: SyncReport) -> None:
        """Replace the store's tasks with every task of the project (what the store exists to avoid, once), read
        through LS's export: 2.6 times faster than the task listing (``LabelStudioClient.export_tasks``)."""
        tasks = ls.export_tasks(project_id)
        report.count("export every task")
        report.full = True
        listed = {t["id"] for t in tasks}
        # a task a webhook added during the listing goes too; the next sync finds it again (its id is the highest)
        report.removed += self.remove(i for i in self.ids() if i not in listed)
        report.added += self.add(tasks)
        report.labelled = sum(1 for t in tasks if is_labelled(t))
        self._set_watermark(max(listed, default=0))

    @staticmethod
    def _task_number(ls: LabelStudioClient, project_id: int, report: SyncReport) -> int:
        report.count("project")
        return int(ls.get_project(project_id).task_number or 0)

    def _new_tasks(self, ls: LabelStudioClient, project_id: int, watermark: int, report: SyncReport) -> None:
        """Make the tasks above the watermark exactly those LS lists there (webhooks may have brought some)."""
        new = list(ls.iter_tasks(project_id, first_id=watermark + 1))
        report.count("list new tasks")
        listed = {t["id"] for t in new}
        report.removed += self.remove(i for i in self.ids() if i > watermark and i not in listed)
        known = set(self.ids())
        report.added += self.add(t for t in new if t["id"] not in known)
        self._set_watermark(max(listed, default=watermark))

    def _repair(self, ls: LabelStudioClient, project_id: int, report: SyncReport) -> None:
        """Find the tasks LS deleted, or holds below the highest known id without the store knowing them (a lost
        webhook), by bisection: LS's count of an id range is compared with the store's, and only ranges that
        differ are split; a range of at most ``LEAF`` known tasks is listed."""
        known = self.ids()
        ranges = [(0, known[-1] if known else 0, known)]
        while ranges:
            first, last, ids = ranges.pop()
            if len(ids) <= LEAF:
                report.count("list tasks of an id range")
                listed = list(ls.iter_tasks(project_id, first_id=first, last_id=last))
                present, had = {t["id"] for t in listed}, set(ids)
                report.removed += self.remove(i for i in ids if i not in present)
                report.added += self.add(t for t in listed if t["id"] not in had)
                continue
            report.count("count tasks of an id range")
            if ls.count_tasks(project_id, first, last) != len(ids):
                half = len(ids) // 2
                ranges += [(first, ids[half] - 1, ids[:half]), (ids[half], last, ids[half:])]

    def _labels(self, ls: LabelStudioClient, project_id: int, report: SyncReport) -> None:
        """Mark exactly the tasks LS holds a label for (latest non-skipped annotation with a result)."""
        labelled = [t for t in ls.iter_tasks(project_id, labelled_only=True) if is_labelled(t)]
        report.count("list labelled tasks")
        ids = [(t["id"],) for t in labelled]
        with self._db() as db:
            db.execute("UPDATE tasks SET labelled = 0 WHERE labelled = 1")
            db.executemany("UPDATE tasks SET labelled = 1 WHERE id = ?", ids)
        report.labelled = len(ids)

    def _predictions(self, ls: LabelStudioClient, project_id: int, report: SyncReport) -> None:
        """Compare per-version counts with LS's; on a difference, reload every prediction of the project."""
        report.count("model versions")
        if ls.model_versions(project_id) == self.version_counts():
            return
        rows = ls.predictions(project_id)
        report.count("list predictions")
        report.predictions_reloaded = True
        with self._db() as db:
            db.execute("DELETE FROM predictions")
            db.executemany(
                "INSERT OR REPLACE INTO predictions (task, version, score) VALUES (?, ?, ?)",
                [(task, version, score) for _, task, version, score in rows],
            )

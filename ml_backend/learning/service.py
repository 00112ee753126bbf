"""Scoring tasks for a project: the one code path behind /predict, pool re-scoring and new-task scoring.

For each task: read its input (text, or an image fetched from LS), embed it with the frozen encoder (cached by
content), run T MC-dropout passes of the current version's head, turn the uncertainty into LS's ``score``
(lower = label sooner) and the MC-mean decision into a pre-annotation. A whole-pool scoring orders the pool
batch-aware (``core.selection``; coverage of the pool before a model exists) and stores the order with the
version; /predict and new tasks then get the stored score, or one placed among the rest of the pool. An untrained
head gives no pre-annotation.
A task that cannot be scored gets a reason instead of a prediction; the rest of the batch is unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.core.density import representativeness
from ml_backend.core.selection import rest_score
from ml_backend.learning.embcache import EmbeddingCache, content_key, pack, unpack
from ml_backend.learning.ranking import mc_probabilities, rank_version, uncertainty_of
from ml_backend.learning.registry import ProjectRecord, Registry, StoredRanking, VersionInfo
from ml_backend.learning.store import ModelStore
from ml_backend.models.classifier import Classifier
from ml_backend.models.config import ModelConfig, UnknownModelConfig, load_model_config
from ml_backend.models.image import ImageError, load_image
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings
from ml_backend.tasktypes import TaskSchema

log = logging.getLogger(__name__)

#: joins a task's predicted labels into one stored value (multi-label: the set is one category for kappa)
LABEL_SEPARATOR = "|"

#: fetches a file URL of a task's data to a local path by a deadline (time.monotonic; implemented by the LS client)
FileFetcher = Callable[[str, int | None, float | None], Path]
#: label config XML -> schema; raises ValueError for a config we cannot learn (implemented in ``labelstudio``)
ConfigParser = Callable[[str], TaskSchema]


class UnknownProject(LookupError):
    """No /setup was received for this project."""


class InvalidModelConfig(ValueError):
    """A model config exists but does not load; the message names it, the details (its values) go to the log."""


@dataclass
class TaskScore:
    """The outcome for one task: a prediction, or the reason there is none."""

    task_id: int | None
    prediction: dict[str, Any] | None = None
    reason: str | None = None


@dataclass
class ProjectState:
    record: ProjectRecord
    schema: TaskSchema
    config: ModelConfig
    version: VersionInfo


def label_budget(extra_params: Any, known: ProjectRecord | None) -> int | None:
    """The project's label budget: ``extra_params: {"label_budget": n}`` set in LS, else the one already recorded
    (LS sends extra_params with /setup only). None: the model config's ``stopping.label_budget`` applies."""
    if isinstance(extra_params, dict) and "label_budget" in extra_params:
        value = extra_params["label_budget"]
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or int(value) < 1:
            raise ValueError(f"label_budget must be a positive whole number, got {value!r}")
        return int(value)
    return known.label_budget if known is not None else None


class ScoringService:
    """Per-project model state (read from the registry) and scoring. Shared by the web app and the worker."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        encoders: EncoderPool,
        fetch_file: FileFetcher | None,
        parse_config: ConfigParser,
        shared_embeddings: ModelStore | None = None,
    ):
        self.settings = settings
        self.registry = registry
        self.encoders = encoders
        # the model store's embedding packs (``learning.embcache``); None: this machine's cache alone
        self.shared_embeddings = shared_embeddings
        self.fetch_file = fetch_file
        self.parse_config = parse_config
        self._heads: OrderedDict[tuple[int, str], Classifier] = OrderedDict()
        self._caches: dict[str, EmbeddingCache] = {}
        # stored pool-sized objects (a version's pool order, a project's pool reference) with their mtime: /predict
        # must not read (from S3: download) and rebuild them on every call, and a re-score rewrites them
        self._stored: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._lock = threading.Lock()  # one model computation at a time: torch threads are the parallelism

    # -- projects -------------------------------------------------------------------------------------------
    def model_config_name(
        self, schema: TaskSchema, extra_params: Any = None, known: ProjectRecord | None = None
    ) -> str:
        """The project's model config: ``extra_params: {"model_config": name}`` set in LS, else the one the project
        already uses (LS sends no extra_params with /predict), else the default for its data kind."""
        if isinstance(extra_params, dict) and isinstance(extra_params.get("model_config"), str):
            return extra_params["model_config"]
        if known is not None:
            return known.model_config
        return self.settings.text_model_config if schema.kind == "text" else self.settings.image_model_config

    def register(
        self, project_id: int, project_key: str, label_config: str, extra_params: Any = None
    ) -> tuple[ProjectState, bool]:
        """Create or refresh a project from /setup; returns its state and whether it is new (needs a first scoring).

        Cheap on purpose (LS gives /setup 3 s): parses the config and writes small files, never loads a model.
        Raises the parser's error (a ValueError) for a config we cannot learn, UnknownModelConfig or
        InvalidModelConfig for a model config that cannot be used.
        """
        schema = self.parse_config(label_config)
        record = self.registry.get_project(project_id)
        if record and record.project_key != project_key and "." in record.project_key and "." in str(project_key):
            # same id, different creation time: the LS database was replaced; start this project afresh
            log.warning(
                "project %s: key %s replaces %s; archiving the old state", project_id, project_key, record.project_key
            )
            self.registry.archive_project(project_id)
            record = None
        config_name = self.model_config_name(schema, extra_params, record)
        config = self.load_config(config_name)
        if config.kind != schema.kind:
            raise ValueError(f"model config {config_name!r} is for {config.kind}, but the project labels {schema.kind}")
        created = record is None
        # a new label set or model family invalidates the trained heads; a layout-only edit of the config does not
        changed = record is not None and (
            self.parse_config(record.label_config) != schema or record.model_config != config_name
        )
        budget = label_budget(extra_params, record)
        if created or changed or record.label_config != label_config or record.label_budget != budget:
            record = ProjectRecord(project_id, str(project_key), label_config, config_name, label_budget=budget)
            self.registry.save_project(record)
        current = self.registry.current(project_id)
        if current is None or changed:
            # a new label set or model family starts from an untrained head (version 0 of this config)
            current = self.registry.publish_next(
                project_id,
                config,
                trained=False,
                promote=True,
                files={},
                note="untrained: the cold-start queue covers the pool's clusters",
            )
            created = True
        return ProjectState(record, schema, config, current), created

    def state(self, project_id: int) -> ProjectState:
        record = self.registry.get_project(project_id)
        current = self.registry.current(project_id)
        if record is None or current is None:
            raise UnknownProject(
                f"project {project_id} is unknown: connect it to this backend in Label Studio (/setup)"
            )
        schema = self.parse_config(record.label_config)
        config = self.load_config(record.model_config)
        return ProjectState(record, schema, config, current)

    def load_config(self, name: str) -> ModelConfig:
        """The named model config; UnknownModelConfig, or InvalidModelConfig without the file's values (an
        answer to an LS user must not quote the admin's files)."""
        try:
            return load_model_config(self.settings.model_configs_dir, name)
        except UnknownModelConfig:
            raise
        except Exception as exc:  # YAML syntax or validation: the admin reads the details in the log
            log.error("model config %r does not load: %s", name, exc)
            raise InvalidModelConfig(f"model config {name!r} is invalid (details in the server log)") from exc

    # -- models ---------------------------------------------------------------------------------------------
    def new_classifier(self, state: ProjectState, config: ModelConfig | None = None) -> Classifier:
        """An untrained classifier for the project's label set, on the shared encoder."""
        config = config or state.config
        return Classifier(self.encoders.get(config), config, len(state.schema.labels), state.schema.multilabel)

    def classifier(self, state: ProjectState, version: VersionInfo | None = None) -> Classifier:
        """The classifier of a version (default: the current one); heads are immutable, so cached by version."""
        version = version or state.version
        key = (state.record.project_id, version.version)
        with self._lock:
            if key in self._heads:
                self._heads.move_to_end(key)
                return self._heads[key]
        clf = self.new_classifier(state, ModelConfig.model_validate(version.model_config))
        if version.trained:
            clf.load_state(self.registry.read_file(state.record.project_id, version.version, "model.pt"))
        with self._lock:
            self._heads[key] = clf
            while len(self._heads) > 16:  # fine-tuned versions carry a whole encoder each
                self._heads.popitem(last=False)
        return clf

    def embedding_cache(self, clf: Classifier) -> EmbeddingCache:
        return self._cache_of(clf.encoder.fingerprint)

    def _cache_of(self, fingerprint: str) -> EmbeddingCache:
        if fingerprint not in self._caches:
            self._caches[fingerprint] = EmbeddingCache(self.settings.embeddings_dir, fingerprint)
        return self._caches[fingerprint]

    # -- inputs ---------------------------------------------------------------------------------------------
    def _locate_input(
        self, schema: TaskSchema, task: Any, deadline: float | None = None
    ) -> tuple[str, Callable[[], Any]]:
        """(content key, loader of the model input) of a task; raises ValueError/OSError with a reason.

        Images are fetched (file cache, by ``deadline``) and hashed here, but decoded only by the loader: a
        re-scoring whose embeddings are cached never decodes an image again.
        """
        if not isinstance(task, dict):
            raise ValueError("task must be a JSON object")
        value = schema.task_input(task.get("data"))
        if schema.kind == "text":
            # by characters, before the tokeniser sees it: a 20 MB text would otherwise cost minutes and GBs,
            # though the encoder keeps only its first max_length tokens (far fewer characters than the limit)
            value = value[: self.settings.max_text_chars]
            return content_key("text", value), lambda: value
        if self.fetch_file is None:
            raise ValueError("images need LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to be downloaded")
        path = Path(self.fetch_file(value, task.get("id"), deadline))
        return content_key("image", path.read_bytes()), lambda: self._decode(path)

    def _decode(self, path: Path) -> Any:
        """Decode a fetched image; an undecodable file leaves the file cache, so a fixed one is fetched again
        (and a large broken file does not stay on disk for good)."""
        try:
            return load_image(path, self.settings.max_image_pixels)
        except ImageError:
            if path.resolve().is_relative_to(self.settings.files_dir.resolve()):
                path.unlink(missing_ok=True)
            raise

    def _locate_all(
        self, schema: TaskSchema, tasks: Sequence[Any], outcomes: list[TaskScore]
    ) -> tuple[dict[int, str], dict[int, Callable[[], Any]]]:
        """Content keys and loaders of every usable task. Image downloads run in parallel
        (``DOWNLOAD_CONCURRENCY``) under one budget for the whole call (``DOWNLOAD_BUDGET``, within LS's 100 s for
        /predict): a few dead URLs cost one timeout, not one each."""
        deadline = time.monotonic() + self.settings.download_budget
        workers = 1 if schema.kind == "text" else min(self.settings.download_concurrency, max(len(tasks), 1))

        def locate(i: int) -> tuple[str, Callable[[], Any]] | None:
            try:
                return self._locate_input(schema, tasks[i], deadline)
            except (ValueError, OSError) as exc:
                outcomes[i].reason = str(exc)
            except Exception as exc:  # e.g. the LS file download failing in an unexpected way
                log.warning("task %s: cannot read its input", outcomes[i].task_id, exc_info=True)
                outcomes[i].reason = f"cannot read task input: {type(exc).__name__}"
            return None

        if workers == 1:
            found = [locate(i) for i in range(len(tasks))]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="download") as pool:
                found = list(pool.map(locate, range(len(tasks))))
        keys = {i: f[0] for i, f in enumerate(found) if f is not None}
        loaders = {i: f[1] for i, f in enumerate(found) if f is not None}
        return keys, loaders

    def embed_tasks(
        self, clf: Classifier, schema: TaskSchema, tasks: Sequence[dict[str, Any]]
    ) -> tuple[list[TaskScore], list[int], np.ndarray, list[Any]]:
        """Embed every usable task (cache first). Returns outcomes, indices of embedded tasks, their embeddings
        and their raw inputs; the raw inputs are loaded (and listed) only when the config needs them (full-network
        MC or full fine-tuning), else the list holds None."""
        return self._embed_keyed(clf, schema, tasks)[:4]

    def _embed_keyed(
        self, clf: Classifier, schema: TaskSchema, tasks: Sequence[dict[str, Any]]
    ) -> tuple[list[TaskScore], list[int], np.ndarray, list[Any], list[str]]:
        """``embed_tasks`` plus the content key of each embedded task."""
        outcomes = [TaskScore(task_id=t.get("id") if isinstance(t, dict) else None) for t in tasks]
        keys, loaders = self._locate_all(schema, tasks, outcomes)
        cache = self.embedding_cache(clf)
        if schema.kind != "text":  # which content each URL held: ``uncached`` then needs no download
            cache.remember_sources({schema.task_input(tasks[i]["data"]): key for i, key in keys.items()})
        cached = cache.get_many(keys.values())
        need_raw = clf.config.acquisition.mc_mode == "full" or clf.config.training.mode == "full"
        inputs: dict[int, Any] = {}
        for i in loaders:
            if need_raw or keys[i] not in cached:
                try:
                    inputs[i] = loaders[i]()
                except (ValueError, ImageError, OSError) as exc:
                    outcomes[i].reason = str(exc)
        missing = [i for i in inputs if keys[i] not in cached]
        fresh: dict[str, np.ndarray] = {}
        if missing:
            with self._lock:
                try:
                    vectors = list(clf.embed([inputs[i] for i in missing]))
                except Exception:  # isolate the input that breaks the batch, keep the others
                    log.exception("batch embedding failed; retrying task by task")
                    vectors = [self._embed_one(clf, inputs[i], outcomes[i]) for i in missing]
            for i, vec in zip(missing, vectors):
                if vec is not None:
                    fresh[keys[i]] = vec
            cache.put_many(fresh)
        ok = [i for i in loaders if outcomes[i].reason is None and (keys[i] in cached or keys[i] in fresh)]
        emb = np.stack([cached.get(keys[i], fresh.get(keys[i])) for i in ok]) if ok else np.zeros((0, clf.in_dim or 0))
        return outcomes, ok, emb, [inputs.get(i) for i in ok], [keys[i] for i in ok]

    def uncached(self, state: ProjectState, version: VersionInfo, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Indices of the tasks the version's encoder would have to embed, found without downloading or embedding:
        whether a re-score should fan its embedding out over the workers. An image counts as uncached unless an
        earlier embedding recorded the content its URL held. Unusable tasks are left out (nothing to embed; the
        scoring path reports why). Other machines' packs are merged first: what they embedded is not uncached."""
        clf = self.classifier(state, version)
        self.sync_embeddings(clf.encoder.fingerprint)
        cache = self.embedding_cache(clf)
        keys: dict[int, str] = {}
        urls: dict[int, str] = {}
        for i, task in enumerate(tasks):
            try:
                if state.schema.kind == "text":
                    keys[i] = self._locate_input(state.schema, task)[0]  # hashes the text, fetches nothing
                else:
                    urls[i] = state.schema.task_input(task.get("data") if isinstance(task, dict) else None)
            except ValueError:
                continue
        known = cache.sources(urls.values())
        keys.update({i: known[url] for i, url in urls.items() if url in known})
        present = cache.present(keys.values())
        return [i for i in sorted({*keys, *urls}) if keys.get(i) not in present]

    def embed_part(
        self, state: ProjectState, version: VersionInfo, tasks: Sequence[dict[str, Any]], batch_size: int
    ) -> tuple[str, dict[str, np.ndarray], int, dict[str, str]]:
        """Embed one part of a pool (an embedding chunk job) into this machine's cache, ``batch_size`` inputs at a
        time (decoded images must not all sit in memory). Returns the encoder's fingerprint, the embeddings by
        content key (to share with the other machines: :meth:`share_embeddings`), how many tasks have one (tasks
        with the same content share it) and the reason of each task that cannot have one (the rest of the part is
        unaffected)."""
        clf = self.classifier(state, version)
        vectors: dict[str, np.ndarray] = {}
        embedded = 0
        skipped: dict[str, str] = {}
        for start in range(0, len(tasks), batch_size):
            outcomes, ok, emb, _, keys = self._embed_keyed(clf, state.schema, tasks[start : start + batch_size])
            vectors.update(zip(keys, emb))
            embedded += len(ok)
            skipped.update({str(o.task_id): o.reason for o in outcomes if o.reason})
        return clf.encoder.fingerprint, vectors, embedded, skipped

    def share_embeddings(self, fingerprint: str, name: str, vectors: dict[str, np.ndarray]) -> str:
        """Leave embeddings this machine computed (and cached) in the model store as the pack ``name``, for every
        other machine's cache; returns its key. StoreError when the store cannot take it."""
        if self.shared_embeddings is None:
            raise RuntimeError("this process has no model store to share embeddings through")
        key = f"{fingerprint}/{name}.npz"
        self.shared_embeddings.write(key, pack(vectors))
        self._cache_of(fingerprint).merge(f"{name}.npz", {})  # its vectors are here already: never download it
        return key

    def sync_embeddings(self, fingerprint: str) -> int:
        """Merge into this machine's cache the packs of the encoder ``fingerprint`` that other machines left in the
        model store since the last sync (one listing, then only the new packs); returns the embeddings added."""
        if self.shared_embeddings is None:
            return 0
        cache = self._cache_of(fingerprint)
        merged = cache.merged()
        added = 0
        for name in self.shared_embeddings.children(fingerprint):
            if name not in merged and (data := self.shared_embeddings.read(f"{fingerprint}/{name}")) is not None:
                added += cache.merge(name, unpack(data))
        return added

    @staticmethod
    def _embed_one(clf: Classifier, item: Any, outcome: TaskScore) -> np.ndarray | None:
        try:
            return clf.embed([item])[0]
        except Exception as exc:
            outcome.reason = f"the encoder failed on this input: {type(exc).__name__}: {exc}"
            return None

    # -- scoring --------------------------------------------------------------------------------------------
    def _decisions(self, schema: TaskSchema, probs: np.ndarray | None, n: int) -> list[list[str]]:
        """Pre-annotations from the version's deterministic probabilities (``Classifier.decision_proba``);
        none from an untrained head (it would be random)."""
        return [[] for _ in range(n)] if probs is None else schema.task.decisions(schema, probs)

    def _predictions(
        self,
        state: ProjectState,
        version: VersionInfo,
        outcomes: list[TaskScore],
        ok: list[int],
        scores: Sequence[float],
        chosen: list[list[str]],
    ) -> list[TaskScore]:
        for j, i in enumerate(ok):
            outcomes[i].prediction = {
                "result": state.schema.make_result(chosen[j]),
                "score": float(scores[j]),
                "model_version": version.version,
            }
        return outcomes

    def score(
        self, state: ProjectState, tasks: Sequence[dict[str, Any]], version: VersionInfo | None = None
    ) -> list[TaskScore]:
        """Score a few tasks with a version (default: current): /predict, new tasks, filling gaps.

        A task the version's last pool scoring ranked gets exactly that score (one score per task per version,
        whoever asks); any other task is placed among the rest of the pool by its own value (uncertainty, or density
        against the project's pool reference without a model), above the batch-aware front.
        """
        version = version or state.version
        clf = self.classifier(state, version)
        outcomes, ok, emb, items = self.embed_tasks(clf, state.schema, tasks)
        if not ok:
            return outcomes
        keys = [outcomes[i].task_id if outcomes[i].task_id is not None else f"#{i}" for i in ok]
        decided = None
        if clf.trained:
            with self._lock:
                probs = mc_probabilities(clf, emb, version.seed, items)
                decided = clf.decision_proba(emb)
            value = uncertainty_of(state.schema.task, clf, probs)
        else:
            pid = state.record.project_id
            stored = self._fresh(
                ("pool_reference", pid), self.registry.pool_reference_mtime(pid), self.registry.pool_reference, pid
            )
            reference = emb if stored is None else stored
            value = representativeness(emb, reference, clf.config.acquisition.cold_start_neighbours)
        ranked = self._stored_ranking(state.record.project_id, version.version)
        scores = rest_score(value, ranked.rest_floor if ranked else 0.0, keys)
        if ranked is not None:
            scores = np.array([ranked.scores.get(k, s) if isinstance(k, int) else s for k, s in zip(keys, scores)])
        return self._predictions(state, version, outcomes, ok, scores, self._decisions(state.schema, decided, len(ok)))

    def _stored_ranking(self, project_id: int, version: str) -> StoredRanking | None:
        mtime = self.registry.ranking_mtime(project_id, version)
        return self._fresh(("ranking", project_id, version), mtime, self.registry.ranking, project_id, version)

    def _fresh(self, key: tuple[Any, ...], mtime: float, load: Callable[..., Any], *args: Any) -> Any:
        """``load(*args)``, read again only when the stored object's ``mtime`` changed (0.0: absent, None)."""
        with self._lock:
            cached = self._stored.get(key)
        if cached is None or cached[0] != mtime:
            cached = (mtime, load(*args) if mtime else None)
            with self._lock:
                self._stored[key] = cached
                while len(self._stored) > 64:
                    self._stored.pop(next(iter(self._stored)))
        return cached[1]

    def score_pool(
        self,
        state: ProjectState,
        tasks: Sequence[dict[str, Any]],
        version: VersionInfo | None = None,
        batch_size: int = 64,
        progress: Callable[..., None] | None = None,
    ) -> list[TaskScore]:
        """Rank the whole unlabelled pool with a version and score every task (the worker's re-score).

        Embeds in batches (cached), refreshes the project's pool reference (the one density reference /predict
        uses too), computes the version's uncertainty, orders the pool batch-aware (see ``core.selection``) and
        stores the order with the version, so that /predict later answers with the same scores.
        """
        report = progress or (lambda *a, **k: None)
        version = version or state.version
        project_id = state.record.project_id
        clf = self.classifier(state, version)
        outcomes: list[TaskScore] = []
        ok: list[int] = []
        chunks: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        decided: list[np.ndarray] = []
        for start in range(0, len(tasks), batch_size):
            part, part_ok, emb, items = self.embed_tasks(clf, state.schema, tasks[start : start + batch_size])
            outcomes.extend(part)
            ok.extend(start + i for i in part_ok)
            chunks.append(emb)
            if clf.trained and len(emb):
                with self._lock:
                    probs.append(mc_probabilities(clf, emb, version.seed, items))
                    decided.append(clf.decision_proba(emb))
            report(
                "scoring: embedding",
                min(start + batch_size, len(tasks)),
                len(tasks),
                skipped=sum(1 for o in outcomes if o.reason),
            )
        if not ok:
            return outcomes
        emb = np.concatenate([c for c in chunks if len(c)])
        sample = np.sort(np.random.default_rng(0).permutation(len(emb))[:5000])
        self.registry.save_pool_reference(project_id, emb[sample])
        keys = [int(outcomes[i].task_id) if outcomes[i].task_id is not None else -i for i in ok]
        report("scoring: ordering the pool", len(ok), len(tasks))
        counts = version.metrics.get("class_counts") or {}
        decided_all = np.concatenate(decided) if decided else None
        view = rank_version(
            state.schema.task,
            clf,
            emb,
            keys,
            version.seed,
            labelled=self.registry.labelled_embeddings(project_id, version.version),
            reference=emb[sample],
            explore=bool(version.metrics.get("unseen_classes")),
            probs=np.concatenate(probs) if probs else None,
            decided=decided_all,
            labelled_counts=np.array([counts.get(label, 0) for label in state.schema.labels]),
        )
        chosen = self._decisions(state.schema, decided_all, len(ok))
        self.registry.save_ranking(
            project_id,
            version.version,
            keys,
            view.ranking.scores,
            view.ranking.reasons,
            view.ranking.rest_floor,
            predicted=[LABEL_SEPARATOR.join(c) for c in chosen],
            uncertainty=None if view.probs is None else uncertainty_of(state.schema.task, clf, view.probs),
        )
        return self._predictions(state, version, outcomes, ok, view.ranking.scores, chosen)

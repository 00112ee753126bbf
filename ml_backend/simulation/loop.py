"""The simulation loop: one (strategy, seed) run of the product's path, the full-data ceiling, the driver.

See the package doc (``ml_backend.simulation``) for what a run replays.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.core.selection import WEIGHT_TERMS
from ml_backend.core.stopping import cohens_kappa, kappa_average
from ml_backend.core.strategies import STRATEGIES
from ml_backend.simulation import datasets
from ml_backend.simulation.report import RANDOM, summarise, write_outputs

log = logging.getLogger(__name__)

DEFAULT = "default"
HYBRID = "hybrid"  # the default config with equal weights on uncertainty, novelty and density
#: ``<name>+<modifier>``: the strategy's config changed as the modifier says (several may follow each other)
MODIFIERS = {
    "topk": "the batch-aware front switched off (plain top-k, the behaviour before it existed)",
    "badge": "the front's learn picks are BADGE's k-means++ draws over gradient embeddings (not class-balanced)",
    "power": "the learn picks drawn with probability ~ value (stochastic power acquisition, Kirsch et al.'s "
    "exponent 1)",
    "laplace": "the MC passes are weight samples of a Laplace posterior over the head's last layer "
    "(acquisition.mc_mode: laplace)",
    "balance": "the learn picks class-balanced: the least labelled predicted class first (acquisition.balance), "
    "also with two classes",
}
ALL_STRATEGIES = [RANDOM, DEFAULT, HYBRID, *STRATEGIES]
DATASETS = (
    "digits-features",
    "fashion-mnist",
    "fashion-mnist-images",
    "digits-images",
    "rotten-tomatoes",
    "rotten-tomatoes-3",
    "presidential-debates",
    "csv:<path>",
    "folder:<path>",
)


@dataclass
class SimulationSettings:
    """Everything that defines a simulation; saved into ``simulation.json`` so a run can be repeated."""

    dataset: str = "digits-features"
    out_dir: Path = Path("simulation-out")
    model_config: str | None = None  # default: the text or image default config for the dataset's kind
    configs_dir: Path | None = None
    strategies: list[str] = field(default_factory=lambda: list(ALL_STRATEGIES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    initial: int | None = None  # labels before the first training (default: lag)
    batch: int = 10  # labels per recorded round
    lag: int | None = None  # labels between versions (default: batch)
    rounds: int = 30
    cold_start: str = "product"  # the product's cold-start queue, or "random" initial labels
    duplicates: int = 1  # every pool item this many times (a pool with duplicated items)
    test_fraction: float = 0.25
    mc: int | None = None  # MC dropout passes for scoring; default: the model config's acquisition.mc_samples
    n: int | None = None  # class-balanced subsample of the dataset
    epochs: int | None = None  # override the model config's training.epochs
    target_accuracy: float | None = None  # an absolute accuracy to report labels-needed for (e.g. 0.95)
    jobs: int = 1  # worker processes (each with 1 torch thread)
    image_size: int = 64  # digits-images, fashion-mnist-images: size of the PNGs written

    def validate(self) -> None:
        unknown = [s for s in self.strategies if not _known_strategy(s)]
        if unknown:
            raise ValueError(
                f"unknown strategies {unknown}; choose from {ALL_STRATEGIES}, each but random optionally followed by "
                f"+modifiers: {', '.join(f'+{m} ({what})' for m, what in MODIFIERS.items())}"
            )
        if self.cold_start not in ("product", "random"):
            raise ValueError("cold_start must be 'product' or 'random'")
        if any(v is not None and v < 1 for v in (self.initial, self.lag)) or self.batch < 1 or self.rounds < 1:
            raise ValueError("initial, lag, batch and rounds must be >= 1")
        if self.duplicates < 1:
            raise ValueError("duplicates must be >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError("test_fraction must be in (0, 1)")


# ------------------------------------------------------------------------------------------------ data + model


@dataclass
class Prepared:
    """A dataset turned into features: X (n, d) float32, y (n,) class indices, the class names and the config."""

    X: np.ndarray
    y: np.ndarray
    classes: list[str]
    kind: str  # features | text | image
    config: Any  # ModelConfig
    description: str
    tokens: int | None = None  # text: tokens the encoder processed
    embed_seconds: float = 0.0


def load_dataset(spec: str, work_dir: Path, n: int | None = None, seed: int = 0, image_size: int = 64):
    """``(dataset, kind)`` for a ``--dataset`` spec (see :data:`DATASETS`)."""
    if spec == "digits-features":
        data = datasets.digits_features()
        return (data.subset(datasets.stratified_indices(data.labels, n, seed)) if n else data), "features"
    if spec == "fashion-mnist":
        return datasets.fashion_mnist_features(n=n or 3000, seed=seed), "features"
    if spec == "fashion-mnist-images":  # the same 3,000 images as PNGs: the product's CNN path
        return datasets.fashion_mnist_png(
            Path(work_dir) / "fashion-png", n=n or 3000, size=image_size, seed=seed
        ), "image"
    if spec == "digits-images":
        return datasets.digits_png(Path(work_dir) / "digits-png", n=n, size=image_size, seed=seed), "image"
    if spec == "rotten-tomatoes":
        return datasets.rotten_tomatoes(n=n, seed=seed), "text"
    if spec == "rotten-tomatoes-3":  # plot summaries, fresh and rotten reviews: 3 classes, 1,000 each by default
        return datasets.rotten_tomatoes(
            n=n or 3000, seed=seed, full=True, categories=("plot", "fresh", "rotten")
        ), "text"
    if spec == "presidential-debates":  # the speaker's side of a 2016 debate statement: 3 classes, 1,055 texts
        return datasets.presidential_debates(n=n, seed=seed), "text"
    if spec.startswith("csv:"):
        data = datasets.text_csv(spec[4:])
    elif spec.startswith("folder:"):
        data = datasets.image_folder(spec[7:])
    else:
        raise ValueError(f"unknown dataset {spec!r}; use one of {DATASETS}")
    data = data.subset(datasets.stratified_indices(data.labels, n, seed)) if n else data
    return data, ("text" if isinstance(data, datasets.TextDataset) else "image")


def _model_config(settings: SimulationSettings, kind: str):
    from ml_backend.models.config import load_model_config
    from ml_backend.settings import Settings

    base = Settings()
    configs_dir = settings.configs_dir or base.model_configs_dir
    name = settings.model_config or (base.text_model_config if kind == "text" else base.image_model_config)
    if name.endswith((".yaml", ".yml")):  # the simulator is a local tool: a YAML path is fine here
        configs_dir, name = Path(name).parent, Path(name).stem
    config = load_model_config(configs_dir, name)
    if settings.epochs:
        config = config.model_copy(update={"training": config.training.model_copy(update={"epochs": settings.epochs})})
    if settings.mc:
        config = config.model_copy(
            update={"acquisition": config.acquisition.model_copy(update={"mc_samples": settings.mc})}
        )
    return config


def _items_key(dataset) -> str:
    if isinstance(dataset, datasets.TextDataset):
        parts = dataset.texts
    elif isinstance(dataset, datasets.ImageDataset):
        parts = [f"{p.name}:{p.stat().st_size}" for p in dataset.paths]
    else:
        return hashlib.sha1(np.ascontiguousarray(dataset.X).tobytes()).hexdigest()[:16]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def prepare(settings: SimulationSettings) -> Prepared:
    """Load the dataset and embed it once with the frozen encoder (cached as ``.npy`` under ``out/embeddings``)."""
    out = Path(settings.out_dir)
    dataset, kind = load_dataset(settings.dataset, out, settings.n, seed=0, image_size=settings.image_size)
    config = _model_config(settings, "text" if kind == "text" else "image")
    classes = dataset.classes
    if len(classes) < 2:
        raise ValueError(f"{settings.dataset}: needs at least 2 classes, found {classes}")
    y = dataset.y()
    desc = f"{settings.dataset} ({len(dataset)} items, {len(classes)} classes)"
    if kind == "features":
        return Prepared(dataset.X, y, classes, kind, config, desc + ", raw features")

    from ml_backend.models.encoders import torch_info
    from ml_backend.models.pool import EncoderPool

    encoder = EncoderPool().get(config)
    cache = out / "embeddings" / f"{settings.dataset.split(':')[0]}-{_items_key(dataset)}-{encoder.fingerprint}.npy"
    tokens = None
    if kind == "text":
        tokens = encoder.count_tokens(dataset.texts)
    t0 = time.perf_counter()
    if cache.is_file():
        X = np.load(cache)
        log.info("embeddings from cache %s", cache)
    else:
        items: Sequence[Any]
        if kind == "text":
            items = dataset.texts
        else:
            from ml_backend.models.image import load_image

            items = [load_image(p, 40_000_000) for p in dataset.paths]
        log.info(
            "embedding %d items with %s (%d torch threads)", len(items), config.name, torch_info()["torch_threads"]
        )
        X = encoder.embed(items).astype(np.float32)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, X)
    seconds = time.perf_counter() - t0
    return Prepared(X, y, classes, kind, config, f"{desc}, {config.name} embeddings", tokens, seconds)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train pool, test) indices with every class split in the same proportion."""
    rng = np.random.default_rng([seed, 7])
    train: list[int] = []
    test: list[int] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return rng.permutation(np.array(train)), np.sort(np.array(test))


def parse_strategy(strategy: str) -> tuple[str, frozenset[str]]:
    """``<name>[+modifier]...`` -> (name, modifiers)."""
    name, *modifiers = strategy.split("+")
    return name, frozenset(modifiers)


def _known_strategy(strategy: str) -> bool:
    name, modifiers = parse_strategy(strategy)
    return name in ALL_STRATEGIES and modifiers <= MODIFIERS.keys() and not (name == RANDOM and modifiers)


def strategy_config(config: Any, strategy: str) -> Any:
    """The model config a strategy runs with: the default as is, or its acquisition function swapped and its
    :data:`MODIFIERS` applied."""
    name, modifiers = parse_strategy(strategy)
    update: dict[str, Any] = {"power": 1.0} if "power" in modifiers else {}
    if "badge" in modifiers:
        update.update(front="badge", balance=False)  # BADGE draws its own learn picks: none to balance
    if "laplace" in modifiers:
        update["mc_mode"] = "laplace"
    if "balance" in modifiers:
        update.update(balance=True, balance_min_classes=2)  # whatever the number of classes
    if name == HYBRID:
        update["weights"] = {term: 1.0 for term in WEIGHT_TERMS}
    elif name not in (RANDOM, DEFAULT):
        update["strategy"] = name
    if "topk" in modifiers:
        update["front_size"] = 0
    if not update:
        return config
    # validated like a config file, so a modifier the config cannot take (+laplace on a committee) is refused
    return config.model_validate({**config.model_dump(), "acquisition": {**config.acquisition.model_dump(), **update}})


def _classifier(prep: Prepared, config: Any = None):
    from ml_backend.models.classifier import Classifier

    return Classifier(None, config or prep.config, len(prep.classes), multilabel=False, in_dim=prep.X.shape[1])


@dataclass
class _Served:
    """The version the simulated project serves: its classifier (untrained at first), the tasks it was trained
    on and its pool order."""

    clf: Any
    task_ids: list[int]
    unseen: list[str]
    queue: np.ndarray
    cursor: int = 0


def _queue(
    prep: Prepared, clf, X_pool: np.ndarray, labelled: np.ndarray, metrics: dict[str, Any], seed: int
) -> np.ndarray:
    """The order the worker's re-score gives the unlabelled pool (pool positions, first served first), from the
    version's training metrics as the worker reads them (classes unseen, labels per class)."""
    from ml_backend.learning.ranking import rank_version
    from ml_backend.tasktypes import SINGLE_CHOICE

    todo = np.flatnonzero(~labelled)
    view = rank_version(
        SINGLE_CHOICE,
        clf,
        X_pool[todo],
        [int(i) for i in todo],
        seed,
        labelled=X_pool[labelled],
        reference=None,
        explore=bool(metrics["unseen_classes"]),
        labelled_counts=np.array([metrics["class_counts"].get(label, 0) for label in prep.classes]),
    )
    return todo[view.ranking.order]


# ------------------------------------------------------------------------------------------------ one run


def _init_worker() -> None:
    """Each simulation process: 1 torch thread (the safe default on shared cores), no tensor-conversion noise."""
    from ml_backend.models.encoders import configure_threads

    configure_threads(1)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")


def random_pool_order(n_pool: int, seed: int) -> np.ndarray:
    """The order in which LS's random order serves the pool of a seed's run (positions in the training split)."""
    return np.random.default_rng([seed, 13]).permutation(n_pool)


def run_one(prep: Prepared, settings: SimulationSettings, strategy: str, seed: int) -> dict:
    """One learning curve of the product for one strategy and seed (see the module doc)."""
    from ml_backend.learning.training import LabelledData, decide_next, evaluate
    from ml_backend.tasktypes import SINGLE_CHOICE

    _init_worker()
    config = strategy_config(prep.config, strategy)
    train, test = stratified_split(prep.y, settings.test_fraction, seed)
    train = np.repeat(train, settings.duplicates)  # duplicated items: several pool tasks with the same content
    X_pool, y_pool = prep.X[train], prep.y[train]
    X_test, y_test = prep.X[test], prep.y[test]
    labelled = np.zeros(len(train), dtype=bool)
    random_order = random_pool_order(len(train), seed)
    lag = settings.lag or settings.batch
    first = settings.initial or lag
    untrained = _classifier(prep, config)
    if settings.cold_start == "random":
        labelled[np.random.default_rng([seed, 11]).choice(len(train), min(first, len(train)), replace=False)] = True
    served = _Served(untrained, [], list(prep.classes), np.zeros(0, dtype=np.int64))
    if strategy != RANDOM:
        served.queue = _queue(
            prep, untrained, X_pool, labelled, {"unseen_classes": served.unseen, "class_counts": {}}, seed
        )
    stop_rule = _StopRule(config)
    budget = min(len(train), (first if settings.cold_start == "random" else 0) + settings.rounds * settings.batch)
    next_training = first
    rounds: list[dict] = []
    fit = {"accuracy": float("nan"), "promoted": None, "decision": "no training yet"}
    timing = {"fit": 0.0, "score": 0.0}
    while True:
        n = int(labelled.sum())
        if n >= next_training:
            next_training = n + lag
            ids = np.flatnonzero(labelled)
            clf = _classifier(prep, config)
            t0 = time.perf_counter()
            current = served.clf if served.clf.trained else None
            data = LabelledData(X_pool[ids], list(X_pool[ids]), y_pool[ids], [int(i) for i in ids])
            decision = decide_next(
                SINGLE_CHOICE, clf, current, served.task_ids, data, prep.classes, config.training.seed
            )
            timing["fit"] += time.perf_counter() - t0
            if decision is not None:
                new_clf = decision.outcome.classifier if decision.outcome else untrained
                if decision.outcome:
                    fit = {
                        "accuracy": evaluate(new_clf, X_test, y_test, prep.classes)["accuracy"],
                        "promoted": decision.promote,
                        "decision": decision.note,
                    }
                if decision.promote:
                    t0 = time.perf_counter()
                    unseen = decision.metrics["unseen_classes"]
                    queue = (
                        _queue(prep, new_clf, X_pool, labelled, decision.metrics, seed)
                        if strategy != RANDOM
                        else served.queue
                    )
                    served = _Served(new_clf, [int(i) for i in ids], unseen, queue)
                    stop_rule.served(new_clf, X_pool, labelled)
                    timing["score"] += time.perf_counter() - t0
        if n > 0 and (n % settings.batch == 0 or n == budget):
            scores = evaluate(served.clf, X_test, y_test, prep.classes) if served.clf.trained else {}
            acc = scores.get("accuracy", float("nan"))
            rounds.append(
                {
                    "round": len(rounds),
                    "n_labels": n,
                    "accuracy": acc,
                    "macro_f1": scores.get("macro_f1", float("nan")),
                    "served_accuracy": acc,
                    "fit_accuracy": fit["accuracy"],
                    "promoted": fit["promoted"],
                    "served_trained_on": len(served.task_ids),
                    "classes_seen": int(len(np.unique(y_pool[labelled]))),
                    **stop_rule.verdict(),
                    "fit_seconds": timing["fit"],
                    "score_seconds": timing["score"],
                }
            )
            timing = {"fit": 0.0, "score": 0.0}
        if n >= budget:
            break
        labelled[_next_task(strategy, served, random_order, labelled)] = True
    return {"strategy": strategy, "seed": seed, "rounds": rounds, "kappas": stop_rule.history}


class _StopRule:
    """The product's stopping rule replayed (``core.stopping``): kappa of each served version's pool predictions
    (its decisions, as stored with a version) with the previous one's, on the tasks still unlabelled."""

    def __init__(self, config: Any):
        self.config = config.stopping
        self.previous: np.ndarray | None = None
        self.kappas: list[float | None] = []
        self.history: list[dict[str, Any]] = []  # per served trained version after the first: labels, kappa

    def served(self, clf: Any, X_pool: np.ndarray, labelled: np.ndarray) -> None:
        if not clf.trained:
            return
        predicted = clf.predict(X_pool)
        if self.previous is not None:
            self.kappas.append(cohens_kappa(self.previous[~labelled], predicted[~labelled]))
            self.history.append({"n_labels": int(labelled.sum()), "kappa": self.kappas[-1]})
        self.previous = predicted

    def verdict(self) -> dict[str, Any]:
        """The round's fields: the last kappa and whether the kappa rule says stop."""
        return {
            "kappa": self.kappas[-1] if self.kappas else None,
            "stop": kappa_average(self.kappas, self.config.kappa, self.config.window).fired,
        }


def _next_task(strategy: str, served: _Served, random_order: np.ndarray, labelled: np.ndarray) -> int:
    """The task LS serves next: the first unlabelled one of the served version's queue (or of a random order)."""
    queue = random_order if strategy == RANDOM else served.queue
    while served.cursor < len(queue) and labelled[queue[served.cursor]]:
        served.cursor += 1
    if served.cursor < len(queue):
        return int(queue[served.cursor])
    # the served queue is used up (a version was rejected for long): LS serves any unlabelled task
    return int(random_order[np.flatnonzero(~labelled[random_order])[0]])


def full_data_run(prep: Prepared, settings: SimulationSettings, seed: int) -> dict:
    """The ceiling: a head trained on the whole training pool, same seed and split."""
    from ml_backend.learning.training import evaluate

    _init_worker()
    train, test = stratified_split(prep.y, settings.test_fraction, seed)
    clf = _classifier(prep)
    t0 = time.perf_counter()
    clf.fit(prep.X[train], prep.y[train], seed=seed)
    scores = evaluate(clf, prep.X[test], prep.y[test], prep.classes)
    acc, f1 = scores["accuracy"], scores["macro_f1"]
    return {
        "seed": seed,
        "n_labels": int(len(train)),
        "accuracy": acc,
        "macro_f1": f1,
        "fit_seconds": time.perf_counter() - t0,
        "n_test": int(len(test)),
    }


def _call(args: tuple) -> dict:
    fn, *rest = args
    return fn(*rest)


# ------------------------------------------------------------------------------------------------ driver


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows: floating-point rounding, and so the order of
    near-tied tasks, can differ between CPUs, so a result records which one it ran on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    from ml_backend.models.encoders import torch_info

    return {
        "cores": os.cpu_count(),
        **torch_info(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }


def run_simulation(settings: SimulationSettings) -> dict:
    """Run every (strategy, seed) and the full-data baselines; write and return the result."""
    settings.validate()
    _init_worker()
    t_start = time.perf_counter()
    prep = prepare(settings)
    log.info("%s: X %s, cached/embedded in %.1fs", prep.description, prep.X.shape, prep.embed_seconds)
    calls = [(full_data_run, prep, settings, seed) for seed in settings.seeds]
    calls += [(run_one, prep, settings, s, seed) for seed in settings.seeds for s in settings.strategies]

    def report(done: dict) -> None:
        if "strategy" in done:
            last = done["rounds"][-1]
            log.info(
                "%s seed %d: accuracy %.4f at %d labels",
                done["strategy"],
                done["seed"],
                last["accuracy"],
                last["n_labels"],
            )
        else:
            log.info(
                "full data seed %d: accuracy %.4f with %d labels", done["seed"], done["accuracy"], done["n_labels"]
            )

    if settings.jobs > 1:
        with ProcessPoolExecutor(settings.jobs, mp_context=get_context("spawn"), initializer=_init_worker) as ex:
            futures = [ex.submit(_call, c) for c in calls]
            for f in as_completed(futures):
                report(f.result())
            results = [f.result() for f in futures]
    else:
        results = []
        for c in calls:
            results.append(_call(c))
            report(results[-1])
    full = results[: len(settings.seeds)]
    runs = results[len(settings.seeds) :]
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "dataset_description": prep.description,
        "model_config": prep.config.model_dump(mode="json"),
        "mc": prep.config.acquisition.mc_samples,
        "machine": machine_info(),
        "embedding": {"dim": int(prep.X.shape[1]), "seconds": prep.embed_seconds, "tokens": prep.tokens},
        "full_data": full,
        "runs": runs,
        "summary": summarise(
            runs, full, settings.target_accuracy, len(prep.classes), stop_window=prep.config.stopping.window
        ),
        "wall_seconds": time.perf_counter() - t_start,
    }
    result["files"] = {k: str(v) for k, v in write_outputs(result, settings.out_dir).items()}
    return result

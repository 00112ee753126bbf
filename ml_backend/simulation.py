"""Pool-based active-learning simulator that runs the product's own path, with a simulated annotator.

Each (strategy, seed) run replays what a Label Studio project goes through:

1. version 0 is untrained: the queue is the product's cold-start order (``ranking.rank_version``: coverage of the
   pool's clusters); ``random`` serves tasks in random order instead (LS's default sampling);
2. the annotator labels the next ``lag`` tasks of the queue (the labels that arrive before the next version);
3. the worker's training step runs (``training.decide_next``: train on 80 %, fair promotion test against the
   served version, refit on every label; or an exploration version while no model can be trained); a promoted
   version re-orders the pool exactly as the worker's re-score does (batch-aware front, stored order); a rejected
   one leaves the queue as it was;
4. every ``batch`` labels a round is recorded: the accuracy of the **served** version on a held-out test split
   (what pre-annotates and orders the queue), the accuracy of the newest fit, whether it was promoted, and how many
   classes have been labelled.

The annotator reveals the true label. Embeddings are computed once per dataset with the frozen encoder and
cached as ``.npy`` in ``<out>/embeddings``. The baseline "full-data accuracy" is a head trained on the whole
training pool with the same seeds. Outputs in ``--out``: ``simulation.json`` and ``simulation.csv`` (per round),
``summary.md`` (labels to reach 90 % / 95 % of full-data accuracy, the worst round against random, labels until
every class was seen, AULC) and ``learning_curves.png`` when matplotlib is installed (``pip install '.[bench]'``).

Strategies: ``random``; ``default`` (the dataset's default model config, exactly what the product serves);
``hybrid`` (the default with equal weights on uncertainty, novelty and density); an acquisition function name (``bald``, ``margin``, ...: the default pipeline with that function); and ``<name>+topk``
for the same without the batch-aware front (plain top-k, the behaviour before it existed).

Run it as ``ml-backend simulate ...`` or ``python -m ml_backend.simulation ...`` (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ml_backend import datasets
from ml_backend.core.selection import WEIGHT_TERMS
from ml_backend.core.strategies import STRATEGIES

log = logging.getLogger(__name__)

RANDOM = "random"
DEFAULT = "default"
HYBRID = "hybrid"  # the default config with equal weights on uncertainty, novelty and density
TOPK = "+topk"
ALL_STRATEGIES = [RANDOM, DEFAULT, HYBRID, *STRATEGIES]
DATASETS = ("digits-features", "digits-images", "rotten-tomatoes", "rotten-tomatoes-3", "csv:<path>", "folder:<path>")
RELATIVE_TARGETS = (0.90, 0.95)


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
    image_size: int = 64  # digits-images: size of the PNGs written

    def validate(self) -> None:
        unknown = [s for s in self.strategies if s.removesuffix(TOPK) not in ALL_STRATEGIES or s == RANDOM + TOPK]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {ALL_STRATEGIES} (+topk for a plain top-k)")
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
    if spec == "digits-images":
        return datasets.digits_png(Path(work_dir) / "digits-png", n=n, size=image_size, seed=seed), "image"
    if spec == "rotten-tomatoes":
        return datasets.rotten_tomatoes(n=n, seed=seed), "text"
    if spec == "rotten-tomatoes-3":  # plot summaries, fresh and rotten reviews: 3 classes, 1,000 each by default
        return datasets.rotten_tomatoes(n=n or 3000, seed=seed, full=True, categories=("plot", "fresh", "rotten")), "text"
    if spec.startswith("csv:"):
        data = datasets.text_csv(spec[4:])
    elif spec.startswith("folder:"):
        data = datasets.image_folder(spec[7:])
    else:
        raise ValueError(f"unknown dataset {spec!r}; use one of {DATASETS}")
    data = data.subset(datasets.stratified_indices(data.labels, n, seed)) if n else data
    return data, ("text" if isinstance(data, datasets.TextDataset) else "image")


def _model_config(settings: SimulationSettings, kind: str):
    from ml_backend.modelconfig import load_model_config
    from ml_backend.settings import Settings

    base = Settings()
    configs_dir = settings.configs_dir or base.model_configs_dir
    name = settings.model_config or (base.text_model_config if kind == "text" else base.image_model_config)
    config = load_model_config(configs_dir, name)
    if settings.epochs:
        config = config.model_copy(update={"training": config.training.model_copy(update={"epochs": settings.epochs})})
    if settings.mc:
        config = config.model_copy(update={"acquisition": config.acquisition.model_copy(update={"mc_samples": settings.mc})})
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

    import torch

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
        log.info("embedding %d items with %s (%d torch threads)", len(items), config.name, torch.get_num_threads())
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


def strategy_config(config: Any, strategy: str) -> Any:
    """The model config a strategy runs with: the default as is, or its acquisition function swapped (and the
    batch-aware front switched off for ``<name>+topk``)."""
    name = strategy.removesuffix(TOPK)
    update: dict[str, Any] = {}
    if name == HYBRID:
        update["weights"] = {term: 1.0 for term in WEIGHT_TERMS}
    elif name not in (RANDOM, DEFAULT):
        update["strategy"] = name
    if strategy.endswith(TOPK):
        update["front_size"] = 0
    if not update:
        return config
    return config.model_copy(update={"acquisition": config.acquisition.model_copy(update=update)})


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


def _queue(prep: Prepared, clf, X_pool: np.ndarray, labelled: np.ndarray, unseen: list[str], seed: int) -> np.ndarray:
    """The order the worker's re-score gives the unlabelled pool (pool positions, first served first)."""
    from ml_backend.ranking import rank_version

    todo = np.flatnonzero(~labelled)
    view = rank_version(clf, X_pool[todo], [int(i) for i in todo], seed, labelled=X_pool[labelled],
                        reference=None, explore=bool(unseen))
    return todo[view.ranking.order]


# ------------------------------------------------------------------------------------------------ one run


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")


def run_one(prep: Prepared, settings: SimulationSettings, strategy: str, seed: int) -> dict:
    """One learning curve of the product for one strategy and seed (see the module doc)."""
    from ml_backend.training import decide_next, evaluate

    _init_worker()
    config = strategy_config(prep.config, strategy)
    train, test = stratified_split(prep.y, settings.test_fraction, seed)
    train = np.repeat(train, settings.duplicates)  # duplicated items: several pool tasks with the same content
    X_pool, y_pool = prep.X[train], prep.y[train]
    X_test, y_test = prep.X[test], prep.y[test]
    n_classes = len(prep.classes)
    labelled = np.zeros(len(train), dtype=bool)
    rng = np.random.default_rng([seed, 13])
    random_order = rng.permutation(len(train))
    lag = settings.lag or settings.batch
    first = settings.initial or lag
    untrained = _classifier(prep, config)
    if settings.cold_start == "random":
        labelled[np.random.default_rng([seed, 11]).choice(len(train), min(first, len(train)), replace=False)] = True
    served = _Served(untrained, [], list(prep.classes), np.zeros(0, dtype=np.int64))
    if strategy != RANDOM:
        served.queue = _queue(prep, untrained, X_pool, labelled, served.unseen, seed)
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
            decision = decide_next(clf, current, served.task_ids, X_pool[ids], list(X_pool[ids]), y_pool[ids],
                                   [int(i) for i in ids], prep.classes, config.training.seed)
            timing["fit"] += time.perf_counter() - t0
            if decision is not None:
                new_clf = decision.outcome.classifier if decision.outcome else untrained
                if decision.outcome:
                    fit = {"accuracy": evaluate(new_clf, X_test, y_test, prep.classes)["accuracy"],
                           "promoted": decision.promote, "decision": decision.note}
                if decision.promote:
                    t0 = time.perf_counter()
                    unseen = decision.metrics["unseen_classes"]
                    queue = (_queue(prep, new_clf, X_pool, labelled, unseen, seed) if strategy != RANDOM
                             else served.queue)
                    served = _Served(new_clf, [int(i) for i in ids], unseen, queue)
                    timing["score"] += time.perf_counter() - t0
        if n > 0 and (n % settings.batch == 0 or n == budget):
            scores = evaluate(served.clf, X_test, y_test, prep.classes) if served.clf.trained else {}
            acc = scores.get("accuracy", float("nan"))
            rounds.append({"round": len(rounds), "n_labels": n, "accuracy": acc,
                           "macro_f1": scores.get("macro_f1", float("nan")), "served_accuracy": acc,
                           "fit_accuracy": fit["accuracy"], "promoted": fit["promoted"],
                           "served_trained_on": len(served.task_ids),
                           "classes_seen": int(len(np.unique(y_pool[labelled]))),
                           "fit_seconds": timing["fit"], "score_seconds": timing["score"]})
            timing = {"fit": 0.0, "score": 0.0}
        if n >= budget:
            break
        labelled[_next_task(strategy, served, random_order, labelled)] = True
    return {"strategy": strategy, "seed": seed, "rounds": rounds}


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
    from ml_backend.training import evaluate

    _init_worker()
    train, test = stratified_split(prep.y, settings.test_fraction, seed)
    clf = _classifier(prep)
    t0 = time.perf_counter()
    clf.fit(prep.X[train], prep.y[train], seed=seed)
    scores = evaluate(clf, prep.X[test], prep.y[test], prep.classes)
    acc, f1 = scores["accuracy"], scores["macro_f1"]
    return {"seed": seed, "n_labels": int(len(train)), "accuracy": acc, "macro_f1": f1,
            "fit_seconds": time.perf_counter() - t0, "n_test": int(len(test))}


def _call(args: tuple) -> dict:
    fn, *rest = args
    return fn(*rest)


# ------------------------------------------------------------------------------------------------ summaries


def labels_to_reach(n_labels: np.ndarray, acc: np.ndarray, threshold: float) -> float:
    """The fewest labels at which a learning curve first reaches ``threshold`` (inf if it never does)."""
    hit = np.flatnonzero(np.asarray(acc) >= threshold - 1e-12)
    return float(n_labels[hit[0]]) if len(hit) else float("inf")


def normalised_aulc(n_labels: np.ndarray, acc: np.ndarray) -> float:
    """Area under the learning curve divided by its label range: the mean accuracy over the label budget.
    A round without a trained model (NaN) counts as 0: it pre-annotates nothing."""
    n_labels, acc = np.asarray(n_labels, float), np.nan_to_num(np.asarray(acc, float), nan=0.0)
    if len(n_labels) < 2 or n_labels[-1] == n_labels[0]:
        return float(acc.mean())
    area = float(np.sum((acc[1:] + acc[:-1]) / 2.0 * np.diff(n_labels)))
    return area / float(n_labels[-1] - n_labels[0])


def _labels_to_all_classes(run: dict, n_classes: int) -> float:
    hit = [x["n_labels"] for x in run["rounds"] if x["classes_seen"] >= n_classes]
    return float(hit[0]) if hit else float("inf")


def median_curve(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, median accuracy over seeds) on the rounds every run has; no model counts as 0 accuracy."""
    length = min(len(r["rounds"]) for r in runs)
    n = np.array([x["n_labels"] for x in runs[0]["rounds"][:length]])
    acc = np.nan_to_num(np.array([[x["accuracy"] for x in r["rounds"][:length]] for r in runs]), nan=0.0)
    return n, np.median(acc, axis=0)


def summarise(runs: list[dict], full: list[dict], target_accuracy: float | None = None, n_classes: int = 2) -> dict:
    """Per strategy: median labels to reach each target (and how many seeds got there), the worst round against
    random (median curves, after the first round), labels until every class was seen, AULC, final accuracy."""
    full_acc = {f["seed"]: f["accuracy"] for f in full}
    targets: list[tuple[str, float | None]] = [(f"{int(t * 100)}% of full", t) for t in RELATIVE_TARGETS]
    if target_accuracy is not None:
        targets.append((f"{target_accuracy * 100:g}% accuracy", None))
    out: dict[str, dict] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == strategy]
        entry: dict[str, Any] = {"seeds": len(mine), "labels_to_reach": {}, "reached": {}}
        for name, rel in targets:
            needed = []
            for run in mine:
                n = np.array([x["n_labels"] for x in run["rounds"]])
                a = np.array([x["accuracy"] for x in run["rounds"]])
                thr = rel * full_acc[run["seed"]] if rel is not None else float(target_accuracy)
                needed.append(labels_to_reach(n, a, thr))
            entry["labels_to_reach"][name] = float(np.median(needed))
            entry["reached"][name] = int(np.isfinite(needed).sum())
            entry.setdefault("labels_to_reach_per_seed", {})[name] = needed
        aulc = [normalised_aulc([x["n_labels"] for x in r["rounds"]], [x["accuracy"] for x in r["rounds"]]) for r in mine]
        final = [r["rounds"][-1]["accuracy"] for r in mine]
        entry["aulc"] = float(np.median(aulc))
        entry["aulc_per_seed"] = aulc
        entry["final_accuracy"] = float(np.median(final))
        entry["final_labels"] = int(mine[0]["rounds"][-1]["n_labels"])
        entry["labels_to_all_classes"] = float(np.median([_labels_to_all_classes(r, n_classes) for r in mine]))
        decided = [x["promoted"] for r in mine for x in r["rounds"] if x.get("promoted") is not None]
        entry["promoted_share"] = float(np.mean(decided)) if decided else None
        entry["mean_fit_seconds"] = float(np.mean([x["fit_seconds"] for r in mine for x in r["rounds"]]))
        entry["mean_score_seconds"] = float(np.mean([x["score_seconds"] for r in mine for x in r["rounds"][:-1]] or [0]))
        out[strategy] = entry
    if RANDOM in out:  # how many labels each strategy needs relative to random (< 1: fewer than random)
        n_random, acc_random = median_curve([r for r in runs if r["strategy"] == RANDOM])
        for strategy, entry in out.items():
            n, acc = median_curve([r for r in runs if r["strategy"] == strategy])
            common = min(len(n), len(n_random))
            diff = (acc[:common] - acc_random[:common])[1:]
            worst = int(np.argmin(diff)) + 1 if len(diff) else 0
            entry["worst_vs_random"] = float(diff.min()) if len(diff) else 0.0
            entry["worst_vs_random_at"] = int(n[worst]) if len(diff) else None
        for entry in out.values():
            entry["ratio_to_random"] = {
                name: (entry["labels_to_reach"][name] / out[RANDOM]["labels_to_reach"][name]
                       if np.isfinite(out[RANDOM]["labels_to_reach"][name]) and np.isfinite(entry["labels_to_reach"][name])
                       else None)
                for name in entry["labels_to_reach"]
            }
    return out


def machine_info() -> dict:
    import torch

    return {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}


def _fmt_labels(value: float, reached: int, seeds: int, final_labels: int) -> str:
    if not np.isfinite(value):
        return f"> {final_labels} ({reached}/{seeds} seeds)"
    return f"{value:.0f}" + ("" if reached == seeds else f" ({reached}/{seeds} seeds)")


def markdown_table(result: dict) -> str:
    """The summary as a markdown table (one row per strategy)."""
    summary, settings = result["summary"], result["settings"]
    names = list(next(iter(summary.values()))["labels_to_reach"])
    header = ["strategy", *[f"labels to {n}" for n in names]]
    has_ratio = RANDOM in summary
    if has_ratio:
        header.append(f"x random ({names[-1]})")
    if has_ratio:
        header.append("worst round vs random")
    header += ["labels until every class seen", "promoted", "AULC (mean acc.)",
               f"acc. @ {next(iter(summary.values()))['final_labels']} labels"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy, e in summary.items():
        row = [strategy] + [_fmt_labels(e["labels_to_reach"][n], e["reached"][n], e["seeds"], e["final_labels"]) for n in names]
        if has_ratio:
            ratio = e.get("ratio_to_random", {}).get(names[-1])
            row.append("-" if ratio is None else f"{ratio:.2f}")
            row.append(f"{100 * e['worst_vs_random']:+.1f} pts at {e['worst_vs_random_at']}")
        share = e.get("promoted_share")
        row += [f"{e['labels_to_all_classes']:.0f}", "-" if share is None else f"{100 * share:.0f} %",
                f"{e['aulc']:.4f}", f"{e['final_accuracy']:.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    full = result["full_data"]
    m = result["machine"]
    lines.append("")
    lines.append(
        f"Full-data accuracy (head on all {full[0]['n_labels']} training items, test n={full[0]['n_test']}): "
        f"median {np.median([f['accuracy'] for f in full]):.4f} over seeds {[f['seed'] for f in full]}. "
        f"Medians over {len(full)} seeds; labels counted as first reaching the target. "
        f"Accuracy is the served version's (no model yet counts as 0). Cold start: {settings['cold_start']}; "
        f"a new version every {settings['lag'] or settings['batch']} labels (lag), a round every {settings['batch']}; "
        f"each pool item {settings['duplicates']}x; {result['mc']} MC-dropout passes over the head. Machine: {m['cores']} cores, {m['torch_threads']} torch thread(s) per process, "
        f"{settings['jobs']} process(es)."
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ outputs


def plot_learning_curves(result: dict, path: Path) -> None:
    """Labels on x, test accuracy on y: per strategy the median over seeds and the interquartile band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=110)
    names = list(dict.fromkeys(r["strategy"] for r in result["runs"]))
    colours = {s: c for s, c in zip(names, plt.get_cmap("tab10").colors)}
    for strategy in names:
        runs = [r for r in result["runs"] if r["strategy"] == strategy]
        length = min(len(r["rounds"]) for r in runs)
        n = np.array([x["n_labels"] for x in runs[0]["rounds"][:length]])
        acc = np.nan_to_num(np.array([[x["accuracy"] for x in r["rounds"][:length]] for r in runs]), nan=0.0)
        q25, med, q75 = np.percentile(acc, [25, 50, 75], axis=0)
        style = "--" if strategy == RANDOM else "-"
        ax.plot(n, med, style, color=colours.get(strategy), label=strategy, lw=2 if strategy == RANDOM else 1.6)
        ax.fill_between(n, q25, q75, color=colours.get(strategy), alpha=0.15, lw=0)
    full = float(np.median([f["accuracy"] for f in result["full_data"]]))
    ax.axhline(full, color="black", lw=0.8, ls=":", label=f"full data ({full:.3f})")
    ax.axhline(0.95 * full, color="grey", lw=0.8, ls=":", label="95% of full data")
    target = result["settings"].get("target_accuracy")
    if target:
        ax.axhline(target, color="tab:red", lw=0.6, ls="-.", label=f"{target:g} accuracy")
    s, m = result["settings"], result["machine"]
    ax.set_xlabel("labelled examples")
    ax.set_ylabel("test accuracy")
    ax.set_title(
        f"{result['dataset_description']}\nmedian and IQR over {len(s['seeds'])} seeds; +{s['batch']} labels/round, "
        f"T={result['mc']}; {m['cores']} cores, {m['torch_threads']} torch thread/process",
        fontsize=9,
    )
    ax.set_ylim(0.0, min(1.0, full + 0.03))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(result: dict, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / v for k, v in
             {"json": "simulation.json", "csv": "simulation.csv", "png": "learning_curves.png", "md": "summary.md"}.items()}
    paths["json"].write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "seed", "round", "n_labels", "accuracy", "macro_f1", "fit_seconds", "score_seconds",
                    "fit_accuracy", "promoted", "classes_seen"])
        for run in result["runs"]:
            for x in run["rounds"]:
                w.writerow([run["strategy"], run["seed"], x["round"], x["n_labels"], f"{x['accuracy']:.6f}",
                            f"{x['macro_f1']:.6f}", f"{x['fit_seconds']:.4f}", f"{x['score_seconds']:.4f}",
                            f"{x['fit_accuracy']:.6f}", x["promoted"], x["classes_seen"]])
        for f in result["full_data"]:
            w.writerow(["full_data", f["seed"], "", f["n_labels"], f"{f['accuracy']:.6f}", f"{f['macro_f1']:.6f}",
                        f"{f['fit_seconds']:.4f}", ""])
    try:
        plot_learning_curves(result, paths["png"])
    except ImportError:
        log.warning("matplotlib is not installed: no learning_curves.png (pip install '.[bench]'); the JSON, CSV "
                    "and summary are written")
        del paths["png"]
    paths["md"].write_text(f"### {result['dataset_description']}\n\n{markdown_table(result)}\n")
    return paths


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(type(obj))


# ------------------------------------------------------------------------------------------------ driver


def run_simulation(settings: SimulationSettings) -> dict:
    """Run every (strategy, seed) and the full-data baselines; write and return the result."""
    import torch

    settings.validate()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    t_start = time.perf_counter()
    prep = prepare(settings)
    log.info("%s: X %s, %s", prep.description, prep.X.shape, "cached/embedded in %.1fs" % prep.embed_seconds)
    calls = [(full_data_run, prep, settings, seed) for seed in settings.seeds]
    calls += [(run_one, prep, settings, s, seed) for seed in settings.seeds for s in settings.strategies]
    def report(done: dict) -> None:
        if "strategy" in done:
            last = done["rounds"][-1]
            log.info("%s seed %d: accuracy %.4f at %d labels", done["strategy"], done["seed"], last["accuracy"],
                     last["n_labels"])
        else:
            log.info("full data seed %d: accuracy %.4f with %d labels", done["seed"], done["accuracy"], done["n_labels"])

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
    runs = results[len(settings.seeds):]
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "dataset_description": prep.description,
        "model_config": prep.config.model_dump(mode="json"),
        "mc": prep.config.acquisition.mc_samples,
        "machine": machine_info(),
        "embedding": {"dim": int(prep.X.shape[1]), "seconds": prep.embed_seconds, "tokens": prep.tokens},
        "full_data": full,
        "runs": runs,
        "summary": summarise(runs, full, settings.target_accuracy, len(prep.classes)),
        "wall_seconds": time.perf_counter() - t_start,
    }
    result["files"] = {k: str(v) for k, v in write_outputs(result, settings.out_dir).items()}
    return result


def _int_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part.strip("-"):
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    return out


def _configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = SimulationSettings()
    p.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(DATASETS)} (default: %(default)s)")
    p.add_argument("--out", type=Path, default=d.out_dir, help="output folder (default: %(default)s)")
    p.add_argument("--model-config", default=None,
                   help="model config name or YAML path (default: the default text/image config for the dataset)")
    p.add_argument("--configs-dir", type=Path, default=None, help="folder of model configs (default: MODEL_CONFIGS_DIR)")
    p.add_argument("--strategies", default=",".join(d.strategies),
                   help="comma-separated, from: " + ", ".join(ALL_STRATEGIES) + " (default: all)")
    p.add_argument("--seeds", default="0-2", help="e.g. 0,1,2 or 0-4 (default: %(default)s)")
    p.add_argument("--initial", type=int, default=d.initial, help="labels before the first training (default: the lag)")
    p.add_argument("--batch", type=int, default=d.batch, help="labels per recorded round (default: %(default)s)")
    p.add_argument("--lag", type=int, default=d.lag,
                   help="labels taken from the queue between two versions (default: the batch size)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="recorded rounds (default: %(default)s)")
    p.add_argument("--cold-start", choices=["product", "random"], default=d.cold_start,
                   help="product: the backend's cold-start queue; random: random initial labels (default: %(default)s)")
    p.add_argument("--duplicates", type=int, default=d.duplicates,
                   help="put every pool item this many times in the pool (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="held-out test split (default: %(default)s)")
    p.add_argument("--mc", type=int, default=None, help="MC dropout passes (default: the config's acquisition.mc_samples)")
    p.add_argument("--n", type=int, default=None, help="class-balanced subsample of the dataset (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's training.epochs")
    p.add_argument("--target-accuracy", type=float, default=None, help="also report labels needed for this accuracy")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, 1 torch thread each (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="digits-images: PNG size (default: %(default)s)")
    p.set_defaults(func=_run_from_args)
    return p


def _settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    return SimulationSettings(
        dataset=args.dataset, out_dir=args.out, model_config=args.model_config, configs_dir=args.configs_dir,
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()], seeds=_int_list(args.seeds),
        initial=args.initial, batch=args.batch, lag=args.lag, rounds=args.rounds, cold_start=args.cold_start,
        duplicates=args.duplicates,
        test_fraction=args.test_fraction, mc=args.mc, n=args.n, epochs=args.epochs,
        target_accuracy=args.target_accuracy, jobs=args.jobs, image_size=args.image_size,
    )


def _run_from_args(args: argparse.Namespace) -> int:
    result = run_simulation(_settings_from_args(args))
    print(f"### {result['dataset_description']}\n")
    print(markdown_table(result))
    print(f"\nwrote {', '.join(result['files'].values())} in {result['wall_seconds']:.0f}s")
    return 0


def add_simulate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``simulate`` on the CLI's subparsers; the parser's ``func(args)`` runs it and returns an exit code."""
    p = subparsers.add_parser("simulate", help="simulate active learning on a labelled dataset",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return _configure_parser(p)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ml_backend.simulation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure_parser(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

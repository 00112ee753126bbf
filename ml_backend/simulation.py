"""Pool-based active-learning simulator: the real training and scoring code, a simulated annotator.

Each (strategy, seed) run starts from the same initial labelled set (random, or the most representative tasks
under cold start), then repeats for ``rounds`` rounds:

1. fit a fresh head on the labelled embeddings with :meth:`Classifier.fit` (what the worker's training job does);
2. measure accuracy and macro-F1 on a held-out test split;
3. score the unlabelled pool with :meth:`Classifier.predict_proba` (``mc`` dropout passes over the head) and
   :func:`normalized_uncertainty` -> :func:`to_ls_score`, and "label" the ``batch`` tasks with the lowest score
   (batch-mode acquisition: the top-k of one scoring pass, exactly what Label Studio's uncertainty sampling shows
   an annotator next); ``random`` picks ``batch`` pool tasks uniformly at random instead.

The annotator reveals the true label. Embeddings are computed once per dataset with the frozen encoder and
cached as ``.npy`` in ``<out>/embeddings``. The baseline "full-data accuracy" is a head trained on the whole
training pool with the same seeds. Outputs in ``--out``: ``simulation.json`` and ``simulation.csv`` (per round),
``learning_curves.png`` (median and interquartile band per strategy) and ``summary.md`` (labels needed to reach
90 % / 95 % of full-data accuracy, and the normalised area under each learning curve).

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
from ml_backend.core.coldstart import representativeness
from ml_backend.core.metrics import accuracy, macro_f1
from ml_backend.core.strategies import STRATEGIES, normalized_uncertainty, to_ls_score

log = logging.getLogger(__name__)

RANDOM = "random"
ALL_STRATEGIES = [RANDOM, *STRATEGIES]
DATASETS = ("digits-features", "digits-images", "rotten-tomatoes", "csv:<path>", "folder:<path>")
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
    initial: int = 20
    batch: int = 10
    rounds: int = 30
    cold_start: str = "random"  # or "representativeness"
    test_fraction: float = 0.25
    mc: int | None = None  # MC dropout passes for scoring; default: the model config's acquisition.mc_samples
    n: int | None = None  # class-balanced subsample of the dataset
    epochs: int | None = None  # override the model config's training.epochs
    target_accuracy: float | None = None  # an absolute accuracy to report labels-needed for (e.g. 0.95)
    jobs: int = 1  # worker processes (each with 1 torch thread)
    image_size: int = 64  # digits-images: size of the PNGs written

    def validate(self) -> None:
        unknown = [s for s in self.strategies if s not in ALL_STRATEGIES]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {ALL_STRATEGIES}")
        if self.cold_start not in ("random", "representativeness"):
            raise ValueError("cold_start must be 'random' or 'representativeness'")
        if self.initial < 1 or self.batch < 1 or self.rounds < 1:
            raise ValueError("initial, batch and rounds must be >= 1")
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


def initial_labels(X_pool: np.ndarray, k: int, cold_start: str, seed: int, neighbours: int = 10) -> np.ndarray:
    """Positions in the pool of the first ``k`` labels: random, or the most representative (cold start)."""
    k = min(k, len(X_pool))
    if cold_start == "representativeness":
        u = representativeness(X_pool, X_pool, neighbours)  # what the service scores an untrained project with
        return np.argsort(to_ls_score(u, range(len(X_pool))), kind="stable")[:k]
    return np.random.default_rng([seed, 11]).choice(len(X_pool), k, replace=False)


def _classifier(prep: Prepared):
    from ml_backend.models.classifier import Classifier

    return Classifier(None, prep.config, len(prep.classes), multilabel=False, in_dim=prep.X.shape[1])


def _evaluate(clf, X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[float, float]:
    pred = clf.predict(X)
    return accuracy(y, pred), macro_f1(y, pred, n_classes)


# ------------------------------------------------------------------------------------------------ one run


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")


def run_one(prep: Prepared, settings: SimulationSettings, strategy: str, seed: int) -> dict:
    """One learning curve: ``rounds`` rounds of fit -> evaluate -> acquire, for one strategy and seed."""
    _init_worker()
    mc = settings.mc or prep.config.acquisition.mc_samples
    train, test = stratified_split(prep.y, settings.test_fraction, seed)
    X_pool, y_pool = prep.X[train], prep.y[train]
    X_test, y_test = prep.X[test], prep.y[test]
    labelled = np.zeros(len(train), dtype=bool)
    labelled[initial_labels(X_pool, settings.initial, settings.cold_start, seed,
                            prep.config.acquisition.cold_start_neighbours)] = True
    keys = [int(i) for i in train]  # dataset row = the task id, for the stable tie-break
    rng = np.random.default_rng([seed, 13])
    rounds = []
    for r in range(settings.rounds):
        clf = _classifier(prep)
        t0 = time.perf_counter()
        clf.fit(X_pool[labelled], y_pool[labelled], seed=seed)
        fit_s = time.perf_counter() - t0
        acc, f1 = _evaluate(clf, X_test, y_test, len(prep.classes))
        record = {"round": r, "n_labels": int(labelled.sum()), "accuracy": acc, "macro_f1": f1,
                  "fit_seconds": fit_s, "score_seconds": 0.0}
        rounds.append(record)
        if r == settings.rounds - 1 or labelled.all():
            break
        unlabelled = np.flatnonzero(~labelled)
        k = min(settings.batch, len(unlabelled))
        t0 = time.perf_counter()
        if strategy == RANDOM:
            picked = rng.choice(unlabelled, k, replace=False)
        else:
            probs = clf.predict_proba(X_pool[unlabelled], mc=mc, seed=seed)  # the service seeds MC with the version seed
            u = normalized_uncertainty(probs, strategy)
            score = to_ls_score(u, [keys[i] for i in unlabelled])
            picked = unlabelled[np.argsort(score, kind="stable")[:k]]  # lowest LS score = label first
        record["score_seconds"] = time.perf_counter() - t0
        labelled[picked] = True
    return {"strategy": strategy, "seed": seed, "rounds": rounds}


def full_data_run(prep: Prepared, settings: SimulationSettings, seed: int) -> dict:
    """The ceiling: a head trained on the whole training pool, same seed and split."""
    _init_worker()
    train, test = stratified_split(prep.y, settings.test_fraction, seed)
    clf = _classifier(prep)
    t0 = time.perf_counter()
    clf.fit(prep.X[train], prep.y[train], seed=seed)
    acc, f1 = _evaluate(clf, prep.X[test], prep.y[test], len(prep.classes))
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
    """Area under the learning curve divided by its label range: the mean accuracy over the label budget."""
    n_labels, acc = np.asarray(n_labels, float), np.asarray(acc, float)
    if len(n_labels) < 2 or n_labels[-1] == n_labels[0]:
        return float(acc.mean())
    area = float(np.sum((acc[1:] + acc[:-1]) / 2.0 * np.diff(n_labels)))
    return area / float(n_labels[-1] - n_labels[0])


def summarise(runs: list[dict], full: list[dict], target_accuracy: float | None = None) -> dict:
    """Per strategy: median labels to reach each target (and how many seeds got there), AULC, final accuracy."""
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
        entry["mean_fit_seconds"] = float(np.mean([x["fit_seconds"] for r in mine for x in r["rounds"]]))
        entry["mean_score_seconds"] = float(np.mean([x["score_seconds"] for r in mine for x in r["rounds"][:-1]] or [0]))
        out[strategy] = entry
    if RANDOM in out:  # how many labels each strategy needs relative to random (< 1: fewer than random)
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
    header += ["AULC (mean acc.)", f"acc. @ {next(iter(summary.values()))['final_labels']} labels"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy, e in summary.items():
        row = [strategy] + [_fmt_labels(e["labels_to_reach"][n], e["reached"][n], e["seeds"], e["final_labels"]) for n in names]
        if has_ratio:
            ratio = e.get("ratio_to_random", {}).get(names[-1])
            row.append("-" if ratio is None else f"{ratio:.2f}")
        row += [f"{e['aulc']:.4f}", f"{e['final_accuracy']:.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    full = result["full_data"]
    m = result["machine"]
    lines.append("")
    lines.append(
        f"Full-data accuracy (head on all {full[0]['n_labels']} training items, test n={full[0]['n_test']}): "
        f"median {np.median([f['accuracy'] for f in full]):.4f} over seeds {[f['seed'] for f in full]}. "
        f"Medians over {len(full)} seeds; labels counted as first reaching the target. "
        f"Initial {settings['initial']} labels ({settings['cold_start']}), batch-mode acquisition of "
        f"{settings['batch']} per round (top-{settings['batch']} of one scoring pass), {result['mc']} MC-dropout "
        f"passes over the head. Machine: {m['cores']} cores, {m['torch_threads']} torch thread(s) per process, "
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
    colours = {s: c for s, c in zip(ALL_STRATEGIES, plt.get_cmap("tab10").colors)}
    for strategy in dict.fromkeys(r["strategy"] for r in result["runs"]):
        runs = [r for r in result["runs"] if r["strategy"] == strategy]
        length = min(len(r["rounds"]) for r in runs)
        n = np.array([x["n_labels"] for x in runs[0]["rounds"][:length]])
        acc = np.array([[x["accuracy"] for x in r["rounds"][:length]] for r in runs])
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
    lo = float(np.min([x["accuracy"] for r in result["runs"] for x in r["rounds"]]))
    ax.set_ylim(max(0.0, lo - 0.02), min(1.0, full + 0.03))
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
        w.writerow(["strategy", "seed", "round", "n_labels", "accuracy", "macro_f1", "fit_seconds", "score_seconds"])
        for run in result["runs"]:
            for x in run["rounds"]:
                w.writerow([run["strategy"], run["seed"], x["round"], x["n_labels"], f"{x['accuracy']:.6f}",
                            f"{x['macro_f1']:.6f}", f"{x['fit_seconds']:.4f}", f"{x['score_seconds']:.4f}"])
        for f in result["full_data"]:
            w.writerow(["full_data", f["seed"], "", f["n_labels"], f"{f['accuracy']:.6f}", f"{f['macro_f1']:.6f}",
                        f"{f['fit_seconds']:.4f}", ""])
    plot_learning_curves(result, paths["png"])
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
        "mc": settings.mc or prep.config.acquisition.mc_samples,
        "machine": machine_info(),
        "embedding": {"dim": int(prep.X.shape[1]), "seconds": prep.embed_seconds, "tokens": prep.tokens},
        "full_data": full,
        "runs": runs,
        "summary": summarise(runs, full, settings.target_accuracy),
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
    p.add_argument("--initial", type=int, default=d.initial, help="initial labels (default: %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="labels acquired per round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="rounds, the first one on the initial labels (default: %(default)s)")
    p.add_argument("--cold-start", choices=["random", "representativeness"], default=d.cold_start,
                   help="how the initial labels are picked (default: %(default)s)")
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
        initial=args.initial, batch=args.batch, rounds=args.rounds, cold_start=args.cold_start,
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

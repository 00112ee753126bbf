"""Summaries of simulation runs (labels to a target, worst round against random, AULC), the markdown table,
the optional plot and the output files."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.core.stopping import kappa_average

log = logging.getLogger(__name__)

RANDOM = "random"
RELATIVE_TARGETS = (0.90, 0.95)
#: kappa thresholds the stable-predictions rule is also replayed at (the configured one decides the rounds' stop)
KAPPA_THRESHOLDS = (0.99, 0.95, 0.9)


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


def summarise(
    runs: list[dict],
    full: list[dict],
    target_accuracy: float | None = None,
    n_classes: int = 2,
    stop_window: int = 3,
) -> dict:
    """Per strategy: median labels to reach each target (and how many seeds got there), the worst round against
    random (median curves, after the first round), labels until every class was seen, AULC, final accuracy, and
    where the stopping rule fired (``stop_window``: the versions its kappa mean looks back over)."""
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
        aulc = [
            normalised_aulc([x["n_labels"] for x in r["rounds"]], [x["accuracy"] for x in r["rounds"]]) for r in mine
        ]
        final = [r["rounds"][-1]["accuracy"] for r in mine]
        entry["aulc"] = float(np.median(aulc))
        entry["aulc_per_seed"] = aulc
        entry["final_accuracy"] = float(np.median(final))
        entry["final_labels"] = int(mine[0]["rounds"][-1]["n_labels"])
        entry["labels_to_all_classes"] = float(np.median([_labels_to_all_classes(r, n_classes) for r in mine]))
        decided = [x["promoted"] for r in mine for x in r["rounds"] if x.get("promoted") is not None]
        entry["promoted_share"] = float(np.mean(decided)) if decided else None
        entry["mean_fit_seconds"] = float(np.mean([x["fit_seconds"] for r in mine for x in r["rounds"]]))
        entry["mean_score_seconds"] = float(
            np.mean([x["score_seconds"] for r in mine for x in r["rounds"][:-1]] or [0])
        )
        entry["stop"] = stop_summary(mine, full_acc)
        entry["stop"]["kappa_sensitivity"] = kappa_sensitivity(mine, full_acc, KAPPA_THRESHOLDS, stop_window)
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
                name: (
                    entry["labels_to_reach"][name] / out[RANDOM]["labels_to_reach"][name]
                    if np.isfinite(out[RANDOM]["labels_to_reach"][name]) and np.isfinite(entry["labels_to_reach"][name])
                    else None
                )
                for name in entry["labels_to_reach"]
            }
    return out


def stop_summary(runs: list[dict], full_acc: dict[int, float]) -> dict[str, Any]:
    """Where the stopping rule (the rounds' ``stop``) first fired per seed: labels, accuracy then, and that accuracy
    against the full-data head and against the run's last round (what labelling on would have reached)."""
    fired = [(r, next((x for x in r["rounds"] if x.get("stop")), None)) for r in runs]
    hits = [(r, x) for r, x in fired if x is not None]
    return {
        "fired": len(hits),
        "labels": float(np.median([x["n_labels"] for _, x in hits])) if hits else None,
        "accuracy": float(np.median([x["accuracy"] for _, x in hits])) if hits else None,
        "of_full": float(np.median([x["accuracy"] / full_acc[r["seed"]] for r, x in hits])) if hits else None,
        "of_last_round": float(np.median([x["accuracy"] / r["rounds"][-1]["accuracy"] for r, x in hits]))
        if hits
        else None,
        "labels_per_seed": [x["n_labels"] if x else None for _, x in fired],
    }


def kappa_sensitivity(runs: list[dict], full_acc: dict[int, float], thresholds: Sequence[float], window: int) -> dict:
    """The stable-predictions rule replayed at other kappa thresholds on the versions' recorded kappas: per
    threshold, the seeds where it fired, the median labels then and the accuracy of the first round at that count."""
    out = {}
    for threshold in thresholds:
        hits = []
        for run in runs:
            kappas = [v["kappa"] for v in run.get("kappas", [])]
            at = next(
                (
                    v["n_labels"]
                    for i, v in enumerate(run.get("kappas", []))
                    if kappa_average(kappas[: i + 1], threshold, window).fired
                ),
                None,
            )
            row = next((x for x in run["rounds"] if at is not None and x["n_labels"] >= at), None)
            if row is not None:
                hits.append((row["n_labels"], row["accuracy"], row["accuracy"] / full_acc[run["seed"]]))
        out[threshold] = {
            "fired": len(hits),
            "labels": float(np.median([h[0] for h in hits])) if hits else None,
            "accuracy": float(np.median([h[1] for h in hits])) if hits else None,
            "of_full": float(np.median([h[2] for h in hits])) if hits else None,
        }
    return out


def stopping_table(result: dict) -> str:
    """Per strategy: at which label count the stopping rule fired and the accuracy then (markdown)."""
    full = float(np.median([f["accuracy"] for f in result["full_data"]]))
    lines = [
        "| strategy | rule fired (seeds) | labels at stop (median) | accuracy at stop | of full data | "
        "of the last round | labels per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for strategy, e in result["summary"].items():
        s = e.get("stop")
        if s is None:
            continue
        if not s["fired"]:
            lines.append(f"| {strategy} | 0/{e['seeds']} | > {e['final_labels']} | - | - | - | - |")
            continue
        lines.append(
            f"| {strategy} | {s['fired']}/{e['seeds']} | {s['labels']:.0f} | {s['accuracy']:.4f} | "
            f"{100 * s['of_full']:.1f} % | {100 * s['of_last_round']:.1f} % | "
            f"{', '.join('-' if n is None else str(n) for n in s['labels_per_seed'])} |"
        )
    lines += [
        "",
        "The same rule at other kappa thresholds (replayed on the versions' recorded kappas):",
        "",
        "| strategy | kappa | fired (seeds) | labels at stop | accuracy at stop | of full data |",
        "|---|---|---|---|---|---|",
    ]
    for strategy, e in result["summary"].items():
        for threshold, k in (e.get("stop") or {}).get("kappa_sensitivity", {}).items():
            figures = (
                f"{k['labels']:.0f} | {k['accuracy']:.4f} | {100 * k['of_full']:.1f} %" if k["fired"] else "- | - | -"
            )
            lines.append(f"| {strategy} | {float(threshold):g} | {k['fired']}/{e['seeds']} | {figures} |")
    lines.append(f"\nFull-data accuracy (median over seeds): {full:.4f}.")
    return "\n".join(lines)


def _fmt_labels(value: float, reached: int, seeds: int, final_labels: int) -> str:
    if not np.isfinite(value):
        return f"> {final_labels} ({reached}/{seeds} seeds)"
    return f"{value:.0f}" + ("" if reached == seeds else f" ({reached}/{seeds} seeds)")


def _mc_passes(result: dict) -> str:
    """What the T stochastic passes of a version were: the config's mc_mode, and +laplace strategies' own."""
    mode = result["model_config"]["acquisition"]["mc_mode"]
    what = {"head": "MC-dropout passes over the head", "full": "MC-dropout passes through the whole network"}
    laplace = "weight samples of a Laplace posterior over the last layer"
    text = f"{result['mc']} {laplace if mode == 'laplace' else what[mode]}"
    if mode != "laplace" and any("laplace" in s.split("+")[1:] for s in result["summary"]):
        text += f" ({laplace} for the +laplace strategies)"
    return text


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
    header += [
        "labels until every class seen",
        "promoted",
        "AULC (mean acc.)",
        f"acc. @ {next(iter(summary.values()))['final_labels']} labels",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy, e in summary.items():
        row = [strategy] + [
            _fmt_labels(e["labels_to_reach"][n], e["reached"][n], e["seeds"], e["final_labels"]) for n in names
        ]
        if has_ratio:
            ratio = e.get("ratio_to_random", {}).get(names[-1])
            row.append("-" if ratio is None else f"{ratio:.2f}")
            row.append(f"{100 * e['worst_vs_random']:+.1f} pts at {e['worst_vs_random_at']}")
        share = e.get("promoted_share")
        row += [
            f"{e['labels_to_all_classes']:.0f}",
            "-" if share is None else f"{100 * share:.0f} %",
            f"{e['aulc']:.4f}",
            f"{e['final_accuracy']:.4f}",
        ]
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
        f"each pool item {settings['duplicates']}x; {_mc_passes(result)}. "
        f"Machine: {m['cores']} cores, {m['torch_threads']} torch thread(s) per process, "
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
    paths = {
        k: out_dir / v
        for k, v in {
            "json": "simulation.json",
            "csv": "simulation.csv",
            "png": "learning_curves.png",
            "md": "summary.md",
        }.items()
    }
    paths["json"].write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "strategy",
                "seed",
                "round",
                "n_labels",
                "accuracy",
                "macro_f1",
                "fit_seconds",
                "score_seconds",
                "fit_accuracy",
                "promoted",
                "classes_seen",
            ]
        )
        for run in result["runs"]:
            for x in run["rounds"]:
                w.writerow(
                    [
                        run["strategy"],
                        run["seed"],
                        x["round"],
                        x["n_labels"],
                        f"{x['accuracy']:.6f}",
                        f"{x['macro_f1']:.6f}",
                        f"{x['fit_seconds']:.4f}",
                        f"{x['score_seconds']:.4f}",
                        f"{x['fit_accuracy']:.6f}",
                        x["promoted"],
                        x["classes_seen"],
                    ]
                )
        for f in result["full_data"]:
            w.writerow(
                [
                    "full_data",
                    f["seed"],
                    "",
                    f["n_labels"],
                    f"{f['accuracy']:.6f}",
                    f"{f['macro_f1']:.6f}",
                    f"{f['fit_seconds']:.4f}",
                    "",
                ]
            )
    try:
        plot_learning_curves(result, paths["png"])
    except ImportError:
        log.warning(
            "matplotlib is not installed: no learning_curves.png (pip install '.[bench]'); the JSON, CSV "
            "and summary are written"
        )
        del paths["png"]
    paths["md"].write_text(
        f"### {result['dataset_description']}\n\n{markdown_table(result)}\n\n"
        f"Stopping rule (stable predictions, ``core.stopping``):\n\n{stopping_table(result)}\n"
    )
    return paths


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(type(obj))

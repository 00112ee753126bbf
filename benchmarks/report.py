"""Collect every benchmark result in ``benchmarks/results/`` into ``README-benchmarks.md``.

    python benchmarks/report.py [benchmarks/results]

Reads each simulation folder's ``simulation.json`` / ``summary.md`` / ``learning_curves.png`` /
``learner_check.md``, and ``speed.json`` / ``speed.md``, ``rank_speed.md``, ``server.md`` and ``zero_shot.md`` when
present, checks the stated targets against the measured numbers, and appends ``benchmarks/notes.md`` (the
hand-written interpretation). Missing parts are listed as not run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

TARGET = "95% of full"
#: the other strategies of the overview table, as ratios to random's labels
ALTERNATIVES = ("bald", "entropy", "margin+topk", "default+badge")
SIMULATIONS = [
    ("digits-features", "Digits (8x8 pixels, MLP head with MC dropout on the raw 64 pixels, 10 classes)", TARGET),
    ("rotten-tomatoes", "Rotten Tomatoes reviews, fresh / rotten (MiniLM embeddings + linear MC-dropout head)", TARGET),
    ("rotten-tomatoes-3", "Rotten Tomatoes, 3 classes: plot summaries, fresh and rotten reviews (MiniLM)", TARGET),
    ("digits-duplicates", "Digits with every pool item 3 times (duplicated items)", TARGET),
    ("fashion-mnist", "Fashion-MNIST, 3,000 test images as raw pixels (a data set nothing was designed on)", TARGET),
    (
        "fashion-mnist-images",
        "Fashion-MNIST, the same 3,000 images through EfficientNet-Lite0 and a linear head (the product's image path)",
        TARGET,
    ),
    (
        "presidential-debates",
        "2016 US debate statements by the speaker's side: Democratic, Republican, moderator (MiniLM; not tuned on)",
        TARGET,
    ),
    ("digits-images", "Digits as 64-pixel PNGs through EfficientNet-Lite0 and a linear head (the image path)", TARGET),
    (
        "acquisition/fashion-mnist-images",
        "Fashion-MNIST through EfficientNet-Lite0: the default against entropy and BALD in the same pipeline",
        TARGET,
    ),
    (
        "acquisition/presidential-debates",
        "The debate statements with entropy and BALD (a second run; its default parts from the first at 240 labels)",
        TARGET,
    ),
    (
        "balance/rotten-tomatoes-3",
        "Class-balanced learn picks (`acquisition.balance`, today's default): 3-class text. These runs used the "
        "default config of 2026-12-06 before balancing, so `default` here is the unbalanced default; with today's "
        "configs `benchmarks/run_all.sh` reproduces them with "
        "`--model-config benchmarks/results/balance/*-before.yaml`",
        TARGET,
    ),
    (
        "balance/rotten-tomatoes-3-as-default",
        "The 3-class text set under today's default config, by the name `default`: the curves of `default+balance`",
        TARGET,
    ),
    ("balance/presidential-debates", "Class-balanced learn picks on the 2016 debate statements", TARGET),
    ("balance/fashion-mnist-images", "Class-balanced learn picks on Fashion-MNIST through EfficientNet-Lite0", TARGET),
    ("balance/digits-images", "Class-balanced learn picks on digits through EfficientNet-Lite0", TARGET),
    ("balance/digits-features", "Class-balanced learn picks on digits as raw pixels (MLP head)", TARGET),
    ("balance/digits-duplicates", "Class-balanced learn picks on digits with every pool item 3 times", TARGET),
    (
        "balance/rotten-tomatoes",
        "Class balancing forced on the two-class text set (today's default leaves two-class projects unbalanced)",
        TARGET,
    ),
    ("laplace/rotten-tomatoes-3", "A Laplace posterior over the last layer (`mc_mode: laplace`): 3-class text", TARGET),
    ("laplace/presidential-debates", "The Laplace posterior on the 2016 debate statements", TARGET),
    ("laplace/fashion-mnist-images", "The Laplace posterior on Fashion-MNIST through EfficientNet-Lite0", TARGET),
    ("laplace/rotten-tomatoes", "The Laplace posterior with margin on the two-class text set", TARGET),
    ("laplace/digits-images", "The Laplace posterior with margin on digits through EfficientNet-Lite0", TARGET),
    ("badge/rotten-tomatoes-3", "BADGE learn picks (`acquisition.front: badge`) on the 3-class text set", TARGET),
    ("hybrid/rotten-tomatoes-3", "The hybrid value (uncertainty + novelty + density) on the 3-class text set", TARGET),
    ("hybrid/presidential-debates", "The hybrid value on the 2016 debate statements", TARGET),
    ("hybrid/fashion-mnist-images", "The hybrid value on Fashion-MNIST through EfficientNet-Lite0", TARGET),
    (
        "mlp-head/fashion-mnist-images",
        "Fashion-MNIST through EfficientNet-Lite0 with the earlier image head (MLP, 256 hidden units)",
        TARGET,
    ),
]


def _ratio_line(summary: dict, target: str) -> str:
    """The product's targets for the default pipeline: <= 0.6x random's labels to the target, never more than 2
    points below random (median curves, after the first round), every class seen within 3 batches."""
    rnd = summary.get("random", {}).get("labels_to_reach", {}).get(target)
    parts = []
    for name in ("default",):
        e = summary.get(name)
        if not e or rnd is None:
            continue
        ratio = e.get("ratio_to_random", {}).get(target)
        if ratio is None:
            parts.append(f"{name}: not reached by both within the budget")
        else:
            verdict = "meets" if ratio <= 0.6 else "misses"
            parts.append(
                f"{name} needs {e['labels_to_reach'][target]:.0f} vs random {rnd:.0f} labels = "
                f"**{ratio:.2f}x** ({verdict} the <= 0.6x target)"
            )
        worst = e.get("worst_vs_random")
        if worst is not None:
            verdict = "meets" if worst >= -0.02 else "misses"
            parts.append(
                f"its worst round is {100 * worst:+.1f} points against random at {e['worst_vs_random_at']} "
                f"labels ({verdict} the >= -2 points target)"
            )
        seen = e.get("labels_to_all_classes")
        if seen is not None:
            parts.append(f"every class labelled after {seen:.0f} labels (median)")
    if not parts:
        return ""
    line = f"Target check ({target}): " + "; ".join(parts) + "."
    r = summary["random"]
    if r["reached"][target] < r["seeds"]:
        line += (
            f" Random reached it in only {r['reached'][target]} of {r['seeds']} seeds within "
            f"{r['final_labels']} labels, so its median (and the ratio's denominator) is a lower bound."
        )
    return line


#: the overview's rows: (folder, the strategy of that run that is today's default pipeline). Since class balancing
#: became the default (multi-class projects, 2026-12-06), its runs record it as ``default+balance``: the default
#: config of the day plus ``acquisition.balance: true``, which is exactly today's default config; their ``default``
#: is the pipeline before it (the "before" column). With two classes balancing does not apply, so ``default`` is
#: today's. Rows whose folder has no balanced run are older rows, measured before it.
OVERVIEW = [
    ("balance/digits-features", "default+balance"),
    ("balance/digits-images", "default+balance"),
    ("balance/rotten-tomatoes", "default"),
    ("balance/rotten-tomatoes-3", "default+balance"),
    ("balance/digits-duplicates", "default+balance"),
    ("fashion-mnist", "default"),
    ("balance/fashion-mnist-images", "default+balance"),
    ("balance/presidential-debates", "default+balance"),
]


def overview_table(results: Path, target: str = TARGET) -> str:
    """One row per data set: today's default pipeline against random, the default before class balancing, and the
    alternatives' ratios from the data set's main folder (the README table)."""
    head = (
        "| data set | full-data acc. | random: labels to 95 % of full | default (margin + balanced, batch-aware "
        "front) | x random | worst round vs random | every class labelled after | AULC default / random | "
        f"x random before balancing | x random: {', '.join(ALTERNATIVES)} |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for folder, default in OVERVIEW:
        path = results / folder / "simulation.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        summary = result["summary"]
        rnd, dft = summary.get("random"), summary.get(default)
        if not rnd or not dft:
            continue
        full = sorted(f["accuracy"] for f in result["full_data"])[len(result["full_data"]) // 2]
        name = folder.rsplit("/", 1)[-1]
        main = results / name / "simulation.json"
        others = json.loads(main.read_text())["summary"] if main.is_file() else {}

        def labels(entry: dict) -> str:
            value = entry["labels_to_reach"][target]
            reached, seeds = entry["reached"][target], entry["seeds"]
            text = f"{value:.0f}" if value != float("inf") else f"> {entry['final_labels']}"
            return text + ("" if reached == seeds else f" ({reached}/{seeds} seeds)")

        def ratio(strategy: str, summary: dict = summary) -> str:
            value = summary.get(strategy, {}).get("ratio_to_random", {}).get(target)
            return "-" if value is None else f"{value:.2f}"

        before = ratio("default") if default != "default" else ("same" if folder.startswith("balance/") else "-")
        alternatives = ", ".join(ratio(n, others) for n in ALTERNATIVES)
        lines.append(
            f"| {name} | {full:.3f} | {labels(rnd)} | {labels(dft)} | **{ratio(default)}** | "
            f"{100 * dft['worst_vs_random']:+.1f} pts at {dft['worst_vs_random_at']} | "
            f"{dft['labels_to_all_classes']:.0f} | {dft['aulc']:.3f} / {rnd['aulc']:.3f} | {before} | "
            f"{alternatives} |"
        )
    return "\n".join(lines)


def _head_text(head: dict) -> str:
    return "linear head" if head["hidden"] == 0 else f"head {head['hidden']} hidden"


def simulation_section(results: Path, folder: str, title: str, target: str | None) -> str:
    d = results / folder
    if not (d / "simulation.json").is_file():
        return f"### {title}\n\nNot run (`{folder}`).\n"
    result = json.loads((d / "simulation.json").read_text())
    s, m = result["settings"], result["machine"]
    lines = [f"### {title}", ""]
    lines.append(
        f"`python -m ml_backend.simulation --dataset {s['dataset']} --seeds {','.join(map(str, s['seeds']))} "
        f"--strategies {','.join(s['strategies'])} --batch {s['batch']} --rounds {s['rounds']}"
        + (f" --lag {s['lag']}" if s.get("lag") else "")
        + (f" --duplicates {s['duplicates']}" if s.get("duplicates", 1) > 1 else "")
        + (f" --target-accuracy {s['target_accuracy']}" if s.get("target_accuracy") else "")
        + (f" --n {s['n']}" if s.get("n") else "")
        + (f" --model-config {s['model_config']}" if s.get("model_config") else "")
        + "`: "
        f"{result['dataset_description']}; test split {s['test_fraction']:.0%}; head and training from model config "
        f"`{result['model_config']['name']}` ({_head_text(result['model_config']['head'])}, dropout "
        f"{result['model_config']['head']['dropout']}, {result['model_config']['training']['epochs']} epochs); "
        f"{m['cores']} cores, {m['torch_threads']} torch thread per process, {s['jobs']} process(es); "
        f"wall time {result['wall_seconds'] / 60:.1f} min."
    )
    lines += ["", f"![learning curves]({folder}/learning_curves.png)", ""]
    lines.append((d / "summary.md").read_text().split("\n", 2)[2].strip())
    if target:
        check = _ratio_line(result["summary"], target)
        if check:
            lines += ["", check]
    if (d / "first_batch.md").is_file():
        lines += [
            "",
            "The first 20 tasks served after 20 random labels, plain top-k (`+topk`) vs the batch-aware order "
            "(`benchmarks/first_batch.py`):",
            "",
            (d / "first_batch.md").read_text().strip(),
        ]
    if (d / "learner_check.md").is_file():
        lines += [
            "",
            "Is the head the limit? The product's head against logistic regressions solved to optimum, on "
            "random's labels (`benchmarks/learner_check.py`):",
            "",
            (d / "learner_check.md").read_text().split("\n", 2)[2].strip(),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results = Path(argv[0]) if argv else HERE / "results"
    parts = [
        "# Benchmarks",
        "",
        "Regenerate everything with `bash benchmarks/run_all.sh` (see the top of that script). All numbers come "
        "from this repository's own code paths: the simulator runs the worker's training step (`training.decide_next`: "
        "fit, fair promotion, exploration versions) and the worker's pool order (`ranking.rank_version`) with the "
        "product's cold start and a lag between versions; the speed benchmark times the "
        "service's scoring path from raw inputs; the server benchmark drives a real Label Studio. The machine is "
        "stated with every figure.",
        "",
        "## Active learning: labels saved by each acquisition strategy",
        "",
        "Pool-based simulation of a Label Studio project: the simulated annotator labels the tasks the served "
        "version puts first (lowest Label Studio score), 10 per version. `random` is LS's random order (the same "
        "training and promotion). Accuracy is the *served* version's on a held-out test split (no model yet = 0). "
        '"labels to X% of full" = fewest labels at which it first reaches X% of the accuracy of the same head '
        'trained on the whole training pool (same seed); "x random" = that number divided by random\'s (below 1 = '
        'fewer labels than random); "worst round vs random" = the largest drop of the median curve below random\'s '
        "after the first round; AULC = area under the learning curve divided by the label range.",
        "",
    ]
    parts += [overview_table(results), ""]
    for folder, title, target in SIMULATIONS:
        parts.append(simulation_section(results, folder, title, target))
    if (results / "zero_shot.md").is_file():
        parts += [
            "### Zero-shot labels before the first version (`benchmarks/zero_shot.py`)",
            "",
            (results / "zero_shot.md").read_text().strip(),
            "",
        ]
    parts += ["## Scoring speed", ""]
    if (results / "speed.md").is_file():
        parts.append((results / "speed.md").read_text().strip())
        speed = json.loads((results / "speed.json").read_text())["results"]
        checks = []
        for r in speed:
            if r["mode"].startswith("head MC"):
                cost = f"**{r['cost_vs_deterministic']:.2f}x** (whole passes)"
                if "encoder_seconds" in r:
                    cost += f", **{1 + r['head_mc_seconds'] / r['encoder_seconds']:.3f}x** (components)"
                checks.append(
                    f"{r['model']} head-only MC (T={r['mc']}) costs {cost} a deterministic pass at "
                    f"{r['threads']} thread(s) (target <= 1.3x)"
                )
            if r["model"] == "minilm" and r["mode"] == "deterministic":
                checks.append(
                    f"MiniLM pool scoring {r['tokens_per_s']:,.0f} tokens/s at {r['threads']} thread(s) "
                    f"(target >= 5,000)"
                )
        parts += ["", "Target checks: " + "; ".join(checks) + "."]
    else:
        parts.append("Not run (`python benchmarks/speed.py`).")
    parts += ["", "## Ranking a cached pool (MC passes and ordering, 10k and 100k tasks)", ""]
    if (results / "rank_speed.md").is_file():
        parts.append((results / "rank_speed.md").read_text().strip())
    else:
        parts.append("Not run (`python benchmarks/rank_speed.py`).")
    parts += ["", "## Server latency and retrain-to-Label-Studio time", ""]
    if (results / "server.md").is_file():
        parts.append((results / "server.md").read_text().strip())
    else:
        parts.append("Not run (`python benchmarks/server.py`: needs Label Studio, installed on first use).")
    if (results / "server_100k" / "server.md").is_file():
        parts += ["", "### 100,001 tasks (`benchmarks/server.py --pools 100001 --lean --workers 2`)", ""]
        parts.append((results / "server_100k" / "server.md").read_text().strip())
    notes = HERE / "notes.md"
    if notes.is_file():
        parts += ["", notes.read_text().strip()]
    (results / "README-benchmarks.md").write_text("\n".join(parts) + "\n")
    print(f"wrote {results / 'README-benchmarks.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is the product's head the limit? Its test accuracy against logistic regressions solved to optimum.

    python benchmarks/learner_check.py --dataset presidential-debates \
        > benchmarks/results/presidential-debates/learner_check.md

Where the default misses its label target (the 3-class text set, the debate statements, Fashion-MNIST through the
CNN), both learning curves flatten near the 95 % line. Before blaming the selection, this checks the learner: on
the frozen embeddings of the simulator (its cache), with the simulator's splits and the **labels random order
serves first** (same seeds), it trains the product's head exactly as a version does (``Classifier.fit``: the
config's dropout, AdamW and step floor) and scikit-learn's L-BFGS logistic regression at several regularisation
strengths C, and prints the mean test accuracy over the seeds. If one C were clearly better at few labels, the head
would be under- or over-regularised there and a fit chosen by cross-validation would be worth building.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np

from ml_backend.models.encoders import configure_threads
from ml_backend.simulation import loop as sim
from ml_backend.simulation.cli import int_list

SIZES = (50, 100, 150, 200, 300, 400, 600)
CS = (0.1, 0.3, 1.0, 3.0, 10.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="a simulator --dataset spec")
    p.add_argument("--seeds", default="0,1,2", help="e.g. 0,1,2 or 0-4 (default: the simulator's 0,1,2)")
    p.add_argument("--out", default=None, help="the simulation's output folder (its embedding cache is reused)")
    p.add_argument("--model-config", default=None)
    args = p.parse_args(argv)
    from sklearn.linear_model import LogisticRegression

    warnings.filterwarnings("ignore")
    configure_threads(1)
    out = Path(args.out or f"benchmarks/results/{args.dataset}")
    settings = sim.SimulationSettings(dataset=args.dataset, out_dir=out, model_config=args.model_config)
    with contextlib.redirect_stdout(sys.stderr):  # an image backbone's loader prints; the table goes to stdout
        prep = sim.prepare(settings)
    seeds = int_list(args.seeds)
    n_classes = len(prep.classes)
    acc: dict[tuple[str, int], list[float]] = {}
    sizes: list[int] = []
    for seed in seeds:
        train, test = sim.stratified_split(prep.y, settings.test_fraction, seed)
        order = train[sim.random_pool_order(len(train), seed)]  # random's labels, in the order it is served them
        seed_sizes = [n for n in SIZES if n < len(train)] + [len(train)]
        sizes = sorted(set(sizes) | set(seed_sizes))
        for n in seed_sizes:
            idx = order[:n]
            if len(np.unique(prep.y[idx])) < n_classes:
                continue  # the head could be trained (2 classes suffice), but a regression on fewer is not comparable
            clf = sim._classifier(prep)
            clf.fit(prep.X[idx], prep.y[idx], seed=seed)
            acc.setdefault(("product head", n), []).append(float((clf.predict(prep.X[test]) == prep.y[test]).mean()))
            for c in CS:
                lr = LogisticRegression(C=c, max_iter=5000).fit(prep.X[idx], prep.y[idx])
                hit = float((lr.predict(prep.X[test]) == prep.y[test]).mean())
                acc.setdefault((f"logistic regression, C = {c:g}", n), []).append(hit)
    rows = ["product head"] + [f"logistic regression, C = {c:g}" for c in CS]
    cols = [n for n in sizes if any((r, n) in acc for r in rows)]
    print(f"### {prep.description}: product head vs logistic regression (random's labels, seeds {args.seeds})\n")
    print("| learner | " + " | ".join("all" if n == max(sizes) else str(n) for n in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{np.mean(acc[(r, n)]):.3f}" if (r, n) in acc else "-" for n in cols]
        print(f"| {r} | " + " | ".join(cells) + " |")
    best = {n: max(np.mean(acc[(r, n)]) for r in rows[1:] if (r, n) in acc) for n in cols if ("product head", n) in acc}
    gaps = [best[n] - np.mean(acc[("product head", n)]) for n in best]
    print(
        f"\nMean test accuracy over seeds; columns are labels (the first n of random's order; 'all': the whole "
        f"training pool). The best C at each column minus the product head: {min(gaps):+.3f} to {max(gaps):+.3f}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

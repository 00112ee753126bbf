"""What the front of the queue looks like on digits: plain top-k of the uncertainty vs the batch-aware order.

    python benchmarks/first_batch.py [--model-config X.yaml] [--seeds 0,3] \
        > benchmarks/results/digits-features/first_batch.md

A head on raw pixels (``run_all.sh`` passes the MLP config the raw-pixel simulations use; T=20) is trained on 20
random labels; then, for each acquisition function, the 20 tasks the annotator would be served first, once as the
plain top-20 of the per-task uncertainty (``+topk``, the behaviour before the batch-aware front) and once in the
product's order (``ranking.rank_version``): their classes and how similar they are to each other (mean pairwise
cosine similarity of their pixel vectors; a random batch is the reference).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from ml_backend.core.strategies import STRATEGIES
from ml_backend.learning.ranking import rank_version
from ml_backend.models.encoders import configure_threads
from ml_backend.simulation import loop as sim
from ml_backend.simulation.cli import int_list
from ml_backend.tasktypes import SINGLE_CHOICE


def mean_cos(V: np.ndarray) -> float:
    V = V / np.linalg.norm(V, axis=1, keepdims=True)
    return float((V @ V.T)[np.triu_indices(len(V), 1)].mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,3")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--model-config", default=None, help="a model config YAML (default: the image default)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    configure_threads(1)
    prep = sim.prepare(sim.SimulationSettings(dataset="digits-features", model_config=args.model_config))
    print("| seed | strategy | classes of the first batch (counts of 0..9) | distinct classes | mean pairwise cosine |")
    print("|---|---|---|---|---|")
    for seed in int_list(args.seeds):
        train, _ = sim.stratified_split(prep.y, sim.SimulationSettings().test_fraction, seed)
        X, y = prep.X[train], prep.y[train]
        init = np.random.default_rng([seed, 11]).choice(len(train), 20, replace=False)
        pool = np.setdiff1d(np.arange(len(train)), init)
        print(
            f"| {seed} | (initial labels) | {np.bincount(y[init], minlength=10).tolist()} | "
            f"{len(set(y[init]))} | {mean_cos(X[init]):.3f} |"
        )
        rnd = np.random.default_rng([seed, 13]).choice(pool, args.batch, replace=False)
        print(
            f"| {seed} | random | {np.bincount(y[rnd], minlength=10).tolist()} | {len(set(y[rnd]))} | "
            f"{mean_cos(X[rnd]):.3f} |"
        )
        for name in [s for base in STRATEGIES for s in (base + "+topk", base)]:
            clf = sim._classifier(prep, sim.strategy_config(prep.config, name))
            clf.fit(X[init], y[init], seed=seed)
            view = rank_version(
                SINGLE_CHOICE,
                clf,
                X[pool],
                [int(train[i]) for i in pool],
                seed,
                labelled=X[init],
                reference=None,
                explore=False,
            )
            pick = pool[view.ranking.order[: args.batch]]
            print(
                f"| {seed} | {name} | {np.bincount(y[pick], minlength=10).tolist()} | {len(set(y[pick]))} | "
                f"{mean_cos(X[pick]):.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

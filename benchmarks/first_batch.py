"""Why BALD and entropy trail random in the first rounds on digits: what the first acquired batch looks like.

    python benchmarks/first_batch.py [--seeds 0,3] > benchmarks/results/digits-features/first_batch.md

Same protocol as the digits simulation (20 random initial labels, MLP head on raw pixels, T=20, top-20 batch):
for each strategy, the classes of the 20 tasks it would send to the annotator first, and how similar those 20 are
to each other (mean pairwise cosine similarity of their pixel vectors; a random batch is the reference).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from ml_backend import simulation as sim
from ml_backend.core.strategies import STRATEGIES, normalized_uncertainty, to_ls_score


def mean_cos(V: np.ndarray) -> float:
    V = V / np.linalg.norm(V, axis=1, keepdims=True)
    return float((V @ V.T)[np.triu_indices(len(V), 1)].mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,3")
    p.add_argument("--batch", type=int, default=20)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    prep = sim.prepare(sim.SimulationSettings(dataset="digits-features"))
    print("| seed | strategy | classes of the first batch (counts of 0..9) | distinct classes | mean pairwise cosine |")
    print("|---|---|---|---|---|")
    for seed in [int(s) for s in args.seeds.split(",")]:
        train, _ = sim.stratified_split(prep.y, 0.25, seed)
        X, y = prep.X[train], prep.y[train]
        init = sim.initial_labels(X, 20, "random", seed)
        clf = sim._classifier(prep)
        clf.fit(X[init], y[init], seed=seed)
        pool = np.setdiff1d(np.arange(len(train)), init)
        probs = clf.predict_proba(X[pool], mc=prep.config.acquisition.mc_samples, seed=seed)
        print(f"| {seed} | (initial labels) | {np.bincount(y[init], minlength=10).tolist()} | "
              f"{len(set(y[init]))} | {mean_cos(X[init]):.3f} |")
        rnd = np.random.default_rng([seed, 13]).choice(pool, args.batch, replace=False)
        print(f"| {seed} | random | {np.bincount(y[rnd], minlength=10).tolist()} | {len(set(y[rnd]))} | "
              f"{mean_cos(X[rnd]):.3f} |")
        for name in STRATEGIES:
            u = normalized_uncertainty(probs, name)
            pick = pool[np.argsort(to_ls_score(u, [int(train[i]) for i in pool]), kind="stable")[: args.batch]]
            print(f"| {seed} | {name} | {np.bincount(y[pick], minlength=10).tolist()} | {len(set(y[pick]))} | "
                  f"{mean_cos(X[pick]):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

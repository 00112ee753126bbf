"""The model's share of "annotation -> next tasks" on a large cached pool: MC probabilities, uncertainty, ordering.

    python benchmarks/rank_speed.py                            # pools of 10k and 100k, 1 torch thread
    python benchmarks/rank_speed.py --pools 10000 --chunk-rows 256,64,0 --repeats 5

After an annotation the worker trains the head, then, for every unlabelled task of the pool whose embedding is
cached, runs exactly what is timed here (``ml_backend.learning.ranking``): ``mc_probabilities`` (T MC-dropout
passes over the head, the version's fixed masks), ``uncertainty_of`` (the config's strategy) and ``rank_pool`` (the
batch-aware greedy front and the scores of the rest). The encoder is not involved: embeddings are cached after
the connect. Everything around it (LS's requests) is measured by ``benchmarks/server.py``.

The embeddings are synthetic, a mixture of 50 Gaussian clusters in the encoder's dimension, unit-normalised like
sentence embeddings: the matmuls cost the same whatever the numbers, and clusters give the greedy front the
near-duplicates it has to skip. The head is the default text config's, fitted on 100 labelled rows (3 classes).
``--chunk-rows`` compares row chunk sizes of the MC passes (``head.MC_CHUNK_ROWS``; 0: the whole pool in one
chunk, as before chunking). Each figure is the median of ``--repeats`` runs after a warm-up; the machine's load
average is saved with it (the machine is shared). Writes ``rank_speed.json`` and ``rank_speed.md`` (the table
it prints).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ml_backend.core.selection import rank_pool
from ml_backend.learning.ranking import selection_params, uncertainty_of
from ml_backend.models.classifier import Classifier
from ml_backend.models.config import load_model_config
from ml_backend.models.encoders import configure_threads
from ml_backend.models.head import head_proba
from ml_backend.settings import Settings
from ml_backend.tasktypes import SINGLE_CHOICE

N_CLASSES = 3
N_LABELLED = 100


def clustered_pool(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` unit vectors around 50 random centres (float32, as the embedding cache holds them)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    x = centres[rng.integers(0, 50, n)] + rng.normal(scale=0.8, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_pool(clf: Classifier, n: int, chunk_rows: list[int], repeats: int, seed: int) -> list[dict]:
    pool = clustered_pool(n + N_LABELLED, clf.head.in_dim, seed)
    labelled, pool = pool[:N_LABELLED], pool[N_LABELLED:]
    acq = clf.config.acquisition
    rows = []
    for chunk in chunk_rows:
        load = os.getloadavg()[0]
        seconds = timed(
            lambda c=chunk: head_proba(clf.head, pool, acq.mc_samples, False, seed=seed, chunk_rows=c or len(pool)),
            repeats,
        )
        rows.append({"pool": n, "stage": "MC probabilities", "chunk_rows": chunk, "seconds": seconds, "load": load})
        print(f"  {n:>7} MC probabilities, chunks of {chunk or n}: {seconds:.2f} s (load {load:.1f})", file=sys.stderr)
    probs = head_proba(clf.head, pool, acq.mc_samples, False, seed=seed)
    uncertainty = uncertainty_of(SINGLE_CHOICE, clf, probs)
    keys = list(range(n))
    params = selection_params(acq, seed)
    for stage, fn in (
        ("uncertainty", lambda: uncertainty_of(SINGLE_CHOICE, clf, probs)),
        ("ordering (rank_pool)", lambda: rank_pool(pool, keys, params, uncertainty=uncertainty, labelled=labelled)),
        (
            "ordering, a class unseen (exploration)",
            lambda: rank_pool(pool, keys, params, uncertainty=uncertainty, labelled=labelled, explore=True),
        ),
    ):
        load = os.getloadavg()[0]
        seconds = timed(fn, repeats)
        rows.append({"pool": n, "stage": stage, "chunk_rows": None, "seconds": seconds, "load": load})
        print(f"  {n:>7} {stage}: {seconds:.2f} s (load {load:.1f})", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| pool | stage | seconds | load (1 min) |", "|---|---|---|---|"]
    for r in rows:
        stage = r["stage"] + (
            f", rows in chunks of {r['chunk_rows'] or r['pool']}" if r["chunk_rows"] is not None else ""
        )
        lines.append(f"| {r['pool']:,} | {stage} | {r['seconds']:.2f} | {r['load']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", default="10000,100000", help="pool sizes (default: %(default)s)")
    p.add_argument("--chunk-rows", default="256,0", help="MC row chunk sizes to compare, 0 = one chunk")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    configure_threads(args.threads)
    settings = Settings()
    config = load_model_config(settings.model_configs_dir, settings.text_model_config)
    dim = 384  # MiniLM's embedding size (the default text encoder); no encoder is loaded
    clf = Classifier(None, config, N_CLASSES, multilabel=False)
    x = clustered_pool(N_LABELLED, dim, args.seed + 1)
    clf.fit(x, np.arange(N_LABELLED) % N_CLASSES, seed=args.seed)
    rows = []
    for n in (int(v) for v in args.pools.split(",")):
        rows += bench_pool(clf, n, [int(c) for c in args.chunk_rows.split(",")], args.repeats, args.seed)
    info = {"threads": args.threads, "cores": os.cpu_count(), "torch": torch.__version__, "config": config.name}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rank_speed.json").write_text(json.dumps({"machine": info, "results": rows}, indent=1) + "\n")
    (args.out / "rank_speed.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Would zero-shot pre-annotations help before the first label? Text-to-label-name similarity in the encoder's space.

    python benchmarks/zero_shot.py > benchmarks/results/zero_shot.md

Issue 9 welcomed zero-shot pre-annotations for text "where label names are meaningful (similarity of the text to
each label name in the encoder's space) if they measurably help". This measures them on the simulator's text sets
with the text default's encoder (MiniLM): each text gets the label whose embedding is most cosine-similar to its
own, once with the label names as a project would have them (the ``Choice`` values) and once with a one-line
description per label (written once, before measuring, as an admin might write them; not iterated). The test splits
are the simulator's (seeds 0 to 2, mean). The reference is what the project serves instead: nothing before the
first 10 labels, then the first trained version (its accuracy at 10 labels, median over seeds, read from the
committed simulation results of random order and of the default).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import warnings
from pathlib import Path

import numpy as np

from ml_backend.core.density import unit_rows
from ml_backend.models.encoders import configure_threads
from ml_backend.models.pool import EncoderPool
from ml_backend.simulation import loop as sim
from ml_backend.simulation.cli import int_list

RESULTS = Path("benchmarks/results")
#: per data set: label -> (the label as a project names it, a one-line description)
LABELS: dict[str, dict[str, tuple[str, str]]] = {
    "rotten-tomatoes": {
        "fresh": ("fresh", "a positive movie review"),
        "rotten": ("rotten", "a negative movie review"),
    },
    "rotten-tomatoes-3": {
        "plot": ("plot", "a plot summary of a film"),
        "fresh": ("fresh", "a positive movie review"),
        "rotten": ("rotten", "a negative movie review"),
    },
    "presidential-debates": {
        "Democratic": ("Democratic", "Hillary Clinton or Tim Kaine, Democrats"),
        "Republican": ("Republican", "Donald Trump or Mike Pence, Republicans"),
        "Moderator": ("Moderator", "a debate moderator asking a question"),
    },
}


def first_version_accuracy(dataset: str, strategy: str) -> float | None:
    """The served accuracy at 10 labels (median over seeds) in the committed simulation of ``dataset``."""
    path = RESULTS / dataset / "simulation.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        hits = [float(r["accuracy"]) for r in csv.DictReader(fh) if r["strategy"] == strategy and r["n_labels"] == "10"]
    return statistics.median(hits) if hits else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    configure_threads(1)
    seeds = int_list(args.seeds)
    header = "| data set | labels as named | with a description | majority class | first version (10 labels): "
    print(header + "random, default |")
    print("|---|---|---|---|---|")
    pool = EncoderPool()  # the text default's encoder, loaded once for every data set
    for dataset, labels in LABELS.items():
        settings = sim.SimulationSettings(dataset=dataset, out_dir=RESULTS / dataset)
        prep = sim.prepare(settings)
        encoder = pool.get(prep.config)
        X = unit_rows(prep.X)
        cells = []
        for which in (0, 1):
            names = unit_rows(encoder.embed([labels[c][which] for c in prep.classes]).astype(np.float32))
            predicted = (X @ names.T).argmax(axis=1)
            per_seed = []
            for seed in seeds:
                _, test = sim.stratified_split(prep.y, settings.test_fraction, seed)
                per_seed.append(float((predicted[test] == prep.y[test]).mean()))
            cells.append(f"{np.mean(per_seed):.3f}")
        majority = float(np.bincount(prep.y).max() / len(prep.y))
        first = [first_version_accuracy(dataset, s) for s in ("random", "default")]
        served = ", ".join("-" if a is None else f"{a:.3f}" for a in first)
        print(f"| {dataset} ({len(prep.classes)} classes) | {cells[0]} | {cells[1]} | {majority:.3f} | {served} |")
    print(
        "\nTest accuracy of the zero-shot label (mean over the simulator's test splits, seeds "
        f"{args.seeds}). Descriptions: `benchmarks/zero_shot.py`."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

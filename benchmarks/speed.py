"""Pool-scoring speed of the default models: tasks/s (and tokens/s for text), per MC mode and torch thread count.

    python benchmarks/speed.py                       # both default models, 1 torch thread
    python benchmarks/speed.py --threads 1,2 --out benchmarks/results

What one "pool scoring" pass is here: exactly what the service does for a trained project, from raw inputs to
Label Studio scores: ``Classifier.embed`` (tokenise + encoder, or decode PNG + CNN), ``Classifier.predict_proba``,
``normalized_uncertainty`` and ``to_ls_score``. Three modes:

* ``deterministic``: mc=1, entropy of the single softmax (what a non-Bayesian backend would cost);
* ``head MC``: the encoder once, then T=20 dropout passes over the head only, BALD (the costliest acquisition
  function on the same passes the default, margin, reads);
* ``full MC``: ``acquisition.mc_mode: full`` and the raw items passed: T=20 passes through encoder + head, BALD;
* text only, ``deterministic, pool sorted by length``: the same texts handed over already ordered by token count.
  This row found that padding short reviews in random order wasted about half the encoder's work; the text
  encoder now batches by length itself, so this row should match ``deterministic`` (a regression check).

The head is first fitted on a few labelled examples (predict_proba needs a trained head). Each figure is the
median of ``--repeats`` timed runs after one warm-up run; the machine's cores, torch threads and load average are
saved with every figure (the machine is shared, so the load average says how noisy the numbers may be).
Writes ``speed.json`` and ``speed.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ml_backend.core.strategies import normalized_uncertainty, to_ls_score
from ml_backend.models.classifier import Classifier
from ml_backend.models.config import load_model_config
from ml_backend.models.encoders import configure_threads
from ml_backend.models.image import load_image
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings
from ml_backend.simulation import datasets
from ml_backend.simulation.loop import cpu_model

warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
_POOL = EncoderPool()  # each encoder loaded once per process


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def score_pool(clf: Classifier, raw: list, mc: int, strategy: str, load=None) -> np.ndarray:
    """One pool-scoring pass from raw inputs (texts, image files) to LS scores, as the service does it."""
    items = load(raw) if load else raw
    emb = clf.embed(items)
    probs = clf.predict_proba(emb, mc=mc, items=items, seed=0)
    u = normalized_uncertainty(probs, strategy)
    return to_ls_score(u, range(len(items)))


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: first-call allocations, lazy inits
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_model(
    kind: str,
    items: list,
    labels: np.ndarray,
    n_classes: int,
    n_full: int,
    threads: int,
    repeats: int,
    mc: int,
    tokens_of=None,
    load=None,
) -> list[dict]:
    settings = Settings()
    name = settings.text_model_config if kind == "text" else settings.image_model_config
    config = load_model_config(settings.model_configs_dir, name)
    encoder = _POOL.get(config)
    configure_threads(threads)
    head_cfg = config
    full_cfg = config.model_copy(update={"acquisition": config.acquisition.model_copy(update={"mc_mode": "full"})})
    clf = Classifier(encoder, head_cfg, n_classes, multilabel=False)
    n_fit = min(20, len(items))
    clf.fit(clf.embed(load(items[:n_fit]) if load else items[:n_fit]), labels[:n_fit], seed=0)
    clf_full = Classifier(encoder, full_cfg, n_classes, multilabel=False, head=clf.head)

    rows = []
    modes = [
        ("deterministic", clf, items, 1, "entropy"),
        (f"head MC T={mc}", clf, items, mc, "bald"),
        (f"full MC T={mc}", clf_full, items[:n_full], mc, "bald"),
    ]
    if tokens_of is not None:  # pre-sorted texts: equal to deterministic now that the encoder batches by length
        by_length = sorted(items, key=lambda x: len(encoder.tokenizer(x, truncation=True, max_length=256)["input_ids"]))
        modes.insert(1, ("deterministic, pool sorted by length", clf, by_length, 1, "entropy"))
    for mode, model, batch, t, strategy in modes:
        load1 = os.getloadavg()[0]
        seconds, times = timed(lambda m=model, b=batch, t=t, s=strategy: score_pool(m, b, t, s, load), repeats)
        row = {
            "model": config.name,
            "kind": kind,
            "mode": mode,
            "mc": t,
            "strategy": strategy,
            "tasks": len(batch),
            "threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
            "seconds": seconds,
            "all_seconds": times,
            "tasks_per_s": len(batch) / seconds,
            "load_avg_1m_before": load1,
        }
        if tokens_of is not None:
            row["tokens"] = tokens_of(batch)
            row["tokens_per_s"] = row["tokens"] / seconds
        rows.append(row)
        print(
            f"  {config.name:14s} {mode:16s} threads={row['threads']} {row['tasks_per_s']:9.1f} tasks/s"
            + (f" {row['tokens_per_s']:9.0f} tokens/s" if "tokens_per_s" in row else ""),
            file=sys.stderr,
        )
    det = rows[0]["tasks_per_s"]
    for row in rows:
        row["cost_vs_deterministic"] = det / row["tasks_per_s"]
    # where the time goes: encoder vs head, for the head-only MC case
    decoded = load(items) if load else items
    emb = clf.embed(decoded)
    enc_s, _ = timed(lambda: clf.embed(decoded), repeats)
    head_s, _ = timed(lambda: normalized_uncertainty(clf.predict_proba(emb, mc=mc, seed=0), "bald"), repeats)
    head_row = next(r for r in rows if r["mode"].startswith("head MC"))
    head_row["encoder_seconds"], head_row["head_mc_seconds"] = enc_s, head_s
    return rows


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        "| model | mode | tasks | torch threads | cores | tasks/s | tokens/s | cost vs deterministic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tok = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "-"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['tasks']} | {r['threads']} | {r['cores']} | "
            f"{r['tasks_per_s']:,.1f} | {tok} | {r['cost_vs_deterministic']:.2f}x |"
        )
    lines.append("")
    lines.append(
        "Where the time of a head-only MC pass goes (timed apart, same tasks): the cost of T dropout passes "
        "relative to one deterministic pass is 1 + head time / encoder time, which is less noisy than the "
        "ratio of two whole passes on a shared machine."
    )
    lines.append("")
    lines.append(
        "| model | torch threads | encoder (s) | T head passes + BALD (s) | head-only MC cost vs deterministic |"
    )
    lines.append("|---|---|---|---|---|")
    for r in rows:
        if "encoder_seconds" in r:
            lines.append(
                f"| {r['model']} | {r['threads']} | {r['encoder_seconds']:.2f} | {r['head_mc_seconds']:.3f} | "
                f"{1 + r['head_mc_seconds'] / r['encoder_seconds']:.3f}x |"
            )
    lines.append("")
    lines.append(
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, no GPU; shared with other "
        f"jobs (1-minute load average before each measurement is in speed.json). Median of "
        f"{info['repeats']} runs after a warm-up; each run = embed + predict_proba + normalized_uncertainty "
        f"+ to_ls_score from raw inputs. Text: Rotten Tomatoes review snippets (real tokens counted after "
        f"truncation, padding excluded). Images: digits PNGs ({info['image_size']} px, resized to the "
        f"model's 224 px), decoding included."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts (default: %(default)s)")
    p.add_argument("--text-n", type=int, default=512, help="texts per pool pass (default: %(default)s)")
    p.add_argument("--image-n", type=int, default=128, help="images per pool pass (default: %(default)s)")
    p.add_argument("--full-text-n", type=int, default=64, help="texts per full-MC pass (default: %(default)s)")
    p.add_argument("--full-image-n", type=int, default=16, help="images per full-MC pass (default: %(default)s)")
    p.add_argument("--mc", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64, help="digits PNG size (default: %(default)s)")
    p.add_argument("--models", default="text,image")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--from-json", type=Path, help="only rewrite speed.md from an existing speed.json")
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        md = markdown(saved["results"], saved["machine"])
        (args.out / "speed.md").write_text(md + "\n")
        print(md)
        return 0

    info = machine() | {"repeats": args.repeats, "image_size": args.image_size}
    rows: list[dict] = []
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    for threads in [int(t) for t in args.threads.split(",")]:
        if "text" in kinds:
            data = datasets.rotten_tomatoes(n=args.text_n, seed=0)
            enc = _POOL.get(load_model_config(Settings().model_configs_dir, Settings().text_model_config))
            rows += bench_model(
                "text",
                data.texts,
                data.y(),
                2,
                args.full_text_n,
                threads,
                args.repeats,
                args.mc,
                tokens_of=enc.count_tokens,
            )
        if "image" in kinds:
            with tempfile.TemporaryDirectory() as tmp:
                data = datasets.digits_png(Path(tmp), n=args.image_n, size=args.image_size, seed=0)
                rows += bench_model(
                    "image", data.paths, data.y(), 10, args.full_image_n, threads, args.repeats, args.mc, load=_decode
                )
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, info)
    (args.out / "speed.json").write_text(json.dumps({"machine": info, "results": rows}, indent=1) + "\n")
    (args.out / "speed.md").write_text(md + "\n")
    print(md)
    return 0


def _decode(paths: list[Path]) -> list:
    return [load_image(p, 40_000_000) for p in paths]


if __name__ == "__main__":
    raise SystemExit(main())

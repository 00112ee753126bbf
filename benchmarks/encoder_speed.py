"""Text encoder throughput: MiniLM tokens/s on 1 thread, per runtime and precision, and with 2 worker processes.

    python benchmarks/encoder_speed.py                     # 2,048 Rotten Tomatoes snippets, every encoder below
    python benchmarks/encoder_speed.py --n 1024 --repeats 5 --encoders torch,onnx-int8 --out benchmarks/results

Encoders (``encoder.runtime`` and ``encoder.quantize`` of the default text model config): ``torch`` (fp32, the
default), ``torch-int8`` (torch's dynamic int8, one activation scale per batch), ``onnx`` (fp32 in ONNX Runtime,
pip install '.[onnx]') and ``onnx-int8`` (ONNX Runtime, int8 with one activation scale per token).

What is timed is ``Encoder.embed`` alone (tokenise, batch by length, encoder, mean pooling), the part of pool
scoring that grows with the text; ``benchmarks/speed.py`` times the whole pass to LS scores. Tokens are counted
after truncation, padding excluded, so tokens/s does not reward padding.

The encoders take turns within each repeat (torch, onnx, ..., torch, onnx, ...), so that a load that comes and
goes on the shared machine hits them alike.

* ``1 process``: one process, 1 thread (torch's and ONNX Runtime's), the whole pool; median of ``--repeats``
  runs after a warm-up. Also tokens per CPU-second of the process: on a machine shared with other jobs the
  wall-clock figure drops with the load, the CPU-time one much less (it still includes the tokenizer's own
  threads, if any).
* ``2 processes``: two spawned processes of 1 thread each, each embedding one half of the pool (as two
  ``ml-backend worker`` processes embedding two chunks would). Both load and warm up their encoder, wait on a
  barrier, then embed; aggregate tokens/s = all tokens / (last finish - first start). Median of ``--repeats``.

The machine is shared: the 1-minute load average before each figure is saved with it (``encoder.json``), and a
load above the core count means the figures are lower than the machine can do.
Writes ``encoder.json`` and ``encoder.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

from ml_backend.models.config import ModelConfig, load_model_config
from ml_backend.models.encoders import configure_threads
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings
from ml_backend.simulation import datasets

#: benchmark name -> (encoder.runtime, encoder.quantize)
ENCODERS = {
    "torch": ("torch", "none"),
    "torch-int8": ("torch", "int8"),
    "onnx": ("onnx", "none"),
    "onnx-int8": ("onnx", "int8"),
}


def text_config(name: str) -> ModelConfig:
    """The default text model config with the encoder's runtime and quantization set, validated like a YAML file."""
    runtime, quantize = ENCODERS[name]
    settings = Settings()
    base = load_model_config(settings.model_configs_dir, settings.text_model_config).model_dump()
    encoder = base["encoder"] | {"runtime": runtime, "quantize": quantize}
    return ModelConfig.model_validate(base | {"encoder": encoder})


def one_process(texts: list[str], names: list[str], repeats: int) -> dict[str, dict]:
    """Per encoder: seconds to embed all ``texts`` in this process (1 thread), after one warm-up run.

    The encoders take turns within each repeat, so a load that comes and goes on the shared machine hits them alike.
    """
    configure_threads(1)
    pool = EncoderPool()
    encoders = {name: pool.get(text_config(name)) for name in names}
    for encoder in encoders.values():
        encoder.embed(texts)
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, encoder in encoders.items():
            load, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
            encoder.embed(texts)
            runs[name].append((time.perf_counter() - t0, time.process_time() - c0, load))
    return {name: _timing(r) for name, r in runs.items()}


def _timing(runs: list[tuple[float, ...]]) -> dict:
    """Medians of (wall seconds, [CPU seconds,] load average before) runs."""
    columns = list(zip(*runs, strict=True))
    out = {"seconds": statistics.median(columns[0]), "all_seconds": list(columns[0])}
    if len(columns) == 3:
        out["cpu_seconds"] = statistics.median(columns[1])
    return out | {"load_avg_1m_before": statistics.median(columns[-1])}


def _worker(texts: list[str], name: str, barrier, results) -> None:
    """A spawned process: load and warm up the encoder, then embed its half once the other one is ready too."""
    configure_threads(1)
    encoder = EncoderPool().get(text_config(name))
    encoder.embed(texts[:64])
    barrier.wait()
    start = time.time()
    encoder.embed(texts)
    results.put((start, time.time()))


def two_processes(texts: list[str], name: str) -> float:
    """Wall seconds for two spawned processes to embed one half of ``texts`` each."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    half = len(texts) // 2
    procs = [ctx.Process(target=_worker, args=(part, name, barrier, results)) for part in (texts[:half], texts[half:])]
    for p in procs:
        p.start()
    spans = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"encoder worker process failed with exit code {p.exitcode}")
    return max(end for _, end in spans) - min(start for start, _ in spans)


def _onnxruntime_version() -> dict[str, str]:
    try:
        import onnxruntime
    except ImportError:  # the torch encoders can still be measured
        return {}
    return {"onnxruntime": onnxruntime.__version__}


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        "| encoder | runtime | quantize | processes x threads | texts | tokens | seconds | tokens/s | vs torch fp32 "
        "| tokens per CPU-second | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fp32 = {r["processes"]: r["tokens_per_s"] for r in rows if r["encoder"] == "torch"}
    for r in rows:
        per_cpu = f"{r['tokens'] / r['cpu_seconds']:,.0f}" if "cpu_seconds" in r else "-"
        ratio = f"{r['tokens_per_s'] / fp32[r['processes']]:.2f}x" if r["processes"] in fp32 else "-"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['quantize']} | {r['processes']} x 1 | {r['texts']} | "
            f"{r['tokens']:,} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | {ratio} | {per_cpu} | "
            f"{r['load_avg_1m_before']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Machine: {info['cores']} cores, torch {info['torch']}, onnxruntime {info.get('onnxruntime', '-')}, no GPU, "
        f"shared with other jobs (load avg = median 1-minute load average before the timed runs; the encoders' runs "
        f"alternate). Rotten Tomatoes snippets, tokens after truncation (padding excluded). 1 process: median of "
        f"{info['repeats']} runs after a warm-up; 2 processes: spawned, each embeds half after a warm-up, all tokens / "
        f"(last finish - first start), median of {info['repeats']}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2048, help="Rotten Tomatoes snippets in the pool (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    names = [e.strip() for e in args.encoders.split(",") if e.strip()]
    unknown = sorted(set(names) - set(ENCODERS))
    if unknown:
        p.error(f"unknown --encoders {unknown}; choose from {list(ENCODERS)}")

    import torch

    texts = datasets.rotten_tomatoes(n=args.n, seed=0).texts
    tokens = EncoderPool().get(text_config("torch")).count_tokens(texts)
    info = {"cores": os.cpu_count(), "torch": torch.__version__, "repeats": args.repeats} | _onnxruntime_version()
    timings = {(name, 1): timing for name, timing in one_process(texts, names, args.repeats).items()}
    pairs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            load = os.getloadavg()[0]
            pairs[name].append((two_processes(texts, name), load))
    timings |= {(name, 2): _timing(runs) for name, runs in pairs.items()}
    rows = []
    for name in names:
        runtime, quantize = ENCODERS[name]
        for processes in (1, 2):
            timing = timings[name, processes]
            row = {
                "model": text_config(name).name,
                "encoder": name,
                "runtime": runtime,
                "quantize": quantize,
                "processes": processes,
                "texts": len(texts),
                "tokens": tokens,
                **timing,
                "tokens_per_s": tokens / timing["seconds"],
            }
            rows.append(row)
            print(
                f"  {name:10s} {processes} process(es) {row['tokens_per_s']:8.0f} tokens/s  "
                f"(load {row['load_avg_1m_before']:.2f})",
                file=sys.stderr,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, info)
    (args.out / "encoder.json").write_text(json.dumps({"machine": info, "results": rows}, indent=1) + "\n")
    (args.out / "encoder.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

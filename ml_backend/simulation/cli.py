"""``ml-backend simulate`` / ``python -m ml_backend.simulation``: the simulator's command line."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from ml_backend import simulation
from ml_backend.simulation.loop import ALL_STRATEGIES, DATASETS, MODIFIERS, SimulationSettings, run_simulation
from ml_backend.simulation.report import markdown_table


def plain_help(doc: str | None) -> str:
    """A docstring as terminal help: without reST's double backquotes (``x`` reads as x)."""
    return (doc or "").replace("``", "")


def int_list(text: str) -> list[int]:
    """``"0,3"`` or ``"0-2"`` (or a mix, ``"0-2,5"``) -> a list of ints: how seeds are given on every command line
    (the simulator and the benchmark scripts)."""
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
    p.add_argument(
        "--model-config",
        default=None,
        help="model config name or YAML path (default: the default text/image config for the dataset)",
    )
    p.add_argument(
        "--configs-dir", type=Path, default=None, help="folder of model configs (default: MODEL_CONFIGS_DIR)"
    )
    p.add_argument(
        "--strategies",
        default=",".join(d.strategies),
        help="comma-separated, from: "
        + ", ".join(ALL_STRATEGIES)
        + "; each but random may be followed by modifiers: +"
        + ", +".join(MODIFIERS)
        + " (default: all, no modifier)",
    )
    p.add_argument("--seeds", default="0-2", help="e.g. 0,1,2 or 0-4 (default: %(default)s)")
    p.add_argument("--initial", type=int, default=d.initial, help="labels before the first training (default: the lag)")
    p.add_argument("--batch", type=int, default=d.batch, help="labels per recorded round (default: %(default)s)")
    p.add_argument(
        "--lag",
        type=int,
        default=d.lag,
        help="labels taken from the queue between two versions (default: the batch size)",
    )
    p.add_argument("--rounds", type=int, default=d.rounds, help="recorded rounds (default: %(default)s)")
    p.add_argument(
        "--cold-start",
        choices=["product", "random"],
        default=d.cold_start,
        help="product: the backend's cold-start queue; random: random initial labels (default: %(default)s)",
    )
    p.add_argument(
        "--duplicates",
        type=int,
        default=d.duplicates,
        help="put every pool item this many times in the pool (default: %(default)s)",
    )
    p.add_argument(
        "--test-fraction", type=float, default=d.test_fraction, help="held-out test split (default: %(default)s)"
    )
    p.add_argument(
        "--mc", type=int, default=None, help="MC dropout passes (default: the config's acquisition.mc_samples)"
    )
    p.add_argument("--n", type=int, default=None, help="class-balanced subsample of the dataset (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's training.epochs")
    p.add_argument("--target-accuracy", type=float, default=None, help="also report labels needed for this accuracy")
    p.add_argument("--jobs", type=int, default=1, help="worker processes, 1 torch thread each (default: %(default)s)")
    p.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="digits-images, fashion-mnist-images: PNG size (default: %(default)s)",
    )
    p.set_defaults(func=_run_from_args)
    return p


def _settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """Every option is a settings field of the same name (dashes as underscores), except the parsed lists."""
    parsed = {
        "out_dir": args.out,
        "strategies": [s.strip() for s in args.strategies.split(",") if s.strip()],
        "seeds": int_list(args.seeds),
    }
    plain = {f.name: getattr(args, f.name) for f in fields(SimulationSettings) if f.name not in parsed}
    return SimulationSettings(**plain, **parsed)


def _run_from_args(args: argparse.Namespace) -> int:
    result = run_simulation(_settings_from_args(args))
    print(f"### {result['dataset_description']}\n")
    print(markdown_table(result))
    print(f"\nwrote {', '.join(result['files'].values())} in {result['wall_seconds']:.0f}s")
    return 0


def add_simulate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``simulate`` on the CLI's subparsers; the parser's ``func(args)`` runs it and returns an exit code."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate active learning on a labelled dataset",
        description=plain_help(simulation.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return _configure_parser(p)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml_backend.simulation",
        description=plain_help(simulation.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _configure_parser(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return args.func(args)

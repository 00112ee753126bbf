"""``ml-backend export``: the queue's next tasks, the labelled tasks or the hard examples of a project as a file
(the same as ``GET /projects/{id}/export``), read from the model store and Label Studio named by the settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ml_backend.exports.formats import FORMATS, ExportError
from ml_backend.exports.project import WHAT, export_project
from ml_backend.labelstudio.client import LabelStudioClient, LabelStudioError
from ml_backend.labelstudio.labelconfig import parse_label_config
from ml_backend.learning.registry import Registry
from ml_backend.learning.service import InvalidModelConfig, ScoringService, UnknownProject
from ml_backend.learning.store import StoreError
from ml_backend.models.config import UnknownModelConfig
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings


def run_export(args: argparse.Namespace) -> None:
    settings = Settings()
    try:
        registry = Registry.from_settings(settings)
        state = ScoringService(settings, registry, EncoderPool(), None, parse_label_config).state(args.project)
        ls = LabelStudioClient.from_settings(settings, *registry.ls_connection())
        done = export_project(args.what, args.format, state, registry, ls, args.limit)
    except (UnknownProject, UnknownModelConfig, InvalidModelConfig, ExportError, LabelStudioError, StoreError) as exc:
        sys.exit(f"ml-backend export: {exc}")
    if args.out is None:
        sys.stdout.buffer.write(done.content)
    else:
        args.out.write_bytes(done.content)
        print(f"wrote {done.count} tasks to {args.out}", file=sys.stderr)


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a project's next tasks, labelled tasks or hard examples as LS JSON, Prodigy JSONL, CVAT XML or CSV",
        description=__doc__,
    )
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--what", choices=WHAT, default="next", help="which tasks (default: %(default)s)")
    p.add_argument("--format", choices=list(FORMATS), default="ls-json", help="file format (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="at most this many tasks (default: all)")
    p.add_argument("--out", type=Path, default=None, help="output file (default: standard output)")
    p.set_defaults(func=run_export)

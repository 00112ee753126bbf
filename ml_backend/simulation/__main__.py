"""``python -m ml_backend.simulation``."""

from ml_backend.simulation.cli import main

raise SystemExit(main())

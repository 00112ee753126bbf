"""The house rules of the package, checked on every import statement (so a new file cannot quietly break them).

- Third-party libraries stay in their room: Label Studio's SDK in ``labelstudio/``, rq and redis in ``jobs/``,
  torch and transformers in ``models/``, the web framework in ``api/`` (and the CLI that serves it).
- Nothing imports upward: each room may import only the rooms listed for it below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ml_backend"

#: third-party top-level modules -> the only rooms that may import them
THIRD_PARTY_ROOMS = {
    "label_studio_sdk": {"labelstudio"},
    "rq": {"jobs"},
    "redis": {"jobs"},
    "fakeredis": {"jobs"},
    "torch": {"models"},
    "transformers": {"models"},
    "torchvision": {"models"},
    "efficientnet_lite_pytorch": {"models"},
    "fastapi": {"api"},
    "starlette": {"api"},
    "uvicorn": {"cli"},
    "prometheus_client": {"api"},
}

#: room -> the rooms of ours it may import (besides itself)
ALLOWED = {
    "settings": set(),
    "core": set(),
    "tasktypes": {"core"},
    "models": {"core"},
    "labelstudio": {"tasktypes", "settings"},
    "learning": {"core", "tasktypes", "models", "settings"},
    "simulation": {"core", "tasktypes", "models", "learning", "settings"},
    "jobs": {"core", "tasktypes", "models", "labelstudio", "learning", "settings"},
    "exports": {"core", "tasktypes", "models", "labelstudio", "learning", "settings"},
    "api": {"core", "tasktypes", "models", "labelstudio", "learning", "jobs", "exports", "settings"},
    "cli": {"api", "jobs", "simulation", "exports", "settings"},
    "__init__": set(),
}


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_room_is_known():
    assert {_room(f) for f in FILES} <= set(ALLOWED), {_room(f) for f in FILES} - set(ALLOWED)


def violations(path: Path, room: str) -> list[str]:
    broken = []
    for line, module in _imports(path):
        top = module.split(".")[0]
        if top in THIRD_PARTY_ROOMS and room not in THIRD_PARTY_ROOMS[top]:
            broken.append(f"line {line}: {module} may only be imported in {sorted(THIRD_PARTY_ROOMS[top])}/")
        if top == "ml_backend" and module.count(".") >= 1:
            target = module.split(".")[1]
            if target != room and target not in ALLOWED[room] and target != "__version__":
                broken.append(f"line {line}: {room}/ may not import {module} (allowed: {sorted(ALLOWED[room])})")
    return broken


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_house_rules(path):
    broken = violations(path, _room(path))
    assert not broken, f"{path.relative_to(PACKAGE)}:\n" + "\n".join(broken)


def test_the_rules_catch_a_break(tmp_path):
    """The checker itself: a core module importing torch (even lazily) and an upper room is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch\n\nfrom ml_backend.learning.service import ScoringService\n")
    broken = violations(bad, "core")
    assert len(broken) == 2 and any("torch" in b for b in broken)
    assert any("ml_backend.learning.service" in b for b in broken)
    assert violations(bad, "models") != [] and len(violations(bad, "models")) == 1

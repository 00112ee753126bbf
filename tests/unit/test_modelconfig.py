"""Model configs refuse what cannot work, at load time, with the field's name in the message."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ml_backend.models.config import load_model_config

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "model_configs"


def _config(tmp_path, **acquisition_and_head):
    head = acquisition_and_head.pop("head", {})
    body = {
        "name": "t",
        "kind": "text",
        "encoder": {"pretrained": "none"},
        "head": head,
        "acquisition": acquisition_and_head,
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(body))
    return load_model_config(tmp_path, "t")


@pytest.mark.parametrize("strategy", ["bald", "variation_ratio"])
def test_mc_strategies_need_two_passes_and_dropout(tmp_path, strategy):
    with pytest.raises(ValidationError, match="mc_samples >= 2"):
        _config(tmp_path, strategy=strategy, mc_samples=1)
    with pytest.raises(ValidationError, match="head.dropout > 0"):
        _config(tmp_path, strategy=strategy, head={"dropout": 0.0})
    assert _config(tmp_path, strategy="margin", mc_samples=1, head={"dropout": 0.0}).acquisition.mc_samples == 1


def test_selection_weights_are_checked(tmp_path):
    assert _config(tmp_path, weights={"uncertainty": 1, "density": 0.5}).acquisition.weights["density"] == 0.5
    for bad, message in (
        ({"curiosity": 1}, "unknown selection weights"),
        ({"uncertainty": 0}, "positive weight"),
        ({"uncertainty": -1}, ">= 0"),
    ):
        with pytest.raises(ValidationError, match=message):
            _config(tmp_path, weights=bad)


def test_class_balancing_needs_the_coverage_front(tmp_path):
    assert _config(tmp_path, balance=True).acquisition.balance
    with pytest.raises(ValidationError, match="balance needs acquisition.front: coverage"):
        _config(tmp_path, balance=True, front="badge")


def test_every_shipped_config_loads():
    names = sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml"))
    assert "text-minilm" in names and "image-efficientnet-lite0" in names
    for name in names:
        config = load_model_config(REPO_CONFIGS, name)
        assert config.acquisition.front_size > 0, name

"""Smoke tests of the active-learning simulator: a tiny real run of the product's path, and the summary arithmetic."""

from __future__ import annotations

import builtins
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ml_backend.models.config import load_model_config
from ml_backend.simulation import loop as sim
from ml_backend.simulation import report

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "model_configs"

NAMES = ("random", "default", "bald+topk")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    settings = sim.SimulationSettings(
        dataset="digits-features",
        out_dir=out,
        strategies=list(NAMES),
        seeds=[0, 1],
        batch=10,
        rounds=3,
        n=200,
        epochs=15,
        mc=5,
        target_accuracy=0.5,
    )
    return out, sim.run_simulation(settings)


def test_tiny_simulation_writes_sane_outputs(tiny_run):
    out, result = tiny_run
    for name in ("simulation.json", "simulation.csv", "learning_curves.png", "summary.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = json.loads((out / "simulation.json").read_text())
    assert {(r["strategy"], r["seed"]) for r in saved["runs"]} == {(s, k) for s in NAMES for k in (0, 1)}
    for run in saved["runs"]:
        assert [x["n_labels"] for x in run["rounds"]] == [10, 20, 30]  # a version every 10 labels (lag = batch)
        for x in run["rounds"]:
            # NaN: no model could be trained yet (the old density cold start can serve one class only)
            assert math.isnan(x["accuracy"]) or 0.0 <= x["accuracy"] <= 1.0
            assert x["promoted"] in (True, False, None) and 1 <= x["classes_seen"] <= 10
        assert 0.0 <= run["rounds"][-1]["accuracy"] <= 1.0
    # 10 balanced classes: 30 labels of raw pixels are far better than chance (0.1)
    assert np.median([r["rounds"][-1]["accuracy"] for r in saved["runs"]]) > 0.3
    assert len(saved["full_data"]) == 2 and all(f["n_labels"] == 150 for f in saved["full_data"])
    assert set(saved["summary"]) == set(NAMES)
    for entry in saved["summary"].values():
        assert "worst_vs_random" in entry and entry["labels_to_all_classes"] >= 10

    rows = list(csv.DictReader(open(out / "simulation.csv")))
    assert len(rows) == 3 * 2 * 3 + 2  # strategies x seeds x rounds + the full-data rows
    assert {r["strategy"] for r in rows} == {*NAMES, "full_data"}
    md = (out / "summary.md").read_text()
    assert "| random |" in md and "| default |" in md and "worst round vs random" in md and "cores" in md


def test_the_product_cold_start_covers_more_classes_than_plain_density(tiny_run):
    """default serves the coverage-ordered cold start; bald+topk (front_size 0) the old density order."""
    _, result = tiny_run
    seen = {(r["strategy"], r["seed"]): r["rounds"][0]["classes_seen"] for r in result["runs"]}
    for seed in (0, 1):
        assert seen[("default", seed)] >= 6 and seen[("default", seed)] > seen[("bald+topk", seed)], seen


def test_plotting_is_optional(tmp_path, monkeypatch, tiny_run):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    paths = report.write_outputs(tiny_run[1], tmp_path)
    assert "png" not in paths and not (tmp_path / "learning_curves.png").exists()
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "simulation.json").is_file()


def test_the_summary_names_what_the_stochastic_passes_were():
    """A +laplace strategy's passes are weight samples, not MC dropout: the summary says which ran."""
    result = {"mc": 20, "model_config": {"acquisition": {"mc_mode": "head"}}, "summary": {"random": {}, "default": {}}}
    assert report._mc_passes(result) == "20 MC-dropout passes over the head"
    result["summary"]["default+laplace"] = {}
    assert "Laplace posterior over the last layer for the +laplace strategies" in report._mc_passes(result)
    result["model_config"]["acquisition"]["mc_mode"] = "laplace"
    assert report._mc_passes(result) == "20 weight samples of a Laplace posterior over the last layer"


def test_labels_to_reach_and_aulc():
    n = np.array([10, 20, 30, 40])
    acc = np.array([0.5, 0.8, 0.7, 0.9])
    assert report.labels_to_reach(n, acc, 0.8) == 20
    assert report.labels_to_reach(n, acc, 0.95) == math.inf
    assert report.normalised_aulc(n, acc) == pytest.approx((0.65 + 0.75 + 0.8) * 10 / 30)
    assert report.normalised_aulc([10, 20], [1.0, 1.0]) == pytest.approx(1.0)
    assert report.normalised_aulc([10, 20], [math.nan, 1.0]) == pytest.approx(0.5)  # no model yet counts as 0


def test_summary_ratio_to_random_and_worst_round():
    def run(strategy, seed, accs):
        return {
            "strategy": strategy,
            "seed": seed,
            "rounds": [
                {
                    "n_labels": 10 * (i + 1),
                    "accuracy": a,
                    "fit_seconds": 0.0,
                    "score_seconds": 0.0,
                    "classes_seen": 1 + i,
                    "promoted": True,
                }
                for i, a in enumerate(accs)
            ],
        }

    runs = [run("random", 0, [0.5, 0.6, 0.9, 1.0]), run("margin", 0, [0.5, 0.95, 0.85, 1.0])]
    full = [{"seed": 0, "accuracy": 1.0}]
    summary = report.summarise(runs, full, target_accuracy=0.9, n_classes=3)
    assert summary["random"]["labels_to_reach"]["95% of full"] == 40
    assert summary["margin"]["labels_to_reach"]["95% of full"] == 20
    assert summary["margin"]["ratio_to_random"]["95% of full"] == pytest.approx(0.5)
    assert summary["random"]["labels_to_reach"]["90% accuracy"] == 30
    assert summary["margin"]["worst_vs_random"] == pytest.approx(-0.05)
    assert summary["margin"]["worst_vs_random_at"] == 30
    assert summary["margin"]["labels_to_all_classes"] == 30 and summary["margin"]["promoted_share"] == 1.0


def test_split_is_seeded_and_settings_are_checked():
    y = np.repeat(np.arange(3), 20)
    tr1, te1 = sim.stratified_split(y, 0.25, seed=0)
    tr2, te2 = sim.stratified_split(y, 0.25, seed=0)
    assert np.array_equal(tr1, tr2) and np.array_equal(te1, te2)
    assert len(set(tr1) & set(te1)) == 0 and len(tr1) + len(te1) == 60
    assert np.bincount(y[te1]).tolist() == [5, 5, 5]
    for bad in (
        ["nope"],
        ["random+topk"],
        ["random+power"],
        ["nope+power"],
        ["random+badge"],
        ["default+nope"],
        ["random+laplace"],
    ):
        with pytest.raises(ValueError):
            sim.SimulationSettings(strategies=bad).validate()
    with pytest.raises(ValueError):
        sim.SimulationSettings(lag=0).validate()
    sim.SimulationSettings(
        strategies=["default", "margin+topk", "default+power", "bald+topk+power", "default+badge", "bald+laplace"]
    ).validate()
    config = load_model_config(REPO_CONFIGS, "text-minilm")
    assert sim.strategy_config(config, "default+power").acquisition.power == 1.0
    assert sim.strategy_config(config, "default").acquisition.power == 0.0
    topk_power = sim.strategy_config(config, "bald+topk+power").acquisition
    assert (topk_power.strategy, topk_power.front_size, topk_power.power) == ("bald", 0, 1.0)
    assert sim.strategy_config(config, "default").acquisition.front == "coverage"
    badge = sim.strategy_config(config, "entropy+badge+power").acquisition
    assert (badge.strategy, badge.front, badge.power, badge.front_size) == ("entropy", "badge", 1.0, 100)
    assert sim.strategy_config(config, "default+power+badge").acquisition == badge.model_copy(
        update={"strategy": config.acquisition.strategy}
    )  # modifiers in any order
    laplace = sim.strategy_config(config, "bald+laplace").acquisition
    assert (laplace.strategy, laplace.mc_mode, config.acquisition.mc_mode) == ("bald", "laplace", "head")
    committee = config.model_copy(update={"head": config.head.model_copy(update={"members": 3})})
    with pytest.raises(ValueError, match="head.members: 1"):
        sim.strategy_config(committee, "default+laplace")


def test_every_cli_option_reaches_the_settings():
    import argparse

    from ml_backend.simulation import cli

    parser = cli._configure_parser(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--dataset",
            "fashion-mnist",
            "--lag",
            "5",
            "--seeds",
            "0-2",
            "--duplicates",
            "3",
            "--strategies",
            "random, default",
            "--out",
            "x",
            "--cold-start",
            "random",
        ]
    )
    settings = cli._settings_from_args(args)
    assert (settings.dataset, settings.lag, settings.seeds, settings.duplicates) == ("fashion-mnist", 5, [0, 1, 2], 3)
    assert settings.strategies == ["random", "default"] and str(settings.out_dir) == "x"
    assert settings.cold_start == "random" and settings.batch == 10


def test_stop_summary_reports_where_the_rule_first_fired():
    def run(seed, stops, accs):
        rounds = [{"n_labels": 10 * (i + 1), "accuracy": a, "stop": s} for i, (s, a) in enumerate(zip(stops, accs))]
        return {"strategy": "default", "seed": seed, "rounds": rounds}

    runs = [run(0, [False, True, True], [0.6, 0.8, 0.9]), run(1, [False, False, False], [0.5, 0.6, 0.7])]
    s = report.stop_summary(runs, {0: 1.0, 1: 0.9})
    assert s["fired"] == 1 and s["labels"] == 20 and s["accuracy"] == pytest.approx(0.8)
    assert s["of_full"] == pytest.approx(0.8) and s["of_last_round"] == pytest.approx(0.8 / 0.9)
    assert s["labels_per_seed"] == [20, None]
    result = {"summary": {"default": {"stop": s, "seeds": 2, "final_labels": 30}}, "full_data": [{"accuracy": 0.95}]}
    assert "| default | 1/2 | 20 | 0.8000 | 80.0 % | 88.9 % | 20, - |" in report.stopping_table(result)
    runs[0]["kappas"] = [{"n_labels": 20, "kappa": 0.9}, {"n_labels": 30, "kappa": 0.96}]
    runs[1]["kappas"] = [{"n_labels": 20, "kappa": 0.5}, {"n_labels": 30, "kappa": 0.99}]
    sensitivity = report.kappa_sensitivity(runs, {0: 1.0, 1: 0.9}, (0.99, 0.9), window=2)
    assert sensitivity[0.99]["fired"] == 0 and sensitivity[0.99]["labels"] is None
    assert sensitivity[0.9] == {"fired": 1, "labels": 30, "accuracy": 0.9, "of_full": 0.9}  # mean(0.9, 0.96)


def test_tiny_simulation_replays_the_stopping_rule(tiny_run):
    _, result = tiny_run
    for run in result["runs"]:
        kappas = [x["kappa"] for x in run["rounds"]]
        assert all(k is None or -1.0 <= k <= 1.0 for k in kappas) and all(
            x["stop"] in (True, False) for x in run["rounds"]
        )
        assert not run["rounds"][0]["stop"]  # the window needs 3 kappas, i.e. 4 trained versions
    assert all("stop" in entry for entry in result["summary"].values())

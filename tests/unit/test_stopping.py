"""The stopping criteria (pure functions) and the stopping signal and budget of recorded version histories."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ml_backend.core import stopping
from ml_backend.learning.insights import project_report, project_stop_signal
from ml_backend.learning.registry import ProjectRecord, Registry
from ml_backend.learning.service import label_budget
from ml_backend.models.config import ModelConfig, load_model_config

CONFIGS = Path(__file__).resolve().parents[2] / "model_configs"


def test_kappa_matches_the_textbook_value_and_handles_one_class():
    # observed 0.75, chance (2*1 + 2*3) / 16 = 0.5 -> (0.75 - 0.5) / 0.5
    assert stopping.cohens_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    assert stopping.cohens_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert stopping.cohens_kappa(["x"] * 5, ["x"] * 5) == 1.0  # chance agreement 1: no division by zero
    assert math.isnan(stopping.cohens_kappa([], []))
    with pytest.raises(ValueError):
        stopping.cohens_kappa([1], [1, 2])


def test_consecutive_kappas_compare_versions_on_the_tasks_both_predicted():
    v1 = {1: "a", 2: "b", 3: "a", 4: "b"}
    v2 = {2: "b", 3: "a", 4: "b", 5: "a"}  # task 1 got labelled, task 5 is new: compared on 2, 3, 4
    assert stopping.consecutive_kappas([v1, v2]) == [1.0]
    assert stopping.consecutive_kappas([None, v1, {9: "a"}]) == [None, None]


def test_kappa_average_needs_a_full_window_of_high_agreement():
    assert not stopping.kappa_average([0.995, 0.999], 0.99, 3).fired  # 2 of 3
    assert not stopping.kappa_average([None, 0.995, 0.999, 1.0][:3], 0.99, 3).fired
    fired = stopping.kappa_average([0.5, 0.995, 0.99, 1.0], 0.99, 3)
    assert fired.fired and fired.value == pytest.approx(0.995) and "stable" in fired.detail
    assert not stopping.kappa_average([0.995, 0.97, 1.0], 0.99, 3).fired


def test_indicators_uncertainty_plateau_and_budget():
    assert stopping.pool_uncertainty(np.array([0.05, 0.1, np.nan]), 0.1).fired
    assert not stopping.pool_uncertainty(np.array([0.3, 0.1]), 0.1).fired
    assert stopping.pool_uncertainty(None).value is None
    assert not stopping.accuracy_plateau([0.5, 0.6, 0.7], window=3).fired  # not enough history
    assert not stopping.accuracy_plateau([0.5, 0.6, 0.7, 0.8], window=3).fired
    plateau = stopping.accuracy_plateau([0.5, 0.8, None, 0.805, 0.79, 0.8], window=3, tolerance=0.01)
    assert plateau.fired and plateau.value == pytest.approx(0.005)
    assert not stopping.label_budget(99, None).fired and stopping.label_budget(99, None).value is None
    assert not stopping.label_budget(99, 100).fired and stopping.label_budget(100, 100).fired
    assert stopping.label_budget(104, 100).detail == "104 of 100 labels spent, 4 over"
    criteria = [stopping.label_budget(100, 100), stopping.pool_uncertainty(np.array([0.0]))]
    stop, reasons = stopping.should_stop(criteria, decisive=[stopping.KAPPA, stopping.BUDGET])
    assert stop and reasons == ["label budget: 100 of 100 labels spent, 0 left"]
    assert stopping.should_stop(criteria[1:], decisive=[stopping.KAPPA]) == (False, [])


def test_the_model_config_refuses_unknown_stopping_criteria():
    base = load_model_config(CONFIGS, "text-minilm").model_dump()
    with pytest.raises(ValueError, match="unknown stopping criteria"):
        ModelConfig.model_validate({**base, "stopping": {"decisive": ["vibes"]}})


def test_the_ls_extra_params_budget_overrides_and_is_validated():
    known = ProjectRecord(1, "1.1", "<View/>", "text-minilm", label_budget=50)
    assert label_budget({"label_budget": 200}, known) == 200
    assert label_budget({"label_budget": "30"}, None) == 30
    assert label_budget({}, known) == 50 and label_budget(None, None) is None
    assert label_budget({"label_budget": None}, known) is None
    for bad in (0, -3, 2.5, "ten", True):
        with pytest.raises(ValueError):
            label_budget({"label_budget": bad}, None)


# -- recorded histories ---------------------------------------------------------------------------------------
POOL = list(range(100, 200))


def record_history(reg: Registry, config: ModelConfig, predictions: list[list[str]], accuracies: list[float]) -> None:
    """A project as the worker leaves it: an untrained v0, then one trained version per entry, each trained on 10
    more labels (the first tasks of the pool) and with its pool predictions stored like a pool re-score does."""
    reg.save_project(ProjectRecord(3, "3.1", "<View/>", config.name))
    reg.publish_next(3, config, trained=False, promote=True, files={}, note="untrained")
    for i, (pred, acc) in enumerate(zip(predictions, accuracies), start=1):
        labelled = POOL[: 10 * i]
        info = reg.publish_next(
            3,
            config,
            trained=True,
            promote=True,
            files={},
            note="promoted",
            metrics={"accuracy": acc, "macro_f1": acc - 0.05, "class_counts": {"pos": 5 * i, "neg": 5 * i}},
            labelled_task_ids=labelled,
        )
        todo = [t for t in POOL if t not in labelled]
        reg.save_ranking(
            3,
            info.version,
            todo,
            np.linspace(0.01, 0.99, len(todo)),
            ["learn"] * len(todo),
            0.2,
            predicted=[pred[POOL.index(t)] for t in todo],
            uncertainty=np.full(len(todo), 0.3),
        )


def flipping(n_versions: int, stable_from: int) -> list[list[str]]:
    """Pool predictions that disagree a lot between versions until ``stable_from``, then stay the same."""
    rng = np.random.default_rng(0)
    out = []
    for v in range(n_versions):
        if v < stable_from:
            out.append([str(x) for x in rng.choice(["pos", "neg"], len(POOL))])
        else:
            out.append(["pos" if t % 3 else "neg" for t in POOL])
    return out


def test_recorded_history_stops_once_predictions_stay_stable_for_the_window(tmp_path):
    config = load_model_config(CONFIGS, "text-minilm")
    reg = Registry(tmp_path)
    record_history(reg, config, flipping(4, stable_from=2), [0.6, 0.7, 0.75, 0.76])
    record = reg.get_project(3)
    signal = project_stop_signal(reg, record, config)
    # versions 3 and 4 agree, but the window needs 3 kappas of >= 0.99: not yet
    assert not signal.stop and signal.kappas[-1] == 1.0 and signal.kappas[0] < 0.5

    reg2 = Registry(tmp_path / "later")
    record_history(reg2, config, flipping(6, stable_from=2), [0.6, 0.7, 0.75, 0.752, 0.755, 0.754])
    signal = project_stop_signal(reg2, reg2.get_project(3), config)
    assert signal.stop and signal.kappas[-3:] == [1.0, 1.0, 1.0]
    assert signal.reasons == ["stable predictions: predictions stable: mean kappa 1.000 over the last 3 versions"]
    plateau = next(c for c in signal.criteria if c["name"] == stopping.PLATEAU)
    assert plateau["fired"] and not plateau["decisive"]  # an indicator only, by default


def test_recorded_history_budget_spent_left_and_status(tmp_path):
    config = load_model_config(CONFIGS, "text-minilm")
    reg = Registry(tmp_path)
    record_history(reg, config, flipping(3, stable_from=9), [0.6, 0.7, 0.75])
    record = reg.get_project(3)
    current = reg.current(3)
    report = project_report(reg, record, config, current, "http://ls:8080/")
    assert report["budget"] == {"budget": None, "spent": 30, "left": None, "exhausted": False}
    assert not report["stopping"]["stop"]

    record.label_budget = 40
    report = project_report(reg, record, config, current, "http://ls:8080/")
    assert report["budget"] == {"budget": 40, "spent": 30, "left": 10, "exhausted": False}
    record.label_budget = 30
    report = project_report(reg, record, config, current, "http://ls:8080/")
    assert report["budget"]["exhausted"] and report["budget"]["left"] == 0
    assert report["stopping"]["stop"] and report["stopping"]["reasons"][0].startswith("label budget: 30 of 30")
    # the model config's budget applies when LS set none
    record.label_budget = None
    budgeted = config.model_copy(update={"stopping": config.stopping.model_copy(update={"label_budget": 25})})
    assert project_report(reg, record, budgeted, current, None)["budget"]["exhausted"]


def test_report_lists_the_curve_next_tasks_and_flips(tmp_path):
    config = load_model_config(CONFIGS, "text-minilm")
    reg = Registry(tmp_path)
    record_history(reg, config, flipping(3, stable_from=9), [0.6, 0.7, 0.75])
    report = project_report(reg, reg.get_project(3), config, reg.current(3), "http://ls:8080/", n_next=5)
    assert [p["n_labels"] for p in report["learning_curve"]] == [10, 20, 30]
    assert [v["current"] for v in report["versions"]] == [False, False, False, True]
    assert report["versions"][1]["kappa_with_previous"] is None and report["versions"][2]["kappa_with_previous"] < 1
    tasks = report["next_tasks"]["tasks"]
    assert [t["task"] for t in tasks] == POOL[30:35] and tasks[0]["rank"] == 1
    assert tasks[0]["url"] == "http://ls:8080/projects/3/data?task=130" and "uncertainty" in tasks[0]["reason"]
    assert report["class_balance"] == {"pos": 15, "neg": 15}
    flips = report["hard_examples"]["flips"]
    assert flips and all(f["flips"] >= 1 and f["task"] in POOL[30:] for f in flips)
    assert flips[0]["flips"] == max(f["flips"] for f in flips)


def test_training_stops_once_the_signal_says_stop_if_configured(tmp_path):
    """stopping.stop_training: a spent budget (or stable predictions) ends retraining; nothing is published."""
    from ml_backend.labelstudio.labelconfig import parse_label_config
    from ml_backend.learning.service import ProjectState, ScoringService
    from ml_backend.learning.training import train_version
    from ml_backend.models.pool import EncoderPool
    from ml_backend.settings import Settings

    base = load_model_config(CONFIGS, "text-minilm")
    config = base.model_copy(
        update={"stopping": base.stopping.model_copy(update={"label_budget": 30, "stop_training": True})}
    )
    reg = Registry(tmp_path / "projects")
    record_history(reg, config, flipping(3, stable_from=9), [0.6, 0.7, 0.75])
    schema = parse_label_config(
        '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="pos"/>'
        '<Choice value="neg"/></Choices></View>'
    )
    service = ScoringService(Settings(data_dir=tmp_path), reg, EncoderPool(), None, parse_label_config)
    state = ProjectState(reg.get_project(3), schema, config, reg.current(3))
    kept = [{"id": t, "data": {"text": f"text {t}"}} for t in POOL[:40]]
    before = len(reg.versions(3))
    result = train_version(service, state, kept, [["pos"] if t % 2 else ["neg"] for t in POOL[:40]])
    assert result.version is None and not result.trained
    assert result.reason.startswith("stopped (stopping.stop_training): label budget: 30 of 30")
    assert len(reg.versions(3)) == before

"""From LS annotations to a version decision, with the real head on synthetic features."""

import io

import numpy as np
import pytest
import torch

from ml_backend.labelstudio.annotations import labelled_examples, latest_annotation
from ml_backend.labelstudio.labelconfig import parse_label_config
from ml_backend.learning.training import (
    LabelledData,
    decide_next,
    evaluate,
    holdout_mask,
    promotion_decision,
    sign_test_p,
    train_and_decide,
)
from ml_backend.models.classifier import Classifier
from ml_backend.models.config import ModelConfig
from ml_backend.tasktypes import SINGLE_CHOICE

SCHEMA = parse_label_config(
    '<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/><Choice value="b"/>'
    "</Choices></View>"
)
MULTI = parse_label_config(
    '<View><Text name="t" value="$t"/><Choices name="c" toName="t" choice="multiple"><Choice value="a"/>'
    '<Choice value="b"/></Choices></View>'
)


def ann(label, *, id, updated, cancelled=False):
    result = [{"from_name": "c", "to_name": "t", "type": "choices", "value": {"choices": [label]}}] if label else []
    return {"id": id, "updated_at": updated, "was_cancelled": cancelled, "result": result}


def test_latest_non_skipped_annotation_wins_and_skips_are_not_labels():
    tasks = [
        {"id": 1, "annotations": [ann("a", id=1, updated="2026-01-01"), ann("b", id=2, updated="2026-01-02")]},
        {"id": 2, "annotations": [ann(None, id=3, updated="2026-01-03", cancelled=True)]},
        {
            "id": 3,
            "annotations": [ann("b", id=4, updated="2026-01-01"), ann("a", id=5, updated="2026-01-05", cancelled=True)],
        },
        {"id": 4, "annotations": [ann("zzz", id=6, updated="2026-01-01")]},
        {"id": 5, "annotations": []},
    ]
    kept, labels, stats = labelled_examples(SCHEMA, tasks)
    assert [t["id"] for t in kept] == [1, 3] and labels == [["b"], ["b"]]
    assert stats.cancelled_only == 1 and stats.unknown_labels == {"zzz": 1} and stats.no_known_label == 1
    assert latest_annotation(tasks[4]) is None


def test_targets_and_trainability():
    assert SCHEMA.task.encode_targets(SCHEMA, [["b"], ["a"]]).tolist() == [1, 0]
    assert MULTI.task.encode_targets(MULTI, [["a", "b"], ["b"]]).tolist() == [[1, 1], [0, 1]]
    assert "same class" in SCHEMA.task.can_train(np.array([1, 1, 1]))
    assert MULTI.task.can_train(np.array([[1, 0]])) is None
    assert SCHEMA.task.can_train(np.array([])) == "no labelled tasks yet"


def test_holdout_is_stable_per_task_as_labels_grow():
    small = holdout_mask(range(5), 0.2, min_labels=10)
    assert not small.any()  # too few labels to hold any out
    a = holdout_mask(range(100), 0.2, min_labels=10)
    b = holdout_mask(range(300), 0.2, min_labels=10)
    assert np.array_equal(a, b[:100]) and 0.1 < a.mean() < 0.3


def _data(x, y):
    """Labelled rows as the training step takes them: task ids 0..n-1 in row order."""
    return LabelledData(x, list(x), y, list(range(len(y))))


def _config(members=1, hidden=256, **training):
    return ModelConfig.model_validate(
        {
            "name": "t",
            "kind": "text",
            "encoder": {"pretrained": "none"},
            "head": {"members": members, "hidden": hidden},
            "training": {"epochs": 40, "min_labels_for_holdout": 10, **training},
        }
    )


def _blobs(n, seed, noise=0.3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, noise, (n, 8)) + np.where(y[:, None] == 1, 1.0, -1.0)
    return x.astype(np.float32), y


def test_a_better_model_is_promoted_and_trained_on_every_label():
    x, y = _blobs(80, 0)
    clf = Classifier(None, _config(), 2, False, in_dim=8)
    outcome = train_and_decide(SINGLE_CHOICE, clf, None, _data(x, y), ["a", "b"], seed=0)
    assert outcome.promote and outcome.metrics["accuracy"] > 0.9
    assert outcome.metrics["n_labels"] == 80 and 0 < outcome.metrics["n_holdout"] < 80
    again = Classifier(None, _config(), 2, False, in_dim=8)
    train_and_decide(SINGLE_CHOICE, again, None, _data(x, y), ["a", "b"], seed=0)
    assert np.array_equal(again.predict_proba(x, mc=5), clf.predict_proba(x, mc=5))  # same data + seed, same model


def test_a_worse_model_is_not_promoted_unless_configured():
    x, y = _blobs(80, 1)
    current = Classifier(None, _config(), 2, False, in_dim=8)
    current.fit(x[:40], y[:40], seed=0)
    held = holdout_mask(range(80), 0.2, min_labels=10)
    flipped = np.where(held, y, 1 - y)  # wrong labels to train on, right ones to evaluate on: the new model is worse

    def against_current(**training):
        clf = Classifier(None, _config(promote_min_fair=5, **training), 2, False, in_dim=8)
        return train_and_decide(
            SINGLE_CHOICE, clf, current, _data(x, flipped), ["a", "b"], seed=0, current_task_ids=range(40)
        )

    worse = against_current()
    assert not worse.promote and "kept the current version" in worse.reason
    assert worse.metrics["fair_n"] == int(held[40:].sum()) and worse.metrics["fair_p_worse"] < 0.05
    anyway = against_current(promote_if_not_worse=False)
    assert anyway.promote


def test_promotion_compares_only_on_tasks_neither_model_trained_on():
    x, y = _blobs(80, 4, noise=1.2)  # overlapping classes: a model is far better on its own training tasks
    current = Classifier(None, _config(), 2, False, in_dim=8)
    current.fit(x, y, seed=0)  # the served version was refitted on every label, the held-out ones included
    outcome = train_and_decide(
        SINGLE_CHOICE,
        Classifier(None, _config(), 2, False, in_dim=8),
        current,
        _data(x, y),
        ["a", "b"],
        seed=0,
        current_task_ids=range(80),
    )
    assert outcome.promote and outcome.metrics["fair_n"] == 0 and "fair held-out tasks" in outcome.reason


def test_sign_test_and_decision():
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p(3, 3) > 0.5
    yes = np.ones(30, dtype=bool)
    keep, reason, figures = promotion_decision(~yes, yes, min_fair=10, alpha=0.05, tolerance=0.0)
    assert not keep and figures["fair_new_wrong_only"] == 30
    assert promotion_decision(~yes[:5], yes[:5], min_fair=10, alpha=0.05, tolerance=0.0)[0]  # too few: promote
    assert promotion_decision(yes, ~yes, min_fair=10, alpha=0.05, tolerance=0.0)[0]


def _digits_stream():
    from ml_backend.simulation.datasets import digits_features

    data = digits_features()
    order = np.random.default_rng(0).permutation(len(data))
    x, y = data.X[order].astype(np.float32), data.y()[order]
    return x[:1300], y[:1300], x[1300:], y[1300:]


def _digits_config(**training):
    return ModelConfig.model_validate(
        {"name": "d", "kind": "text", "encoder": {"pretrained": "none"}, "training": {"epochs": 30, **training}}
    )


def test_a_growing_label_stream_on_digits_keeps_promoting_the_better_model():
    """The worker's training step (decide_next) on real data, labels growing 20 -> 300 by 20: the served version
    follows the newer, better model (the biased rule promoted 6 of 39 such retrainings)."""
    x, y, x_test, y_test = _digits_stream()
    labels = [str(i) for i in range(10)]
    served, served_ids, decisions, served_acc = None, [], [], []
    for n in range(20, 301, 20):
        clf = Classifier(None, _digits_config(), 10, False, in_dim=64)
        decision = decide_next(SINGLE_CHOICE, clf, served, served_ids, _data(x[:n], y[:n]), labels, seed=0)
        if decision.outcome is not None and served is not None:
            decisions.append(decision.promote)
        if decision.promote and decision.outcome is not None:
            served, served_ids = decision.outcome.classifier, list(range(n))
        served_acc.append(evaluate(served, x_test, y_test, labels)["accuracy"])
    assert np.mean(decisions) >= 0.9, decisions
    assert served_acc[-1] > served_acc[0] + 0.1 and served_acc[-1] > 0.85, served_acc

    # a version trained on corrupted labels (shuffled for every task it trains on) is kept out
    n = 400
    held = holdout_mask(range(n), 0.2, 10)
    shuffled = np.where(held, y[:n], np.random.default_rng(1).permutation(y[:n]))
    clf = Classifier(None, _digits_config(), 10, False, in_dim=64)
    bad = decide_next(SINGLE_CHOICE, clf, served, served_ids, _data(x[:n], shuffled), labels, seed=0)
    assert bad.outcome is not None and not bad.promote, bad.note


def test_no_model_yet_gives_an_exploration_version_once_per_label_set():
    x, y = _blobs(6, 5)
    y[:] = 1  # one class only
    clf = Classifier(None, _config(), 2, False, in_dim=8)
    first = decide_next(SINGLE_CHOICE, clf, None, [], _data(x, y), ["a", "b"], seed=0)
    assert first is not None and first.outcome is None and first.promote and "exploration" in first.note
    assert first.metrics["unseen_classes"] == ["a"]
    assert decide_next(SINGLE_CHOICE, clf, None, list(range(6)), _data(x, y), ["a", "b"], seed=0) is None
    assert decide_next(SINGLE_CHOICE, clf, None, [], _data(x[:0], y[:0]), ["a", "b"], seed=0) is None


@pytest.mark.parametrize("multilabel", [False, True])
def test_head_probabilities_have_the_documented_shape(multilabel):
    x, y = _blobs(30, 2)
    clf = Classifier(None, _config(), 2, multilabel, in_dim=8)
    clf.fit(x, np.stack([y, 1 - y], 1) if multilabel else y, seed=0)
    p = clf.predict_proba(x[:4], mc=20)
    assert p.shape == (4, 20, 2) and np.all((p >= 0) & (p <= 1))
    if not multilabel:
        assert np.allclose(p.sum(-1), 1.0)
    assert not np.allclose(p[:, 0], p[:, 1])  # dropout varies across MC passes
    assert np.array_equal(clf.predict_proba(x[:4], mc=1), clf.predict_proba(x[:4], mc=1))  # deterministic pass


def test_few_labels_still_get_the_minimum_number_of_optimizer_steps():
    from ml_backend.models.head import HeadParams, epochs_for

    params = HeadParams(epochs=60, batch_size=32, min_steps=600)
    assert epochs_for(20, params) == 600  # one batch per epoch: 600 epochs, not 60 steps
    assert epochs_for(100, params) == 150  # 4 batches per epoch
    assert epochs_for(5000, params) == 60  # plenty of steps already: the configured epochs
    x, y = _blobs(20, 2)
    losses = Classifier(None, _config(), 2, False, in_dim=8).fit(x, y, seed=0)
    assert len(losses) == 600 and losses[-1] < losses[59]  # the extra steps keep lowering the loss


def test_a_committee_predicts_the_mean_of_its_members_and_scores_each_with_its_own_masks():
    from ml_backend.models.head import passes_per_member

    assert passes_per_member(20, 5) == [4] * 5 and passes_per_member(7, 3) == [3, 2, 2]
    assert passes_per_member(2, 5) == [1] * 5  # every member takes part, however few the passes
    x, y = _blobs(60, 3, noise=1.0)
    clf = Classifier(None, _config(members=5), 2, False, in_dim=8)
    clf.fit(x, y, seed=0)
    members = clf.head.members
    assert members == 5 and clf.head.w1.shape == (5, 256, 8)
    # the members start apart and stay apart: a committee, not five copies of one head
    assert not torch.allclose(clf.head.w1[0], clf.head.w1[1])
    with torch.no_grad():
        each = torch.softmax(clf.head(torch.as_tensor(x[:6])), dim=-1).numpy()  # (members, n, C), eval mode
    assert np.allclose(clf.predict_proba(x[:6], mc=1)[:, 0], each.mean(axis=0))
    p = clf.predict_proba(x[:6], mc=20, seed=4)
    assert p.shape == (6, 20, 2) and np.allclose(p.sum(-1), 1.0)
    assert np.array_equal(p, clf.predict_proba(x[:6], mc=20, seed=4))  # fixed masks: the same every time
    assert np.allclose(p[2:3], clf.predict_proba(x[2:3], mc=20, seed=4), rtol=0, atol=1e-12)  # whatever the batch
    assert (clf.predict(x) == y).mean() > 0.8


@pytest.mark.parametrize(("members", "hidden"), [(1, 256), (3, 256), (1, 0), (3, 0)])
def test_mc_passes_in_row_chunks_give_exactly_the_whole_pool_results(members, hidden):
    """The pool is scored in row chunks (memory and cache); every row must get the numbers it gets in one chunk
    (up to float64 rounding, as in a batch of 1), for head-only MC on (n, d) and full-network MC on (n, T, d),
    MLP and linear heads."""
    from ml_backend.models.head import head_proba

    x, y = _blobs(50, 5, noise=1.0)
    clf = Classifier(None, _config(members=members, hidden=hidden), 2, False, in_dim=8)
    clf.fit(x, y, seed=0)
    whole = head_proba(clf.head, x, 20, False, seed=3, chunk_rows=len(x))
    assert np.allclose(head_proba(clf.head, x, 20, False, seed=3, chunk_rows=7), whole, rtol=0, atol=1e-12)
    stochastic = np.random.default_rng(1).normal(size=(50, 20, 8)).astype(np.float32)
    whole = head_proba(clf.head, stochastic, 20, False, seed=3, chunk_rows=len(x))
    assert np.allclose(head_proba(clf.head, stochastic, 20, False, seed=3, chunk_rows=7), whole, rtol=0, atol=1e-12)
    assert head_proba(clf.head, x[:0], 20, False, seed=3).shape == (0, 20, 2)


def test_a_saved_committee_loads_as_saved_and_a_single_head_of_an_older_version_still_loads():
    x, y = _blobs(40, 1)
    committee = Classifier(None, _config(members=3), 2, False, in_dim=8)
    committee.fit(x, y, seed=2)
    loaded = Classifier(None, _config(members=1), 2, False)  # the config changed since: the version did not
    loaded.load_state(committee.state_bytes())
    assert loaded.head.members == 3
    assert np.array_equal(loaded.predict_proba(x, mc=20, seed=1), committee.predict_proba(x, mc=20, seed=1))

    single = Classifier(None, _config(), 2, False, in_dim=8)
    single.fit(x, y, seed=0)
    h = single.head
    old_format = {  # what versions saved before committees hold: an nn.Sequential's Linear layers
        "net.1.weight": h.w1[0].detach(),
        "net.1.bias": h.b1[0].detach(),
        "net.4.weight": h.w2[0].detach(),
        "net.4.bias": h.b2[0].detach(),
    }
    buf = io.BytesIO()
    torch.save({"state": old_format, "in_dim": 8, "encoder": None, "encoder_fingerprint": None}, buf)
    old = Classifier(None, _config(members=5), 2, False)
    old.load_state(buf.getvalue())
    assert old.head.members == 1
    assert np.array_equal(old.predict_proba(x, mc=20, seed=1), single.predict_proba(x, mc=20, seed=1))


def test_a_linear_head_is_one_dropout_and_linear_layer_whose_mc_passes_match_its_forward_pass():
    """``head.hidden: 0``: dropout -> linear. Its deterministic and MC probabilities come from the same weights as
    its forward pass, its passes differ (dropout on the inputs), and a saved linear version loads as saved."""
    from ml_backend.models.head import mc_masks

    x, y = _blobs(60, 3, noise=1.0)
    clf = Classifier(None, _config(hidden=0), 2, False, in_dim=8)
    clf.fit(x, y, seed=0)
    head = clf.head
    assert head.w1.shape == (1, 2, 8) and not hasattr(head, "w2")
    assert sum(p.numel() for p in head.parameters()) == 2 * 8 + 2
    with torch.no_grad():
        logits = torch.as_tensor(x) @ head.w1[0].T + head.b1[0]
    assert np.allclose(clf.predict_proba(x, mc=1)[:, 0], torch.softmax(logits, -1).numpy(), atol=1e-6)
    p = clf.predict_proba(x, mc=20, seed=4)
    m_in, _ = mc_masks(head, 20, 4)
    with torch.no_grad():  # pass t: the inputs thinned by mask t, then the one linear layer
        by_hand = torch.softmax(
            (torch.as_tensor(x, dtype=torch.float64)[:, None] * m_in.double()) @ head.w1[0].double().T
            + head.b1[0].double(),
            -1,
        ).numpy()
    assert np.allclose(p, by_hand, rtol=0, atol=1e-9)
    assert p.std(axis=1).max() > 1e-3  # the passes differ
    assert (clf.predict(x) == y).mean() > 0.8

    loaded = Classifier(None, _config(hidden=256), 2, False)  # the config changed since: the version did not
    loaded.load_state(clf.state_bytes())
    assert loaded.head.hidden == 0
    assert np.array_equal(loaded.predict_proba(x, mc=20, seed=1), clf.predict_proba(x, mc=20, seed=1))


def test_committee_size_is_checked():
    with pytest.raises(ValueError, match="members"):
        _config(members=0)


@pytest.mark.parametrize("hidden,members", [(0, 1), (16, 1), (16, 3)])
def test_last_layer_inputs_are_what_the_last_layer_reads(hidden, members):
    """BADGE's feature factor: the embedding for a linear head; the ReLU hidden layer of an MLP (members side by
    side), so the last layer applied to it gives the head's logits."""
    x, y = _blobs(40, 3, noise=1.0)
    clf = Classifier(None, _config(hidden=hidden, members=members), 2, False, in_dim=8)
    with pytest.raises(RuntimeError):
        clf.last_layer_inputs(x)
    clf.fit(x, y, seed=0)
    h = clf.last_layer_inputs(x)
    head = clf.head
    if not hidden:
        assert np.array_equal(h, x)
        return
    assert h.shape == (40, hidden * members) and (h >= 0).all()
    with torch.no_grad():
        logits = head(torch.as_tensor(x)).double().numpy()  # eval mode: no dropout
    for m in range(members):
        own = h[:, m * hidden : (m + 1) * hidden]
        by_layer = own @ head.w2[m].detach().double().numpy().T + head.b2[m].detach().double().numpy()
        assert np.allclose(by_layer, logits[m], atol=1e-4)

"""The last-layer Laplace posterior: its spread shrinks where labels are, it is fixed by the version seed, it
survives saving, and the config refuses what it cannot do."""

import numpy as np
import pytest
from pydantic import ValidationError

from ml_backend.core.strategies import bald
from ml_backend.models.classifier import Classifier
from ml_backend.models.config import ModelConfig
from ml_backend.models.laplace import PRIOR_PRECISIONS, LastLayerLaplace


def _config(hidden=0, members=1, mc_mode="laplace", strategy="bald", dropout=0.3):
    return ModelConfig.model_validate(
        {
            "name": "t",
            "kind": "text",
            "encoder": {"pretrained": "none"},
            "head": {"hidden": hidden, "members": members, "dropout": dropout},
            "training": {"epochs": 40},
            "acquisition": {"strategy": strategy, "mc_mode": mc_mode, "mc_samples": 20},
        }
    )


def _labelled_along_first_axes(n=60, d=6, seed=0):
    """Labelled rows that vary only in the first two of ``d`` dimensions; the class is the sign of the first."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), dtype=np.float32)
    x[:, :2] = rng.normal(0, 1, (n, 2))
    y = (x[:, 0] > 0).astype(int)
    return x, y


@pytest.mark.parametrize("hidden", [0, 16])
def test_bald_is_high_where_no_label_spans_the_features_and_low_where_many_do(hidden):
    """Two tasks the trained head is equally unsure of (on its decision boundary): one like the labelled tasks,
    one along a direction no labelled task spans. Only the second has weights that disagree about it."""
    x, y = _labelled_along_first_axes()
    clf = Classifier(None, _config(hidden=hidden), 2, False, in_dim=6)
    clf.fit(x, y, seed=0)
    assert clf.posterior is not None and clf.posterior.prior_precision in PRIOR_PRECISIONS
    seen = np.zeros((1, 6), dtype=np.float32)
    unseen = np.zeros((1, 6), dtype=np.float32)
    unseen[0, 4] = 3.0
    values = bald(clf.predict_proba(np.concatenate([seen, unseen]), mc=20, seed=0))
    assert values[1] > 5 * values[0]
    # more labels near a task pin its logits down further
    more_x, more_y = _labelled_along_first_axes(n=600, seed=1)
    more = Classifier(None, _config(hidden=hidden), 2, False, in_dim=6)
    more.fit(more_x, more_y, seed=0)
    near = np.array([[0.5, 0.5, 0, 0, 0, 0]], dtype=np.float32)
    assert bald(more.predict_proba(near, mc=200, seed=0))[0] < bald(clf.predict_proba(near, mc=200, seed=0))[0]


def test_samples_are_fixed_by_the_seed_and_a_task_scores_the_same_in_any_batch():
    x, y = _labelled_along_first_axes()
    clf = Classifier(None, _config(), 2, False, in_dim=6)
    clf.fit(x, y, seed=0)
    pool = np.random.default_rng(3).normal(0, 1, (50, 6)).astype(np.float32)
    whole = clf.predict_proba(pool, mc=20, seed=7)
    assert whole.shape == (50, 20, 2) and np.allclose(whole.sum(-1), 1.0)
    assert np.allclose(clf.predict_proba(pool[10:11], mc=20, seed=7), whole[10:11], rtol=0, atol=1e-12)
    assert not np.array_equal(clf.predict_proba(pool, mc=20, seed=8), whole)
    # the deterministic prediction is the trained head's, untouched by the posterior
    assert np.allclose(clf.predict_proba(pool, mc=1)[:, 0], _head_only(clf, pool))


def _head_only(clf, pool):
    from ml_backend.models.head import head_proba

    return head_proba(clf.head, pool, 1, False)[:, 0]


def test_a_saved_version_keeps_its_posterior_and_a_version_without_one_keeps_mc_dropout():
    x, y = _labelled_along_first_axes()
    clf = Classifier(None, _config(), 2, False, in_dim=6)
    clf.fit(x, y, seed=0)
    loaded = Classifier(None, _config(mc_mode="head"), 2, False)  # the config changed since: the version did not
    loaded.load_state(clf.state_bytes())
    assert np.array_equal(loaded.predict_proba(x, mc=20, seed=1), clf.predict_proba(x, mc=20, seed=1))

    dropout = Classifier(None, _config(mc_mode="head"), 2, False, in_dim=6)
    dropout.fit(x, y, seed=0)
    assert dropout.posterior is None
    later = Classifier(None, _config(), 2, False)
    later.load_state(dropout.state_bytes())
    assert later.posterior is None
    assert np.array_equal(later.predict_proba(x, mc=20, seed=1), dropout.predict_proba(x, mc=20, seed=1))


def test_multilabel_heads_get_a_posterior_of_independent_labels():
    x, _ = _labelled_along_first_axes()
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0], axis=1).astype(np.float32)
    clf = Classifier(None, _config(), 2, True, in_dim=6)
    clf.fit(x, y, seed=0)
    probs = clf.predict_proba(x[:5], mc=10, seed=0)
    assert probs.shape == (5, 10, 2) and np.all((probs > 0) & (probs < 1))
    assert np.count_nonzero(np.abs(clf.posterior.class_vectors) > 1e-12) == 2  # diagonal curvature: labels apart


def test_the_prior_precision_maximises_the_evidence_and_non_finite_input_is_refused():
    x, y = _labelled_along_first_axes()
    clf = Classifier(None, _config(), 2, False, in_dim=6)
    clf.fit(x, y, seed=0)
    weights = clf.posterior.weights
    probs = clf.predict_proba(x, mc=1)[:, 0]
    post = LastLayerLaplace.fit(weights, x, probs, np.ones(len(y)), y, multilabel=False)
    eig = np.outer(post.class_values, post.input_values).ravel()
    log_lik = np.sum(np.log(probs[np.arange(len(y)), y]))

    def evidence(d):
        return log_lik - d * np.sum(weights**2) / 2 + eig.size * np.log(d) / 2 - np.sum(np.log(eig + d)) / 2

    assert all(evidence(post.prior_precision) >= evidence(d) for d in PRIOR_PRECISIONS)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        LastLayerLaplace.fit(weights, bad, probs, np.ones(len(y)), y, multilabel=False)


def test_config_allows_bald_without_dropout_under_laplace_and_refuses_a_committee():
    assert _config(dropout=0.0).acquisition.mc_mode == "laplace"
    with pytest.raises(ValidationError, match="mc_mode: laplace"):
        _config(mc_mode="head", dropout=0.0)
    with pytest.raises(ValidationError, match="head.members: 1"):
        _config(members=3)


def test_pre_annotations_are_the_trained_heads_decisions_not_the_mean_of_the_samples():
    """Under a wide posterior the mean of 20 weight samples is a noisy decision; what annotators see (and the
    dashboard compares with their labels) is the deterministic decision the promotion test measured."""
    from ml_backend.labelstudio.labelconfig import parse_label_config
    from ml_backend.learning.ranking import mc_probabilities
    from ml_backend.learning.training import own_labels

    schema = parse_label_config(
        '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="neg"/>'
        '<Choice value="pos"/></Choices></View>'
    )
    x, y = _labelled_along_first_axes(n=12)
    clf = Classifier(None, _config(strategy="margin"), 2, False, in_dim=6)
    clf.fit(x, y, seed=0)
    pool = np.random.default_rng(5).normal(0, 2, (200, 6)).astype(np.float32)  # most spread where no label is
    deterministic = clf.predict(pool)
    sampled_mean = mc_probabilities(clf, pool, seed=0).mean(axis=1).argmax(axis=1)
    assert (sampled_mean != deterministic).any()  # the case this guards against does occur here
    assert schema.task.decisions(schema, clf.decision_proba(pool)) == [[schema.labels[c]] for c in deterministic]
    own = own_labels(clf, schema, pool, [None] * len(pool), [["pos"]] * len(pool), list(range(len(pool))))
    assert own.predicted == [schema.labels[c] for c in deterministic]
    assert np.allclose(own.confidence, clf.predict_proba(pool, mc=1)[:, 0].max(axis=1))

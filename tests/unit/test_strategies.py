"""Acquisition functions on hand-made probability arrays with known answers."""

import math

import numpy as np
import pytest

from ml_backend.core.strategies import (
    STRATEGIES,
    bald,
    entropy,
    least_confidence,
    margin,
    normalized_uncertainty,
    stable_fraction,
    to_ls_score,
    variation_ratio,
)


def probs(*tasks):
    """tasks: each a list of MC samples, each a list of class probabilities."""
    return np.array(tasks, dtype=float)


def test_bald_is_zero_when_all_mc_samples_agree_even_if_unsure():
    p = probs([[0.5, 0.5]] * 4, [[0.9, 0.1]] * 4)
    assert bald(p) == pytest.approx([0.0, 0.0], abs=1e-12)


def test_bald_is_ln2_for_two_confident_samples_that_contradict():
    p = probs([[1.0, 0.0], [0.0, 1.0]])
    assert bald(p)[0] == pytest.approx(math.log(2), abs=1e-9)
    assert entropy(p)[0] == pytest.approx(math.log(2), abs=1e-9)


def test_bald_separates_epistemic_from_aleatoric_uncertainty():
    aleatoric = [[0.5, 0.5], [0.5, 0.5]]  # the model agrees with itself that the label is a coin flip
    epistemic = [[0.95, 0.05], [0.05, 0.95]]  # the samples disagree
    values = bald(probs(aleatoric, epistemic))
    h = -(0.95 * math.log(0.95) + 0.05 * math.log(0.05))
    assert values[1] == pytest.approx(math.log(2) - h) and values[0] == pytest.approx(0.0, abs=1e-12)
    assert entropy(probs(aleatoric, epistemic)) == pytest.approx([math.log(2), math.log(2)])


def test_least_confidence_margin_entropy_known_values():
    p = probs([[0.7, 0.2, 0.1]], [[1 / 3, 1 / 3, 1 / 3]])
    assert least_confidence(p) == pytest.approx([0.3, 2 / 3])
    assert margin(p) == pytest.approx([1 - 0.5, 1.0])
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy(p) == pytest.approx([h, math.log(3)])


def test_variation_ratio_counts_votes_against_the_mode():
    p = probs([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert variation_ratio(p) == pytest.approx([0.25])


def test_mc_average_is_used_for_predictive_scores():
    p = probs([[1.0, 0.0], [0.0, 1.0]])
    assert least_confidence(p) == pytest.approx([0.5])
    assert margin(p) == pytest.approx([1.0])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_normalized_uncertainty_is_within_bounds_and_orders_sure_before_unsure(name):
    rng = np.random.default_rng(0)
    random = rng.dirichlet(np.ones(4), size=(50, 20))
    sure = np.tile([0.997, 0.001, 0.001, 0.001], (1, 20, 1))
    split = np.concatenate([np.tile([0.97, 0.01, 0.01, 0.01], (10, 1)), np.tile([0.01, 0.97, 0.01, 0.01], (10, 1))])[
        None
    ]
    u = normalized_uncertainty(np.concatenate([random, sure, split]), name)
    assert u.shape == (52,) and np.all((u >= 0) & (u <= 1)) and np.all(np.isfinite(u))
    assert u[-1] > u[-2]  # disagreeing samples are more informative than a confident, consistent model


def test_multilabel_uses_per_label_bernoulli_uncertainty():
    # label presence probabilities (n, T, L): task 0 sure about both labels, task 1 unsure about one
    p = probs([[0.99, 0.01], [0.99, 0.01]], [[0.99, 0.5], [0.99, 0.5]])
    u = normalized_uncertainty(p, "entropy", multilabel=True)
    assert u[0] < 0.1
    assert u[1] == pytest.approx((normalized_uncertainty(probs([[0.99, 0.01]] * 2), "entropy")[0] + 1.0) / 2, abs=1e-9)


def test_ls_score_is_a_certainty_lowest_for_the_most_informative():
    scores = to_ls_score(np.array([0.0, 1.0, 0.5]), keys=[1, 2, 3])
    assert scores[1] < scores[2] < scores[0]
    assert np.all((scores >= 0) & (scores <= 1))


def test_ties_are_broken_by_a_stable_tiny_term():
    keys = list(range(100))
    a = to_ls_score(np.full(100, 0.3), keys)
    b = to_ls_score(np.full(100, 0.3), keys)
    assert len(set(a.tolist())) == 100  # no two tasks tie
    assert np.array_equal(a, b)  # and the order is the same every time
    assert np.all(np.abs(a - 0.7) < 2e-6)
    assert stable_fraction("task-1") == stable_fraction("task-1") != stable_fraction("task-2")


def test_nan_and_shape_errors_are_handled():
    assert np.isfinite(to_ls_score(np.array([np.nan]), [1])).all()
    with pytest.raises(ValueError):
        bald(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        to_ls_score(np.zeros(2), [1])

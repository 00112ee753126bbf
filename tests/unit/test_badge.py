"""BADGE picks: gradient embeddings without outer products, k-means++ draws that skip copies and sure tasks."""

import numpy as np
import pytest

from ml_backend.core.badge import GradientEmbedding, KMeansPlusPlus, gradient_embedding
from ml_backend.core.selection import EXPLORE, LEARN, SelectionParams, rank_pool


def _explicit(probs: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The gradient embeddings written out: (p - onehot(argmax p)) outer h, flattened."""
    mean = probs.mean(axis=1)
    residual = mean - np.eye(mean.shape[1])[mean.argmax(axis=1)]
    return np.einsum("nc,nh->nch", residual, features).reshape(len(mean), -1)


def test_distances_equal_those_of_the_explicit_outer_products():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(30, 5))
    feats = rng.normal(size=(30, 7))
    grads = gradient_embedding(probs, feats)
    g = _explicit(probs, feats)
    assert np.allclose(grads.sq_norms, (g**2).sum(axis=1))
    assert np.allclose(grads.sq_distances_to(3), ((g - g[3]) ** 2).sum(axis=1))


def test_a_sure_task_has_no_gradient_and_broken_probabilities_count_as_uncertain():
    probs = np.array([[[0.999, 0.001, 0.0]], [[0.4, 0.35, 0.25]], [[np.nan, 0.5, 0.5]]])
    norms = gradient_embedding(probs, np.ones((3, 2))).sq_norms
    assert norms[0] < 1e-5 < norms[1]
    assert np.isfinite(norms).all() and norms[2] >= norms[1]
    multi = gradient_embedding(np.array([[[0.9, 0.5]]]), np.ones((1, 2)), multilabel=True)
    assert np.allclose(multi.residual, [[-0.1, -0.5]])
    with pytest.raises(ValueError):
        gradient_embedding(np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError):
        GradientEmbedding(np.ones((3, 2)), np.ones((4, 2)))


def _picks(grads: GradientEmbedding, seed: int, k: int) -> list[int]:
    sampler, available, out = KMeansPlusPlus(grads, seed), np.ones(len(grads.residual), dtype=bool), []
    for _ in range(k):
        out.append(sampler.pick(available))
        available[out[-1]] = False
    return out


def test_kmeans_plus_plus_starts_at_the_longest_gradient_and_never_draws_a_copy():
    rng = np.random.default_rng(1)
    distinct = gradient_embedding(rng.dirichlet(np.ones(3), size=(12, 1)), rng.normal(size=(12, 5)))
    grads = distinct.take(np.repeat(np.arange(12), 4))  # every task four times
    for seed in range(5):
        picks = _picks(grads, seed, 12)
        assert grads.sq_norms[picks[0]] == grads.sq_norms.max()
        assert len({p // 4 for p in picks}) == 12, "a copy of a pick has distance 0: it is never drawn"
    assert _picks(grads, 3, 12) == _picks(grads, 3, 12), "seeded: the same version draws the same batch"
    with pytest.raises(ValueError):
        KMeansPlusPlus(grads, 0).pick(np.zeros(48, dtype=bool))


def test_the_badge_front_skips_copies_keeps_exploring_and_scores_follow_the_order():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(40, 8)).astype(np.float32)
    x = np.repeat(base, 3, axis=0)  # a pool of exact triplicates
    probs = np.repeat(rng.dirichlet(np.ones(3), size=(40, 4)), 3, axis=0)
    grads = gradient_embedding(probs, x)
    uncertainty = 1.0 - probs.mean(axis=1).max(axis=1)
    params = SelectionParams(front_size=20, explore_every=3)
    ranking = rank_pool(x, list(range(len(x))), params, uncertainty=uncertainty, labelled=x[:0], gradients=grads)
    front = ranking.order[:20]
    assert len({int(i) // 3 for i in front[:10]}) == 10
    reasons = [ranking.reasons[i] for i in front]
    assert reasons[2] == EXPLORE and reasons[0] == LEARN
    s = ranking.scores
    assert np.all(np.diff(s[ranking.order]) > 0) and s.min() >= 0 and s.max() <= 1
    assert (
        rank_pool(x, list(range(len(x))), params, uncertainty=uncertainty, labelled=x[:0], gradients=grads)
        .order[:20]
        .tolist()
        == front.tolist()
    ), "the same version orders the pool the same way"

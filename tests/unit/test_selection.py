"""The pool order: cold start covers the clusters, exploration finds unlabelled regions, batches are not duplicates."""

import numpy as np
import pytest

from ml_backend.core.selection import (
    COLD_START,
    EXPLORE,
    LEARN,
    REST,
    ClassGroups,
    SelectionParams,
    hybrid_value,
    novelty,
    power_perturbed,
    rank_pool,
    rest_score,
)


def _clusters(sizes, dim=16, spread=0.15, seed=0):
    """Gaussian blobs around orthogonal-ish random centres; returns points and their cluster index."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 3
    x = np.concatenate([c + rng.normal(0, spread * 3, size=(n, dim)) for c, n in zip(centres, sizes)])
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def _check_scores_follow_order(ranking):
    s = ranking.scores
    assert np.all(np.isfinite(s)) and s.min() >= 0.0 and s.max() <= 1.0
    assert np.all(np.diff(s[ranking.order]) > 0), "LS sorts by score: it must serve exactly our order"
    assert sorted(ranking.order.tolist()) == list(range(len(s)))


def test_cold_start_covers_a_sparse_cluster_next_to_a_ten_times_denser_one():
    x, cluster = _clusters([300, 30])
    ranking = rank_pool(x, list(range(len(x))), SelectionParams(front_size=50))
    first = cluster[ranking.order[:10]]
    assert set(first.tolist()) == {0, 1}, first
    assert cluster[ranking.order[0]] == 0  # the densest region comes first
    assert ranking.reasons[ranking.order[0]] == COLD_START
    _check_scores_follow_order(ranking)


def test_with_one_class_labelled_the_next_tasks_come_from_the_unlabelled_cluster():
    x, cluster = _clusters([200, 200, 200], seed=1)
    labelled = x[cluster == 0][:8]
    ranking = rank_pool(x, list(range(len(x))), SelectionParams(front_size=20), labelled=labelled)
    first = cluster[ranking.order[:2]]
    assert set(first.tolist()) == {1, 2}, first  # each unlabelled region before anything near the labels
    assert ranking.reasons[ranking.order[0]] == EXPLORE
    x, cluster = _clusters([300, 300], seed=1)
    ranking = rank_pool(x, list(range(len(x))), SelectionParams(front_size=20), labelled=x[cluster == 0][:8])
    assert cluster[ranking.order[0]] == 1


def test_a_pool_of_exact_duplicates_gives_no_two_copies_in_the_first_ten():
    rng = np.random.default_rng(2)
    distinct = rng.normal(size=(40, 12)).astype(np.float32)
    x = np.repeat(distinct, 5, axis=0)  # every item 5 times
    item = np.repeat(np.arange(40), 5)
    uncertainty = np.repeat(rng.uniform(size=40), 5)  # copies are equally uncertain, as they would be
    ranking = rank_pool(x, list(range(len(x))), SelectionParams(front_size=30), uncertainty=uncertainty)
    first = item[ranking.order[:10]]
    assert len(set(first.tolist())) == 10, first
    # plain top-k of the uncertainty would take the 5 copies of the most uncertain item first
    assert len(set(item[np.argsort(-uncertainty, kind="stable")[:10]].tolist())) == 2
    assert ranking.reasons[ranking.order[0]] == LEARN and ranking.reasons[ranking.order[-1]] == REST
    _check_scores_follow_order(ranking)


def test_the_front_prefers_uncertain_tasks_explores_every_third_pick_and_the_rest_follows_uncertainty():
    x, _ = _clusters([100, 100, 100], seed=3)
    u = np.random.default_rng(3).uniform(size=len(x))
    ranking = rank_pool(x, list(range(len(x))), SelectionParams(front_size=21), uncertainty=u)
    front, rest = ranking.order[:21], ranking.order[21:]
    reasons = [ranking.reasons[i] for i in front]
    assert reasons == [LEARN, LEARN, EXPLORE] * 7
    learn = front[[r == LEARN for r in reasons]]
    assert u[learn].mean() > np.quantile(u, 0.75)
    assert np.all(np.diff(u[rest]) <= 1e-5)
    _check_scores_follow_order(ranking)
    no_exploration = rank_pool(x, list(range(len(x))), SelectionParams(front_size=21, explore_every=0), uncertainty=u)
    assert {no_exploration.reasons[i] for i in no_exploration.order[:21]} == {LEARN}


def test_exploration_alternates_with_learning_while_a_class_is_unseen():
    x, cluster = _clusters([150, 150, 150], seed=4)
    labelled = np.concatenate([x[cluster == 0][:5], x[cluster == 1][:5]])
    u = np.where(cluster == 2, 0.05, 0.9)  # the model is sure about the cluster it has never seen
    ranking = rank_pool(
        x, list(range(len(x))), SelectionParams(front_size=10), uncertainty=u, labelled=labelled, explore=True
    )
    reasons = [ranking.reasons[i] for i in ranking.order[:4]]
    assert reasons == [LEARN, EXPLORE, LEARN, EXPLORE]
    assert 2 in cluster[ranking.order[:4]].tolist()  # the unseen region surfaces at once


def test_power_acquisition_draws_tasks_in_proportion_to_value_and_is_reproducible_per_seed():
    value = np.array([0.1, 0.2, 0.3, 0.4])
    firsts = np.bincount([int(np.argmax(power_perturbed(value, 1.0, seed))) for seed in range(4000)], minlength=4)
    # Gumbel-top-1 of log(value) draws i with probability value_i / sum(value): 0.1, 0.2, 0.3, 0.4 (4000 draws: SE
    # under 0.008)
    assert np.allclose(firsts / 4000, value / value.sum(), atol=0.03), firsts
    squared = np.bincount([int(np.argmax(power_perturbed(value, 2.0, s))) for s in range(4000)], minlength=4)
    assert np.allclose(squared / 4000, value**2 / (value**2).sum(), atol=0.03), squared
    assert np.array_equal(power_perturbed(value, 1.0, 7), power_perturbed(value, 1.0, 7))
    assert np.all(np.isfinite(power_perturbed(np.array([0.0, 1.0, 0.5]), 1.0, 0)))

    x, _ = _clusters([100, 100, 100], seed=3)
    u = np.random.default_rng(3).uniform(size=len(x))
    keys = list(range(len(x)))
    drawn = rank_pool(x, keys, SelectionParams(front_size=21, power=1.0, seed=5), uncertainty=u)
    greedy = rank_pool(x, keys, SelectionParams(front_size=21, seed=5), uncertainty=u)
    assert np.array_equal(
        drawn.order, rank_pool(x, keys, SelectionParams(front_size=21, power=1.0, seed=5), uncertainty=u).order
    )
    learn = [i for i in drawn.order[:21] if drawn.reasons[i] == LEARN]
    assert set(learn) != {i for i in greedy.order[:21] if greedy.reasons[i] == LEARN}
    assert np.median(u[learn]) > np.median(u)  # still leaning to uncertain tasks
    _check_scores_follow_order(drawn)


def test_balanced_learn_picks_go_to_the_least_labelled_predicted_class_first():
    """Uncertainty is highest in predicted class 0, which already has labels: unbalanced, the front starts there;
    balanced, it goes to classes 1 and 2 until their counts (labels + earlier picks) catch up, then takes turns."""
    x, cluster = _clusters([60, 60, 60])
    value = np.where(cluster == 0, 0.9, 0.2) + np.linspace(0, 0.05, len(x))
    groups = ClassGroups(cluster, np.array([4, 0, 1]))
    plain = rank_pool(x, list(range(len(x))), SelectionParams(front_size=12, explore_every=0), uncertainty=value)
    assert cluster[plain.order[:2]].tolist() == [0, 0]  # the most uncertain (later picks are discounted by cover)
    params = SelectionParams(front_size=12, explore_every=0, balance=True)
    balanced = rank_pool(x, list(range(len(x))), params, uncertainty=value, groups=groups)
    # counts 4, 0, 1: class 1 first, then 1 and 2 in turn (ties: the lower class), class 0 once they reach 4
    assert cluster[balanced.order[:12]].tolist() == [1, 1, 2, 1, 2, 1, 2, 0, 1, 2, 0, 1]
    _check_scores_follow_order(balanced)
    # without balance in the params, the groups change nothing; a wrong length is refused
    same = rank_pool(
        x, list(range(len(x))), SelectionParams(front_size=12, explore_every=0), uncertainty=value, groups=groups
    )
    assert same.order.tolist() == plain.order.tolist()
    with pytest.raises(ValueError, match="one predicted class per task"):
        rank_pool(x, list(range(len(x))), params, uncertainty=value, groups=ClassGroups(cluster[:5], np.zeros(3)))


def test_rest_scores_are_certainties_above_the_floor_and_pure_per_task():
    s = rest_score(np.array([0.0, 0.5, 1.0, np.nan]), 0.1, [1, 2, 3, 4])
    assert s[0] == pytest.approx(1.0, abs=1e-5) and s[2] == pytest.approx(0.1, abs=1e-5) and s[3] == s[3]
    assert np.all(s >= 0.1) and np.all(s <= 1.0)
    assert rest_score(np.array([0.5]), 0.1, [2])[0] == s[1]


def test_hybrid_weights_and_novelty():
    u, nov, dens = np.array([0.1, 0.9, 0.5]), np.array([0.9, 0.1, 0.5]), np.array([0.2, 0.2, 0.9])
    assert np.array_equal(hybrid_value(u, nov, dens, {"uncertainty": 1.0}), u)
    mixed = hybrid_value(u, nov, dens, {"uncertainty": 1.0, "novelty": 1.0})
    assert mixed[0] == pytest.approx(mixed[1])
    with pytest.raises(ValueError):
        hybrid_value(u, nov, dens, {"curiosity": 1.0})
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert novelty(x, None).tolist() == [1.0, 1.0]
    assert novelty(x, x[:1]) == pytest.approx([0.0, 1.0])


def test_empty_pool_and_bad_input():
    assert len(rank_pool(np.zeros((0, 4)), [], SelectionParams()).order) == 0
    with pytest.raises(ValueError):
        rank_pool(np.zeros((3, 4)), [1, 2], SelectionParams())


def _plain_greedy(embeddings, value, labelled, size, explore_every, neighbours=10):
    """The greedy front evaluated in full at every step (what the lazy greedy must reproduce), for pools small
    enough that every task is both a candidate and a reference."""
    from ml_backend.core.density import unit_rows
    from ml_backend.core.selection import _bandwidth

    emb = unit_rows(embeddings)
    dist = 1.0 - emb @ emb.T
    sim = np.exp(-np.clip(dist, 0.0, None) / _bandwidth(dist, neighbours))
    cover_all = np.zeros(len(emb))
    if labelled is not None:
        cover_all = np.exp(-np.clip(1.0 - unit_rows(labelled) @ emb.T, 0.0, None) / _bandwidth(dist, neighbours))
        cover_all = cover_all.max(axis=0)
    cover_batch, alone = np.zeros(len(emb)), sim.sum(axis=1)
    val = np.ones(len(emb)) if value is None else np.clip(value, 0.0, None) + 1e-9
    available, picked = np.ones(len(emb), dtype=bool), []
    for step in range(size):
        if value is None or (explore_every and step % explore_every == explore_every - 1):
            gain = np.maximum(sim - cover_all, 0.0).sum(axis=1)
            ranked = np.lexsort((np.arange(len(emb)), -val, -gain))  # largest gain, then value, then first
            best = int(next(i for i in ranked if available[i]))
        else:
            objective = val * np.maximum(sim - cover_batch, 0.0).sum(axis=1) / alone
            best = int(np.argmax(np.where(available, objective, -np.inf)))
        available[best] = False
        cover_all, cover_batch = np.maximum(cover_all, sim[best]), np.maximum(cover_batch, sim[best])
        picked.append(best)
    return picked


@pytest.mark.parametrize("with_model", [False, True])
def test_the_lazy_greedy_front_picks_what_the_full_greedy_picks(with_model):
    from ml_backend.core.density import unit_rows
    from ml_backend.core.selection import _bandwidth, greedy_front

    x, _ = _clusters([200, 60, 25, 15], seed=3)
    x = np.concatenate([x, x[:40]])  # exact duplicates: task 300 + i is task i again
    rng = np.random.default_rng(5)
    value = np.concatenate([u := rng.uniform(size=300), u[:40]]) if with_model else None
    labelled = x[200:203] if with_model else None
    picked, _ = greedy_front(x, value, labelled, 60, explore_every=3)
    expected = _plain_greedy(x, value, labelled, 60, explore_every=3)
    # Ties (the copies of a duplicate, and late picks whose gains are all about 0) are decided by float noise that
    # depends on BLAS's summation order (it differed between two CPUs here). So: the same contents in the same
    # order while the gains are well apart, never two copies of one content, and the same coverage in the end.
    content = [int(i) % 300 for i in picked]
    assert content[:30] == [i % 300 for i in expected[:30]]
    assert len(set(content)) == len(content)
    emb = unit_rows(x)
    dist = 1.0 - emb @ emb.T
    sim = np.exp(-np.clip(dist, 0.0, None) / _bandwidth(dist, 10))
    assert sim[picked].max(axis=0).sum() == pytest.approx(sim[expected].max(axis=0).sum(), rel=1e-4)


@pytest.mark.parametrize("n_classes, min_classes, balanced", [(3, 3, True), (2, 3, False), (2, 2, True)])
def test_a_version_balances_its_front_only_with_enough_classes(n_classes, min_classes, balanced):
    """acquisition.balance reaches the front through the version's own decisions and its labels per class, for
    projects with at least balance_min_classes classes."""
    from ml_backend.learning.ranking import rank_version
    from ml_backend.models.classifier import Classifier
    from ml_backend.models.config import ModelConfig
    from ml_backend.tasktypes import SINGLE_CHOICE

    x, cluster = _clusters([40] * n_classes)
    config = ModelConfig.model_validate(
        {
            "name": "t",
            "kind": "text",
            "encoder": {"pretrained": "none"},
            "training": {"epochs": 30},
            "acquisition": {
                "strategy": "margin",
                "front_size": 12,
                "explore_every": 0,
                "balance": True,
                "balance_min_classes": min_classes,
            },
        }
    )
    clf = Classifier(None, config, n_classes, False, in_dim=x.shape[1])
    labelled = np.concatenate([np.flatnonzero(cluster == c)[:3] for c in range(n_classes)])
    clf.fit(x[labelled], cluster[labelled], seed=0)
    counts = np.zeros(n_classes, dtype=int)
    counts[0] = 50  # class 0 has many labels: a balanced front serves it last
    view = rank_version(
        SINGLE_CHOICE,
        clf,
        x,
        list(range(len(x))),
        0,
        labelled=x[labelled],
        reference=None,
        explore=False,
        labelled_counts=counts,
    )
    served = clf.predict(x[view.ranking.order[:12]])
    assert (0 not in served.tolist()) == balanced, served

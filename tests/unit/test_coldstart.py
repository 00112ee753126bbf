import numpy as np
import pytest

from ml_backend.core.density import representativeness


def test_dense_region_is_more_representative_than_an_outlier():
    rng = np.random.default_rng(0)
    cluster = rng.normal([5, 0, 0], 0.1, size=(30, 3))
    outlier = np.array([[0.0, 0.0, 5.0]])
    pool = np.concatenate([cluster, outlier])
    rep = representativeness(pool, pool, k=5)
    assert rep[:30].min() > rep[30]
    assert np.all((rep >= 0) & (rep <= 1))


def test_a_task_is_not_representative_of_itself():
    pool = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert representativeness(pool, pool, k=1) == pytest.approx([0.5, 0.5])


def test_scores_do_not_depend_on_the_batch_they_are_computed_in():
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(200, 8))
    whole = representativeness(pool, pool, k=10)
    parts = np.concatenate([representativeness(pool[i : i + 7], pool, k=10) for i in range(0, 200, 7)])
    assert np.allclose(whole, parts)


def test_no_reference_means_no_information():
    assert representativeness(np.ones((3, 2)), np.zeros((0, 2))).tolist() == [0.5, 0.5, 0.5]

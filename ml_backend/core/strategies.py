"""Acquisition functions: pure functions over MC probability arrays.

Every function takes ``probs`` of shape ``(n_samples, n_mc, n_classes)`` (``n_mc`` stochastic forward passes,
1 for a deterministic model) and returns an uncertainty of shape ``(n_samples,)``: higher = more informative.
``Strategy.max_value(n_classes)`` is the largest value the function can take, so that a value can be normalised
to [0, 1] and then turned into Label Studio's score, where **lower means label sooner**.

Multi-label Choices are handled by :func:`normalized_uncertainty` with ``multilabel=True``: each label is an
independent Bernoulli, scored as a 2-class problem, and the per-label values are averaged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12
TIE_BREAK_WEIGHT = 1e-6


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"probs must have shape (n_samples, n_mc, n_classes), got {probs.shape}")
    return probs


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis."""
    return -np.sum(p * np.log(np.clip(p, _EPS, 1.0)), axis=-1)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 - max_c p(c), on the MC-averaged predictive distribution."""
    mean = _check(probs).mean(axis=1)
    return 1.0 - mean.max(axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    """1 - (p_top1 - p_top2): a small margin between the two best classes is uncertain."""
    mean = _check(probs).mean(axis=1)
    top2 = np.sort(mean, axis=-1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy H[E_t p_t] (total uncertainty)."""
    return _entropy(_check(probs).mean(axis=1))


def bald(probs: np.ndarray) -> np.ndarray:
    """BALD (Houlsby et al. 2011): mutual information H[E_t p_t] - E_t H[p_t] between label and weights.

    Zero when all MC samples agree (however unsure each one is); ln C when confident samples contradict each other.
    """
    probs = _check(probs)
    value = _entropy(probs.mean(axis=1)) - _entropy(probs).mean(axis=1)
    return np.clip(value, 0.0, None)


def variation_ratio(probs: np.ndarray) -> np.ndarray:
    """1 - (votes for the modal class) / n_mc: how often the MC samples disagree with their majority."""
    probs = _check(probs)
    n_classes = probs.shape[-1]
    votes = probs.argmax(axis=-1)  # (n, T)
    counts = np.stack([(votes == c).sum(axis=1) for c in range(n_classes)], axis=-1)
    return 1.0 - counts.max(axis=-1) / probs.shape[1]


@dataclass(frozen=True)
class Strategy:
    """A named acquisition function and the bound used to normalise it."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    max_value: Callable[[int], float]
    needs_mc: bool = False

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        return self.fn(probs)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("least_confidence", least_confidence, lambda c: 1.0 - 1.0 / c),
        Strategy("margin", margin, lambda c: 1.0),
        Strategy("entropy", entropy, lambda c: float(np.log(c))),
        Strategy("bald", bald, lambda c: float(np.log(c)), needs_mc=True),
        Strategy("variation_ratio", variation_ratio, lambda c: 1.0 - 1.0 / c, needs_mc=True),
    )
}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None


def normalized_uncertainty(probs: np.ndarray, strategy: Strategy | str, multilabel: bool = False) -> np.ndarray:
    """Uncertainty in [0, 1] (1 = the most informative a task can be under this strategy).

    For multi-label, ``probs`` holds per-label probabilities of being present, shape (n, T, L); each label is
    scored as a Bernoulli (2 classes) and the labels' normalised values are averaged.
    """
    strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
    probs = _check(probs)
    n, t, c = probs.shape
    if n == 0:
        return np.zeros(0)
    if multilabel:
        p = np.clip(probs, 0.0, 1.0).transpose(0, 2, 1).reshape(n * c, t, 1)
        binary = np.concatenate([p, 1.0 - p], axis=-1)
        per_label = strategy(binary).reshape(n, c) / strategy.max_value(2)
        return np.clip(per_label.mean(axis=1), 0.0, 1.0)
    if c < 2:
        raise ValueError("single-label scoring needs at least 2 classes")
    return np.clip(strategy(probs) / strategy.max_value(c), 0.0, 1.0)


def stable_fraction(key: str | int) -> float:
    """A deterministic number in [0, 1) derived from ``key`` (same key, same number, in every process)."""
    digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def to_ls_score(uncertainty: np.ndarray, keys: Iterable[str | int]) -> np.ndarray:
    """Map normalised uncertainty to Label Studio's ``score``: a certainty in [0, 1], lowest = label first.

    Ties (e.g. many tasks the model is equally sure of) are broken by a tiny term derived from each task's key,
    so the order is stable across processes and re-scorings instead of depending on database order.
    """
    u = np.clip(np.nan_to_num(np.asarray(uncertainty, dtype=np.float64), nan=1.0), 0.0, 1.0)
    tie = np.array([stable_fraction(k) for k in keys], dtype=np.float64)
    if tie.shape != u.shape:
        raise ValueError("one key per task is needed to break ties")
    return (1.0 - TIE_BREAK_WEIGHT) * (1.0 - u) + TIE_BREAK_WEIGHT * tie

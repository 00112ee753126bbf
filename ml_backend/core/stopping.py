"""When is labelling more no longer worth it: stopping criteria as pure functions over a version history.

Each criterion reads what every version leaves behind (its predictions on the unlabelled pool, the pool's
uncertainty, its held-out accuracy, its label count) and answers with a :class:`Criterion`: whether it fired,
the figure it looked at and a sentence for the admin. Pure numpy, so the worker, the web app and the simulator
decide with the same code.

- **Stabilising predictions** (Bloodgood & Vijay-Shanker 2009, small-text's ``KappaAverage``): Cohen's kappa
  between the predictions of consecutive versions on the tasks both saw unlabelled; fires when the mean of the
  last ``window`` kappas reaches ``threshold`` (0.99 in the paper). Needs no labels at all, which is why it is
  the decisive rule: held-out sets are small while annotating. (small-text fires when the kappas *stop changing*
  instead; a run of identical low kappas would stop it, not us.)
- **Pool uncertainty** (Zhu et al. 2008, "overall uncertainty"): the mean normalised uncertainty of the pool.
- **Accuracy plateau**: the best held-out accuracy of the last ``window`` versions is not above the best before.
- **Label budget**: the labels spent reached the budget.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

KAPPA, UNCERTAINTY, PLATEAU, BUDGET = "stable predictions", "pool uncertainty", "accuracy plateau", "label budget"
CRITERIA = (KAPPA, UNCERTAINTY, PLATEAU, BUDGET)


@dataclass(frozen=True)
class Criterion:
    """One criterion's verdict: ``value`` is what it measured (None: not measurable yet), ``detail`` says why."""

    name: str
    fired: bool
    value: float | None
    threshold: float | None
    detail: str


def cohens_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two label sequences. Perfect agreement is 1.0 even when chance agreement is 1 too (one
    class everywhere), where the formula would divide by zero; NaN for empty input."""
    if len(a) != len(b):
        raise ValueError("kappa needs two predictions per task")
    if len(a) == 0:
        return float("nan")
    _, codes = np.unique(np.asarray([str(x) for x in a] + [str(x) for x in b]), return_inverse=True)
    x, y = codes[: len(a)], codes[len(a) :]
    observed = float(np.mean(x == y))
    k = int(codes.max()) + 1
    expected = float(np.dot(np.bincount(x, minlength=k), np.bincount(y, minlength=k))) / len(a) ** 2
    if observed == 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def consecutive_kappas(predictions: Sequence[Mapping[int, Hashable] | None]) -> list[float | None]:
    """Kappa of each version's pool predictions (task id -> label) with the previous version's, on the tasks both
    predicted; None where either has no predictions (untrained) or they share no task. One entry per version
    after the first."""
    out: list[float | None] = []
    for old, new in zip(predictions, predictions[1:]):
        shared = sorted(set(old or {}) & set(new or {}))
        out.append(cohens_kappa([old[t] for t in shared], [new[t] for t in shared]) if old and new and shared else None)
    return out


def kappa_average(kappas: Sequence[float | None], threshold: float = 0.99, window: int = 3) -> Criterion:
    """Fires when the last ``window`` kappas all exist and their mean reaches ``threshold``."""
    last = list(kappas[-window:])
    if len(last) < window or any(k is None or not np.isfinite(k) for k in last):
        have = sum(1 for k in last if k is not None and np.isfinite(k))
        return Criterion(KAPPA, False, None, threshold, f"needs {window} consecutive trained versions ({have} so far)")
    mean = float(np.mean(last))
    fired = mean >= threshold
    verb = "stable" if fired else "still changing"
    return Criterion(
        KAPPA, fired, mean, threshold, f"predictions {verb}: mean kappa {mean:.3f} over the last {window} versions"
    )


def pool_uncertainty(uncertainty: np.ndarray | None, threshold: float = 0.1) -> Criterion:
    """Fires when the mean normalised uncertainty of the unlabelled pool is at most ``threshold``."""
    u = None if uncertainty is None else np.asarray(uncertainty, dtype=float)
    if u is None or not np.isfinite(u).any():
        return Criterion(UNCERTAINTY, False, None, threshold, "no trained version has scored the pool yet")
    mean = float(np.nanmean(u))
    return Criterion(
        UNCERTAINTY, mean <= threshold, mean, threshold, f"mean uncertainty of the pool {mean:.3f} (0 = certain)"
    )


def accuracy_plateau(accuracies: Sequence[float | None], window: int = 3, tolerance: float = 0.01) -> Criterion:
    """Fires when the best held-out accuracy of the last ``window`` versions beats the best of all earlier
    versions by less than ``tolerance`` (versions without a held-out accuracy are skipped)."""
    acc = [float(a) for a in accuracies if a is not None and np.isfinite(a)]
    if len(acc) <= window:
        return Criterion(PLATEAU, False, None, tolerance, f"needs more than {window} evaluated versions ({len(acc)})")
    gain = max(acc[-window:]) - max(acc[:-window])
    return Criterion(
        PLATEAU,
        gain < tolerance,
        gain,
        tolerance,
        f"held-out accuracy gained {gain:+.3f} over the last {window} versions",
    )


def label_budget(spent: int, budget: int | None) -> Criterion:
    """Fires when ``spent`` labels reach the ``budget`` (None: no budget, never fires)."""
    if budget is None:
        return Criterion(BUDGET, False, None, None, f"{spent} labels, no budget set")
    rest = f"{budget - spent} left" if spent <= budget else f"{spent - budget} over"
    return Criterion(BUDGET, spent >= budget, float(spent), float(budget), f"{spent} of {budget} labels spent, {rest}")


def should_stop(criteria: Sequence[Criterion], decisive: Sequence[str] = (KAPPA, BUDGET)) -> tuple[bool, list[str]]:
    """(stop?, why): the decisive criteria that fired. The others are indicators shown beside them."""
    reasons = [f"{c.name}: {c.detail}" for c in criteria if c.fired and c.name in decisive]
    return bool(reasons), reasons

"""Cold-start scores: before any label exists the classifier head is untrained, so its probabilities are noise.

We order tasks by how *representative* they are in embedding space instead (dense regions first): the first
labels then cover the common cases, which is what a classifier needs before uncertainty becomes meaningful.
Representativeness is the mean cosine similarity to the k nearest neighbours in a reference set (the pool).
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def representativeness(embeddings: np.ndarray, reference: np.ndarray, k: int = 10) -> np.ndarray:
    """Mean cosine similarity of each row of ``embeddings`` to its k nearest rows of ``reference``, in [0, 1].

    A nearest match of similarity ~1 is taken to be the task itself (when it is part of the reference) and is skipped,
    so a task is not representative of itself. With an empty reference every task gets 0.5 (no information).
    """
    emb = _unit(embeddings)
    if len(emb) == 0:
        return np.zeros(0)
    ref = _unit(reference) if len(reference) else np.zeros((0, emb.shape[1]))
    if len(ref) == 0:
        return np.full(len(emb), 0.5)
    sims = emb @ ref.T  # (n, m)
    m = ref.shape[0]
    kk = min(k + 1, m)
    top = -np.sort(-sims, axis=1)[:, :kk]
    # the task itself (when the reference holds it) is its own nearest neighbour: skip that one match
    if kk == 1:
        mean = top[:, 0]
    else:
        is_self = top[:, 0] > 1.0 - 1e-6
        mean = np.where(is_self, top[:, 1:].mean(axis=1), top[:, : min(k, kk)].mean(axis=1))
    return np.clip((mean + 1.0) / 2.0, 0.0, 1.0)


def cold_start_uncertainty(embeddings: np.ndarray, reference: np.ndarray, k: int = 10) -> np.ndarray:
    """A [0, 1] "label me first" value for cold start: the most representative task gets the highest value.

    Values are rescaled to the batch's range so that the spread is used fully; a batch of one keeps its raw value.
    """
    rep = representativeness(embeddings, reference, k)
    if len(rep) > 1 and np.ptp(rep) > 1e-12:
        return (rep - rep.min()) / np.ptp(rep)
    return rep

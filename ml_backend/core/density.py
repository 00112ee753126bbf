"""Cold-start scores: before any label exists the classifier head is untrained, so its probabilities are noise.

We order tasks by how *representative* they are in embedding space instead (dense regions first): the first
labels then cover the common cases, which is what a classifier needs before uncertainty becomes meaningful.
Representativeness is the mean cosine similarity to the k nearest neighbours in a reference set (the pool).
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1024


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity becomes a dot product); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def representativeness(embeddings: np.ndarray, reference: np.ndarray, k: int = 10) -> np.ndarray:
    """Mean cosine similarity of each row of ``embeddings`` to its k nearest rows of ``reference``, mapped to [0, 1].

    A nearest match of similarity ~1 is taken to be the task itself (when it is part of the reference) and is
    skipped, so a task is not representative of itself. With an empty reference every task gets 0.5 (no
    information). Values do not depend on which other tasks are scored in the same call, so scores computed in
    different batches or processes order consistently. Memory stays bounded: rows are processed in chunks.
    """
    emb = unit_rows(embeddings)
    if len(emb) == 0:
        return np.zeros(0)
    if reference is None or len(reference) == 0:
        return np.full(len(emb), 0.5)
    ref = unit_rows(reference)
    kk = min(k + 1, len(ref))
    out = np.empty(len(emb))
    for start in range(0, len(emb), _CHUNK):
        sims = emb[start : start + _CHUNK] @ ref.T
        top = -np.sort(-sims, axis=1)[:, :kk]
        if kk == 1:
            mean = top[:, 0]
        else:
            is_self = top[:, 0] > 1.0 - 1e-5
            mean = np.where(is_self, top[:, 1:].mean(axis=1), top[:, : min(k, kk)].mean(axis=1))
        out[start : start + _CHUNK] = mean
    return np.clip((out + 1.0) / 2.0, 0.0, 1.0)

"""The classification head: a small MLP with dropout on top of a frozen encoder's embeddings.

Dropout stays active for MC sampling, so T stochastic passes over the head alone approximate the posterior
predictive (Gal & Ghahramani 2016) at a fraction of the cost of T passes through the encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class HeadParams:
    """Architecture and training knobs of the head (from the model config's ``head`` and ``training``)."""

    hidden: int = 256
    dropout: float = 0.3
    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    min_steps: int = 600


class MCDropoutHead(nn.Module):
    """dropout -> linear -> ReLU -> dropout -> linear; logits out (softmax or sigmoid applied by the caller)."""

    def __init__(self, in_dim: int, n_outputs: int, hidden: int, dropout: float):
        super().__init__()
        self.in_dim, self.n_outputs, self.hidden, self.dropout = in_dim, n_outputs, hidden, dropout
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_head(in_dim: int, n_outputs: int, params: HeadParams, seed: int) -> MCDropoutHead:
    torch.manual_seed(seed)
    return MCDropoutHead(in_dim, n_outputs, params.hidden, params.dropout)


def fit_head(
    head: MCDropoutHead,
    x: np.ndarray,
    y: np.ndarray,
    params: HeadParams,
    multilabel: bool,
    seed: int,
) -> list[float]:
    """Train ``head`` in place on embeddings ``x`` (n, d) and targets ``y``; returns the per-epoch mean loss.

    ``y`` is class indices (n,) for single-label, or a 0/1 matrix (n, L) for multi-label (see
    :func:`loss_function`). Seeded: same data + seed, same weights.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float32 if multilabel else torch.long)
    loss_fn = loss_function(y, head.n_outputs, multilabel)
    opt = torch.optim.AdamW(head.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    head.train()
    losses = []
    n = len(xt)
    for _ in range(epochs_for(n, params)):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, params.batch_size):
            idx = order[start : start + params.batch_size]
            opt.zero_grad()
            loss = loss_fn(head(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / max(n, 1))
    head.eval()
    return losses


def epochs_for(n: int, params: HeadParams) -> int:
    """``params.epochs``, raised so that training takes at least ``params.min_steps`` optimizer steps.

    A fixed epoch count means few steps exactly when labels are few: 60 epochs of 20 labels are 60 steps, and
    the head stops far from a fit (measured on digits: 1.5 to 2.5 points of accuracy lost at 20 to 200 labels).
    The step floor makes a small training set converge too, and costs nothing once an epoch holds
    ``min_steps / epochs`` batches."""
    batches = max(math.ceil(n / params.batch_size), 1)
    return max(params.epochs, math.ceil(params.min_steps / batches))


def loss_function(y: np.ndarray, n_outputs: int, multilabel: bool) -> nn.Module:
    """Cross-entropy (or per-label BCE) with weights that balance skewed label counts, the rule early on."""
    if multilabel:
        yt = torch.as_tensor(np.asarray(y), dtype=torch.float32)
        pos = yt.sum(0)
        return nn.BCEWithLogitsLoss(pos_weight=((len(yt) - pos) / pos.clamp(min=1.0)).clamp(0.2, 5.0))
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    counts = torch.bincount(yt, minlength=n_outputs).float()
    weight = torch.where(counts > 0, len(yt) / (n_outputs * counts.clamp(min=1.0)), torch.zeros_like(counts))
    return nn.CrossEntropyLoss(weight=weight)


def mc_masks(head: MCDropoutHead, mc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T fixed dropout masks (input and hidden layer), already scaled by 1 / (1 - p), drawn from ``seed`` alone.

    Every task is scored with the same T thinned networks ("consistent MC dropout", as in BatchBALD): a task's
    probabilities then depend only on the task and the version, never on which other tasks share its batch, so
    /predict, a pool re-score and new-task scoring give the same task the same score.
    """
    keep = 1.0 - head.dropout
    gen = torch.Generator().manual_seed(int(seed))
    m_in = torch.bernoulli(torch.full((mc, head.in_dim), keep), generator=gen) / keep
    m_hidden = torch.bernoulli(torch.full((mc, head.hidden), keep), generator=gen) / keep
    return m_in, m_hidden


@torch.no_grad()
def head_proba(head: MCDropoutHead, x: np.ndarray, mc: int, multilabel: bool, seed: int = 0) -> np.ndarray:
    """Probabilities of shape (n, mc, n_outputs).

    ``x`` is (n, d): the same embedding for every pass, dropout varies (head-only MC); or (n, mc, d): one
    stochastic embedding per pass (full-network MC). ``mc=1`` on (n, d) is the deterministic prediction (eval mode).
    The T passes use the fixed masks of :func:`mc_masks` and run as batched matmuls (T=20 costs one matmul on a 20x
    larger batch, not 20 calls).
    """
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    head.eval()
    if xt.ndim == 2 and mc <= 1:
        return _activate(head(xt).unsqueeze(1), multilabel)
    # float64: the same task must get bit-for-bit the same probabilities in a batch of 1 and in a batch of 64
    xt = xt.double()
    w1, b1, w2, b2 = (
        t.detach().double() for t in (head.net[1].weight, head.net[1].bias, head.net[4].weight, head.net[4].bias)
    )
    m_in, m_hidden = (m.double() for m in mc_masks(head, mc, seed))
    if xt.ndim == 2:  # (x * m_t) W1^T = x (W1 * m_t)^T: one (n, d) x (d, T*h) matmul for all passes
        w1_t = (w1.unsqueeze(0) * m_in.unsqueeze(1)).reshape(mc * head.hidden, head.in_dim)
        hidden = (xt @ w1_t.T).reshape(len(xt), mc, head.hidden) + b1
    else:
        hidden = torch.einsum("ntd,hd->nth", xt * m_in.unsqueeze(0), w1) + b1
    logits = (torch.relu(hidden) * m_hidden.unsqueeze(0)) @ w2.T + b2
    return _activate(logits, multilabel)


def _activate(logits: torch.Tensor, multilabel: bool) -> np.ndarray:
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    return probs.double().numpy()

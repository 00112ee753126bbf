"""The classification head: a small MLP with dropout on top of a frozen encoder's embeddings.

Dropout stays active for MC sampling, so T stochastic passes over the head alone approximate the posterior
predictive (Gal & Ghahramani 2016) at a fraction of the cost of T passes through the encoder.
"""

from __future__ import annotations

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
    for _ in range(params.epochs):
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


@torch.no_grad()
def head_proba(head: MCDropoutHead, x: np.ndarray, mc: int, multilabel: bool, seed: int = 0) -> np.ndarray:
    """Probabilities of shape (n, mc, n_outputs).

    ``x`` is (n, d): the same embedding for every pass, dropout varies (head-only MC); or (n, mc, d): one
    stochastic embedding per pass (full-network MC). ``mc=1`` on (n, d) is the deterministic prediction (eval mode).
    All passes run as one batched forward: T=20 costs one matmul on a 20x larger batch, not 20 calls.
    """
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    n = xt.shape[0]
    if xt.ndim == 2:
        if mc <= 1:
            head.eval()
            logits = head(xt).unsqueeze(1)
            return _activate(logits, multilabel)
        xt = xt.unsqueeze(1).expand(n, mc, xt.shape[-1])
    with torch.random.fork_rng(devices=[]):  # seeded masks: the same task gets the same score in every process
        torch.manual_seed(seed)
        head.train()  # dropout on; the head has no batch-norm, so train() changes nothing else
        try:
            logits = head(xt.reshape(-1, xt.shape[-1])).reshape(n, xt.shape[1], -1)
        finally:
            head.eval()
    return _activate(logits, multilabel)


def _activate(logits: torch.Tensor, multilabel: bool) -> np.ndarray:
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    return probs.double().numpy()

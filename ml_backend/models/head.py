"""The classification head: a small MLP or a linear layer, with dropout, on top of a frozen encoder's embeddings; one
or a committee.

Dropout stays active for MC sampling, so T stochastic passes over the head alone approximate the posterior
predictive (Gal & Ghahramani 2016) at a fraction of the cost of T passes through the encoder.

``head.members`` > 1 trains a *committee* (a deep ensemble, Lakshminarayanan et al. 2017): M heads from different
initialisations and minibatch orders. Its mean prediction varies less from one version to the next than one
head's, and the members' disagreement is a better uncertainty than dropout alone on few labels (Beluch et al.
2018, "The power of ensembles for active learning"). The members are held as stacked weights and trained in one
batched pass, so a committee of 5 costs about what one head costs: at these sizes a step is Python overhead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (torch's own convention)


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
    members: int = 1


class MCDropoutHead(nn.Module):
    """M independent heads, each dropout -> linear -> ReLU -> dropout -> linear, as stacked weights; with
    ``hidden=0`` each is dropout -> linear (a linear probe).

    A linear probe is how sentence embeddings are meant to be read (they are trained so that cosine similarity, a
    linear function, carries meaning; SentEval and MTEB score them with logistic regression): on few labels it has
    far fewer weights to fit than an MLP, so it overfits less. The MLP is for inputs that are not linearly
    separable, such as raw pixels.

    ``forward`` takes (B, d) (every member sees the same rows) or (M, B, d) (each member its own rows) and returns
    logits (M, B, n_outputs); softmax or sigmoid is applied by the caller."""

    def __init__(self, in_dim: int, n_outputs: int, hidden: int, dropout: float, members: int = 1):
        super().__init__()
        self.in_dim, self.n_outputs, self.hidden, self.dropout = in_dim, n_outputs, hidden, dropout
        self.members = members
        first = hidden if hidden else n_outputs  # a linear head's only layer maps straight to the outputs
        self.w1 = nn.Parameter(torch.empty(members, first, in_dim))
        self.b1 = nn.Parameter(torch.empty(members, first))
        layers = [(self.w1, self.b1)]
        if hidden:
            self.w2 = nn.Parameter(torch.empty(members, n_outputs, hidden))
            self.b2 = nn.Parameter(torch.empty(members, n_outputs))
            layers.append((self.w2, self.b2))
        for weight, bias in layers:  # nn.Linear's initialisation, per member
            for m in range(members):
                nn.init.kaiming_uniform_(weight[m], a=math.sqrt(5))
            bound = 1.0 / math.sqrt(weight.shape[2])
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        x = F.dropout(x, self.dropout, self.training)
        first = torch.einsum("mbd,mhd->mbh", x, self.w1) + self.b1.unsqueeze(1)
        if not self.hidden:
            return first
        hidden = F.dropout(torch.relu(first), self.dropout, self.training)
        return torch.einsum("mbh,mch->mbc", hidden, self.w2) + self.b2.unsqueeze(1)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by this class, or by the single ``nn.Sequential`` head of versions saved before
        committees existed (``net.1`` and ``net.4`` linear layers), so those versions keep serving."""
        self.load_state_dict(_stacked(state))


def _stacked(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved head state in this class's layout (see :meth:`MCDropoutHead.load_state`)."""
    if "net.1.weight" not in state:
        return state
    return {
        "w1": state["net.1.weight"][None],
        "b1": state["net.1.bias"][None],
        "w2": state["net.4.weight"][None],
        "b2": state["net.4.bias"][None],
    }


def saved_shape(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(members, hidden) of a saved head state, as saved: a version keeps loading when its config changes."""
    stacked = _stacked(state)
    return int(stacked["w1"].shape[0]), int(stacked["w1"].shape[1]) if "w2" in stacked else 0


def build_head(in_dim: int, n_outputs: int, params: HeadParams, seed: int) -> MCDropoutHead:
    torch.manual_seed(seed)
    return MCDropoutHead(in_dim, n_outputs, params.hidden, params.dropout, params.members)


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
    :func:`loss_function`). Each member draws its own minibatch order; the members' losses are summed, and as they
    share no weight each member learns exactly as if it were trained alone. Seeded: same data + seed, same weights.
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
        total = 0.0
        for idx in _minibatches(n, head.members, params.batch_size, gen):
            opt.zero_grad()
            logits = head(xt[idx])
            loss = sum(loss_fn(logits[m], yt[idx[m]]) for m in range(head.members))
            loss.backward()
            opt.step()
            total += loss.item() * idx.shape[1] / head.members
        losses.append(total / max(n, 1))
    head.eval()
    return losses


def _minibatches(n: int, members: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of row indices (members, batch): every member sees every row once, in its own order."""
    orders = torch.stack([torch.randperm(n, generator=gen) for _ in range(members)])
    for start in range(0, n, batch_size):
        yield orders[:, start : start + batch_size]


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


def passes_per_member(mc: int, members: int) -> list[int]:
    """How the ``mc`` MC passes are shared out among the members: as evenly as possible, at least one each (a
    committee of 5 scored with T=20 runs 4 dropout passes of each member; with T=2, one pass of each)."""
    return [max(1, mc // members + (m < mc % members)) for m in range(members)]


def mc_masks(head: MCDropoutHead, mc: int, seed: int, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """T fixed dropout masks (input and hidden layer) of one member, already scaled by 1 / (1 - p), drawn from
    ``seed`` and the member alone.

    Every task is scored with the same T thinned networks ("consistent MC dropout", as in BatchBALD): a task's
    probabilities then depend only on the task and the version, never on which other tasks share its batch, so
    /predict, a pool re-score and new-task scoring give the same task the same score.
    """
    keep = 1.0 - head.dropout
    gen = torch.Generator().manual_seed(int(seed) if member == 0 else int(seed) * 1_000_003 + member)
    m_in = torch.bernoulli(torch.full((mc, head.in_dim), keep), generator=gen) / keep
    m_hidden = torch.bernoulli(torch.full((mc, head.hidden), keep), generator=gen) / keep
    return m_in, m_hidden


@torch.no_grad()
def last_layer_inputs(head: MCDropoutHead, x: np.ndarray) -> np.ndarray:
    """What the head's last layer reads, deterministic (n, d) -> (n, k): the embedding itself for a linear head, the
    ReLU hidden layer of an MLP; a committee's members side by side (each member's last layer is its own)."""
    if not head.hidden:
        return np.asarray(x)
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    hidden = torch.relu(torch.einsum("bd,mhd->mbh", xt, head.w1) + head.b1.unsqueeze(1))  # (M, n, h)
    return hidden.permute(1, 0, 2).reshape(len(xt), -1).numpy()


def last_layer(head: MCDropoutHead) -> np.ndarray:
    """The last layer of a single head as one matrix ``[W | b]`` (C, k + 1), float64 (what the Laplace posterior of
    :mod:`ml_backend.models.laplace` is centred on)."""
    if head.members != 1:
        raise ValueError("the last layer of a committee is one per member")
    weight, bias = (head.w2, head.b2) if head.hidden else (head.w1, head.b1)
    return torch.cat([weight[0], bias[0][:, None]], dim=1).detach().double().numpy()


MC_CHUNK_ROWS = 256  # rows per chunk of the MC passes: (256, 20, 256) float64 activations, 10 MB instead of 400


@torch.no_grad()
def head_proba(
    head: MCDropoutHead, x: np.ndarray, mc: int, multilabel: bool, seed: int = 0, chunk_rows: int = MC_CHUNK_ROWS
) -> np.ndarray:
    """Probabilities of shape (n, T, n_outputs).

    ``x`` is (n, d): the same embedding for every pass, dropout varies (head-only MC); or (n, mc, d): one
    stochastic embedding per pass (full-network MC). ``mc=1`` on (n, d) is the deterministic prediction (eval mode;
    a committee's mean probabilities). Otherwise T = ``mc`` passes (at least one per member), shared out by
    :func:`passes_per_member`: each member runs its own fixed masks (:func:`mc_masks`) as batched matmuls (T=20
    costs one matmul on a 20x larger batch, not 20 calls).
    """
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    head.eval()
    if xt.ndim == 2 and mc <= 1:
        probs = _activate(head(xt), multilabel)  # (M, n, C)
        return probs.mean(axis=0)[:, None, :]
    # float64: the same task must get bit-for-bit the same probabilities in a batch of 1 and in a batch of 64
    xt = xt.double()
    members, first = [], 0
    for m, passes in enumerate(passes_per_member(mc, head.members)):
        w1, b1 = (p[m].detach().double() for p in (head.w1, head.b1))
        second = (head.w2[m].detach().double().T, head.b2[m].detach().double()) if head.hidden else None
        m_in, m_hidden = (mask.double() for mask in mc_masks(head, passes, seed, m))
        if xt.ndim == 2:  # (x * m_t) W1^T = x (W1 * m_t)^T: one (n, d) x (d, T*h) matmul for all passes
            w1 = (w1.unsqueeze(0) * m_in.unsqueeze(1)).reshape(passes * len(b1), head.in_dim).T
        members.append(_MemberPasses(passes, first, w1, b1, m_in, m_hidden, second))
        first += passes
    # Rows in chunks: the hidden activations of T passes are (rows, T, hidden), 400 MB for a pool of 10k at T=20;
    # chunks of ``chunk_rows`` keep them in cache (3x faster on 10k rows, benchmarks/rank_speed.py), same results.
    out = [
        np.concatenate([_activate(member.logits(xt[i : i + chunk_rows]), multilabel) for member in members], 1)
        for i in range(0, len(xt), chunk_rows)
    ]
    return np.concatenate(out) if out else np.zeros((0, first, head.n_outputs))


@dataclass(frozen=True)
class _MemberPasses:
    """One member's share of the MC passes, its fixed masks applied where they can be (float64)."""

    passes: int
    first: int  # full-network MC: this member takes stochastic embeddings first .. first + passes - 1
    w1: torch.Tensor  # head-only MC: the T thinned first layers, (d, T*h); full-network MC: (h, d)
    b1: torch.Tensor
    m_in: torch.Tensor
    m_hidden: torch.Tensor
    second: tuple[torch.Tensor, torch.Tensor] | None  # W2^T and b2 of an MLP head; None: a linear head

    def logits(self, xt: torch.Tensor) -> torch.Tensor:
        """(rows, passes, C) logits of rows (rows, d) or, full-network MC, (rows, mc, d)."""
        if xt.ndim == 2:
            first = (xt @ self.w1).reshape(len(xt), self.passes, -1) + self.b1
        else:
            rows = xt[:, [(self.first + t) % xt.shape[1] for t in range(self.passes)]]
            first = torch.einsum("ntd,hd->nth", rows * self.m_in.unsqueeze(0), self.w1) + self.b1
        if self.second is None:
            return first
        w2_t, b2 = self.second
        return (torch.relu(first) * self.m_hidden.unsqueeze(0)) @ w2_t + b2


def _activate(logits: torch.Tensor, multilabel: bool) -> np.ndarray:
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    return probs.double().numpy()

"""The model adapter: an encoder plus an MC-dropout head for one label set.

One small interface (``embed``, ``predict_proba``, ``fit``) used by the web app, the worker and the simulator,
so that what is benchmarked is exactly what serves.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch

from ml_backend.modelconfig import ModelConfig
from ml_backend.models.encoders import Encoder
from ml_backend.models.head import HeadParams, MCDropoutHead, build_head, fit_head, head_proba


class Classifier:
    """Encoder (shared, frozen) + head (per project version). ``head is None`` means not trained yet."""

    def __init__(self, encoder: Encoder | None, config: ModelConfig, n_outputs: int, multilabel: bool,
                 head: MCDropoutHead | None = None, in_dim: int | None = None):
        self.encoder = encoder
        self.config = config
        self.n_outputs = n_outputs
        self.multilabel = multilabel
        self.head = head
        self.in_dim = in_dim if in_dim is not None else (encoder.dim if encoder else None)
        t = config.training
        self.params = HeadParams(config.head.hidden, config.head.dropout, t.epochs, t.lr, t.weight_decay, t.batch_size)

    @property
    def trained(self) -> bool:
        return self.head is not None

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """Deterministic embeddings of raw inputs (texts or PIL images)."""
        if self.encoder is None:
            raise RuntimeError("this classifier works on precomputed features; it has no encoder")
        return self.encoder.embed(items)

    def predict_proba(self, embeddings: np.ndarray, mc: int = 1, items: Sequence[Any] | None = None,
                      seed: int = 0) -> np.ndarray:
        """Probabilities (n, mc, n_outputs).

        Head-only MC (default): ``mc`` dropout passes over the head on the cached embeddings.
        Full-network MC: pass the raw ``items`` and set ``acquisition.mc_mode: full`` in the config; each pass
        then also runs the encoder with its dropout on (``mc`` times the encoder cost).
        """
        if self.head is None:
            raise RuntimeError("the head is not trained yet")
        if mc > 1 and self.config.acquisition.mc_mode == "full" and items is not None and self.encoder is not None:
            stochastic = self.encoder.embed_stochastic(items, mc, seed=seed)
            return head_proba(self.head, stochastic, mc, self.multilabel, seed=seed)
        return head_proba(self.head, embeddings, mc, self.multilabel, seed=seed)

    def fit(self, embeddings: np.ndarray, y: np.ndarray, seed: int | None = None) -> list[float]:
        """Train a fresh head (same config + data + seed => same weights); returns per-epoch losses."""
        seed = self.config.training.seed if seed is None else seed
        self.head = build_head(int(embeddings.shape[1]), self.n_outputs, self.params, seed)
        self.in_dim = int(embeddings.shape[1])
        return fit_head(self.head, embeddings, y, self.params, self.multilabel, seed)

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Deterministic decisions: class indices (n,), or a 0/1 matrix (n, L) for multi-label."""
        probs = self.predict_proba(embeddings, mc=1)[:, 0]
        return (probs >= 0.5).astype(int) if self.multilabel else probs.argmax(axis=1)

    def head_bytes(self) -> bytes:
        if self.head is None:
            raise RuntimeError("nothing to save: the head is not trained")
        buf = io.BytesIO()
        torch.save({"state": self.head.state_dict(), "in_dim": self.in_dim}, buf)
        return buf.getvalue()

    def load_head(self, data: bytes) -> None:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.head = build_head(int(saved["in_dim"]), self.n_outputs, self.params, seed=0)
        self.head.load_state_dict(saved["state"])
        self.head.eval()
        self.in_dim = int(saved["in_dim"])

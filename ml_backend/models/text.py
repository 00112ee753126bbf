"""BERT-family text encoders through transformers' AutoTokenizer / AutoModel."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from ml_backend.models.config import EncoderConfig
from ml_backend.models.encoders import Encoder, fingerprint_of, resolve_package_path


class TextEncoder(Encoder):
    """Pooled token embeddings (mean over the attention mask, or the [CLS] token) of any AutoModel encoder."""

    def __init__(self, config: EncoderConfig):
        source = resolve_package_path(config.pretrained) or config.pretrained
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.network = AutoModel.from_pretrained(source)
        self.network.eval()
        self.pooling = config.pooling
        self.max_length = config.max_length
        self.batch_size = config.batch_size
        self.dim = int(self.network.config.hidden_size)
        self.fingerprint = fingerprint_of("text", config.pretrained, config.pooling, config.max_length)

    def _batch_order(self, items: Sequence[str]) -> np.ndarray:
        """Batch texts of similar length together: padding to the longest text of a batch is wasted compute,
        and sorting roughly doubles pool-scoring throughput on review-length texts (see the speed benchmark)."""
        return np.argsort([len(t) for t in items], kind="stable")

    def _forward(self, batch: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(batch), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self.network(**tokens).last_hidden_state  # (b, seq, dim)
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the encoder actually processes (after truncation), for throughput figures."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return sum(len(x) for x in ids)

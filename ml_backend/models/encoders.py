"""The encoder interface shared by the text and image families."""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn


def configure_threads(threads: int) -> None:
    """Set torch's intra-op threads and numpy's BLAS threads once per process (1 is usually fastest on 2 shared
    cores). Both pools spin while they wait for a core: with numpy left at its default, two processes on 2 cores
    made one eigendecomposition of the Laplace posterior 35x slower (11.5 s against 0.33 s)."""
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


def torch_info() -> dict[str, object]:
    """torch's version and thread count, for reports (callers outside ``models`` never import torch)."""
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def enable_dropout(module: nn.Module) -> None:
    """Switch dropout (and drop-connect, which follows ``training``) on, but keep batch-norm statistics frozen."""
    module.train()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def resolve_package_path(spec: str) -> str | None:
    """``python-package:<module>`` -> the model path a PyPI package ships; ``None`` for any other spec.

    Packages expose it differently; we ask ``get_model_path()`` or ``*ModelFile.get_model_file_path()``.
    """
    if not spec.startswith("python-package:"):
        return None
    module = importlib.import_module(spec.split(":", 1)[1])
    if hasattr(module, "get_model_path"):
        return str(module.get_model_path())
    for attr in dir(module):
        obj = getattr(module, attr)
        if hasattr(obj, "get_model_file_path"):
            return str(obj.get_model_file_path())
    raise ValueError(f"{spec}: the package exposes neither get_model_path() nor a *ModelFile class")


class Encoder(ABC):
    """Maps raw inputs (texts, PIL images) to fixed-size embeddings with a pretrained network."""

    #: identifies the weights and preprocessing; embeddings are cached under it
    fingerprint: str
    dim: int
    network: nn.Module

    @abstractmethod
    def _forward(self, batch: Sequence[Any]) -> torch.Tensor:
        """Embeddings (b, dim) of one batch, with gradients if the caller enables them."""

    batch_size: int = 32

    @torch.no_grad()
    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """Deterministic embeddings (n, dim), network in eval mode."""
        self.network.eval()
        return self._run(items)

    @torch.no_grad()
    def embed_stochastic(self, items: Sequence[Any], mc: int, seed: int = 0) -> np.ndarray:
        """(n, mc, dim): ``mc`` passes with the encoder's own dropout on, for full-network MC dropout."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            enable_dropout(self.network)
            try:
                passes = [self._run(items) for _ in range(mc)]
            finally:
                self.network.eval()
        return np.stack(passes, axis=1) if passes else np.zeros((len(items), 0, self.dim), np.float32)

    def _batch_order(self, items: Sequence[Any]) -> np.ndarray:
        """The order in which items are batched (results come back in input order); see TextEncoder."""
        return np.arange(len(items))

    def _run(self, items: Sequence[Any]) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = self._batch_order(items)
        ordered = [items[i] for i in order]
        out = np.concatenate(
            [
                self._forward(ordered[i : i + self.batch_size]).float().numpy()
                for i in range(0, len(ordered), self.batch_size)
            ]
        )
        result = np.empty_like(out)
        result[order] = out
        return result


def fingerprint_of(*parts: Any) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]

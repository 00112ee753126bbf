"""Loads each encoder once per process and keeps it: never per request, never per job."""

from __future__ import annotations

import logging
import threading

from ml_backend.models.config import ModelConfig
from ml_backend.models.encoders import Encoder

log = logging.getLogger(__name__)


class EncoderPool:
    """Encoders by config, loaded on first use (or up front with :meth:`preload`) and shared by all projects."""

    def __init__(self) -> None:
        self._encoders: dict[str, Encoder] = {}
        self._lock = threading.Lock()

    def get(self, config: ModelConfig) -> Encoder:
        key = config.encoder.model_dump_json()
        with self._lock:  # two first requests must not load the same model twice
            if key not in self._encoders:
                self._encoders[key] = self._load(config)
            return self._encoders[key]

    def preload(self, *configs: ModelConfig) -> None:
        for config in configs:
            self.get(config)

    @staticmethod
    def _load(config: ModelConfig) -> Encoder:
        log.info("loading %s encoder %s", config.kind, config.encoder.pretrained)
        if config.kind == "text":
            from ml_backend.models.text import TextEncoder

            return TextEncoder(config.encoder)
        from ml_backend.models.image import ImageEncoder

        return ImageEncoder(config.encoder)

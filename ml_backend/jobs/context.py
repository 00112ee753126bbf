"""The objects a worker process shares between jobs, built once before rq forks its work horses.

Building the context loads the encoders, so every forked job starts with warm models (copy-on-write) instead
of loading them per job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

from redis import Redis

from ml_backend.jobs.queue import JobQueue, connect
from ml_backend.labelstudio.client import LabelStudioClient
from ml_backend.labelstudio.labelconfig import parse_label_config
from ml_backend.learning.registry import Registry
from ml_backend.learning.service import ScoringService
from ml_backend.learning.store import ModelStore, open_store
from ml_backend.models.config import load_model_config
from ml_backend.models.encoders import configure_threads
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    encoders: EncoderPool

    @classmethod
    def build(cls, settings: Settings, preload: bool = True) -> WorkerContext:
        configure_threads(settings.torch_threads)
        encoders = EncoderPool()
        if preload:
            for name in (settings.text_model_config, settings.image_model_config):
                try:
                    encoders.preload(load_model_config(settings.model_configs_dir, name))
                except Exception:  # a broken optional model must not stop the worker; jobs report it
                    log.exception("could not preload model config %s", name)
        return cls(settings, encoders)

    @cached_property
    def store(self) -> ModelStore:
        """The model store every machine shares (``MODEL_STORE_URL``): versions and embedding chunks."""
        return open_store(self.settings)

    @cached_property
    def registry(self) -> Registry:
        return Registry.from_settings(self.settings, self.store)

    @cached_property
    def ls(self) -> LabelStudioClient:
        """From the environment, else the LS that /setup reported (LabelStudioNotConfigured if neither)."""
        return LabelStudioClient.from_settings(self.settings, *self.registry.ls_connection())

    @cached_property
    def service(self) -> ScoringService:
        return ScoringService(
            self.settings,
            self.registry,
            self.encoders,
            self.ls.fetch_file,
            parse_label_config,
            shared_embeddings=self.store.child("embeddings"),
        )

    @cached_property
    def redis(self) -> Redis:
        if not self.settings.redis_url:
            raise RuntimeError("REDIS_URL is not set")
        return connect(self.settings.redis_url)

    @cached_property
    def queue(self) -> JobQueue:
        return JobQueue.from_settings(self.redis, self.settings)


_context: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    """Make ``context`` the one the job functions use (called by ``ml-backend worker`` before work starts)."""
    global _context
    _context = context


def current() -> WorkerContext:
    """The installed context; a plain ``rq worker`` gets one built from the environment on first use."""
    global _context
    if _context is None:
        _context = WorkerContext.build(Settings(), preload=False)
    return _context

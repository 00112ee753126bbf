"""One typed settings object, read from the environment.

It is built once at process start (``Settings()``) and passed down explicitly; nothing reads the environment
behind the caller's back, so tests can build a ``Settings(...)`` with their own values.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_CONFIGS = Path(__file__).resolve().parent.parent / "model_configs"


class Settings(BaseSettings):
    """Runtime configuration of the web app and the worker (env var = upper-case field name)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", protected_namespaces=())

    data_dir: Path = Field(
        Path("./data"),
        description="Model versions (unless MODEL_STORE_URL names another store), embedding cache and file cache.",
    )
    embedding_cache_dir: Path | None = Field(
        None,
        description="Folder of the embedding cache, default DATA_DIR/embeddings. Give it a folder on the machine's "
        "own disk when DATA_DIR is a network mount shared by several machines: the cache is SQLite in WAL mode, "
        "which is safe only for processes on one host.",
    )
    model_store_url: str | None = Field(
        None,
        description="Where versions, current pointers, pool orders and embedding chunks live for every process: a "
        "folder (default DATA_DIR; a shared mount for workers on several machines) or s3://bucket/prefix "
        "(S3-compatible; endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).",
    )
    model_store_cache_dir: Path | None = Field(
        None,
        description="This machine's copies of committed version files read from s3:// (immutable), default "
        "DATA_DIR/store-cache.",
    )
    model_configs_dir: Path = Field(_REPO_CONFIGS, description="Folder of model config YAML files.")
    text_model_config: str = Field("text-minilm", description="Model config for Text/HyperText projects.")
    image_model_config: str = Field("image-efficientnet-lite0", description="Model config for Image projects.")

    label_studio_url: str | None = Field(None, description="Base URL of Label Studio, with scheme.")
    label_studio_api_key: str | None = Field(None, description="Legacy token or personal access token.")
    label_studio_timeout: float = Field(
        60.0,
        description="Seconds per LS API request (exports, prediction imports and version deletions: 30 min, "
        "their work grows with the project).",
    )

    redis_url: str | None = Field(None, description="Redis for the job queue; `serve` starts a local one if unset.")
    queue_name: str = "ml-backend"
    job_timeout: int = Field(3600, description="Seconds a training or re-scoring job may run.")
    job_retries: int = Field(3, description="Retries (with backoff) of a failed or abandoned job.")
    late_retries: list[int] = Field(
        [600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600],
        description="Seconds until the later attempts of a re-score that failed all its retries "
        "(e.g. LS down for long); the pool gets scored once LS is back.",
    )
    retrain_every: int = Field(1, ge=1, description="Retrain after this many new labels (START_TRAINING forces it).")
    set_uncertainty_sampling: bool = Field(
        True, description="On connect, switch the LS project to Uncertainty sampling."
    )
    import_batch_size: int = Field(
        50_000,
        ge=1,
        description="Predictions per LS import request. Each request costs LS a recount of every task of the "
        "project that holds a prediction, whatever its size (measured at 100k tasks: 257 s for 5,000 predictions, "
        '273 s for 100), so a fill sends as few requests as it can (README "100,001 tasks").',
    )
    score_batch_size: int = Field(64, ge=1, description="Tasks per encoder batch when scoring the pool.")

    torch_threads: int = Field(
        1, ge=1, description="torch intra-op and numpy BLAS threads; 1 is fastest on small shared machines."
    )
    max_image_pixels: int = Field(40_000_000, description="Larger images are refused (decompression-bomb guard).")

    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    log_level: str = "INFO"

    # -- security and limits (README "Security and limits") ----------------------------------------------------
    webhook_secret: str | None = Field(
        None, description="Token /webhook requires (the backend adds it to LS's webhook as a header itself)."
    )
    max_request_bytes: int = Field(32 * 2**20, ge=1024, description="Larger request bodies get 413.")
    max_tasks_per_predict: int = Field(10_000, ge=1, description="More tasks in one /predict get 413.")
    max_text_chars: int = Field(
        20_000, ge=100, description="Longer texts are truncated to this many characters before tokenising."
    )
    download_timeout: float = Field(20.0, gt=0, description="Seconds one file download may take in total.")
    download_max_bytes: int = Field(30 * 2**20, ge=1024, description="Larger downloads are refused.")
    download_budget: float = Field(
        60.0, gt=0, description="Seconds all downloads of one request may take (LS waits 100 s for /predict)."
    )
    download_concurrency: int = Field(8, ge=1, description="Parallel downloads per request.")
    download_allowed_hosts: list[str] = Field(
        [],
        description="Hosts besides LABEL_STUDIO_URL's that files may come from (e.g. cloud storage presigned "
        "URLs); `*.example.com` matches subdomains.",
    )

    # -- scale: front first, fewer LS requests (README "Front first") ------------------------------------------
    front_first_tasks: int = Field(
        100,
        ge=0,
        description="After a new version, import the predictions of this many most informative unlabelled tasks "
        "first and point the project at the version; the rest of the pool follows (0: the whole pool first).",
    )
    front_create_concurrency: int = Field(
        0,
        ge=0,
        description="0: a new version's front is one bulk import request, safe on LS's default SQLite, whose writes "
        "do not overlap (concurrent creates made LS answer an annotator's /next with 500 'database is locked'). "
        "For LS on PostgreSQL set 8: once the project's tasks hold predictions, the front is created one request "
        "each, this many at a time, 2-3 times faster than a bulk request, which recounts every task holding a "
        "prediction (measured: benchmarks/notes.md).",
    )
    cold_start_sample: int = Field(
        1000,
        ge=0,
        description="A re-score of a pool with more tasks to embed than this (a first connection, a version trained "
        "while the pool is still being embedded) ranks the tasks embedded already, topped up to this many with a "
        "seeded random sample, imports its front and points the project at the version; the rest of the pool is "
        "embedded and scored afterwards (0: rank the whole pool first).",
    )
    embed_chunk_size: int = Field(
        1000,
        ge=0,
        description="A re-score with more pool tasks to embed than this splits the embedding into chunk jobs of "
        "this many tasks on the queue, so every worker (on any machine sharing Redis and the model store) embeds a "
        "part; 0: never (the re-score embeds alone).",
    )
    import_concurrency: int = Field(
        1,
        ge=1,
        description="Prediction import requests sent to LS at once (1 is fastest on LS with SQLite, measured).",
    )

    @model_validator(mode="after")
    def _auth_complete(self) -> Settings:
        """Half-set Basic auth must stop the process: silently serving without auth is the worse failure."""
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        return self

    @property
    def projects_dir(self) -> Path:
        return self.data_dir / "projects"

    @property
    def embeddings_dir(self) -> Path:
        return self.embedding_cache_dir or self.data_dir / "embeddings"

    @property
    def store_cache_dir(self) -> Path:
        return self.model_store_cache_dir or self.data_dir / "store-cache"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

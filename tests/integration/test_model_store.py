"""The model store on S3-compatible object storage: a real S3 server (moto's, over HTTP), real s3fs and boto3.

Two "machines" are two registries with their own DATA_DIR (local flags, cache of version files, embedding cache)
on one ``MODEL_STORE_URL``: what one publishes the other serves; a version whose commit marker is not written is
invisible; chunk embeddings written by one are gathered into the other's cache; a store that cannot be reached
fails with a message that names it and touches nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ml_backend.labelstudio.labelconfig import parse_label_config
from ml_backend.learning.embcache import EmbeddingCache
from ml_backend.learning.registry import ProjectRecord, Registry
from ml_backend.learning.service import ScoringService
from ml_backend.learning.store import ObjectStore, StoreError, open_store
from ml_backend.models.pool import EncoderPool
from ml_backend.settings import Settings
from tests.integration.test_api import TEXT
from tests.lsserver import free_port
from tests.unit.test_registry import info

BUCKET = "models"


@pytest.fixture()
def s3(s3_server):
    return s3_server


@pytest.fixture()
def settings(s3, tmp_path, monkeypatch, request) -> tuple[Settings, Settings]:
    """Two machines' settings: one s3:// store (a prefix of this test's own, endpoint and credentials from the
    standard AWS variables), each with its own DATA_DIR."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{BUCKET}/{request.node.name[:40]}"
    return tuple(Settings(data_dir=tmp_path / name, model_store_url=url) for name in ("a", "b"))


@pytest.fixture()
def machines(settings) -> tuple[Registry, Registry]:
    return Registry.from_settings(settings[0]), Registry.from_settings(settings[1])


def test_a_version_published_on_one_machine_is_served_by_another(machines, s3, tmp_path):
    a, b = machines
    a.save_project(ProjectRecord(7, "7.123", "<View/>", "text-minilm"))
    v0 = a.publish(7, info(0, trained=False), {}, promote=True)
    assert b.get_project(7).project_key == "7.123" and b.project_ids() == [7]
    assert b.current(7).version == v0.version

    v1 = a.publish(7, info(1), {"model.pt": b"weights", "labelled.npy": b"x"}, promote=False)
    assert b.current(7).version == v0.version  # published, not promoted: the served version stays
    assert [v.number for v in b.versions(7)] == [0, 1] and b.next_number(7) == 2
    a.set_current(7, v1.version)
    assert b.current(7).version == v1.version and b.read_file(7, v1.version, "model.pt") == b"weights"
    # b keeps its own copy of the immutable file, keyed by the version, on its own disk; a has none
    assert list((tmp_path / "b" / "store-cache").rglob(f"{v1.version}/model.pt"))
    assert not list((tmp_path / "a" / "store-cache").rglob("model.pt"))
    with pytest.raises(FileExistsError):
        a.publish(7, v1, {}, promote=True)
    with pytest.raises(FileNotFoundError):  # a pointer never names a version that does not exist
        b.set_current(7, "m-v9-never")
    # nothing of the shared state landed in the machines' own folders
    assert not (tmp_path / "a" / "projects").exists() and not (tmp_path / "b" / "projects").exists()


def test_a_pool_order_rewritten_on_one_machine_is_read_fresh_by_another(machines):
    a, b = machines
    v0 = a.publish(5, info(0, trained=False), {}, promote=True)
    assert b.ranking(5, v0.version) is None and b.ranking_mtime(5, v0.version) == 0.0
    a.save_ranking(5, v0.version, [1, 2], np.array([0.1, 0.2]), ["a", "b"], 0.5)
    assert b.ranking(5, v0.version).scores == {1: 0.1, 2: 0.2}
    first = b.ranking_mtime(5, v0.version)
    time.sleep(1.1)  # S3's Last-Modified has one-second resolution
    a.save_ranking(5, v0.version, [1, 2], np.array([0.3, 0.4]), ["a", "b"], 0.5)
    assert b.ranking(5, v0.version).scores == {1: 0.3, 2: 0.4}  # the one mutable file is never cached
    assert b.ranking_mtime(5, v0.version) > first
    a.save_pool_reference(5, np.ones((3, 2)))
    assert b.pool_reference(5).shape == (3, 2)


def test_a_half_written_version_is_invisible_and_cleaned_up(machines, s3, request):
    """A publisher killed between its files and its meta.json (the commit marker) leaves objects that no reader
    takes for a version; the next training's clean-up removes them."""
    a, b = machines
    v0 = a.publish(3, info(0), {"model.pt": b"w0"}, promote=True)
    half = info(1).version
    prefix = f"{request.node.name[:40]}/projects/3/versions/{half}"
    s3.client().put_object(Bucket=BUCKET, Key=f"{prefix}/model.pt", Body=b"w1")  # the crash: no meta.json
    assert [v.version for v in b.versions(3)] == [v0.version] and b.next_number(3) == 1
    with pytest.raises(FileNotFoundError):
        b.set_current(3, half)
    assert b.current(3).version == v0.version
    b.cleanup_temp(3)
    assert "Contents" not in s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert [v.version for v in a.versions(3)] == [v0.version]


def test_chunk_embeddings_written_by_one_machine_are_merged_into_the_other_machines_cache(settings):
    """What an embed_chunk job leaves: its vectors as one pack in the store. Another machine merges each pack once
    into its own SQLite cache (the gathering re-score, a re-score deciding what is uncached); the machine that
    wrote a pack never downloads it."""
    a, b = settings

    def service(s: Settings) -> ScoringService:
        shared = open_store(s).child("embeddings")
        return ScoringService(s, Registry.from_settings(s), EncoderPool(), None, parse_label_config, shared)

    def vectors(seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {f"key-{seed}-{i}": rng.normal(size=384).astype(np.float32) for i in range(50)}

    writer, reader = service(a), service(b)
    first, second = vectors(1), vectors(2)
    EmbeddingCache(a.embeddings_dir, "fp").put_many(first)  # embed_part caches what it embeds, the job shares it
    assert writer.share_embeddings("fp", "embed-1", first) == "fp/embed-1.npz"
    assert writer.sync_embeddings("fp") == 0  # its own pack: already here
    assert reader.sync_embeddings("fp") == 50 and reader.sync_embeddings("fp") == 0  # each pack merged once
    writer.share_embeddings("fp", "embed-2", second)
    assert reader.sync_embeddings("fp") == 50
    got = EmbeddingCache(b.embeddings_dir, "fp").get_many({**first, **second})
    assert all(np.array_equal(got[k], v) for k, v in {**first, **second}.items())  # float32, bit for bit
    assert open_store(b).child("embeddings").children("fp") == ["embed-1.npz", "embed-2.npz"]


def test_an_unreachable_endpoint_fails_fast_with_a_message_naming_the_store(s3, tmp_path, monkeypatch):
    for name, value in {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}.items():  # nothing there
        monkeypatch.setenv(name, value)
    registry = Registry.from_settings(Settings(data_dir=tmp_path, model_store_url=f"s3://{BUCKET}/x"))
    started = time.monotonic()
    with pytest.raises(StoreError, match=rf"model store s3://{BUCKET}/x/projects: could not read 1/current.json"):
        registry.current(1)
    with pytest.raises(StoreError, match="EndpointConnectionError: Could not connect to the endpoint URL"):
        registry.publish(1, info(0), {"model.pt": b"w"}, promote=True)
    assert time.monotonic() - started < 30


def test_missing_credentials_are_named(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    store = ObjectStore(f"s3://{BUCKET}/x", tmp_path)
    with pytest.raises(StoreError, match="could not write a: NoCredentialsError: Unable to locate credentials"):
        store.write("a", b"1")


def test_a_missing_bucket_is_an_error_not_an_empty_store(s3, tmp_path, monkeypatch):
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    registry = Registry.from_settings(Settings(data_dir=tmp_path, model_store_url="s3://no-such-bucket/p"))
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        registry.current(1)  # not "no current version": a project would silently start over


def test_store_urls_are_checked(tmp_path: Path):
    assert open_store(Settings(data_dir=tmp_path)).url == str(tmp_path)  # default: the data folder
    assert open_store(Settings(data_dir=tmp_path, model_store_url=str(tmp_path / "shared"))).url.endswith("shared")
    with pytest.raises(StoreError, match="only folders and s3://"):
        open_store(Settings(data_dir=tmp_path, model_store_url="gs://bucket/x"))
    with pytest.raises(StoreError, match="expected s3://bucket"):
        open_store(Settings(data_dir=tmp_path, model_store_url="s3://"))


def test_the_web_app_answers_503_while_the_store_is_unreachable(s3, make_client, monkeypatch):
    """LS gets a retryable answer without the store's address; the cause is in the server log."""
    for name, value in {**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}.items():
        monkeypatch.setenv(name, value)
    client = make_client(model_store_url=f"s3://{BUCKET}/web")
    resp = client.post("/setup", json={"project": "1.1700000000", "schema": TEXT})
    assert resp.status_code == 503, resp.text
    assert resp.json()["detail"] == "the model store is unavailable (details are in the server log)"

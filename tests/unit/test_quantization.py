"""``encoder.quantize: int8``: the real MiniLM quantized embeds close to fp32, under its own cache fingerprint,
and configs that ask for what quantization cannot do are refused at load time."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from ml_backend.learning.embcache import EmbeddingCache, content_key
from ml_backend.models.config import ModelConfig, load_model_config
from ml_backend.models.encoders import fingerprint_of
from ml_backend.models.pool import EncoderPool
from ml_backend.simulation import datasets

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "model_configs"


def _minilm(quantize: str) -> ModelConfig:
    base = load_model_config(REPO_CONFIGS, "text-minilm").model_dump()
    return ModelConfig.model_validate(base | {"encoder": base["encoder"] | {"quantize": quantize}})


@pytest.fixture(scope="module")
def encoders():
    pool = EncoderPool()
    return pool.get(_minilm("none")), pool.get(_minilm("int8"))


def test_int8_embeds_close_to_fp32_but_not_equal(encoders):
    fp32, int8 = encoders
    texts = datasets.rotten_tomatoes(n=64, seed=0).texts
    a, b = fp32.embed(texts), int8.embed(texts)
    assert b.shape == a.shape == (64, 384) and b.dtype == np.float32
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # measured on 512 snippets: mean 0.973, worst 0.916 (per-tensor weights were 0.934 and 0.789)
    assert cosine.mean() > 0.95 and cosine.min() > 0.85, (cosine.mean(), cosine.min())
    assert not np.allclose(a, b, atol=1e-4), "int8 gave fp32's vectors: the network was not quantized"


def test_int8_has_its_own_cache_fingerprint(encoders, tmp_path):
    fp32, int8 = encoders
    cfg = _minilm("none").encoder
    # fp32 keeps the fingerprint it always had, so existing embedding caches stay valid
    assert fp32.fingerprint == fingerprint_of("text", cfg.pretrained, cfg.pooling, cfg.max_length)
    assert int8.fingerprint != fp32.fingerprint
    key = content_key("text", "a quiet, moving film")
    EmbeddingCache(tmp_path, fp32.fingerprint).put_many({key: fp32.embed(["a quiet, moving film"])[0]})
    assert EmbeddingCache(tmp_path, int8.fingerprint).get_many([key]) == {}


def _load(tmp_path, **parts) -> ModelConfig:
    body = {"name": "t", "kind": "text", "encoder": {"pretrained": "none"}} | parts
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(body))
    return load_model_config(tmp_path, "t")


def test_unknown_quantize_value_is_refused(tmp_path):
    with pytest.raises(ValidationError, match=r"encoder\.quantize\n.*'none' or 'int8'"):
        _load(tmp_path, encoder={"pretrained": "none", "quantize": "int4"})
    assert _load(tmp_path).encoder.quantize == "none"


def test_int8_refused_with_fine_tuning_and_for_images(tmp_path):
    with pytest.raises(ValidationError, match="cannot be combined with training.mode: full"):
        _load(tmp_path, encoder={"pretrained": "none", "quantize": "int8"}, training={"mode": "full"})
    with pytest.raises(ValidationError, match="text encoders only"):
        _load(tmp_path, kind="image", encoder={"pretrained": "efficientnet-lite0", "quantize": "int8"})
    assert _load(tmp_path, encoder={"pretrained": "none", "quantize": "int8"}).encoder.quantize == "int8"


def test_full_network_mc_dropout_runs_on_the_int8_encoder(encoders):
    """acquisition.mc_mode: full turns the encoder's dropout on: the quantized network keeps its dropout layers."""
    _, int8 = encoders
    passes = int8.embed_stochastic(["a quiet, moving film", "dull and far too long"], mc=3, seed=0)
    assert passes.shape == (2, 3, 384)
    assert not np.allclose(passes[:, 0], passes[:, 1]), "dropout did not change the passes"


def test_int8_vectors_depend_on_their_batch_fp32_ones_do_not(encoders):
    """Why int8 is not the default: activation scales are per batch, so a text's int8 vector moves with the texts
    batched with it (the embedding cache, /predict and chunked pool scoring assume one vector per text)."""
    texts = datasets.rotten_tomatoes(n=40, seed=6).texts
    for encoder, equal in zip(encoders, (True, False), strict=True):
        batched, alone = encoder.embed(texts)[:3], np.stack([encoder.embed([t])[0] for t in texts[:3]])
        assert np.allclose(batched, alone, atol=1e-5) == equal
        cosine = (batched * alone).sum(1) / np.linalg.norm(batched, axis=1) / np.linalg.norm(alone, axis=1)
        assert cosine.min() > 0.9

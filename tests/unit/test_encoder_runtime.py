"""The real MiniLM (from its PyPI package): texts are batched by token length, a text's vector does not depend on the
batch it lands in, and ``encoder.runtime: onnx`` gives torch's vectors (or a clear error when it cannot)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from ml_backend.models.config import ModelConfig, load_model_config
from ml_backend.models.pool import EncoderPool
from ml_backend.simulation import datasets

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "model_configs"


def _minilm(**encoder) -> ModelConfig:
    base = load_model_config(REPO_CONFIGS, "text-minilm").model_dump()
    return ModelConfig.model_validate(base | {"encoder": base["encoder"] | encoder})


@pytest.fixture(scope="module")
def torch_encoder():
    return EncoderPool().get(_minilm())


def test_batches_are_sorted_by_token_length(torch_encoder):
    # 23 characters and 14 tokens (with [CLS] and [SEP]), 28 characters and 10 tokens, 5 characters and 4 tokens
    texts = ["a b c d e f g h i j k l", "antidisestablishmentarianism", "fine."]
    lengths = [len(torch_encoder.tokenizer(t)["input_ids"]) for t in texts]
    order = torch_encoder._batch_order(texts)
    assert [lengths[i] for i in order] == sorted(lengths)
    assert list(order) != list(np.argsort([len(t) for t in texts], kind="stable")), "same as a character sort"


def test_a_vector_does_not_depend_on_its_batch(torch_encoder):
    texts = datasets.rotten_tomatoes(n=40, seed=6).texts
    batched = torch_encoder.embed(texts)
    alone = np.stack([torch_encoder.embed([t])[0] for t in texts[:5]])
    in_other_batch = torch_encoder.embed(texts[:5] + datasets.rotten_tomatoes(n=60, seed=7).texts)[:5]
    np.testing.assert_allclose(batched[:5], alone, atol=1e-5)
    np.testing.assert_allclose(in_other_batch, alone, atol=1e-5)


@pytest.fixture(scope="module")
def onnx_encoder():
    return EncoderPool().get(_minilm(runtime="onnx"))


def test_onnx_runtime_gives_torchs_vectors(torch_encoder, onnx_encoder):
    texts = datasets.rotten_tomatoes(n=96, seed=1).texts + ["word " * 400]  # a truncated, 256-token text too
    a, b = torch_encoder.embed(texts), onnx_encoder.embed(texts)
    assert b.shape == a.shape == (97, 384) and b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=1e-5)
    assert onnx_encoder.onnx is not None and torch_encoder.onnx is None, "both ran torch"
    # the vectors are the same, so the embedding cache is shared
    assert onnx_encoder.fingerprint == torch_encoder.fingerprint


def test_onnx_vector_does_not_depend_on_its_batch(onnx_encoder):
    texts = datasets.rotten_tomatoes(n=40, seed=6).texts
    alone = np.stack([onnx_encoder.embed([t])[0] for t in texts[:5]])  # no padding at all
    np.testing.assert_allclose(onnx_encoder.embed(texts)[:5], alone, atol=1e-5)


@pytest.fixture(scope="module")
def onnx_int8_encoder():
    return EncoderPool().get(_minilm(runtime="onnx", quantize="int8"))


def test_onnx_int8_embeds_close_to_fp32_but_not_equal(torch_encoder, onnx_int8_encoder):
    texts = datasets.rotten_tomatoes(n=128, seed=0).texts
    a, b = torch_encoder.embed(texts), onnx_int8_encoder.embed(texts)
    assert b.shape == a.shape and b.dtype == np.float32
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # measured on 1,024 snippets: mean 0.997, worst 0.984 (torch's int8: 0.973 and 0.916 on 512)
    assert cosine.mean() > 0.99 and cosine.min() > 0.97, (cosine.mean(), cosine.min())
    assert not np.allclose(a, b, atol=1e-4), "int8 gave fp32's vectors: the graph was not quantized"


def test_onnx_int8_vector_does_not_depend_on_its_batch(onnx_int8_encoder):
    """What torch's int8 cannot do (tests/unit/test_quantization.py): one activation scale per token, not per
    batch, so a text embedded alone, in its batch of 40 or among other texts gets the same vector."""
    texts = datasets.rotten_tomatoes(n=40, seed=6).texts
    alone = np.stack([onnx_int8_encoder.embed([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(onnx_int8_encoder.embed(texts)[:5], alone, atol=1e-5)
    others = datasets.rotten_tomatoes(n=60, seed=7).texts
    np.testing.assert_allclose(onnx_int8_encoder.embed(others + texts[:5])[-5:], alone, atol=1e-5)


def test_each_int8_has_its_own_cache_fingerprint(torch_encoder, onnx_int8_encoder):
    """fp32, torch's int8 and ORT's int8 give three different vectors for a text: never from one cache."""
    torch_int8 = EncoderPool().get(_minilm(quantize="int8"))
    assert len({torch_encoder.fingerprint, torch_int8.fingerprint, onnx_int8_encoder.fingerprint}) == 3


def test_onnx_runtime_uses_torchs_thread_count(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    encoder = EncoderPool().get(_minilm(runtime="onnx"))
    assert encoder.onnx.session.get_session_options().intra_op_num_threads == 2


def _load(tmp_path, **parts) -> ModelConfig:
    body = {"name": "t", "kind": "text", "encoder": {"pretrained": "none"}} | parts
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(body))
    return load_model_config(tmp_path, "t")


def test_runtime_parses_from_yaml_and_an_unknown_one_is_refused(tmp_path):
    assert _load(tmp_path).encoder.runtime == "torch"
    assert _load(tmp_path, encoder={"pretrained": "none", "runtime": "onnx"}).encoder.runtime == "onnx"
    with pytest.raises(ValidationError, match=r"encoder\.runtime\n.*'torch' or 'onnx'"):
        _load(tmp_path, encoder={"pretrained": "none", "runtime": "tensorrt"})


@pytest.mark.parametrize(
    ("parts", "needs"),
    [
        ({"training": {"mode": "full"}}, "training.mode: head"),
        ({"acquisition": {"mc_mode": "full"}}, "acquisition.mc_mode: head or laplace"),
        ({"kind": "image", "encoder": {"pretrained": "efficientnet-lite0", "runtime": "onnx"}}, "kind: text"),
    ],
)
def test_onnx_is_refused_where_the_exported_graph_cannot_do_what_the_config_asks(tmp_path, parts, needs):
    parts = {"encoder": {"pretrained": "none", "runtime": "onnx"}} | parts
    with pytest.raises(ValidationError, match=f"encoder.runtime: 'onnx' needs {needs}: the exported"):
        _load(tmp_path, **parts)


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_missing_onnxruntime_gives_a_clear_error(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` sees when the package is not installed
    with pytest.raises(ImportError, match=rf"pip install 'al-ml-backend\[onnx\]' \({missing} is not installed\)"):
        EncoderPool().get(_minilm(runtime="onnx"))

"""The real MiniLM (from its PyPI package): texts are batched by token length, and a text's vector does not depend
on the batch it lands in."""

from pathlib import Path

import numpy as np
import pytest

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

"""The real encoders shipped as defaults (MiniLM from a PyPI package, EfficientNet-Lite0 with PyPI weights)."""

import numpy as np
import pytest
from PIL import Image

from ml_backend.models.config import load_model_config
from ml_backend.models.image import ImageError, load_image
from ml_backend.simulation.datasets import digits_png, rotten_tomatoes


@pytest.fixture(scope="module")
def minilm(encoders, configs_dir):
    return encoders.get(load_model_config(configs_dir, "text-minilm"))


@pytest.fixture(scope="module")
def effnet(encoders, configs_dir):
    return encoders.get(load_model_config(configs_dir, "image-efficientnet-lite0"))


def test_text_embeddings_do_not_depend_on_batching_or_order(minilm):
    texts = rotten_tomatoes(n=40, seed=6).texts
    together = minilm.embed(texts)
    assert together.shape == (40, 384) and np.isfinite(together).all()
    reversed_ = minilm.embed(texts[::-1])[::-1]  # length-sorted batching must give results back in input order
    alone = np.stack([minilm.embed([t])[0] for t in texts[:5]])
    assert np.allclose(together, reversed_, atol=1e-5) and np.allclose(together[:5], alone, atol=1e-5)
    # similar sentences are closer than unrelated ones: the pretrained weights are really loaded
    a, b, c = minilm.embed(["A wonderful film.", "A great movie.", "The invoice is attached."])

    def cos(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    assert cos(a, b) > cos(a, c) + 0.2


def test_encoder_dropout_gives_different_passes_but_a_deterministic_eval(minilm):
    texts = ["A wonderful film.", "Dull."]
    passes = minilm.embed_stochastic(texts, mc=3, seed=1)
    assert passes.shape == (2, 3, 384) and not np.allclose(passes[:, 0], passes[:, 1])
    assert np.array_equal(minilm.embed(texts), minilm.embed(texts))


def test_image_embeddings_and_guards(effnet, tmp_path):
    data = digits_png(tmp_path / "digits", n=6, seed=0)
    images = [load_image(p, 40_000_000) for p in data.paths]
    emb = effnet.embed(images)
    assert emb.shape == (6, 1280) and np.isfinite(emb).all() and np.allclose(emb, effnet.embed(images), atol=1e-5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(tmp_path / "bad.png", 40_000_000)
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(tmp_path / "big.png", 1_000_000)

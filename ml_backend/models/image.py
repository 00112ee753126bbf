"""CNN image encoders: EfficientNet-Lite0 (pure torch, weights from PyPI) or torchvision models by name.

torchvision is imported lazily and only when a config asks for ``torchvision:<name>``: the PyPI torchvision
wheel is a CUDA build that cannot load next to a CPU torch, so the default path must not touch it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml_backend.models.config import EncoderConfig
from ml_backend.models.encoders import Encoder, fingerprint_of, resolve_package_path

# EfficientNet-Lite was trained on inputs scaled to [-1, 1]; torchvision models on ImageNet mean/std.
_LITE_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ImageError(ValueError):
    """An image that cannot be used: unreadable, undecodable or too large. The message says which."""


def load_image(path: str | Path, max_pixels: int) -> Image.Image:
    """Open and fully decode an image as RGB, refusing decompression bombs before decoding the pixels."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height} pixels, more than the limit of {max_pixels}")
            im.draft("RGB", (1024, 1024))  # JPEG: decode at reduced scale when the image is much larger
            return im.convert("RGB")
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode image {Path(path).name}: {exc}") from exc


def _efficientnet_lite(config: EncoderConfig) -> tuple[nn.Module, int]:
    from efficientnet_lite_pytorch import EfficientNet

    weights = resolve_package_path(config.weights) if config.weights else None
    weights = weights or config.weights
    if not weights:
        raise ValueError("efficientnet-lite needs encoder.weights (a .pth file or python-package:<module>)")
    net = EfficientNet.from_pretrained(config.pretrained, weights_path=weights)
    return _LiteFeatures(net), int(net._fc.in_features)


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite up to global average pooling: the 1280-d image embedding."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _torchvision(config: EncoderConfig) -> tuple[nn.Module, int]:
    try:
        import torchvision.models as tvm
    except Exception as exc:  # ImportError, or the CUDA-build wheel failing to load its operators
        raise RuntimeError(f"{config.pretrained} needs torchvision built for torch {torch.__version__}: {exc}") from exc
    name = config.pretrained.split(":", 1)[1]
    net = tvm.get_model(name, weights=config.weights)
    for attr in ("fc", "classifier", "heads"):  # drop the ImageNet classifier, keep pooled features
        if hasattr(net, attr):
            setattr(net, attr, nn.Identity())
            break
    net.eval()
    with torch.no_grad():
        dim = int(net(torch.zeros(1, 3, config.image_size, config.image_size)).shape[-1])
    return net, dim


class ImageEncoder(Encoder):
    """A CNN backbone without its classifier; inputs are PIL images (see :func:`load_image`)."""

    def __init__(self, config: EncoderConfig):
        if config.pretrained.startswith("torchvision:"):
            self.network, self.dim = _torchvision(config)
            mean, std = _IMAGENET_NORM
        elif config.pretrained.startswith("efficientnet-lite"):
            self.network, self.dim = _efficientnet_lite(config)
            mean, std = _LITE_NORM
        else:
            raise ValueError(
                f"unknown image backbone {config.pretrained!r}: use efficientnet-lite0 or torchvision:<name>"
            )
        self.network.eval()
        self.size = config.image_size
        self.batch_size = config.batch_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.fingerprint = fingerprint_of("image", config.pretrained, config.weights, config.image_size)

    def _preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = [np.asarray(im.resize((self.size, self.size), Image.BILINEAR), dtype=np.float32) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        return (x - self.mean) / self.std

    def _forward(self, batch: Sequence[Image.Image]) -> torch.Tensor:
        return self.network(self._preprocess(batch))

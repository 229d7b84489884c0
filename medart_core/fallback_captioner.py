"""The offline fallback captioner: a description from the class label and measured image attributes.

Used when no VLM can be loaded (no weights on the machine) or chosen on purpose (`--vlm fallback`):
it is honest about what it knows — the simple caption, the dominant colours, brightness, contrast
and texture measured from pixels — and its rows are marked `source: fallback`, so they can be
found and replaced later by a VLM or a clinician.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SOURCE = "fallback"
_MEASURE_SIZE = 256  # measuring on a fixed size makes texture comparable across resolutions
_BACKGROUND_VALUE = 0.08  # near-black pixels are the frame around fundus/endoscopy/CT fields


@dataclass(frozen=True)
class ImageAttributes:
    """What the fallback captioner measured (luminance on 0..1, over the non-background pixels)."""

    colours: tuple[tuple[str, float], ...]  # (name, fraction of foreground), most frequent first
    brightness: float  # mean luminance
    contrast: float  # std of luminance
    texture: float  # mean absolute difference between neighbouring pixels
    background: float  # fraction of near-black frame pixels


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """A plain colour name per pixel from hue, saturation and value (rgb: N x 3, 0..1)."""
    high, low = rgb.max(axis=1), rgb.min(axis=1)
    value, chroma = high, high - low
    saturation = np.where(high > 0, chroma / np.maximum(high, 1e-6), 0.0)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.select(
        [high == r, high == g],
        [((g - b) / safe) % 6, (b - r) / safe + 2],
        (r - g) / safe + 4,
    ) * 60.0
    names = np.full(len(rgb), "grey", dtype=object)
    grey = saturation < 0.18
    names[grey & (value >= 0.85)] = "white"
    names[grey & (value >= 0.6) & (value < 0.85)] = "light grey"
    names[grey & (value < 0.35)] = "dark grey"
    coloured = ~grey
    bands = [(0, 15, "red"), (15, 45, "orange"), (45, 70, "yellow"), (70, 170, "green"),
             (170, 255, "blue"), (255, 290, "purple"), (290, 345, "pink"), (345, 361, "red")]
    for start, stop, name in bands:
        names[coloured & (hue >= start) & (hue < stop)] = name
    # Dark or washed-out warm hues read as brown (DAB stain, pigment) or pink (mucosa, eosin).
    warm = coloured & ((hue < 45) | (hue >= 345))
    names[warm & (value < 0.55) & (hue >= 10)] = "brown"
    names[warm & (value >= 0.55) & (saturation < 0.4) & ((hue < 15) | (hue >= 345))] = "pink"
    names[warm & (value >= 0.55) & (saturation < 0.45) & (hue >= 15) & (hue < 45)] = "light brown"
    names[coloured & (value < 0.2)] = "black"
    return names


def measure_attributes(image: Image.Image) -> ImageAttributes:
    """Colour, brightness, contrast and texture of an RGB image, ignoring a near-black frame."""
    image = image.convert("RGB")
    scale = _MEASURE_SIZE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    foreground = luminance > _BACKGROUND_VALUE
    if foreground.mean() < 0.05:  # an almost black image: measure all of it
        foreground = np.ones_like(foreground)
    names = colour_names(rgb[foreground])
    unique, counts = np.unique(names, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    colours = tuple((str(unique[i]), float(counts[i] / counts.sum())) for i in order)
    # Neighbour differences only where both pixels are foreground: the frame edge is not texture.
    dx = np.abs(np.diff(luminance, axis=1))[foreground[:, 1:] & foreground[:, :-1]]
    dy = np.abs(np.diff(luminance, axis=0))[foreground[1:, :] & foreground[:-1, :]]
    diffs = np.concatenate([dx, dy])
    return ImageAttributes(
        colours=colours,
        brightness=float(luminance[foreground].mean()),
        contrast=float(luminance[foreground].std()),
        texture=float(diffs.mean()) if diffs.size else 0.0,
        background=float(1.0 - foreground.mean()),
    )


def _grade(value: float, thresholds: tuple[float, float], words: tuple[str, str, str]) -> str:
    return words[0] if value < thresholds[0] else words[1] if value < thresholds[1] else words[2]


def describe_attributes(simple_caption: str, attributes: ImageAttributes) -> str:
    """'<simple caption>, mostly orange with red areas on a dark background; moderately bright, ...'"""
    main, *others = attributes.colours
    colour = f"mostly {main[0]}"
    minor = [name for name, share in others[:2] if share >= 0.15]
    if minor:
        colour += f" with {' and '.join(minor)} areas"
    if attributes.background >= 0.15:
        colour += " on a dark background"
    brightness = _grade(attributes.brightness, (0.3, 0.6), ("dark", "moderately bright", "bright"))
    contrast = _grade(attributes.contrast, (0.08, 0.18), ("low", "moderate", "high"))
    texture = _grade(attributes.texture, (0.015, 0.045), ("a smooth", "a fine-grained", "a coarse, heterogeneous"))
    return f"{simple_caption.rstrip(' .')}, {colour}; {brightness}, with {contrast} contrast and {texture} texture."


class FallbackCaptioner:
    """Describes images from measured attributes; same call shape as the VLM captioner."""

    source = SOURCE

    def __call__(self, requests, attempt: int = 0) -> list[str]:
        return [describe_attributes(r.simple_caption, measure_attributes(r.image)) for r in requests]

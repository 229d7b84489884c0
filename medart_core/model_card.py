"""Sampling defaults a model recommends in its model card.

The Hugging Face convention is `inference: parameters:` in the README front matter (what the
Hub's widget uses). A tiny model trained from scratch, like the bundled demo model, wants a much
lower guidance scale than PixArt-alpha's 4.5; reading it from the card gives the app and the CLI
the right default without a model-specific flag. Models without such a card keep the usual
defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_GUIDANCE = 4.5  # PixArt-alpha's own default
DEFAULT_STEPS = 20


@dataclass(frozen=True)
class SamplingDefaults:
    guidance: float = DEFAULT_GUIDANCE
    steps: int = DEFAULT_STEPS


def _card_path(model: str | Path) -> Path | None:
    """The model's README.md: in a local folder, or already in the Hugging Face cache (never downloaded)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        card = folder / "README.md"
        return card if card.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(model), "README.md", local_files_only=True))
    except Exception:  # not cached, not a repo id, offline: the usual defaults apply
        return None


def sampling_defaults(model: str | Path | None) -> SamplingDefaults:
    """Guidance scale and step count from the card's `inference.parameters`, else PixArt-alpha's."""
    card_path = _card_path(model) if model else None
    if card_path is None:
        return SamplingDefaults()
    from huggingface_hub import ModelCard

    try:
        parameters = (ModelCard.load(card_path).data.to_dict().get("inference") or {}).get("parameters") or {}
        defaults = SamplingDefaults(guidance=float(parameters.get("guidance_scale", DEFAULT_GUIDANCE)),
                                    steps=int(parameters.get("num_inference_steps", DEFAULT_STEPS)))
        if defaults.guidance < 1 or defaults.steps < 1:
            raise ValueError(f"guidance_scale must be >= 1 and num_inference_steps >= 1, got {defaults}")
        return defaults
    except (ValueError, TypeError, AttributeError) as error:
        logger.warning("ignoring the sampling settings in %s: %s", card_path, error)
        return SamplingDefaults()

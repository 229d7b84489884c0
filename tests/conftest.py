"""Fixtures: a tiny randomly-initialised PixArt-alpha pipeline of the real classes, built offline."""

from __future__ import annotations

import pytest
import torch

from medart_core.lora import TRANSFORMER_TARGETS, add_lora, lora_config
from medart_core.pipeline import Precision, load_pipeline
from medart_core.scratch import ScratchConfig, build_pipeline, save_pipeline

TINY = ScratchConfig()  # 32x32 images, 16x16x4 latents, 2 transformer layers, 2-layer T5


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A diffusers save_pretrained folder of a tiny PixArt-alpha (transformer, VAE, T5, tokenizer, DPM-Solver++)."""
    return save_pipeline(build_pipeline(TINY, seed=0), tmp_path_factory.mktemp("tiny") / "pixart")


@pytest.fixture
def tiny_model(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir, precision=Precision.choose("cpu"))


def randomise_lora(module, seed: int = 0, std: float = 0.3) -> None:
    """Give every LoRA matrix non-zero weights (a fresh LoRA has B = 0 and changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.fixture(scope="session")
def transformer_lora_dir(tiny_pipeline_dir, tmp_path_factory):
    """A PEFT adapter folder for the tiny transformer, with non-zero weights."""
    from diffusers import PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel.from_pretrained(tiny_pipeline_dir / "transformer")
    peft_model = add_lora(transformer, lora_config(TRANSFORMER_TARGETS, rank=4))
    randomise_lora(peft_model)
    folder = tmp_path_factory.mktemp("lora") / "transformer_lora"
    peft_model.save_pretrained(folder)
    return folder

"""medart_core generation matches the stock diffusers PixArtAlphaPipeline, and LoRA adapters load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medart_core.errors import MedArtError
from medart_core.generation import GenerationSettings, generate_images
from medart_core.pipeline import Precision, find_adapters, load_pipeline

PROMPTS = ["An axial brain MRI slice, T1-weighted", "A fundus photograph of the retina"]
SEEDS = [3, 11]


def stock_images(pipe, prompts, seeds, steps, guidance):
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(
        prompts, generator=generators, num_inference_steps=steps, guidance_scale=guidance,
        height=32, width=32, use_resolution_binning=False, output_type="np",
    ).images


@pytest.mark.parametrize("guidance", [4.5, 1.0])
def test_same_image_as_stock_pipeline(tiny_model, guidance):
    settings = GenerationSettings(steps=6, guidance=guidance, height=32, width=32)
    ours = np.stack(generate_images(tiny_model, PROMPTS, SEEDS, settings, output_type="np"))
    stock = stock_images(tiny_model.pipe, PROMPTS, SEEDS, steps=6, guidance=guidance)
    assert ours.shape == stock.shape == (2, 32, 32, 3)
    assert np.abs(ours - stock).max() < 1e-4


def test_image_depends_on_seed_not_on_batch(tiny_model):
    settings = GenerationSettings(steps=4, height=32, width=32)
    batched = generate_images(tiny_model, PROMPTS, SEEDS, settings, output_type="np")
    alone = generate_images(tiny_model, PROMPTS[1:], SEEDS[1:], settings, output_type="np")
    assert np.abs(batched[1] - alone[0]).max() < 1e-5
    other_seed = generate_images(tiny_model, PROMPTS[1:], [12], settings, output_type="np")
    assert np.abs(other_seed[0] - alone[0]).max() > 1e-3


def test_lora_changes_output_and_reloads_exactly(tiny_pipeline_dir, tiny_model, transformer_lora_dir):
    settings = GenerationSettings(steps=4, height=32, width=32)
    base = generate_images(tiny_model, PROMPTS, SEEDS, settings, output_type="np")
    cpu = Precision.choose("cpu")
    first = load_pipeline(tiny_pipeline_dir, lora=transformer_lora_dir, precision=cpu)
    second = load_pipeline(tiny_pipeline_dir, lora=transformer_lora_dir.parent, precision=cpu)  # a training output folder
    with_lora = generate_images(first, PROMPTS, SEEDS, settings, output_type="np")
    reloaded = generate_images(second, PROMPTS, SEEDS, settings, output_type="np")
    assert np.abs(with_lora[0] - base[0]).max() > 1e-2
    assert np.array_equal(with_lora, reloaded)
    assert first.adapters.describe() == str(transformer_lora_dir)


def test_prompt_cache_skips_t5_for_repeated_prompts(tiny_model):
    encoder = tiny_model.prompts
    first = encoder(PROMPTS)
    calls = []
    original = encoder._encode_uncached
    encoder._encode_uncached = lambda prompts: calls.append(prompts) or original(prompts)
    second = encoder(list(reversed(PROMPTS)))
    assert calls == []
    assert torch.equal(second.embeds[0], first.embeds[1])
    encoder(["a new prompt"])
    assert calls == [["a new prompt"]]


def test_over_long_prompt_warns_that_it_was_truncated(tiny_model, caplog):
    long_prompt = " ".join(["a fundus photograph of the retina with an orange background"] * 40)
    with caplog.at_level("WARNING", logger="medart_core.pipeline"):
        generate_images(tiny_model, [long_prompt], [0], GenerationSettings(steps=2), output_type="np")
    assert any("truncated" in r.getMessage() and "120" in r.getMessage() for r in caplog.records)


def test_t5_in_fp16_is_refused(tiny_pipeline_dir):
    with pytest.raises(MedArtError, match="bf16 or fp32"):
        load_pipeline(tiny_pipeline_dir, precision=Precision(torch.device("cpu"), torch.float16, torch.float16))


def test_missing_model_and_bad_adapter_give_clear_errors(tiny_pipeline_dir, tmp_path):
    with pytest.raises(MedArtError, match="not found"):
        load_pipeline(tmp_path / "no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedArtError, match="not a LoRA adapter"):
        find_adapters(tmp_path / "empty")
    with pytest.raises(MedArtError, match="does not exist"):
        find_adapters(tmp_path / "missing")


def test_adapter_for_another_model_is_refused(tiny_pipeline_dir, tmp_path):
    from medart_core.lora import TEXT_ENCODER_TARGETS, add_lora, lora_config
    from transformers import T5EncoderModel

    t5 = T5EncoderModel.from_pretrained(tiny_pipeline_dir / "text_encoder")
    add_lora(t5, lora_config(TEXT_ENCODER_TARGETS, rank=2)).save_pretrained(tmp_path / "t5_lora")
    with pytest.raises(MedArtError, match="cannot load the LoRA adapter"):
        load_pipeline(tiny_pipeline_dir, lora=tmp_path / "t5_lora", precision=Precision.choose("cpu"))

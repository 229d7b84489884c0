"""A T5 text encoder quantised by bitsandbytes (8-bit / 4-bit), for generation and frozen-T5 training."""

from __future__ import annotations

import pytest
import torch

import finetune.train as train_module
from finetune.config import load_config
from medart_core.errors import MedArtError
from medart_core.generation import GenerationSettings, generate_images
from medart_core.pipeline import (Precision, check_loaded_text_encoder, load_pipeline,
                                  text_encoder_quantization_config)
from medart_core.scratch import ScratchConfig, build_pipeline, save_pipeline

PROMPTS = ["A fundus photograph of the retina, orange background", "An axial CT slice of the head"]
LAYERS = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}


@pytest.fixture(scope="module")
def t5_64_wide_dir(tmp_path_factory):
    """A tiny pipeline whose T5 layers are as wide as one 4-bit quantisation block (64)."""
    config = ScratchConfig(text_width=64, text_ff=128)
    return save_pipeline(build_pipeline(config, seed=1), tmp_path_factory.mktemp("t5-64") / "pixart")


def load_quantized_or_skip(model_dir, quantization):
    try:
        return load_pipeline(model_dir, precision=Precision.choose("cpu"), text_encoder_quantization=quantization)
    except MedArtError as err:
        pytest.skip(f"bitsandbytes cannot run a {quantization} T5 on this machine's CPU: {err}")


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantised_t5_encodes_prompts_like_the_full_precision_one(t5_64_wide_dir, quantization):
    full = load_pipeline(t5_64_wide_dir, precision=Precision.choose("cpu"))
    quantized = load_quantized_or_skip(t5_64_wide_dir, quantization)
    feed_forward = quantized.pipe.text_encoder.encoder.block[0].layer[1].DenseReluDense
    assert type(feed_forward.wi_0).__name__ == LAYERS[quantization]
    assert type(feed_forward.wo) is torch.nn.Linear  # kept unquantised by transformers
    assert torch.float16 not in {p.dtype for p in quantized.pipe.text_encoder.parameters()}

    expected, got = full.prompts(PROMPTS), quantized.prompts(PROMPTS)
    assert torch.equal(got.mask, expected.mask)
    similarity = torch.nn.functional.cosine_similarity(got.embeds.flatten(1), expected.embeds.flatten(1))
    assert (similarity > 0.9).all(), similarity
    images = generate_images(quantized, PROMPTS, [0, 1], GenerationSettings(steps=2), output_type="np")
    assert all(torch.isfinite(torch.from_numpy(image)).all() for image in images)


def test_narrow_4bit_t5_that_bitsandbytes_cannot_run_gives_a_clear_error(tiny_pipeline_dir):
    try:
        load_pipeline(tiny_pipeline_dir, precision=Precision.choose("cpu"), text_encoder_quantization="4bit")
    except MedArtError as err:
        assert "text_encoder_quantization none" in str(err)
    else:
        pytest.skip("this bitsandbytes runs 4-bit layers narrower than a quantisation block on CPU")


def test_bad_quantisation_settings_are_refused():
    with pytest.raises(MedArtError, match="must be one of none, 8bit, 4bit"):
        text_encoder_quantization_config("3bit", torch.device("cpu"), torch.float32)
    with pytest.raises(MedArtError, match="cannot run a 8bit T5 on mps"):
        text_encoder_quantization_config("8bit", torch.device("mps"), torch.float32)
    if not torch.cuda.is_available():
        with pytest.raises(MedArtError, match="no CUDA GPU"):
            text_encoder_quantization_config("8bit", torch.device("cuda"), torch.bfloat16)
    with pytest.raises(MedArtError, match="frozen-T5 training"):
        load_config(["--data", "d", "--text_encoder_quantization", "8bit", "--train_text_encoder_lora", "true"])


def test_fp16_t5_is_refused_on_every_path(tiny_pipeline_dir):
    with pytest.raises(MedArtError, match="bf16 or fp32"):
        Precision(torch.device("cpu"), torch.float32, torch.float16)
    assert Precision.choose("cpu", "fp16").text_encoder_dtype == torch.float32
    assert train_module.training_precision(torch.device("cpu"), "fp16").text_encoder_dtype == torch.float32
    from transformers import T5EncoderModel

    t5 = T5EncoderModel.from_pretrained(tiny_pipeline_dir / "text_encoder").half()
    with pytest.raises(MedArtError, match="bf16 or fp32"):
        check_loaded_text_encoder(t5)


def test_frozen_t5_training_and_generate_cli_with_8bit_t5(t5_64_wide_dir, tiny_train_data, tmp_path, monkeypatch,
                                                          request):
    load_quantized_or_skip(t5_64_wide_dir, "8bit")
    monkeypatch.chdir(request.config.rootpath)
    out = tmp_path / "run"
    args = ["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(t5_64_wide_dir), "--data",
            str(tiny_train_data), "--output_dir", str(out), "--max_train_steps", "1", "--hldf_every", "0",
            "--text_encoder_quantization", "8bit", "--cache_dir", str(tmp_path / "cache")]
    assert train_module.main(args) == 0
    assert (out / "transformer_lora" / "adapter_model.safetensors").is_file()

    from medart_core.__main__ import main

    assert main(["generate", "--model", str(t5_64_wide_dir), "--prompt", PROMPTS[0], "--steps", "2", "--device",
                 "cpu", "--text-encoder-quantization", "8bit", "--out", str(tmp_path / "gen")]) == 0
    assert (tmp_path / "gen" / "000000.png").is_file()

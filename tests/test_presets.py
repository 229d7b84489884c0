"""Training presets that are what they say: paper.yaml is the paper key for key, training length
from epochs or steps, the base model's own prompt limit, LoRA init, and HLDF's colour pairing."""

from __future__ import annotations

import pytest
import torch
import yaml

import finetune.train as train_module
from finetune.config import load_config
from medart_core.errors import MedArtError
from medart_core.losses import hldf_color_loss
from medart_core.pipeline import Precision

PAPER = "finetune/configs/paper.yaml"
PAPER_VALUES = {
    "lora_rank": 8, "lora_alpha": 8, "lora_init": "gaussian", "train_batch_size": 1, "train_text_encoder_lora": True,
    "caption_dropout": 0.0, "num_train_epochs": 15, "learning_rate": 1.0e-4, "lr_scheduler": "constant",
    "max_grad_norm": 1.0, "optimizer": "adamw8bit", "resolution": 512, "hldf_every": 500, "hldf_steps": 20,
    "hldf_guidance": 4.5, "hldf_weight": 0.05, "gradient_checkpointing": True, "max_prompt_tokens": 120,
    "max_train_steps": None, "hldf_color_pairing": "per_image",
}


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def test_print_config_shows_the_papers_values(capsys):
    assert train_module.main(["--config", PAPER, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert {key: yaml.safe_load(printed)[key] for key in PAPER_VALUES} == PAPER_VALUES
    assert "max_train_steps: null  # derived at start" in printed


def test_print_config_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_train_epochs: 2\nmax_train_steps: 10\ndata: d\n")
    assert train_module.main(["--config", str(bad), "--print-config"]) == 2
    assert "sets both num_train_epochs and max_train_steps" in capsys.readouterr().err


def test_training_length_from_epochs_or_steps_one_replacing_the_other():
    by_steps = load_config(["--config", PAPER, "--max_train_steps", "30"])
    assert by_steps.max_train_steps == 30 and by_steps.num_train_epochs is None
    recommended = load_config(["--config", "finetune/configs/tiny_cpu.yaml", "--num_train_epochs", "3"])
    assert recommended.max_train_steps is None and recommended.num_train_epochs == 3
    with pytest.raises(MedArtError, match="both given"):
        load_config(["--config", PAPER, "--max_train_steps", "30", "--num_train_epochs", "2"])
    # 15 epochs of 10 images, 1 image per process per micro-batch, 2 processes, 3 micro-batches per step
    config = load_config(["--config", PAPER, "--gradient_accumulation_steps", "3"]).with_train_steps(10, 2)
    assert config.max_train_steps == 25  # ceil(15 * 10 / 6)
    assert load_config(["--config", "finetune/configs/tiny_cpu.yaml"]).with_train_steps(10, 1).max_train_steps == 6


def test_the_prompt_limit_defaults_to_the_base_models_own(tiny_model):
    from diffusers import PixArtSigmaPipeline

    alpha = tiny_model.pipe
    sigma = PixArtSigmaPipeline(**{name: getattr(alpha, name) for name in
                                   ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")})
    default = load_config(["--config", "finetune/configs/tiny_cpu.yaml"])
    assert default.max_prompt_tokens is None
    assert train_module.prompt_token_budget(default, alpha) == 120
    assert train_module.prompt_token_budget(default, sigma) == 300  # a Sigma base is not cut at alpha's 120
    assert train_module.prompt_token_budget(load_config(["--config", PAPER]), sigma) == 120


def test_lora_init_gaussian_reaches_both_adapters(tiny_pipeline_dir):
    config = load_config(["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(tiny_pipeline_dir),
                          "--lora_init", "gaussian", "--train_text_encoder_lora", "true", "--lora_rank", "4"])
    _, transformer_lora, text_encoder_lora = train_module.build_models(config, Precision.choose("cpu"))
    for adapter in (transformer_lora, text_encoder_lora):
        assert adapter.peft_config["default"].init_lora_weights == "gaussian"
        weights = dict(adapter.named_parameters())
        assert all(w.abs().max() == 0 for name, w in weights.items() if "lora_B" in name)
        a = torch.cat([w.flatten() for name, w in weights.items() if "lora_A" in name])
        assert a.std().item() == pytest.approx(1 / 4, rel=0.2)  # peft's gaussian: N(0, 1/rank)
    with pytest.raises(MedArtError, match="lora_init must be true or gaussian"):
        load_config(["--config", "finetune/configs/tiny_cpu.yaml", "--lora_init", "pissa"])


def two_colour_batch():
    """A red and a blue image, as (images, per-image means, per-image stds)."""
    images = torch.zeros(2, 3, 8, 8)
    images[0, 0] = torch.linspace(0.6, 1.0, 64).view(8, 8)
    images[1, 2] = torch.linspace(0.6, 1.0, 64).view(8, 8)
    flat = images.reshape(2, 3, -1)
    return images, flat.mean(dim=2), flat.std(dim=2)


def test_per_image_pairing_matches_each_image_batch_pairing_only_the_mixture():
    real, means, stds = two_colour_batch()
    swapped = real.flip(0)  # the red caption got a blue image and the blue caption a red one
    per_image = hldf_color_loss(swapped, means, stds, pixels_per_image=64, pairing="per_image")
    batch = hldf_color_loss(swapped, means, stds, pixels_per_image=64, pairing="batch")
    assert per_image.item() > 0.5 and batch.item() == pytest.approx(0.0, abs=1e-6)
    for pairing in ("per_image", "batch"):
        assert hldf_color_loss(real, means, stds, pixels_per_image=64, pairing=pairing).item() == pytest.approx(
            0.0, abs=1e-6)
    # at batch 1 both are the paper's loss
    one = [hldf_color_loss(swapped[:1], means[1:], stds[1:], pixels_per_image=64, pairing=p) for p in
           ("per_image", "batch")]
    assert one[0].item() == pytest.approx(one[1].item(), rel=1e-5)


def test_the_trainers_hldf_step_uses_the_configured_pairing(tiny_pipeline_dir, monkeypatch):
    import dataclasses

    from accelerate import Accelerator

    config = load_config(["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(tiny_pipeline_dir),
                          "--hldf_steps", "1"])
    assert config.hldf_color_pairing == "per_image"  # the default
    models, _, _ = train_module.build_models(config, Precision.choose("cpu"))
    models.prompts = train_module.PromptEncoder(models.pipe)
    _, means, stds = two_colour_batch()
    seen = []
    real_loss = train_module.hldf_color_loss
    monkeypatch.setattr(train_module, "hldf_color_loss",
                        lambda *a, **k: seen.append(k["pairing"]) or real_loss(*a, **k))
    texts = ["A fundus photograph, orange", "A histopathology tile, purple"]
    for pairing in ("per_image", "batch"):
        colour = train_module.hldf_colour_step(models, (means, stds), texts,
                                               dataclasses.replace(config, hldf_color_pairing=pairing),
                                               torch.Generator().manual_seed(0), Accelerator(cpu=True))
        assert torch.isfinite(colour) and colour.requires_grad
    assert seen == ["per_image", "batch"]

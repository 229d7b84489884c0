"""Sana through Med-Art's own code: the tiny scratch build, its base entry, and generation equal to SanaPipeline's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medart_core.__main__ import main
from medart_core.bases import SANA, detect_base
from medart_core.model_presets import PRESETS
from medart_core.pipeline import Precision, load_pipeline

PROMPTS = ["A chest X-ray, frontal view, clear lungs", "A fundus photograph of the retina"]


def test_tokenizer_is_the_trained_one_and_survives_a_reload(tiny_sana_dir):
    from transformers import AutoTokenizer

    from medart_core.scratch import SanaScratchConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_sana_dir / "tokenizer")
    assert len(tokenizer) == SanaScratchConfig().vocab_size  # not the 5 tokens of GemmaTokenizer(vocab_file=...)
    ids = tokenizer("A chest X-ray").input_ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) < len("A chest X-ray")  # word pieces, not letters


def test_sana_folder_and_presets_are_the_sana_base(tiny_sana_dir):
    assert detect_base(str(tiny_sana_dir)) is SANA
    for name, resolution in (("Efficient-Large-Model/Sana_600M_512px_diffusers", 512),
                             ("Efficient-Large-Model/Sana_600M_1024px_diffusers", 1024)):
        assert detect_base(name) is SANA and PRESETS[name].resolution == resolution
    from diffusers import SanaPipeline

    assert SANA.pipeline_type() is SanaPipeline
    assert SANA.prompt_instruction()[0].startswith("Given a user prompt")


def stock_images(folder, prompts, seeds, steps, guidance, size):
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return pipe(prompts, generator=generators, num_inference_steps=steps, guidance_scale=guidance, height=size,
                width=size, use_resolution_binning=False, output_type="np").images


def test_generate_cli_gives_sana_pipelines_image(tiny_sana_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "out"
    assert main(["generate", "--model", str(tiny_sana_dir), "--prompts", str(prompts), "--n", "1", "--steps", "4",
                 "--guidance", "4.5", "--seed", "5", "--width", "32", "--height", "32", "--device", "cpu",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    ours = np.stack([np.asarray(Image.open(out / r["file_name"]).convert("RGB")) for r in rows]) / 255.0
    stock = stock_images(tiny_sana_dir, [r["text"] for r in rows], [r["seed"] for r in rows], 4, 4.5, 32)
    assert ours.shape == stock.shape == (2, 32, 32, 3)
    assert np.abs(ours - stock).max() <= 2 / 255
    assert np.abs(ours[0] - ours[1]).max() > 2 / 255  # two prompts and seeds, two images


def test_negative_prompt_has_no_instruction_prefix(tiny_sana_dir):
    """The stock pipeline prefixes the instruction to prompts, never to the empty negative prompt,
    and a batch mixing both keeps each row where it was."""
    model = load_pipeline(tiny_sana_dir, precision=Precision.choose("cpu"))
    pipe = model.pipe
    mixed = model.prompts._encode_uncached([PROMPTS[0], "", PROMPTS[1]])
    with torch.no_grad():
        stock_pos, stock_mask, stock_neg, neg_mask = pipe.encode_prompt(
            PROMPTS, do_classifier_free_guidance=True, complex_human_instruction=SANA.prompt_instruction())
    assert torch.allclose(mixed[0][[0, 2]], stock_pos, atol=1e-6) and torch.equal(mixed[1][[0, 2]], stock_mask)
    assert torch.allclose(mixed[0][1], stock_neg[0], atol=1e-6) and torch.equal(mixed[1][1], neg_mask[0])


def test_transformer_gets_the_scaled_timestep_as_in_sana_pipeline(tiny_sana_dir):
    """Sana checkpoints may set `timestep_scale` (1.0 for Sana 600M); the stock loop multiplies by it."""
    from medart_core.generation import GenerationSettings, generate_images

    model = load_pipeline(tiny_sana_dir, precision=Precision.choose("cpu"))
    model.pipe.transformer.register_to_config(timestep_scale=0.25)
    ours = np.stack(generate_images(model, PROMPTS[:1], [7], GenerationSettings(steps=2, guidance=1.0, height=32,
                                                                                width=32), output_type="np"))
    stock = model.pipe(PROMPTS[:1], generator=[torch.Generator("cpu").manual_seed(7)], num_inference_steps=2,
                       guidance_scale=1.0, height=32, width=32, use_resolution_binning=False, output_type="np").images
    assert np.abs(ours - stock).max() < 1e-4


# --- training: LoRA, flow matching, HLDF, the single-file LoRA ---------------------------------------


def sana_train_args(model_dir, data_dir, out, *extra):
    return ["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(model_dir), "--data", str(data_dir),
            "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def sana_run(tiny_sana_dir, tiny_train_data, tmp_path_factory):
    """4 steps with HLDF every 2, LoRA on the transformer (GLUMBConv convs included) and on Gemma2."""
    import os

    import finetune.train as train_module

    out = tmp_path_factory.mktemp("sana-run") / "run"
    here = os.getcwd()
    os.chdir(Path(__file__).resolve().parents[1])  # the config path is relative to the repository
    try:
        assert train_module.main(sana_train_args(tiny_sana_dir, tiny_train_data, out, "--max_train_steps", "4",
                                                 "--lora_feed_forward_convs", "true",
                                                 "--train_text_encoder_lora", "true")) == 0
    finally:
        os.chdir(here)
    return out


def sana_images(model, prompts=PROMPTS[:1], seeds=(3,)):
    from medart_core.generation import GenerationSettings, generate_images

    settings = GenerationSettings(steps=4, guidance=4.5, height=32, width=32)
    return np.stack(generate_images(model, list(prompts), list(seeds), settings, output_type="np"))


def test_hldf_training_on_sana_logs_the_colour_loss_and_its_adapters_change_the_output(sana_run, tiny_sana_dir):
    rows = [json.loads(line) for line in (sana_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [("loss/color" in r) for r in rows] == [False, True, False, True]
    assert all(np.isfinite(r["loss/color"]) and r["loss/color"] > 0 for r in rows if "loss/color" in r)
    config = json.loads((sana_run / "transformer_lora" / "adapter_config.json").read_text())
    assert {"to_q", "to_out.0", "caption_projection.linear_1", "time_embed.linear", "ff.conv_inverted",
            "ff.conv_point"} <= set(config["target_modules"])
    assert "q_proj" in json.loads((sana_run / "text_encoder_lora" / "adapter_config.json").read_text())["target_modules"]
    cpu = Precision.choose("cpu")
    base = sana_images(load_pipeline(tiny_sana_dir, precision=cpu))
    tuned = sana_images(load_pipeline(tiny_sana_dir, lora=sana_run, precision=cpu))
    assert np.abs(tuned - base).max() > 1e-3


def test_sana_single_file_lora_loads_with_stock_load_lora_weights_to_the_peft_image(sana_run, tiny_sana_dir):
    """The file holds the transformer's adapter only (SanaPipeline's loader reads no other); the
    Gemma2 adapter stays the PEFT folder and the model card says so."""
    from diffusers import SanaPipeline
    from safetensors import safe_open

    from medart_core.lora_file import LORA_FILE

    with safe_open(str(sana_run / LORA_FILE), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("transformer.") for key in keys)
    assert any("conv_point" in key for key in keys)
    assert "stays the PEFT folder `text_encoder_lora/`" in (sana_run / "README.md").read_text()

    stock = SanaPipeline.from_pretrained(tiny_sana_dir)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(sana_run)
    stock_image = stock(PROMPTS[:1], generator=[torch.Generator("cpu").manual_seed(3)], num_inference_steps=4,
                        guidance_scale=4.5, height=32, width=32, use_resolution_binning=False, output_type="np").images
    through_peft = sana_images(load_pipeline(tiny_sana_dir, lora=sana_run / "transformer_lora",
                                             precision=Precision.choose("cpu")))
    from_file = sana_images(load_pipeline(tiny_sana_dir, lora=sana_run / LORA_FILE, precision=Precision.choose("cpu")))
    assert np.abs(stock_image - through_peft).max() < 1e-4
    assert np.abs(from_file - through_peft).max() < 1e-6


def test_colour_loss_of_a_sana_hldf_sample_reaches_every_kind_of_lora_weight(tiny_sana_dir, tiny_train_data):
    """Through the flow sampler and the DC-AE decoder into the attention, conv and Gemma2 adapters."""
    from accelerate import Accelerator

    import finetune.train as train_module
    from finetune.config import load_config

    config = load_config(["--model", str(tiny_sana_dir), "--data", str(tiny_train_data), "--resolution", "32",
                          "--lora_rank", "2", "--hldf_steps", "2", "--lora_feed_forward_convs", "true",
                          "--train_text_encoder_lora", "true"])
    models, transformer_lora, text_encoder_lora = train_module.build_models(config, Precision.choose("cpu"))
    for adapted in (transformer_lora, text_encoder_lora):  # B = 0 would stop every gradient to A
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param.data, std=0.1)
    real = (torch.full((1, 3), 0.7), torch.full((1, 3), 0.1))
    loss = train_module.hldf_colour_step(models, real, [PROMPTS[0]], config, [torch.Generator().manual_seed(0)],
                                         Accelerator(cpu=True))
    loss.backward()
    for adapted, part in ((transformer_lora, "attn2.to_k.lora_A"), (transformer_lora, "ff.conv_point.lora_A"),
                          (text_encoder_lora, "self_attn.q_proj.lora_A")):
        grads = [p.grad for n, p in adapted.named_parameters() if part in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), part


def test_flow_matching_draws_timesteps_as_diffusers_sana_script(tiny_sana_dir):
    """Per image: u from compute_density_for_timestep_sampling, the timestep and sigma of index
    u * 1000 of the flow-match schedule, x_t = (1 - sigma) x + sigma noise, target noise - x."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from medart_core.objectives import training_objective

    pipe = load_pipeline(tiny_sana_dir, precision=Precision.choose("cpu")).pipe
    latents, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    for scheme in ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap"):
        objective = training_objective(SANA, pipe.scheduler.config, weighting_scheme=scheme)
        noised = objective.noise(latents, noise, [torch.Generator().manual_seed(s) for s in (4, 5)])
        schedule = FlowMatchEulerDiscreteScheduler()  # Sana's scheduler config sets no flow-match key
        for i, seed in enumerate((4, 5)):
            u = compute_density_for_timestep_sampling(scheme, 1, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                                      generator=torch.Generator().manual_seed(seed))
            index = int(u * 1000)
            sigma = schedule.sigmas[index]
            assert noised.timesteps[i] == schedule.timesteps[index]
            torch.testing.assert_close(noised.latents[i], (1 - sigma) * latents[i] + sigma * noise[i])
        torch.testing.assert_close(noised.target, noise - latents)
    assert torch.equal(noised.weighting.flatten(), 2 / (torch.pi * (1 - 2 * noised.timesteps / 1000
                                                                    + 2 * (noised.timesteps / 1000) ** 2)))


def test_weighting_scheme_is_refused_for_pixart_and_checked_by_name(tiny_pipeline_dir):
    from finetune.config import load_config
    from medart_core.bases import PIXART_ALPHA
    from medart_core.errors import MedArtError
    from medart_core.objectives import training_objective

    scheduler = load_pipeline(tiny_pipeline_dir, precision=Precision.choose("cpu")).pipe.scheduler
    with pytest.raises(MedArtError, match="for flow-matching bases"):
        training_objective(PIXART_ALPHA, scheduler.config, weighting_scheme="logit_normal")
    with pytest.raises(MedArtError, match="weighting_scheme must be one of none, sigma_sqrt"):
        load_config(["--data", "d", "--weighting_scheme", "logit-normal"])

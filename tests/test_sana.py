"""Sana through Med-Art's own code: the tiny scratch build, its base entry, and generation equal to SanaPipeline's."""

from __future__ import annotations

import json

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


def test_training_and_its_plan_refuse_sana_in_one_line_for_now(tiny_sana_dir, tiny_train_data, capsys):
    import finetune.train as train_module

    for argv in (["--data", str(tiny_train_data)], ["--data", str(tiny_train_data), "--plan", "cpu"]):
        assert train_module.main(["--model", str(tiny_sana_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert "training Sana is not supported yet" in err and "PixArt-alpha" in err

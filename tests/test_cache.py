"""Cached T5 embeddings and VAE latents: same losses as the uncached path, rebuilt when inputs change."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image

import finetune.train as train_module
from finetune.config import load_config
from medart_core.cache import DEFAULT_CACHE_FOLDER
from medart_core.errors import MedArtError
from medart_core.generation import GenerationSettings, generate_images
from medart_core.losses import channel_statistics, color_distribution_loss, hldf_color_loss, \
    image_channel_statistics, pool_channel_statistics
from medart_core.pipeline import Precision, load_pipeline
from medart_core.training_data import ImageCaptionDataset, cache_latents


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


@pytest.fixture
def data_copy(tiny_train_data, tmp_path):
    return shutil.copytree(tiny_train_data, tmp_path / "data")


def collate(items):
    return torch.utils.data.default_collate(items)


def test_pooled_per_image_statistics_equal_batch_statistics():
    images = torch.rand(3, 3, 20, 20)
    pooled = pool_channel_statistics(*image_channel_statistics(images), 20 * 20)
    for got, expected in zip(pooled, channel_statistics(images)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_fixture", ["tiny_pipeline_dir", "tiny_sana_dir"], ids=["pixart", "sana"])
def test_cached_and_uncached_steps_give_the_same_losses(model_fixture, data_copy, request):
    """Sana's DC-AE encodes deterministically (no latent_dist): its cache keeps the latents themselves."""
    model_dir = request.getfixturevalue(model_fixture)
    config = load_config(["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(model_dir),
                          "--data", str(data_copy), "--caption_dropout", "0.3", "--hldf_steps", "2"])
    models, _, _ = train_module.build_models(config, Precision.choose("cpu"))
    accelerator = Accelerator(cpu=True)
    objective = train_module.build_objective(models, config)
    images = ImageCaptionDataset(data_copy, config.resolution)
    prompts = [r.text.strip() for r in images.records] + [""]
    cached_data, cached_prompts = train_module.prepare_cached_inputs(models, images, prompts, config, accelerator)
    assert (data_copy / DEFAULT_CACHE_FOLDER).is_dir()
    indices = [0, 3, 5, 6]
    plain_batch = collate([images[i] for i in indices])
    cached_batch = collate([cached_data[i] for i in indices])
    assert "pixels" not in cached_batch
    assert ("latent_latent" in cached_batch) == (model_fixture == "tiny_sana_dir")  # DC-AE: no mean and std

    flips_seen = set()
    for micro_step in range(4):
        models.prompts = cached_prompts
        calls_before = cached_prompts.t5_calls
        generator = train_module.step_generators(0, micro_step, 4)
        flips_seen.update(torch.rand(1, generator=g).item() < 0.5
                          for g in train_module.step_generators(0, micro_step, 4))
        cached_loss, cached_colour = train_module.noise_prediction_step(models, cached_batch, config, generator,
                                                                        objective, accelerator)
        assert cached_prompts.t5_calls == calls_before  # every caption came from the cache
        models.prompts = train_module.PromptEncoder(models.pipe)
        plain_loss, plain_colour = train_module.noise_prediction_step(
            models, plain_batch, config, train_module.step_generators(0, micro_step, 4), objective, accelerator)
        assert cached_loss.item() == pytest.approx(plain_loss.item(), rel=1e-4)
        for got, expected in zip(cached_colour, plain_colour):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert flips_seen == {True, False}  # flipped and unflipped latents both came from the cache

    # HLDF's colour loss on cached statistics is the loss on the real pixels
    generated = torch.rand(2, 3, 32, 32)
    real = plain_batch["pixels"].float() / 2 + 0.5
    pooled = hldf_color_loss(generated, *cached_colour, pixels_per_image=32 * 32, pairing="batch")
    assert pooled.item() == pytest.approx(color_distribution_loss(generated, real).item(), rel=1e-4)


def test_training_from_the_cache_logs_the_losses_of_uncached_training(tiny_pipeline_dir, data_copy, tmp_path):
    def run(name, *extra):
        out = tmp_path / name
        args = ["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(tiny_pipeline_dir), "--data",
                str(data_copy), "--output_dir", str(out), "--max_train_steps", "2", "--hldf_steps", "2", *extra]
        assert train_module.main(args) == 0
        return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]

    cached, uncached = run("cached"), run("uncached", "--cache", "false")
    assert list((data_copy / DEFAULT_CACHE_FOLDER).glob("latents-*/shard-*.safetensors"))
    assert list((data_copy / DEFAULT_CACHE_FOLDER).glob("text-*/shard-*.safetensors"))
    for a, b in zip(cached, uncached):
        assert a["loss/mse"] == pytest.approx(b["loss/mse"], rel=1e-3)
        if "loss/color" in b:
            assert a["loss/color"] == pytest.approx(b["loss/color"], rel=1e-3)
    assert "loss/color" in cached[1]


def test_cache_is_rebuilt_for_a_changed_image_or_resolution(tiny_pipeline_dir, data_copy, tmp_path):
    vae = load_pipeline(tiny_pipeline_dir, precision=Precision.choose("cpu")).pipe.vae
    encoded = []
    real_encode = vae.encode
    vae.encode = lambda pixels: encoded.append(len(pixels)) or real_encode(pixels)
    cache_dir = tmp_path / "cache"

    first = cache_latents(ImageCaptionDataset(data_copy, 32), vae, cache_dir, "m")
    assert sum(encoded) == 2 * 8  # every image and its mirror image
    encoded.clear()
    again = cache_latents(ImageCaptionDataset(data_copy, 32), vae, cache_dir, "m")
    assert encoded == []
    torch.testing.assert_close(again[3]["latent_mean"], first[3]["latent_mean"])

    Image.new("RGB", (40, 40), (10, 200, 10)).save(data_copy / "train" / "3.png")
    changed = cache_latents(ImageCaptionDataset(data_copy, 32), vae, cache_dir, "m")
    assert sum(encoded) == 2  # only the edited image (and its mirror)
    assert not torch.allclose(changed[3]["rgb_mean"], first[3]["rgb_mean"])
    torch.testing.assert_close(changed[2]["latent_mean"], first[2]["latent_mean"])

    encoded.clear()
    larger = cache_latents(ImageCaptionDataset(data_copy, 40), vae, cache_dir, "m")
    assert sum(encoded) == 2 * 8 and larger[0]["latent_mean"].shape[-1] == 20
    assert len(list(cache_dir.glob("latents-*"))) == 2


def test_caching_text_with_a_t5_lora_is_refused_but_latents_are_still_cached(tiny_pipeline_dir):
    base = ["--model", str(tiny_pipeline_dir), "--data", "d", "--train_text_encoder_lora", "true"]
    with pytest.raises(MedArtError, match="cache_text_embeddings cannot be true while train_text_encoder_lora"):
        load_config([*base, "--cache_text_embeddings", "true"])
    config = load_config(base)
    assert config.caches_latents and not config.caches_text
    assert not load_config([*base, "--center_crop", "false"]).caches_latents


def test_random_crops_are_never_cached(tiny_pipeline_dir, data_copy):
    vae = load_pipeline(tiny_pipeline_dir, precision=Precision.choose("cpu")).pipe.vae
    with pytest.raises(MedArtError, match="center_crop"):
        cache_latents(ImageCaptionDataset(data_copy, 32, center_crop=False), vae, data_copy / "c", "m")


def test_generation_reuses_prompt_embeddings_across_runs(tiny_pipeline_dir, tmp_path):
    cpu, settings = Precision.choose("cpu"), GenerationSettings(steps=2)
    prompts = ["A fundus photograph of the retina", "An axial CT slice"]
    first = load_pipeline(tiny_pipeline_dir, precision=cpu, embedding_cache=tmp_path / "emb")
    images = generate_images(first, prompts, [1, 2], settings, output_type="np")
    assert first.prompts.t5_calls >= 1
    second = load_pipeline(tiny_pipeline_dir, precision=cpu, embedding_cache=tmp_path / "emb")
    again = generate_images(second, prompts, [1, 2], settings, output_type="np")
    assert second.prompts.t5_calls == 0
    assert np.abs(np.stack(again) - np.stack(images)).max() < 1e-6
    other = load_pipeline(tiny_pipeline_dir, precision=Precision(torch.device("cpu"), torch.float32, torch.bfloat16),
                          embedding_cache=tmp_path / "emb")
    other.prompts(prompts)
    assert other.prompts.t5_calls == 1  # another T5 dtype is another cache


def test_generate_cli_embedding_cache(tiny_pipeline_dir, tmp_path):
    from medart_core.__main__ import main

    args = ["generate", "--model", str(tiny_pipeline_dir), "--prompt", "A fundus photograph", "--steps", "2",
            "--device", "cpu", "--embedding-cache", str(tmp_path / "emb")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert list((tmp_path / "emb").glob("text-*/shard-*.safetensors"))


def fake_hub_snapshot(cache: "Path", repo: str, commit: str) -> None:
    """What huggingface_hub leaves after downloading `repo` at `commit`: refs/main and snapshots/<commit>/."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit / "vae").mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / commit / "model_index.json").write_text('{"_class_name": "PixArtAlphaPipeline"}')


def test_a_hub_models_cache_key_follows_its_snapshot_commit(tiny_model, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from medart_core.cache import latent_cache_key

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    vae, repo = tiny_model.pipe.vae, "medart-test/pixart-tiny"

    def key():
        return latent_cache_key(repo, vae, resolution=32, center_crop=True)

    fake_hub_snapshot(tmp_path / "hub", repo, "a" * 40)
    first = key()
    assert key() == first  # the same snapshot: the cache is reused
    fake_hub_snapshot(tmp_path / "hub", repo, "b" * 40)  # the checkpoint was updated on the hub and re-downloaded
    assert key() != first
    assert latent_cache_key("medart-test/another", vae, resolution=32, center_crop=True) != key()

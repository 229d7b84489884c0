"""finetune/train.py: LoRA + HLDF training on the tiny pipeline, resume, 2 processes, NaN safety."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import finetune.train as train_module
from finetune.config import load_config
from medart_core.errors import MedArtError
from medart_core.generation import GenerationSettings, generate_images
from medart_core.pipeline import Precision, load_pipeline
from medart_core.synthetic import is_marked_synthetic, read_png_text
from medart_core.training_data import ImageCaptionDataset


def train_args(model_dir, data_dir, out, *extra):
    return ["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(model_dir), "--data", str(data_dir),
            "--output_dir", str(out), *extra]


def adapter_weights(folder):
    return load_file(folder / "adapter_model.safetensors")


def log_rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def test_hldf_training_changes_lora_and_adapters_change_generation(tiny_pipeline_dir, tiny_train_data, tmp_path):
    out = tmp_path / "run"
    assert train_module.main(train_args(tiny_pipeline_dir, tiny_train_data, out, "--max_train_steps", "4")) == 0

    # that the colour term reaches the LoRA weights: tests/test_training_steps.py (a moved lora_B shows nothing,
    # the noise loss alone moves it)
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [("loss/color" in r) for r in rows] == [False, True, False, True]  # HLDF every 2 steps
    assert all(np.isfinite(r["loss/color"]) and r["loss/color"] > 0 for r in rows if "loss/color" in r)
    card = (out / "README.md").read_text()
    assert "Not for clinical use" in card and str(tiny_pipeline_dir) in card
    validation = sorted((out / "validation" / "step-4").glob("*.png"))
    assert [p.name for p in validation] == ["00.png", "01.png"]
    for path in validation:  # marked like every other generated image, with its prompt and seed
        assert is_marked_synthetic(path) and read_png_text(path)["seed"] in ("0", "1")
        captions = {r.text.strip() for r in ImageCaptionDataset(tiny_train_data, 32).records}
        assert read_png_text(path)["prompt"] in captions
    assert list((out / "logs").rglob("events.out.tfevents*"))

    cpu = Precision.choose("cpu")
    settings = GenerationSettings(steps=4)
    prompts, seeds = ["A fundus photograph of the retina"], [5]
    base = generate_images(load_pipeline(tiny_pipeline_dir, precision=cpu), prompts, seeds, settings, output_type="np")
    tuned = generate_images(load_pipeline(tiny_pipeline_dir, lora=out, precision=cpu), prompts, seeds, settings,
                            output_type="np")
    assert np.abs(tuned[0] - base[0]).max() > 1e-3


@pytest.mark.parametrize("draws", [[], ["--center_crop", "false", "--lora_dropout", "0.1"]],
                         ids=["center-crop", "random-crop-and-lora-dropout"])
def test_resume_latest_matches_an_uninterrupted_run(tiny_pipeline_dir, tiny_train_data, tmp_path, draws):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = lambda out, *extra: train_args(tiny_pipeline_dir, tiny_train_data, out, *draws, *extra)  # noqa: E731
    assert train_module.main(args(straight, "--max_train_steps", "6")) == 0
    assert train_module.main(args(resumed, "--max_train_steps", "3")) == 0
    assert train_module.main(args(resumed, "--max_train_steps", "6", "--resume", "latest")) == 0

    assert [r["step"] for r in log_rows(resumed)] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in train_module.list_checkpoints(resumed)] == ["checkpoint-3", "checkpoint-6"]
    expected = adapter_weights(straight / "transformer_lora")
    got = adapter_weights(resumed / "transformer_lora")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)
    for a, b in zip(log_rows(straight), log_rows(resumed)):
        assert a["loss/mse"] == pytest.approx(b["loss/mse"], rel=1e-5)


def test_non_finite_loss_skips_the_step_and_keeps_weights_clean(tiny_pipeline_dir, tiny_train_data, tmp_path,
                                                                 monkeypatch):
    calls = []
    import medart_core.objectives as objectives

    real_loss = objectives.noise_prediction_loss

    def nan_on_second_call(predicted, noise):
        calls.append(1)
        loss = real_loss(predicted, noise)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(objectives, "noise_prediction_loss", nan_on_second_call)  # the PixArt objective's loss
    out = tmp_path / "run"
    args = train_args(tiny_pipeline_dir, tiny_train_data, out, "--max_train_steps", "3", "--hldf_every", "0",
                      "--checkpointing_steps", "1", "--checkpoints_total_limit", "5")
    assert train_module.main(args) == 0
    step = {p.name: adapter_weights(p / "transformer_lora") for p in train_module.list_checkpoints(out)}
    for name in step["checkpoint-1"]:
        assert torch.equal(step["checkpoint-2"][name], step["checkpoint-1"][name])
        assert torch.isfinite(step["checkpoint-3"][name]).all()
    assert any(not torch.equal(step["checkpoint-3"][n], step["checkpoint-2"][n]) for n in step["checkpoint-2"])
    assert [r["skipped_steps"] for r in log_rows(out)] == [0, 1, 1]


def test_hldf_runs_once_per_optimizer_step_not_per_micro_batch(tiny_pipeline_dir, tiny_train_data, tmp_path,
                                                               monkeypatch):
    calls = []
    real_step = train_module.hldf_colour_step
    monkeypatch.setattr(train_module, "hldf_colour_step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    out = tmp_path / "run"
    args = train_args(tiny_pipeline_dir, tiny_train_data, out, "--max_train_steps", "2",
                      "--gradient_accumulation_steps", "3", "--hldf_every", "1")
    assert train_module.main(args) == 0
    assert len(calls) == 2


def test_text_encoder_lora_is_trained_saved_and_loaded(tiny_pipeline_dir, tiny_train_data, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny_pipeline_dir, tiny_train_data, out, "--max_train_steps", "2",
                      "--train_text_encoder_lora", "true", "--learning_rate", "0.01")
    assert train_module.main(args) == 0
    weights = adapter_weights(out / "text_encoder_lora")
    assert any("wi_0" in n for n in weights) and any("lora_B" in n and w.abs().max() > 0 for n, w in weights.items())
    model = load_pipeline(tiny_pipeline_dir, lora=out, precision=Precision.choose("cpu"))
    assert model.adapters.text_encoder == out / "text_encoder_lora"
    assert not model.pipe.text_encoder.training


def test_t5_stays_in_eval_mode_and_lora_weights_are_fp32(tiny_pipeline_dir):
    config = load_config(["--model", str(tiny_pipeline_dir), "--data", "x", "--train_text_encoder_lora", "true"])
    models, transformer_lora, text_encoder_lora = train_module.build_models(config, Precision.choose("cpu"))
    assert not models.pipe.text_encoder.training and models.pipe.transformer.training
    trainable = [p for p in models.pipe.transformer.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert not any(p.requires_grad for p in models.pipe.vae.parameters())


def test_config_file_then_command_line_overrides(tmp_path):
    config = load_config(["--config", "finetune/configs/paper.yaml", "--max_train_steps", "30", "--data", "d"])
    assert config.max_train_steps == 30 and config.hldf_every == 500 and config.hldf_steps == 20
    assert config.colour_weight == pytest.approx(0.05)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(MedArtError, match="unknown keys learning_rat"):
        load_config(["--config", str(bad)])


def test_missing_captions_are_refused_with_a_clear_message(tiny_pipeline_dir, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "data").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "data" / "a.png")
    assert train_module.main(train_args(tiny_pipeline_dir, tmp_path / "data", tmp_path / "out")) == 2
    assert "no caption" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("hldf_every", [0, 1], ids=["noise-loss", "with-hldf"])
def test_two_processes_train_what_one_process_with_the_whole_batch_trains(
        tiny_pipeline_dir, tiny_train_data, tmp_path, launch_two_cpu_processes, hldf_every):
    """2 processes x batch 2 and 1 process x batch 4 see the same images with the same draws (crops,
    flips, caption dropout, noise, timesteps, LoRA dropout, HLDF noise) and the same colour loss,
    so they train the same weights, up to the rounding of the all-reduce. HLDF runs with the
    `batch` colour pairing, whose statistics are pooled over processes (`per_image` is a mean over
    images, averaged over processes like the noise loss)."""
    steps = "3" if hldf_every == 0 else "2"
    common = ["--max_train_steps", steps, "--hldf_every", str(hldf_every), "--center_crop", "false",
              "--lora_dropout", "0.1", "--caption_dropout", "0.3", "--hldf_color_pairing", "batch", "--hldf_steps", "2"]
    two, one = tmp_path / "two", tmp_path / "one"
    result = launch_two_cpu_processes(["finetune/train.py", *train_args(tiny_pipeline_dir, tiny_train_data, two,
                                                                        *common, "--train_batch_size", "2")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert train_module.main(train_args(tiny_pipeline_dir, tiny_train_data, one, *common,
                                        "--train_batch_size", "4")) == 0

    assert "| processes | 2 |" in (two / "README.md").read_text()
    expected, got = adapter_weights(one / "transformer_lora"), adapter_weights(two / "transformer_lora")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
    for a, b in zip(log_rows(one), log_rows(two), strict=True):  # logged losses are the whole batch's
        assert b["loss/mse"] == pytest.approx(a["loss/mse"], rel=1e-4)
        assert b.get("loss/color", 0) == pytest.approx(a.get("loss/color", 0), rel=1e-4)


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_skips_the_step_on_every_process(
        tiny_pipeline_dir, tiny_train_data, tmp_path, launch_two_cpu_processes, monkeypatch):
    """Process 1's loss is NaN at step 2 only. The checkpoints (saved by process 0, after a check that
    both processes hold the same weights) show step 2 left the weights as they were."""
    monkeypatch.setenv("MEDART_TEST_NONFINITE_LOSS", "1:2")
    out = tmp_path / "run"
    result = launch_two_cpu_processes(["finetune/train.py", *train_args(
        tiny_pipeline_dir, tiny_train_data, out, "--max_train_steps", "3", "--hldf_every", "0",
        "--checkpointing_steps", "1", "--checkpoints_total_limit", "5")])
    assert result.returncode == 0, result.stderr[-3000:]
    step = {p.name: adapter_weights(p / "transformer_lora") for p in train_module.list_checkpoints(out)}
    for name in step["checkpoint-1"]:
        assert torch.equal(step["checkpoint-2"][name], step["checkpoint-1"][name])
    assert any(not torch.equal(step["checkpoint-3"][n], step["checkpoint-2"][n]) for n in step["checkpoint-2"])
    assert [r["skipped_steps"] for r in log_rows(out)] == [0, 1, 1]

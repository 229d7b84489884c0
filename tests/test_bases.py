"""More than one base: detection, PixArt-Sigma through generation, training, the memory plan and
captioning, and the single-file LoRA that other tools load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import finetune.train as train_module
from finetune.config import load_config
from finetune.plan import memory_plan
from medart_core.__main__ import main as medart_main
from medart_core.bases import PIXART_SIGMA, uses_micro_conditions
from medart_core.errors import MedArtError
from medart_core.generation import GenerationSettings, generate_images
from medart_core.lora_file import LORA_FILE, METADATA_KEY
from medart_core.pipeline import Precision, count_prompt_tokens, load_pipeline

# Five different sentences: about 200 T5 tokens with the tiny tokenizer, over alpha's 120, under Sigma's 300.
LONG_PROMPT = (
    "A fundus photograph of the retina: orange background, optic disc, branching vessels, dark macula. "
    "An axial CT slice of the head at the level of the ventricles, bone window, symmetric structures. "
    "A histopathology tile stained with hematoxylin and eosin, dense cells, purple nuclei, pink stroma. "
    "A chest X-ray, frontal view, showing clear lungs, a normal heart size and no effusion. "
    "Colour, shape, texture, size, location, border, surroundings, contrast, brightness, bleeding, lesion."
)
STOCK_CLASS = {"alpha": "PixArtAlphaPipeline", "sigma": "PixArtSigmaPipeline"}  # the ground truth, spelled out
CPU = Precision.choose("cpu")


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


@pytest.fixture(params=["alpha", "sigma"])
def base_dir(request, tiny_pipeline_dir, tiny_sigma_dir):
    return request.param, {"alpha": tiny_pipeline_dir, "sigma": tiny_sigma_dir}[request.param]


@pytest.fixture(scope="module")
def sigma_training_run(tiny_sigma_dir, tiny_train_data, tmp_path_factory):
    """Two LoRA steps with HLDF on PixArt-Sigma, T5 LoRA too, alpha (2) unlike the rank (4)."""
    out = tmp_path_factory.mktemp("sigma-run")
    args = ["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(tiny_sigma_dir), "--data",
            str(tiny_train_data), "--output_dir", str(out), "--max_train_steps", "2", "--lora_alpha", "2",
            "--train_text_encoder_lora", "true", "--learning_rate", "0.01", "--validation_inference_steps", "2"]
    assert train_module.main(args) == 0
    return out


def stock_image(kind, folder, prompt, seed, steps, guidance):
    import diffusers

    pipe = getattr(diffusers, STOCK_CLASS[kind]).from_pretrained(folder).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=steps,
                guidance_scale=guidance, height=32, width=32, use_resolution_binning=False, output_type="np").images[0]


def test_generate_cli_equals_the_stock_pipeline_of_each_base(base_dir, tmp_path):
    kind, folder = base_dir
    loaded = load_pipeline(folder, precision=CPU)
    assert type(loaded.pipe).__name__ == STOCK_CLASS[kind]
    assert count_prompt_tokens(loaded.pipe.tokenizer, LONG_PROMPT) > 120  # Sigma must read past alpha's limit
    assert loaded.prompts.max_tokens == {"alpha": 120, "sigma": 300}[kind]
    out = tmp_path / "out"
    assert medart_main(["generate", "--model", str(folder), "--prompt", LONG_PROMPT, "--seed", "3", "--steps", "4",
                        "--guidance", "4.5", "--height", "32", "--width", "32", "--device", "cpu",
                        "--out", str(out)]) == 0
    ours = np.asarray(Image.open(out / "000000.png").convert("RGB"), dtype=np.float64)
    stock = stock_image(kind, folder, LONG_PROMPT, seed=3, steps=4, guidance=4.5) * 255
    assert np.abs(ours - stock).max() <= 2


def test_sigma_reads_the_whole_prompt_alpha_cuts_it(tiny_sigma_dir):
    sigma = load_pipeline(tiny_sigma_dir, precision=CPU)
    full = sigma.prompts([LONG_PROMPT])
    assert int(full.mask.sum()) == count_prompt_tokens(sigma.pipe.tokenizer, LONG_PROMPT)  # all ~200 tokens


def test_micro_conditions_follow_the_transformer_not_its_sample_size():
    from diffusers import PixArtTransformer2DModel

    from medart_core.sampling import micro_conditions

    tiny = dict(num_layers=1, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                cross_attention_dim=16, caption_channels=16, norm_num_groups=1)
    sigma_1024 = PixArtTransformer2DModel(sample_size=128, use_additional_conditions=False, **tiny)
    with_conditions = PixArtTransformer2DModel(sample_size=16, use_additional_conditions=True, **tiny)
    alpha_1024 = PixArtTransformer2DModel(sample_size=128, **tiny)  # diffusers' default for sample size 128: on
    assert not uses_micro_conditions(sigma_1024)
    assert micro_conditions(sigma_1024, 2, 1024, 1024, device="cpu", dtype=torch.float32)["resolution"] is None
    added = micro_conditions(with_conditions, 2, 128, 64, device="cpu", dtype=torch.float32)
    assert added["resolution"].tolist() == [[128, 64]] * 2 and added["aspect_ratio"].tolist() == [[2.0]] * 2
    assert uses_micro_conditions(alpha_1024)


def test_hldf_training_on_sigma_changes_the_output_and_writes_a_diffusers_lora_file(sigma_training_run,
                                                                                     tiny_sigma_dir):
    from safetensors import safe_open

    out = sigma_training_run
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert "loss/color" in rows[-1] and np.isfinite(rows[-1]["loss/color"])  # HLDF ran on Sigma
    assert "pixart-sigma" in (out / "README.md").read_text()
    with safe_open(str(out / LORA_FILE), framework="pt") as handle:
        keys, header = list(handle.keys()), handle.metadata()
    assert all(k.startswith(("transformer.", "text_encoder.")) and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys) and not any(k.endswith(".alpha") for k in keys)
    config = json.loads(header[METADATA_KEY])
    assert (config["transformer.r"], config["transformer.lora_alpha"]) == (4, 2)
    assert "to_q" in config["transformer.target_modules"] and "wi_0" in config["text_encoder.target_modules"]

    settings = GenerationSettings(steps=4)
    prompts, seeds = ["A fundus photograph of the retina"], [5]
    base = generate_images(load_pipeline(tiny_sigma_dir, precision=CPU), prompts, seeds, settings, output_type="np")
    folders = load_pipeline(tiny_sigma_dir, lora=out, precision=CPU)
    single = load_pipeline(tiny_sigma_dir, lora=out / LORA_FILE, precision=CPU)
    tuned = generate_images(folders, prompts, seeds, settings, output_type="np")
    from_file = generate_images(single, prompts, seeds, settings, output_type="np")
    assert np.abs(tuned[0] - base[0]).max() > 1e-3
    assert np.abs(from_file[0] - tuned[0]).max() < 1e-6  # the same image as the PEFT folders
    assert (out / "checkpoints" / "checkpoint-2" / LORA_FILE).is_file()


def test_a_lora_file_without_its_config_is_refused(sigma_training_run, tiny_sigma_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(sigma_training_run / LORA_FILE), bare)  # tensors only, as a naive export would write
    with pytest.raises(MedArtError, match="no LoRA config in its header"):
        load_pipeline(tiny_sigma_dir, lora=bare, precision=CPU)


@pytest.fixture
def unsupported_dir(tmp_path):
    """A folder of another pipeline (only what detection reads: model_index.json)."""
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer":
                                                         ["diffusers", "FluxTransformer2DModel"]}))
    return folder


def test_an_unsupported_pipeline_gives_one_line_and_status_2(unsupported_dir, tmp_path, capsys):
    result = subprocess.run([sys.executable, "-m", "medart_core", "generate", "--model", str(unsupported_dir),
                             "--prompt", "x", "--device", "cpu", "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "gemm_4bit" not in line]  # bitsandbytes' import notice
    assert len(lines) == 1, result.stderr
    assert "is a FluxPipeline" in lines[0]
    assert all(name in lines[0] for name in ("PixArtAlphaPipeline", "PixArtSigmaPipeline", "SanaPipeline"))
    for argv in (["--data", "d"], ["--data", "d", "--plan", "cpu"]):
        assert train_module.main(["--model", str(unsupported_dir), *argv]) == 2
        assert "supported: PixArtAlphaPipeline" in capsys.readouterr().err


def test_a_preset_takes_its_transformer_and_its_other_components_from_two_repositories(tiny_sigma_dir, tmp_path,
                                                                                       monkeypatch):
    import medart_core.model_presets as presets

    transformer_only = tmp_path / "sigma-transformer"
    shutil.copytree(tiny_sigma_dir / "transformer", transformer_only / "transformer")
    preset = presets.Preset(PIXART_SIGMA, 32, str(transformer_only), str(tiny_sigma_dir), {})
    monkeypatch.setitem(presets.PRESETS, "org/sigma-transformer-only", preset)
    loaded = load_pipeline("org/sigma-transformer-only", precision=CPU)
    assert type(loaded.pipe).__name__ == "PixArtSigmaPipeline"
    whole = load_pipeline(tiny_sigma_dir, precision=CPU)
    settings = GenerationSettings(steps=2)
    assert np.array_equal(generate_images(loaded, ["a"], [0], settings, output_type="np"),
                          generate_images(whole, ["a"], [0], settings, output_type="np"))


def test_memory_plan_per_base(tiny_sigma_dir):
    def plan(model, *extra):
        return memory_plan(load_config(["--config", "finetune/configs/recommended.yaml", "--model", model, *extra]),
                           "cuda")

    alpha, sigma = plan("PixArt-alpha/PixArt-XL-2-512x512"), plan("PixArt-alpha/PixArt-Sigma-XL-2-512-MS")
    assert sigma.base.name == "PixArt-Sigma" and "prompts up to 300 tokens" in sigma.report()
    assert "prompts up to 120 tokens" in plan("PixArt-alpha/PixArt-Sigma-XL-2-512-MS", "--max_prompt_tokens", "120").report()
    assert sigma.parameters == alpha.parameters  # the same architecture ...
    assert sigma.rows["activations"] > alpha.rows["activations"]  # ... attending to 300 prompt tokens, not 120
    alpha_1024 = plan("PixArt-alpha/PixArt-XL-2-1024-MS", "--resolution", "1024")
    sigma_1024 = plan("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "--resolution", "1024")
    assert sigma_1024.parameters["transformer"] < alpha_1024.parameters["transformer"]  # no micro-condition embedders
    local = memory_plan(load_config(["--model", str(tiny_sigma_dir), "--data", "d"]), "cpu")
    assert local.base.name == "PixArt-Sigma"


def test_caption_token_budget_is_the_bases(tiny_pipeline_dir, tiny_sigma_dir):
    from medart_core.caption_validation import default_token_budget

    assert default_token_budget(str(tiny_sigma_dir)) == 300
    assert default_token_budget(str(tiny_pipeline_dir)) == 120
    assert default_token_budget("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS") == 300
    assert default_token_budget(None) == 120


def test_app_generates_and_compares_on_sigma(tiny_sigma_dir, tiny_train_data, team_accounts, tmp_path):
    from gradio_client import Client

    from test_app import ADMIN, credentials, start  # the app test's launcher (pytest puts tests/ on sys.path)

    demo, opened = start(tiny_sigma_dir, tmp_path / "home", "--data", str(tiny_train_data),
                         "--auth-file", str(team_accounts))
    try:
        client = Client(demo.local_url, auth=credentials(ADMIN), verbose=False)
        gallery, files = client.predict(LONG_PROMPT, 3, 2, 4.5, 1, api_name="/generate")
        assert len(files) == 1 and "SYNTHETIC" in gallery[0]["caption"]
        note, real, fake, histogram, stats = client.predict("fundus", "", 2, 2, api_name="/compare")
        assert len(real) == 2 and len(fake) == 2 and "Colour distance" in note
        assert type(opened.generator._model.pipe).__name__ == "PixArtSigmaPipeline"
    finally:
        demo.close()
        opened.store.close()


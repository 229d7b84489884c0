"""`finetune/train.py --plan`: a memory estimate from config files alone, with sane numbers."""

from __future__ import annotations

import pytest
import torch

import finetune.train as train_module
from finetune.config import load_config
from finetune.plan import memory_plan
from medart_core.errors import MedArtError
from medart_core.pipeline import Precision


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Any attempt to load weights fails the test."""
    import diffusers
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("--plan loaded weights")

    for owner in (diffusers.DiffusionPipeline, diffusers.ModelMixin, transformers.PreTrainedModel):
        monkeypatch.setattr(owner, "from_pretrained", classmethod(refuse))


def saved_activation_bytes(module, forward) -> int:
    """Bytes of the tensors autograd saves for backward while `forward()` runs, the module's weights not counted."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        forward()
    return sum(saved.values())


def xl_config(*extra):
    """PixArt-XL-2 at 512 px with a frozen, cached T5 and batch 4 (the recommended preset), blocks not recomputed."""
    return load_config(["--config", "finetune/configs/recommended.yaml", "--gradient_checkpointing", "false", *extra])


def test_plan_prints_and_exits_without_loading_weights(no_weight_loading, capsys):
    assert train_module.main(["--config", "finetune/configs/paper.yaml", "--plan", "cuda"]) == 0
    printed = capsys.readouterr().out
    assert "PixArt-alpha/PixArt-XL-2-512x512 on cuda" in printed and "no weights were loaded" in printed
    for row in ("transformer weights", "T5 weights", "optimizer state", "activations, plain step", "HLDF step",
                "peak overall"):
        assert row in printed


def test_plan_numbers_are_sane_for_pixart_xl(no_weight_loading):
    plan = memory_plan(xl_config(), device="cuda")
    assert 600e6 < plan.parameters["transformer"] < 620e6  # PixArt-XL-2: 611M
    assert 4.7e9 < plan.parameters["text_encoder"] < 5.0e9  # T5-XXL encoder
    assert plan.rows["transformer"] == 2 * plan.parameters["transformer"]  # bf16 on GPU
    assert plan.rows["adapters"] == 4 * plan.parameters["lora"]  # fp32 LoRA
    assert plan.rows["optimizer"] < plan.rows["adapters"]  # 8-bit AdamW
    assert plan.rows["text_encoder"] == 0  # cached embeddings: T5 leaves the GPU for the loop
    assert plan.rows["caching"] > 2 * plan.parameters["text_encoder"] * 0.99
    assert plan.rows["activations_other"] < plan.rows["activations"] / 4  # gradient checkpointing
    assert plan.peak_hldf > plan.peak_plain > plan.rows["transformer"]

    uncached = memory_plan(xl_config("--cache", "false"), device="cuda")
    eight, four = (memory_plan(xl_config("--cache", "false", "--text_encoder_quantization", q), device="cuda")
                   for q in ("8bit", "4bit"))
    assert uncached.rows["text_encoder"] > eight.rows["text_encoder"] > four.rows["text_encoder"] > 0
    assert memory_plan(xl_config(), device="cpu").rows["transformer"] == 4 * plan.parameters["transformer"]
    big = memory_plan(xl_config("--model", "PixArt-alpha/PixArt-XL-2-1024-MS", "--resolution", "1024"), device="cuda")
    assert big.rows["activations"] > 3.5 * plan.rows["activations"]  # 4x the tokens
    no_hldf = memory_plan(xl_config("--hldf_every", "0"), device="cuda")
    assert no_hldf.rows["hldf"] == 0 and no_hldf.peak == max(no_hldf.peak_plain, no_hldf.rows["caching"])


def test_per_block_activation_estimate_matches_what_autograd_keeps_for_pixart_xl_blocks():
    """The plan's bytes per transformer block against the tensors autograd saves for backward in a
    real forward pass of PixArt-XL-2's blocks (frozen, with LoRA, as in training; weights not
    counted), measured as the difference between a 2-block and a 1-block model, at 128 px."""
    from diffusers import PixArtTransformer2DModel

    from finetune.plan import PRESETS, transformer_activations
    from medart_core.lora import TRANSFORMER_TARGETS, add_lora, lora_config
    from medart_core.bases import PIXART_ALPHA

    MAX_PROMPT_TOKENS = PIXART_ALPHA.max_prompt_tokens

    def saved_and_estimated(layers: int) -> tuple[int, int]:
        config = {**PRESETS["PixArt-alpha/PixArt-XL-2-512x512"].configs["transformer"], "sample_size": 16,
                  "num_layers": layers}
        transformer = PixArtTransformer2DModel.from_config(config).requires_grad_(False)
        add_lora(transformer, lora_config(TRANSFORMER_TARGETS, rank=4))
        saved = saved_activation_bytes(transformer, lambda: transformer(
            torch.randn(1, 4, 16, 16), encoder_hidden_states=torch.randn(1, MAX_PROMPT_TOKENS, 4096),
            encoder_attention_mask=torch.ones(1, MAX_PROMPT_TOKENS), timestep=torch.tensor([500]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None}))
        return saved, transformer_activations(transformer, 1, 128, 8, 4, checkpointing=False,
                                                                prompt_tokens=MAX_PROMPT_TOKENS)

    (saved_1, estimate_1), (saved_2, estimate_2) = saved_and_estimated(1), saved_and_estimated(2)
    assert 0.9 < (estimate_2 - estimate_1) / (saved_2 - saved_1) < 1.25  # measured here: 1.10


@pytest.mark.parametrize("model_fixture, extra", [("tiny_pipeline_dir", []),
                                                  ("tiny_sana_dir", ["--lora_feed_forward_convs", "true"])],
                         ids=["pixart", "sana-with-conv-lora"])
def test_plan_counts_of_a_local_folder_match_the_loaded_model(model_fixture, extra, request):
    """Sana: its transformer, DC-AE and Gemma2 classes; conv LoRA A is a rank-channel conv."""
    config = load_config(["--model", str(request.getfixturevalue(model_fixture)), "--data", "d", "--lora_rank", "4",
                          "--train_text_encoder_lora", "true", "--text_encoder_lora_rank", "2", *extra])
    plan = memory_plan(config, device="cpu")
    models, transformer_lora, text_encoder_lora = train_module.build_models(config, Precision.choose("cpu"))
    trainable = [p for m in (transformer_lora, text_encoder_lora) for p in m.parameters() if p.requires_grad]
    assert plan.parameters["lora"] == sum(p.numel() for p in trainable)
    frozen = lambda module: sum(p.numel() for n, p in module.named_parameters() if "lora_" not in n)  # noqa: E731
    assert plan.parameters["transformer"] == frozen(models.pipe.transformer)
    assert plan.parameters["vae"] == frozen(models.pipe.vae)
    assert plan.parameters["text_encoder"] == frozen(models.pipe.text_encoder)


def test_plan_of_an_unknown_hub_id_says_what_to_do():
    with pytest.raises(MedArtError, match="no memory-plan preset"):
        memory_plan(load_config(["--model", "someone/other-model", "--data", "d"]))


def test_checkpointed_hldf_plans_the_decode_and_one_sampling_call_apart_not_together(no_weight_loading):
    """Measured at real size (bench/bench_real_size.py): with checkpointed sampling calls the
    decoder's activations are gone before a call is recomputed, so the HLDF row is the larger of
    the two; summing them over-planned PixArt-XL's HLDF step by 19%."""
    from finetune.plan import empty_models, read_component_configs, transformer_activations, vae_decoder_activations

    config = xl_config("--hldf_checkpointing", "true", "--vae_gradient_checkpointing", "true")
    base, configs = read_component_configs(config.model)
    transformer, vae, _ = empty_models(configs)
    one_call = transformer_activations(transformer, 2 * config.train_batch_size, config.resolution, 8, 2,
                                       checkpointing=False,
                                       prompt_tokens=config.max_prompt_tokens or base.max_prompt_tokens)
    decode = vae_decoder_activations(vae, config.train_batch_size, config.resolution, 2, checkpointing=True)
    assert memory_plan(config, device="cuda").rows["hldf"] == max(one_call, decode)
    kept = memory_plan(xl_config("--hldf_checkpointing", "false", "--vae_gradient_checkpointing", "true"), device="cuda")
    assert kept.rows["hldf"] == config.hldf_steps * one_call + decode  # every call's activations are stored


def test_plan_of_the_sana_presets_builds_sana_classes_without_weights(no_weight_loading, capsys):
    """Sana-600M (0.6B), DC-AE f32c32 and Gemma 2 2B from the presets' config files; 1024 px is 4x the tokens."""
    small = memory_plan(load_config(["--model", "Efficient-Large-Model/Sana_600M_512px_diffusers", "--data", "d",
                                     "--resolution", "512"]), device="cuda")
    assert 585e6 < small.parameters["transformer"] < 600e6
    assert 300e6 < small.parameters["vae"] < 320e6 and 2.5e9 < small.parameters["text_encoder"] < 2.7e9
    assert small.rows["transformer"] == 2 * small.parameters["transformer"]
    assert small.peak_hldf > small.peak_plain > small.rows["transformer"]
    big = memory_plan(load_config(["--model", "Efficient-Large-Model/Sana_600M_1024px_diffusers", "--data", "d",
                                   "--resolution", "1024"]), device="cuda")
    assert big.rows["activations"] > 3.5 * small.rows["activations"]
    convs = memory_plan(load_config(["--model", "Efficient-Large-Model/Sana_600M_512px_diffusers", "--data", "d",
                                     "--lora_feed_forward_convs", "true"]), device="cuda")
    assert convs.parameters["lora"] > small.parameters["lora"]
    assert train_module.main(["--model", "Efficient-Large-Model/Sana_600M_512px_diffusers", "--data", "d",
                              "--plan", "cuda"]) == 0
    assert "base: Sana" in capsys.readouterr().out


def test_per_block_activation_estimate_matches_what_autograd_keeps_for_sana_600m_blocks():
    """As for PixArt-XL: the plan's bytes per Sana block against autograd's saved tensors, 256 px."""
    from diffusers import SanaTransformer2DModel

    from finetune.plan import PRESETS, transformer_activations
    from medart_core.bases import SANA
    from medart_core.lora import add_lora, lora_config

    def saved_and_estimated(layers: int) -> tuple[int, int]:
        config = {**PRESETS["Efficient-Large-Model/Sana_600M_512px_diffusers"].configs["transformer"],
                  "sample_size": 8, "num_layers": layers}
        transformer = SanaTransformer2DModel.from_config(config).requires_grad_(False)
        add_lora(transformer, lora_config(SANA.lora_targets, rank=4))
        tokens = SANA.max_prompt_tokens
        saved = saved_activation_bytes(transformer, lambda: transformer(
            torch.randn(1, 32, 8, 8), encoder_hidden_states=torch.randn(1, tokens, 2304),
            encoder_attention_mask=torch.ones(1, tokens), timestep=torch.tensor([500.0])))
        return saved, transformer_activations(transformer, 1, 256, 32, 4, checkpointing=False,
                                                                prompt_tokens=tokens)

    (saved_1, estimate_1), (saved_2, estimate_2) = saved_and_estimated(1), saved_and_estimated(2)
    assert 0.9 < (estimate_2 - estimate_1) / (saved_2 - saved_1) < 1.15  # measured here: 1.00

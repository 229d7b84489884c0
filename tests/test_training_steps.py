"""The step logic of finetune/train.py in its corners: fp16 loss scaling, gradient accumulation with
HLDF, settings that would do nothing, checkpointing inside the HLDF sample."""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import finetune.train as train_module
from finetune.config import load_config
from medart_core.errors import MedArtError
from medart_core.pipeline import Precision


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def train_args(model_dir, data_dir, out, *extra):
    return ["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(model_dir), "--data", str(data_dir),
            "--output_dir", str(out), *extra]


def lora_weights(checkpoint):
    return load_file(checkpoint / "transformer_lora" / "adapter_model.safetensors")


# ---------------------------------------------------------------------------------------------
# fp16: the loss scaler must see a step that overflows, or it never backs off


def test_an_overflow_lowers_the_fp16_loss_scale_and_training_goes_on(tiny_pipeline_dir, tiny_train_data, tmp_path,
                                                                      monkeypatch):
    """accelerate makes a GradScaler for fp16 on GPUs only; this run gets a CPU one, the same class."""
    scalers = []

    class AcceleratorWithCpuScaler(Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=1000)
            scalers.append(self.scaler)

    calls = []
    import medart_core.objectives as objectives

    real_loss = objectives.noise_prediction_loss

    def overflow_on_second_call(predicted, noise):
        calls.append(1)
        loss = real_loss(predicted, noise)
        return loss * 1e38 if len(calls) == 2 else loss  # finite in fp32; scaled by 2**16 it overflows

    monkeypatch.setattr(train_module, "Accelerator", AcceleratorWithCpuScaler)
    monkeypatch.setattr(objectives, "noise_prediction_loss", overflow_on_second_call)  # the PixArt objective's loss
    out = tmp_path / "run"
    args = train_args(tiny_pipeline_dir, tiny_train_data, out, "--max_train_steps", "3", "--hldf_every", "0",
                      "--checkpointing_steps", "1", "--checkpoints_total_limit", "5")
    assert train_module.main(args) == 0
    assert scalers[0].get_scale() == 2.0 ** 15  # backed off once, at the overflow
    weights = {p.name: lora_weights(p) for p in train_module.list_checkpoints(out)}
    for name, value in weights["checkpoint-1"].items():
        assert torch.equal(weights["checkpoint-2"][name], value)  # the overflowing step was skipped
    assert any(not torch.equal(weights["checkpoint-3"][n], v) for n, v in weights["checkpoint-2"].items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed on a GPU")
def test_fp16_on_cpu_is_refused_with_one_clear_message(tiny_pipeline_dir, tiny_train_data, tmp_path, capsys):
    args = train_args(tiny_pipeline_dir, tiny_train_data, tmp_path / "run", "--mixed_precision", "fp16")
    assert train_module.main(args) == 2
    assert "mixed_precision fp16 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# HLDF: the colour term's gradient, alone and under gradient accumulation


FIXED_COLOUR = (torch.tensor([[0.7, 0.4, 0.2], [0.5, 0.3, 0.6]]), torch.tensor([[0.1, 0.2, 0.1], [0.2, 0.1, 0.2]]))
FIXED_TEXTS = ["A fundus photograph of the retina, orange background", "A histopathology tile, purple nuclei"]


@pytest.fixture(scope="module")
def first_step_gradients(tiny_pipeline_dir, tiny_train_data, tmp_path_factory, request):
    """LoRA gradients of the first optimizer step, by (gradient_accumulation_steps, hldf_weight).

    The HLDF sample is given fixed inputs (prompts, target colours, noise), so its colour term is
    the same function of the weights whichever micro-batch it rides on."""
    real_average, real_hldf = train_module.average_gradients, train_module.hldf_colour_step
    results = {}
    for accumulation, weight in [(1, 0.0), (1, 2.0), (2, 0.0), (2, 2.0)]:
        recorded = []

        def record(parameters, accelerator):
            recorded.append(torch.cat([p.grad.reshape(-1).clone() for p in parameters]))
            real_average(parameters, accelerator)

        def fixed_inputs(models, real_colour, texts, config, generators, accelerator):
            return real_hldf(models, FIXED_COLOUR, FIXED_TEXTS, config, torch.Generator().manual_seed(7), accelerator)

        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(request.config.rootpath)
            patch.setattr(train_module, "average_gradients", record)
            patch.setattr(train_module, "hldf_colour_step", fixed_inputs)
            out = tmp_path_factory.mktemp(f"grad-{accumulation}-{weight:g}")
            args = train_args(tiny_pipeline_dir, tiny_train_data, out, "--max_train_steps", "1", "--hldf_every", "1",
                              "--gradient_accumulation_steps", str(accumulation), "--hldf_weight", str(weight),
                              "--hldf_steps", "2", "--optimizer", "adamw")
            assert train_module.main(args) == 0
        results[accumulation, weight] = recorded[0]
    return results


def test_the_colour_loss_sends_its_own_gradient_into_the_lora_weights(first_step_gradients):
    """Same step, same data: only hldf_weight differs, so the difference is the colour term's gradient
    (the noise loss alone also moves lora_B, so a moved lora_B shows nothing about HLDF)."""
    noise_only, with_colour = first_step_gradients[1, 0.0], first_step_gradients[1, 2.0]
    colour = with_colour - noise_only
    assert colour.norm() > 0.05 * noise_only.norm()


def test_the_colour_weight_does_not_depend_on_gradient_accumulation(first_step_gradients):
    colour_g1 = first_step_gradients[1, 2.0] - first_step_gradients[1, 0.0]
    colour_g2 = first_step_gradients[2, 2.0] - first_step_gradients[2, 0.0]
    torch.testing.assert_close(colour_g2, colour_g1, rtol=1e-3, atol=1e-4 * colour_g1.abs().max().item())


# ---------------------------------------------------------------------------------------------
# settings that would do nothing


def test_hldf_grad_last_k_zero_is_refused_at_config_load():
    with pytest.raises(MedArtError, match="hldf_grad_last_k must be at least 1.*send no gradient"):
        load_config(["--data", "d", "--hldf_grad_last_k", "0"])
    assert load_config(["--data", "d", "--hldf_grad_last_k", "1"]).hldf_grad_last_k == 1


def test_checkpointed_hldf_sample_recomputes_each_transformer_call_once(tiny_pipeline_dir, caplog):
    """With block and HLDF checkpointing both on (the paper preset), each block runs twice per
    sampling step (forward, one recomputation), not three times, and the gradient is unchanged."""
    gradients, block_calls = {}, {}
    for block_checkpointing in (False, True):
        config = load_config(["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(tiny_pipeline_dir),
                              "--data", "d", "--hldf_steps", "3", "--hldf_checkpointing", "true",
                              "--gradient_checkpointing", str(block_checkpointing).lower()])
        torch.manual_seed(0)
        with caplog.at_level(logging.WARNING, logger="medart.train"):
            models, transformer_lora, _ = train_module.build_models(config, Precision.choose("cpu"))
        calls = []
        models.pipe.transformer.transformer_blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
        trainable = [p for p in models.pipe.transformer.parameters() if p.requires_grad]
        with torch.no_grad():  # a LoRA B of zeros would hide the gradient of A
            for name, param in models.pipe.transformer.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        loss = train_module.hldf_colour_step(models, FIXED_COLOUR, FIXED_TEXTS, config,
                                             torch.Generator().manual_seed(3), Accelerator(cpu=True))
        loss.backward()
        gradients[block_checkpointing] = torch.cat([p.grad.reshape(-1) for p in trainable])
        block_calls[block_checkpointing] = len(calls)
    assert block_calls == {False: 2 * 3, True: 2 * 3}
    torch.testing.assert_close(gradients[True], gradients[False])
    warnings = [r for r in caplog.records if "hldf_checkpointing are both on" in r.getMessage()]
    assert len(warnings) == 1


def test_lora_dropout_masks_survive_block_checkpointing(tiny_pipeline_dir, tiny_train_data):
    """Block checkpointing recomputes each block in the backward pass; each sample's dropout mask
    must be the forward pass's again, or the gradient is of a different network."""

    from medart_core.training_data import ImageCaptionDataset
    from medart_core.training_draws import micro_step_seed, sample_draws

    images = ImageCaptionDataset(tiny_train_data, 32, center_crop=False)
    batch = torch.utils.data.default_collate([images[(i, 1000 + i)] for i in range(2)])
    gradients = {}
    for block_checkpointing in (False, True):
        config = load_config(["--config", "finetune/configs/tiny_cpu.yaml", "--model", str(tiny_pipeline_dir),
                              "--data", "d", "--lora_dropout", "0.5", "--caption_dropout", "0",
                              "--gradient_checkpointing", str(block_checkpointing).lower()])
        torch.manual_seed(0)
        models, _, _ = train_module.build_models(config, Precision.choose("cpu"))
        models.prompts = train_module.PromptEncoder(models.pipe)
        with torch.no_grad():  # non-zero B, so dropout on the LoRA path changes the output
            for name, param in models.pipe.transformer.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        trainable = [p for p in models.pipe.transformer.parameters() if p.requires_grad]
        objective = train_module.build_objective(models, config)
        torch.manual_seed(micro_step_seed(0, 0))
        with sample_draws(batch["sample_seed"].tolist()):
            loss, _ = train_module.noise_prediction_step(models, batch, config, train_module.batch_generators(batch),
                                                         objective, Accelerator(cpu=True))
            loss.backward()
        gradients[block_checkpointing] = torch.cat([p.grad.reshape(-1) for p in trainable])
    torch.testing.assert_close(gradients[True], gradients[False])

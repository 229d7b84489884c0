"""LoRA + HLDF fine-tuning of a supported base (PixArt-alpha, PixArt-Sigma or Sana; medart_core.bases).

    accelerate launch finetune/train.py --config finetune/configs/paper.yaml [--key value ...]

The story, top to bottom: config -> models (frozen base + LoRA adapters) -> data ->
optimizer -> resume -> loop -> save. Each optimizer step trains on the base's latent loss (noise
prediction for PixArt, flow matching for Sana: medart_core.objectives); every `hldf_every` steps, Hybrid-Level Diffusion Fine-tuning also samples an image per real
image with the shared DPM-Solver++ loop *with gradients*, decodes it to pixels and adds a
colour-distribution loss against the real batch. Sampler, losses and loaders come from
medart_core, the same code the generation CLI and the app run.

Gradients of the (small) LoRA weights are averaged across processes by one all-reduce per step
instead of wrapping the transformer in DistributedDataParallel, which cannot follow the many
transformer calls of an HLDF sample before one backward pass.

Every random draw of a sample comes from its own seed (seed, micro-step, place in the global
batch; medart_core.training_draws), so resuming, or splitting a batch over processes, changes none.

With `cache: true` (the default) the text encoder and the VAE encoder run once per dataset, not
every step: the loop reads cached latents and prompt embeddings (medart_core.cache). `--plan`
prints the estimated memory of a config and exits, without loading any weights (finetune/plan.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.config import TrainConfig, load_config
from medart_core.errors import MedArtError
from medart_core.generation import GenerationSettings, generate_images, process_state
from medart_core.lora import add_lora, lora_config
from medart_core.cache import DEFAULT_CACHE_FOLDER, EmbeddingStore, text_cache_key
from medart_core.bases import base_of_pipeline
from medart_core.losses import (channel_sums_from_statistics, colour_statistics_distance, hldf_color_loss,
                                image_channel_statistics, statistics_from_sums)
from medart_core.lora_file import LORA_FILE, write_lora_file
from medart_core.pipeline import (TEXT_ENCODER_ADAPTER, TRANSFORMER_ADAPTER, AdapterPaths, LoadedModel, Precision,
                                  PromptEncoder, load_pipeline)
from medart_core.objectives import training_objective
from medart_core.sampling import TextConditioning, decode_latents, dpm_solver_sample, micro_conditions, predict_noise
from medart_core.synthetic import save_synthetic_png
from medart_core.training_data import (ImageCaptionDataset, ResumableShuffleSampler, cache_latents, encode_latents,
                                       sample_cached_latents)
from medart_core.training_draws import micro_step_seed, sample_draws, sample_generator, sample_seed, use_sample_dropout

logger = logging.getLogger("medart.train")
STATE_FILE = "training_state.pt"


# ---------------------------------------------------------------------------------------------
# precision and models


def choose_mixed_precision(config: TrainConfig, device: torch.device) -> str:
    if config.mixed_precision == "fp16" and device.type == "cpu":
        # accelerate has no loss scaler on CPU: fp16 gradients would underflow or overflow unchecked
        raise MedArtError("mixed_precision fp16 needs a GPU (its loss scaling exists only there); on CPU use "
                          "mixed_precision no (or bf16)")
    if config.mixed_precision != "auto":
        return config.mixed_precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def training_precision(device: torch.device, mixed_precision: str) -> Precision:
    """Frozen base weights in the mixed-precision dtype (fp32 on CPU); T5 in bf16 or fp32, never fp16."""
    model_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
    return Precision(device, model_dtype, torch.float32 if model_dtype == torch.float16 else model_dtype)


def build_models(config: TrainConfig, precision: Precision):
    """The base pipeline with a trainable LoRA on the transformer (and optionally on its text
    encoder), on the modules its medart_core.bases entry names; all else frozen."""
    loaded = load_pipeline(config.model, precision=precision, prompt_cache_size=0,
                           text_encoder_quantization=config.text_encoder_quantization)
    pipe, base = loaded.pipe, loaded.base
    if config.lora_feed_forward_convs and not base.lora_conv_targets:
        raise MedArtError(f"lora_feed_forward_convs is for Sana's convolutional feed-forward; {base.name}'s "
                          "feed-forward linears are adapted already: set it false")
    if config.vae_gradient_checkpointing and not pipe.vae._supports_gradient_checkpointing:
        raise MedArtError(f"{type(pipe.vae).__name__} ({base.vae}) has no gradient checkpointing in diffusers: "
                          "set vae_gradient_checkpointing false")
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    if config.gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
        if config.hldf_every and config.hldf_checkpointing:
            logger.warning("gradient_checkpointing and hldf_checkpointing are both on: blocks are checkpointed in "
                           "the noise-prediction step, but not inside the HLDF sample, whose every transformer "
                           "call is already recomputed once (block checkpointing there would recompute it twice)")
    if config.vae_gradient_checkpointing:
        pipe.vae.enable_gradient_checkpointing()
    transformer_lora = add_lora(pipe.transformer, lora_config(
        base.transformer_lora_targets(config.lora_feed_forward_convs), rank=config.lora_rank, alpha=config.lora_alpha,
        dropout=config.lora_dropout, use_dora=config.use_dora, init=config.lora_init))
    text_encoder_lora = None
    if config.train_text_encoder_lora:
        text_encoder_lora = add_lora(pipe.text_encoder, lora_config(
            base.text_encoder_lora_targets, rank=config.text_encoder_lora_rank or config.lora_rank,
            alpha=config.lora_alpha, dropout=config.lora_dropout, use_dora=config.use_dora, init=config.lora_init))
    for adapted in (transformer_lora, text_encoder_lora):
        if adapted is not None:
            use_sample_dropout(adapted)  # LoRA dropout masks from each sample's seed (resume, processes)
    pipe.transformer.train()
    pipe.text_encoder.eval()  # text-encoder dropout stays off, LoRA or not
    return loaded, transformer_lora, text_encoder_lora


def build_objective(models, config: TrainConfig):
    """The base's training objective (medart_core.objectives) on its own scheduler config."""
    return training_objective(models.base, models.pipe.scheduler.config, weighting_scheme=config.weighting_scheme,
                              logit_mean=config.logit_mean, logit_std=config.logit_std, mode_scale=config.mode_scale)


def make_optimizer(parameters, config: TrainConfig, device: torch.device):
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        except (ImportError, RuntimeError) as err:
            logger.warning("bitsandbytes AdamW8bit is unavailable on %s (%s); using torch AdamW", device, err)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


# ---------------------------------------------------------------------------------------------
# one step


def batch_generators(batch: dict) -> list[torch.Generator]:
    """One generator per sample, from the sample seeds the sampler gave (seed, micro-step, global
    position): a resumed run, or the batch split over other processes, draws the same numbers."""
    return [sample_generator(int(seed)) for seed in batch["sample_seed"]]


def step_generators(seed: int, micro_step: int, batch_size: int) -> list[torch.Generator]:
    """The generators of a batch that did not come from ResumableShuffleSampler (benchmarks, tests)."""
    return [sample_generator(sample_seed(seed, micro_step, position)) for position in range(batch_size)]


def prompt_token_budget(config: TrainConfig, pipe) -> int:
    """`max_prompt_tokens`, or the base model's own limit, so a base with a longer one is not cut."""
    return config.max_prompt_tokens or base_of_pipeline(pipe).max_prompt_tokens


def encode_text(prompts: PromptEncoder, texts: list[str], trainable: bool, dtype) -> TextConditioning:
    text = prompts.encode_trainable(texts) if trainable else prompts(texts)
    return text.to(prompts.pipe.transformer.device, dtype)


def noise_prediction_step(models, batch, config, generators, objective, accelerator):
    """The base's latent diffusion loss on a real batch (with flips and caption dropout): noise
    prediction for PixArt, flow matching for Sana (`objective`: build_objective). Returns the
    loss and each real image's per-channel colour mean and std in [0, 1] ((B, C) each), for HLDF.

    `generators`: one per sample (batch_generators); each sample's flip, caption dropout, latent
    sample, noise and timestep come from its own, so they do not depend on the rest of the batch.
    A batch holds pixels, or cached latents (see medart_core.training_data): both draw the same
    random numbers in the same order, so they give the same loss."""
    pipe = models.pipe
    device, dtype = accelerator.device, pipe.transformer.dtype
    size = len(batch["text"])
    if len(generators) != size:
        raise ValueError(f"{size} samples but {len(generators)} generators")
    flip = torch.zeros(size, dtype=torch.bool)
    if config.random_flip:
        flip = torch.cat([torch.rand(1, generator=g) for g in generators]) < 0.5
    dropped = torch.cat([torch.rand(1, generator=g) for g in generators]) < config.caption_dropout
    texts = ["" if drop else text for drop, text in zip(dropped.tolist(), batch["text"])]
    text = encode_text(models.prompts, texts, config.train_text_encoder_lora, dtype)
    if "pixels" not in batch:
        latents = sample_cached_latents(batch, flip, generators, device)
        real_colour = batch["rgb_mean"], batch["rgb_std"]  # a flip leaves them unchanged
    else:
        pixels = batch["pixels"].to(device)
        pixels = torch.where(flip.to(device)[:, None, None, None], pixels.flip(-1), pixels)
        with torch.no_grad():
            latents = encode_latents(pipe.vae, pixels.to(pipe.vae.dtype), generators)
        real_colour = image_channel_statistics(pixels.float() / 2 + 0.5)
    latents = (latents * pipe.vae.config.scaling_factor).to(dtype)
    noise = randn_tensor(latents.shape, generator=generators, dtype=torch.float32).to(device, dtype)
    noised = objective.noise(latents, noise, generators)
    added = micro_conditions(pipe.transformer, len(latents), config.resolution, config.resolution,
                             device=device, dtype=dtype)
    with accelerator.autocast():
        predicted = predict_noise(pipe.transformer, noised.latents, noised.timesteps, text, added)
    return objective.loss(predicted, noised), real_colour


def hldf_colour_step(models, real_colour, texts, config, generators, accelerator):
    """HLDF: sample one image per real image (from its caption) through DPM-Solver++ with
    gradients, decode it to pixels and compare its per-channel colour statistics with its real
    image's, or the batch's with the real batch's (`hldf_color_pairing`; `real_colour`: per-image
    per-channel mean and std in [0, 1], as noise_prediction_step returns them). Each image's
    starting noise comes from its sample's generator (after noise_prediction_step's draws)."""
    pipe = models.pipe
    device, dtype = accelerator.device, pipe.transformer.dtype
    text = encode_text(models.prompts, texts, config.train_text_encoder_lora, dtype)
    negative = encode_text(models.prompts, [""] * len(texts), config.train_text_encoder_lora, dtype)
    size = config.resolution // pipe.vae_scale_factor
    shape = (len(texts), pipe.transformer.config.in_channels, size, size)
    noise = randn_tensor(shape, generator=generators, dtype=torch.float32) * pipe.scheduler.init_noise_sigma
    noise = noise.to(device, models.base.latent_dtype(dtype))  # as generation samples: fp32 for Sana
    with accelerator.autocast():
        latents = dpm_solver_sample(
            pipe.transformer, pipe.scheduler, noise, text, negative,
            num_steps=config.hldf_steps, guidance_scale=config.hldf_guidance,
            image_size=(config.resolution, config.resolution), requires_grad=True,
            grad_last_k=config.hldf_grad_last_k, gradient_checkpointing=config.hldf_checkpointing,
        )
        generated = decode_latents(pipe.vae, latents)
    generated = generated.float() / 2 + 0.5
    pixels_per_image = config.resolution ** 2
    if config.hldf_color_pairing == "batch" and accelerator.num_processes > 1:
        return batch_colour_loss_over_processes(generated, *real_colour, pixels_per_image, accelerator)
    # per_image: a mean over images, so the mean over processes (gradient averaging) is the global batch's
    return hldf_color_loss(generated, *real_colour, pixels_per_image=pixels_per_image,
                           pairing=config.hldf_color_pairing)


def batch_colour_loss_over_processes(generated: torch.Tensor, real_means: torch.Tensor, real_stds: torch.Tensor,
                                     pixels_per_image: int, accelerator) -> torch.Tensor:
    """The `batch` colour loss of the global batch: per-channel statistics pooled over every
    process's images, so a batch split over processes has the loss (and, once gradients are
    averaged, the gradient) of the whole batch on one process. The generated sums cross processes
    by a differentiable all-reduce: each process back-propagates the global loss into its images."""
    from torch.distributed.nn.functional import all_reduce

    flat = generated.transpose(0, 1).reshape(generated.shape[1], -1)
    generated_sums = all_reduce(torch.stack([flat.sum(dim=1), (flat ** 2).sum(dim=1)]))
    real_sums = torch.stack([s.sum(dim=0) for s in channel_sums_from_statistics(real_means, real_stds,
                                                                                 pixels_per_image)])
    real_sums = accelerator.reduce(real_sums.to(flat.device), reduction="sum")
    total = pixels_per_image * generated.shape[0] * accelerator.num_processes
    return colour_statistics_distance(*statistics_from_sums(*generated_sums, total),
                                      *statistics_from_sums(*real_sums, total))


def prepare_cached_inputs(models, images, prompts, config, accelerator):
    """The dataset to train on and the prompt encoder: cached latents (center crops) and cached T5
    embeddings (T5 frozen) where the config allows, built by the main process first."""
    pipe = models.pipe
    cache_dir = Path(config.cache_dir or Path(config.data) / DEFAULT_CACHE_FOLDER)
    max_tokens = prompt_token_budget(config, pipe)
    dataset, store = images, None
    with accelerator.main_process_first():
        if config.caches_latents:
            dataset = cache_latents(images, pipe.vae, cache_dir, config.model, batch_size=config.train_batch_size)
        elif config.cache:
            logger.info("latents are not cached with random crops (center_crop false): the VAE runs every step")
        if config.caches_text:
            store = EmbeddingStore(cache_dir, text_cache_key(pipe, config.model, max_tokens=max_tokens,
                                                             clean_caption=models.base.clean_caption,
                                                             quantization=config.text_encoder_quantization))
            PromptEncoder(pipe, store=store, max_tokens=max_tokens).precompute(prompts)
    encoder = PromptEncoder(pipe, max_entries=len(prompts), store=store, max_tokens=max_tokens)
    if store is not None and pipe.text_encoder.device.type == "cuda" and config.text_encoder_quantization == "none":
        pipe.text_encoder.to("cpu")  # every prompt the run needs is cached: free T5's GPU memory
        torch.cuda.empty_cache()
    return dataset, encoder


def accumulate_gradients(models, batches, config, objective, accelerator, *, micro_step: int,
                         hldf_now: bool, nonfinite_loss: bool = False) -> tuple[dict, bool]:
    """Back-propagate the loss of one optimizer step's micro-batches (the first is `micro_step`)
    into the LoRA gradients; returns the logs and whether every loss was finite.

    The noise-prediction loss is averaged over the micro-batches; the colour term (HLDF, once per
    optimizer step, on the last micro-batch) keeps its full `hldf_weight` at any accumulation.
    A non-finite loss is still back-propagated: its gradients make the step skipped, and every
    process takes part in every backward pass. `nonfinite_loss` (tests only) makes the loss NaN."""
    accumulation = config.gradient_accumulation_steps
    logs, finite = {"loss/mse": 0.0}, True
    for index in range(accumulation):
        batch = next(batches)
        torch.manual_seed(micro_step_seed(config.seed, micro_step + index))  # LoRA dropout's salts draw from it
        generators = batch_generators(batch)
        with sample_draws(batch["sample_seed"].tolist()):
            loss, real_colour = noise_prediction_step(models, batch, config, generators, objective, accelerator)
            if nonfinite_loss:
                loss = loss * float("nan")
            logs["loss/mse"] += mean_over_processes(loss, accelerator) / accumulation
            loss = loss / accumulation
            if hldf_now and index == accumulation - 1:  # once per optimizer step, never per micro-batch
                colour = hldf_colour_step(models, real_colour, batch["text"], config, generators, accelerator)
                logs["loss/color"] = mean_over_processes(colour, accelerator)  # the same on every process
                loss = loss + config.colour_weight * colour
            finite = finite and bool(torch.isfinite(loss))
            accelerator.backward(loss)
    return logs, finite


def mean_over_processes(value: torch.Tensor, accelerator: Accelerator) -> float:
    """A logged loss is the whole batch's, not the main process's share."""
    return float(accelerator.reduce(value.detach().float().reshape(1), reduction="mean").item())


def gradients_are_finite(parameters: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for p in parameters if p.grad is not None)


def optimizer_step(optimizer, parameters: list[torch.Tensor], *, finite: bool, max_grad_norm: float,
                   accelerator: Accelerator) -> tuple[bool, float | None]:
    """Take the step on every process, or skip it on every process when any one is not `finite`.
    Returns (stepped, gradient norm before clipping). `optimizer`: accelerate's AcceleratedOptimizer.

    accelerate's reduce knows "mean", "sum", "max" and "none" (any other string silently sums), so
    the verdict is a max over not-finite flags. With fp16 loss scaling (the optimizer's `scaler`:
    accelerate's GradScaler) the scaler sees every step: a step skipped behind its back would never
    lower a scale that overflows, and the overflow would repeat on every later step. So a
    not-finite step reaches the scaler as not-finite gradients on every process: each skips it
    and backs off its scale, in step with the others."""
    flag = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
    any_nonfinite = bool(accelerator.reduce(flag, reduction="max").item())
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None and any_nonfinite:
        return False, None
    if any_nonfinite:
        for param in parameters:
            param.grad = torch.full_like(param, float("inf"))
    norm = None
    if scaler is not None:
        scaler.unscale_(optimizer.optimizer)  # clip (and report) the true gradients, not the scaled ones
    if max_grad_norm > 0 and not any_nonfinite:
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
    optimizer.step()  # with a scaler: scaler.step (skips not-finite gradients) and scaler.update
    return not any_nonfinite and not (scaler is not None and optimizer.step_was_skipped), norm


def processes_agree(parameters: list[torch.Tensor], accelerator: Accelerator) -> bool:
    """Whether every process holds the same LoRA weights, as it must (same averaged gradients, same
    optimizer): a process that drifted would train on weights the saved checkpoint does not hold."""
    if accelerator.num_processes == 1:
        return True
    digest = torch.stack([value for p in parameters for value in (p.detach().double().sum(),
                                                                   p.detach().double().abs().sum())])
    gathered = accelerator.gather(digest.to(accelerator.device)[None])
    return bool(torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-12))


def injected_nonfinite_steps(rank: int) -> set[int]:
    """Test hook: MEDART_TEST_NONFINITE_LOSS="RANK:STEP,..." makes the loss of process RANK NaN at
    optimizer step STEP (1-based), to test that a step is skipped on every process."""
    steps = set()
    for item in filter(None, os.environ.get("MEDART_TEST_NONFINITE_LOSS", "").split(",")):
        item_rank, step = (int(part) for part in item.split(":"))
        if item_rank == rank:
            steps.add(step)
    return steps


def average_gradients(parameters: list[torch.Tensor], accelerator: Accelerator) -> None:
    """Mean of the LoRA gradients over processes, in one all-reduce."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for param, grad in zip(parameters, grads):
        param.grad = flat[offset: offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()


# ---------------------------------------------------------------------------------------------
# checkpoints, validation, model card


def save_adapters(folder: Path, transformer_lora, text_encoder_lora, base) -> None:
    """PEFT folders, and the adapters the base's stock LoRA loader reads as one file in diffusers'
    LoRA layout (medart_core.lora_file; Sana's: the transformer only, Gemma2 stays a PEFT folder)."""
    transformer_lora.save_pretrained(folder / TRANSFORMER_ADAPTER)
    adapters = {"transformer": transformer_lora}
    if text_encoder_lora is not None:
        text_encoder_lora.save_pretrained(folder / TEXT_ENCODER_ADAPTER)
        adapters["text_encoder"] = text_encoder_lora
    write_lora_file(folder, {c: a for c, a in adapters.items() if c in base.lora_file_components})


def save_checkpoint(output_dir: Path, state: dict, transformer_lora, text_encoder_lora, keep: int, base) -> Path:
    """checkpoint-<step>/ with the adapters (usable by `generate --lora`) and the full resume
    state, written under a temporary name and renamed, so a crash never leaves half a checkpoint."""
    final = output_dir / "checkpoints" / f"checkpoint-{state['global_step']}"
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_adapters(partial, transformer_lora, text_encoder_lora, base)
    torch.save(state, partial / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    folders = [p for p in (output_dir / "checkpoints").glob("checkpoint-*") if (p / STATE_FILE).is_file()]
    return sorted(folders, key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(config: TrainConfig) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "latest":
        found = list_checkpoints(Path(config.output_dir))
        if not found:
            logger.info("--resume latest: no checkpoint in %s yet, starting fresh", config.output_dir)
        return found[-1] if found else None
    folder = Path(config.resume)
    if not (folder / STATE_FILE).is_file():
        raise MedArtError(f"{folder} is not a training checkpoint (no {STATE_FILE} in it)")
    return folder


def load_checkpoint(folder: Path, transformer_lora, text_encoder_lora) -> dict:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(transformer_lora, load_file(folder / TRANSFORMER_ADAPTER / "adapter_model.safetensors"))
    if text_encoder_lora is not None:
        adapter = folder / TEXT_ENCODER_ADAPTER / "adapter_model.safetensors"
        if not adapter.is_file():
            raise MedArtError(f"{folder} has no text-encoder adapter, but train_text_encoder_lora is on")
        set_peft_model_state_dict(text_encoder_lora, load_file(adapter))
    return torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)


def run_validation(models, config, prompts, seeds, step, output_dir, accelerator):
    """Images from fixed prompts and seeds with the weights in memory (never reloaded from disk)."""
    pipe = models.pipe
    pipe.transformer.eval()
    encoder = (PromptEncoder(pipe, max_tokens=prompt_token_budget(config, pipe)) if config.train_text_encoder_lora
               else models.prompts)
    current = LoadedModel(pipe, config.model, AdapterPaths(), models.precision, encoder)
    settings = GenerationSettings(steps=config.validation_inference_steps, height=config.resolution,
                                  width=config.resolution)
    images = generate_images(current, prompts, seeds, settings)
    pipe.transformer.train()
    folder = output_dir / "validation" / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, prompt, seed) in enumerate(zip(images, prompts, seeds)):
        save_synthetic_png(image, folder / f"{i:02d}.png", {
            "text": prompt, "seed": seed, "steps": settings.steps, "guidance": settings.guidance,
            "model": config.model, "adapters": f"LoRA being trained, step {step} ({output_dir})"})
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            stacked = np.stack([np.asarray(image) for image in images])
            tracker.writer.add_images("validation", stacked, step, dataformats="NHWC")
    return folder


def write_model_card(output_dir: Path, config: TrainConfig, summary: dict, base) -> None:
    figures = "\n".join(f"| {key} | {value} |" for key, value in summary.items())
    text_encoder = base.text_encoder.split(",")[0]
    in_file = [c for c in ("transformer", "text_encoder") if c in base.lora_file_components
               and (c == "transformer" or config.train_text_encoder_lora)]
    single_file = (f"The {' and '.join(in_file).replace('_', ' ')} adapter{'s' if len(in_file) > 1 else ''} as one "
                   f"file in diffusers' LoRA layout, with the LoRA config in its header: `{LORA_FILE}` "
                   f"(`--lora {output_dir}/{LORA_FILE}` loads it too")
    stock_loader = hasattr(base.pipeline_type(), "load_lora_weights")  # Sana's pipeline has one, PixArt's not
    single_file += (f"; so does the stock `{base.pipeline_class}.load_lora_weights`)." if stock_loader else ").")
    if config.train_text_encoder_lora and "text_encoder" not in base.lora_file_components:
        single_file += (f" The {text_encoder} adapter is not in that file (the stock loader reads the transformer's "
                        f"only): it stays the PEFT folder `{TEXT_ENCODER_ADAPTER}/`, which `--lora {output_dir}` loads.")
    (output_dir / "README.md").write_text(f"""---
base_model: {config.model}
library_name: peft
tags: [medart, {base.name.lower()}, lora, hldf, medical-imaging, text-to-image]
---

# Med-Art LoRA adapters for {config.model}

LoRA adapters (PEFT) for the transformer{' and the ' + text_encoder + ' text encoder' if config.train_text_encoder_lora else ''} of
`{config.model}` ({base.name}), fine-tuned by Med-Art on `{config.data}` with
{'Hybrid-Level Diffusion Fine-tuning (colour loss every ' + str(config.hldf_every) + ' steps)' if config.hldf_every else 'the latent loss only (HLDF off)'}.

**Not for clinical use.** Images generated with these adapters are synthetic: they are not
patient images and must not be used for diagnosis.

Use: `python -m medart_core generate --model {config.model} --lora {output_dir} --prompt "..." --out DIR`

{single_file}

## Figures

| | |
|---|---|
{figures}

## Configuration

```yaml
{config.to_yaml()}```
""")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = load_config(argv)
        if "--print-config" in argv:
            print(config.to_yaml(), end="")
            return 0
        if any(a == "--plan" or a.startswith("--plan=") for a in argv):
            from finetune.plan import memory_plan

            print(memory_plan(config, device=plan_device(argv)).report())
            return 0
        train(config)
    except MedArtError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def plan_device(argv: list[str]) -> str:
    """`--plan` alone: this machine's device; `--plan cuda` or `--plan cpu`: that one."""
    for i, arg in enumerate(argv):
        if arg.startswith("--plan="):
            return arg.split("=", 1)[1]
        if arg == "--plan" and i + 1 < len(argv) and argv[i + 1] in ("cpu", "cuda"):
            return argv[i + 1]
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(config: TrainConfig) -> Path:
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        mixed_precision=choose_mixed_precision(config, process_state().device),
    )
    rank, is_main = accelerator.process_index, accelerator.is_main_process
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(config.to_yaml())
        logger.info("effective config:\n%s", config.to_yaml())

    # models (the seed also fixes LoRA's random initialisation of A)
    set_seed(config.seed)
    precision = training_precision(accelerator.device, accelerator.mixed_precision)
    models, transformer_lora, text_encoder_lora = build_models(config, precision)
    pipe = models.pipe
    objective = build_objective(models, config)
    trainable = [p for p in pipe.transformer.parameters() if p.requires_grad]
    if text_encoder_lora is not None:
        trainable += [p for p in pipe.text_encoder.parameters() if p.requires_grad]

    # data: latents and T5 embeddings computed once per dataset where they can be
    images = ImageCaptionDataset(config.data, config.resolution, center_crop=config.center_crop)
    config = config.with_train_steps(len(images), accelerator.num_processes)
    if config.num_train_epochs is not None:
        logger.info("%d epochs of %d images: %d optimizer steps", config.num_train_epochs, len(images),
                    config.max_train_steps)
    validation_prompts = config.validation_prompts or list(dict.fromkeys(r.text.strip() for r in images.records))[:4]
    validation_seeds = config.validation_seeds or list(range(len(validation_prompts)))
    prompts = list(dict.fromkeys([r.text.strip() for r in images.records] + ["", *validation_prompts]))
    dataset, models.prompts = prepare_cached_inputs(models, images, prompts, config, accelerator)

    # optimizer and schedule
    optimizer = accelerator.prepare_optimizer(make_optimizer(trainable, config, accelerator.device))
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_train_steps)

    # resume
    global_step, skipped_steps = 0, 0
    checkpoint = find_checkpoint(config)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, transformer_lora, text_encoder_lora)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        global_step, skipped_steps = state["global_step"], state["skipped_steps"]
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        logger.info("resumed from %s at step %d", checkpoint, global_step)
    micro_step = global_step * config.gradient_accumulation_steps
    sampler = ResumableShuffleSampler(len(dataset), seed=config.seed, rank=rank, num_replicas=accelerator.num_processes,
                                      start=micro_step * config.train_batch_size, batch_size=config.train_batch_size)
    batches = iter(DataLoader(dataset, batch_size=config.train_batch_size, sampler=sampler,
                              num_workers=config.dataloader_num_workers, drop_last=True))

    accelerator.init_trackers("medart-finetune", config={k: str(v) for k, v in vars(config).items()})
    log_file = output_dir / "train_log.jsonl"
    progress = tqdm(total=config.max_train_steps, initial=global_step, desc="training", disable=not is_main)
    started = time.time()
    last_logs: dict = {}

    # the loop: one iteration per optimizer step, gradient accumulation inside
    nonfinite_steps = injected_nonfinite_steps(rank)
    while global_step < config.max_train_steps:
        hldf_now = config.hldf_every > 0 and (global_step + 1) % config.hldf_every == 0
        logs, finite = accumulate_gradients(models, batches, config, objective, accelerator,
                                            micro_step=micro_step, hldf_now=hldf_now,
                                            nonfinite_loss=global_step + 1 in nonfinite_steps)
        micro_step += config.gradient_accumulation_steps
        average_gradients(trainable, accelerator)
        finite = finite and gradients_are_finite(trainable)
        stepped, grad_norm = optimizer_step(optimizer, trainable, finite=finite, max_grad_norm=config.max_grad_norm,
                                            accelerator=accelerator)
        if stepped:
            lr_scheduler.step()
            if grad_norm is not None:
                logs["grad_norm"] = grad_norm
        else:
            skipped_steps += 1
            logger.warning("step %d: non-finite loss or gradients on some process, step skipped on all "
                           "(weights unchanged)", global_step + 1)
        if accelerator.scaler is not None:
            logs["loss_scale"] = accelerator.scaler.get_scale()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        progress.update(1)

        logs.update({"lr": lr_scheduler.get_last_lr()[0], "skipped_steps": skipped_steps})
        last_logs = logs
        if global_step % config.logging_steps == 0 or "loss/color" in logs:
            accelerator.log(logs, step=global_step)
            progress.set_postfix({k: round(v, 4) for k, v in logs.items() if k.startswith("loss")})
            if is_main:
                with open(log_file, "a") as handle:
                    handle.write(json.dumps({"step": global_step, **logs}) + "\n")
        checkpoint_now = global_step % config.checkpointing_steps == 0 or global_step == config.max_train_steps
        if checkpoint_now and not processes_agree(trainable, accelerator):
            raise MedArtError(f"step {global_step}: the processes' LoRA weights differ; not saving a checkpoint that "
                              "only one of them holds (a non-deterministic optimizer or device?)")
        if is_main and checkpoint_now:
            state = {"global_step": global_step, "skipped_steps": skipped_steps, "optimizer": optimizer.state_dict(),
                     "lr_scheduler": lr_scheduler.state_dict(), "config": vars(config),
                     "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None}
            save_checkpoint(output_dir, state, transformer_lora, text_encoder_lora, config.checkpoints_total_limit,
                            models.base)
        if is_main and config.validation_steps and global_step % config.validation_steps == 0:
            run_validation(models, config, validation_prompts, validation_seeds, global_step, output_dir, accelerator)
        accelerator.wait_for_everyone()
    progress.close()

    # save
    if is_main:
        save_adapters(output_dir, transformer_lora, text_encoder_lora, models.base)
        run_validation(models, config, validation_prompts, validation_seeds, global_step, output_dir, accelerator)
        summary = {"optimizer steps": global_step, "skipped (non-finite) steps": skipped_steps,
                   "processes": accelerator.num_processes, "mixed precision": accelerator.mixed_precision,
                   "wall time this run (s)": round(time.time() - started, 1),
                   **{k: round(v, 6) for k, v in last_logs.items() if isinstance(v, float)}}
        write_model_card(output_dir, config, summary, models.base)
        logger.info("adapters in %s", output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


if __name__ == "__main__":
    sys.exit(main())

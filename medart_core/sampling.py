"""The DPM-Solver++ sampling loop for PixArt (alpha and Sigma) and Sana, shared by generation and HLDF training.

One plain function over a transformer, a scheduler and starting noise (in the manner of
k-diffusion's samplers). It follows `diffusers.PixArtAlphaPipeline.__call__` (and
`PixArtSigmaPipeline.__call__`, the same loop without micro-conditions, and `SanaPipeline.__call__`,
where the scheduler's flow prediction replaces epsilon and the transformer takes a scaled
timestep and no micro-conditions) step for step, so
the same weights, seeds and settings give the same image, but it runs outside the pipeline's
`torch.no_grad()`: with `requires_grad=True` a loss on the result back-propagates through every
sampling step into LoRA adapters, which is what Hybrid-Level Diffusion Fine-tuning needs.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from medart_core.bases import uses_micro_conditions


@dataclass
class TextConditioning:
    """T5 hidden states for a batch of prompts and their attention mask (1 = real token)."""

    embeds: torch.Tensor  # (batch, tokens, width)
    mask: torch.Tensor  # (batch, tokens)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def to(self, device=None, dtype=None) -> "TextConditioning":
        return TextConditioning(self.embeds.to(device=device, dtype=dtype), self.mask.to(device=device))

    @staticmethod
    def cat(parts: list["TextConditioning"]) -> "TextConditioning":
        return TextConditioning(torch.cat([p.embeds for p in parts]), torch.cat([p.mask for p in parts]))


def takes_added_conditions(transformer) -> bool:
    """PixArt's transformers take `added_cond_kwargs` (even when empty); Sana's has no such argument."""
    return "added_cond_kwargs" in inspect.signature(transformer.forward).parameters


def micro_conditions(transformer, batch: int, height: int, width: int, *, device, dtype) -> dict | None:
    """PixArt's resolution/aspect-ratio conditions, for a transformer that takes them (PixArt-alpha-1024);
    None for a transformer without the argument (Sana)."""
    if not takes_added_conditions(transformer):
        return None
    if not uses_micro_conditions(transformer):
        return {"resolution": None, "aspect_ratio": None}
    resolution = torch.tensor([height, width]).repeat(batch, 1).to(device=device, dtype=dtype)
    aspect_ratio = torch.tensor([float(height / width)]).repeat(batch, 1).to(device=device, dtype=dtype)
    return {"resolution": resolution, "aspect_ratio": aspect_ratio}


def predict_noise(transformer, latents, timestep, text: TextConditioning, added_cond_kwargs: dict | None):
    """One transformer call; returns the epsilon half of PixArt's (epsilon, sigma) output, or Sana's
    flow (velocity) prediction as it is. `timestep` is one value for the whole batch (sampling) or
    one per image (training); Sana's transformer gets it times its `timestep_scale`, as
    `SanaPipeline` passes it."""
    timestep = timestep.reshape(-1).to(latents.device)
    if timestep.numel() == 1:
        timestep = timestep.expand(latents.shape[0])
    if "timestep_scale" in transformer.config:
        timestep = timestep * transformer.config.timestep_scale
    extra = {} if added_cond_kwargs is None else {"added_cond_kwargs": added_cond_kwargs}
    output = transformer(
        latents.to(transformer.dtype),  # a no-op for PixArt; Sana's pipeline keeps fp32 latents and casts its input
        encoder_hidden_states=text.embeds,
        encoder_attention_mask=text.mask,
        timestep=timestep,
        return_dict=False,
        **extra,
    )[0]
    if transformer.config.out_channels // 2 == latents.shape[1]:
        output = output.chunk(2, dim=1)[0]
    return output


def _predict_noise_blocks_not_checkpointed(transformer, *args):
    """predict_noise with diffusers' block checkpointing off, in the forward pass and in its
    recomputation alike (the whole call is checkpointed already)."""
    checkpointed = [m for m in transformer.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for module in checkpointed:
        module.gradient_checkpointing = False
    try:
        return predict_noise(transformer, *args)
    finally:
        for module in checkpointed:
            module.gradient_checkpointing = True


def fresh_scheduler(scheduler):
    """A new scheduler of the same kind and config: DPM-Solver++ keeps state between steps,
    so sharing one instance between two samples (or a sample and training) would mix them."""
    return type(scheduler).from_config(scheduler.config)


def dpm_solver_sample(
    transformer,
    scheduler,
    noise: torch.Tensor,
    text: TextConditioning,
    negative: TextConditioning | None = None,
    *,
    num_steps: int = 20,
    guidance_scale: float = 4.5,
    image_size: tuple[int, int] | None = None,
    requires_grad: bool = False,
    grad_last_k: int | None = None,
    gradient_checkpointing: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Denoise `noise` (already scaled by the scheduler's init sigma) into clean latents, in the
    dtype of `noise` (the transformer's for PixArt, fp32 for Sana: Base.latent_dtype).

    text / negative: conditioning for each image of the batch; with `guidance_scale > 1` and a
        negative (the empty prompt, for PixArt and Sana), both halves run in one transformer batch.
    scheduler: DPM-Solver++ as the base ships it: epsilon for PixArt; flow prediction with flow
        sigmas and a flow shift for Sana (the scheduler's step does the rest).
    image_size: (height, width) in pixels, for PixArt-alpha-1024's micro-conditions.
    requires_grad: keep autograd on, so a loss on the result reaches trainable weights.
    grad_last_k: with requires_grad, record gradients for the last k steps only; earlier steps
        run under no_grad (less memory, the paper's released code back-propagates through all).
    gradient_checkpointing: recompute each transformer call in the backward pass instead of
        storing its activations; the transformer's own block checkpointing is off inside such a
        call, which would recompute every block a second time.
    callback: called as callback(step_index, timestep, latents) after every step.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    guided = guidance_scale > 1.0 and negative is not None
    scheduler = fresh_scheduler(scheduler)
    scheduler.set_timesteps(num_steps, device=noise.device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)

    batch = noise.shape[0]
    if len(text) != batch or (guided and len(negative) != batch):
        raise ValueError(f"{batch} starting latents but {len(text)} prompt embeddings")
    conditioning = TextConditioning.cat([negative, text]) if guided else text
    if image_size is None and uses_micro_conditions(transformer):
        raise ValueError("this transformer (e.g. PixArt-alpha-1024) needs image_size=(height, width) for its "
                         "micro-conditions")
    height, width = image_size or (0, 0)
    added = micro_conditions(
        transformer, conditioning.embeds.shape[0], height, width, device=noise.device, dtype=noise.dtype
    )
    first_grad_step = num_steps - (grad_last_k if grad_last_k is not None else num_steps)

    latents = noise
    for i, t in enumerate(scheduler.timesteps):
        with_grad = requires_grad and i >= first_grad_step
        with contextlib.nullcontext() if with_grad else torch.no_grad():
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if with_grad and gradient_checkpointing:
                eps = checkpoint(_predict_noise_blocks_not_checkpointed, transformer, model_input, t, conditioning,
                                 added, use_reentrant=False)
            else:
                eps = predict_noise(transformer, model_input, t, conditioning, added)
            eps = eps.to(latents.dtype)  # fp32 latents (Sana) take an fp32 prediction, as SanaPipeline upcasts it
            if guided:
                eps_uncond, eps_text = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_text - eps_uncond)
            latents = scheduler.step(eps, t, latents, return_dict=False)[0]
        if callback is not None:
            callback(i, t, latents)
    return latents


def initial_noise(
    shape: tuple[int, ...], seeds: list[int], *, device, dtype, init_sigma: float = 1.0
) -> torch.Tensor:
    """Starting latents, one CPU generator per image, so a seed gives the same image on any device
    and in any batch (the same noise `PixArtAlphaPipeline` draws from a list of CPU generators)."""
    from diffusers.utils.torch_utils import randn_tensor

    if shape[0] != len(seeds):
        raise ValueError(f"{shape[0]} images but {len(seeds)} seeds")
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    return randn_tensor(shape, generator=generators, device=torch.device(device), dtype=dtype) * init_sigma


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents to images in [-1, 1] (with autograd, if the caller has it on)."""
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]

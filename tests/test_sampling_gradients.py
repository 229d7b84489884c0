"""The shared DPM-Solver++ loop carries gradients into LoRA adapters (what HLDF relies on)."""

from __future__ import annotations

import pytest
import torch

from medart_core.lora import TRANSFORMER_TARGETS, add_lora, lora_config
from medart_core.sampling import TextConditioning, decode_latents, dpm_solver_sample, initial_noise


def colour_loss_gradients(pipe, *, checkpointing: bool, grad_last_k=None):
    """Gradients of a loss on the decoded image w.r.t. the LoRA weights, through 4 guided steps."""
    transformer = pipe.transformer
    lora_params = {n: p for n, p in transformer.named_parameters() if "lora_" in n}
    for p in lora_params.values():
        p.grad = None
    with torch.no_grad():
        embeds, mask, neg, neg_mask = pipe.encode_prompt(["a polyp", "a retina"], device="cpu")
    noise = initial_noise((2, 4, 16, 16), [0, 1], device="cpu", dtype=torch.float32)
    latents = dpm_solver_sample(
        transformer, pipe.scheduler, noise, TextConditioning(embeds, mask), TextConditioning(neg, neg_mask),
        num_steps=4, guidance_scale=4.5, requires_grad=True, gradient_checkpointing=checkpointing,
        grad_last_k=grad_last_k,
    )
    image = decode_latents(pipe.vae, latents)
    loss = (image.mean(dim=(2, 3)) - torch.tensor([0.5, -0.2, 0.1])).pow(2).sum()
    loss.backward()
    return {n: p.grad for n, p in lora_params.items()}


@pytest.fixture
def pipe_with_fresh_lora(tiny_model):
    pipe = tiny_model.pipe
    add_lora(pipe.transformer, lora_config(TRANSFORMER_TARGETS, rank=4))
    return pipe


def test_loss_on_decoded_image_reaches_lora_weights(pipe_with_fresh_lora):
    grads = colour_loss_gradients(pipe_with_fresh_lora, checkpointing=False)
    lora_b = {n: g for n, g in grads.items() if "lora_B" in n}
    assert lora_b and all(g is not None and torch.isfinite(g).all() for g in lora_b.values())
    # a fresh LoRA has B = 0, so only B gets gradients at the first step; they must not all vanish
    assert sum(g.abs().sum() for g in lora_b.values()) > 0


def test_checkpointing_gives_the_same_gradients(pipe_with_fresh_lora):
    plain = colour_loss_gradients(pipe_with_fresh_lora, checkpointing=False)
    checkpointed = colour_loss_gradients(pipe_with_fresh_lora, checkpointing=True)
    for name, grad in plain.items():
        if grad is None:
            assert checkpointed[name] is None
        else:
            torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-7)


def test_gradients_through_last_steps_only(pipe_with_fresh_lora):
    full = colour_loss_gradients(pipe_with_fresh_lora, checkpointing=False)
    last = colour_loss_gradients(pipe_with_fresh_lora, checkpointing=False, grad_last_k=1)
    name = next(n for n in full if "lora_B" in n and "attn1.to_q" in n)
    assert last[name] is not None and torch.isfinite(last[name]).all() and last[name].abs().sum() > 0
    assert not torch.allclose(last[name], full[name])


def test_no_grad_sampling_builds_no_graph(tiny_model):
    pipe = tiny_model.pipe
    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(["a polyp"], do_classifier_free_guidance=False, device="cpu")
    noise = initial_noise((1, 4, 16, 16), [0], device="cpu", dtype=torch.float32)
    latents = dpm_solver_sample(pipe.transformer, pipe.scheduler, noise, TextConditioning(embeds, mask),
                                num_steps=3, guidance_scale=1.0)
    assert not latents.requires_grad

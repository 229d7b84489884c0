"""Every random draw of a training sample, from (seed, micro-step, its global position in the batch).

A resumed run must draw exactly what an uninterrupted run would have drawn, and a batch split
over several processes must draw what one process with the whole batch draws. So no draw comes
from a stream whose state depends on history or on the process layout: each sample gets its own
seed (`sample_seed`) from which its crop, flip, caption dropout, latent sample, noise, timestep,
HLDF starting noise and LoRA dropout masks are derived.

LoRA dropout is the one draw made deep inside the model: `use_sample_dropout` swaps peft's
`nn.Dropout` modules for `SampleDropout`, which draws each sample's mask from the sample's seed
(set by the training loop with `sample_draws`), the layer and a per-call salt. The salt comes
from the global RNG, which the loop reseeds from (seed, micro-step) before every micro-batch:
every process makes the same transformer calls in the same order, so the salts agree between
processes, and `torch.utils.checkpoint` restores the global RNG when it recomputes a call, so a
recomputed mask is the mask of the forward pass.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_MASK_63 = (1 << 63) - 1
# Independent streams derived from one sample seed.
DRAWS, CROP, DROPOUT = 0, 1, 2

_active_sample_seeds: contextvars.ContextVar[tuple[int, ...] | None] = contextvars.ContextVar(
    "medart_sample_seeds", default=None)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, by numpy's SeedSequence (well mixed: nearby inputs, unrelated seeds)."""
    state = np.random.SeedSequence([int(p) & _MASK_63 for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & _MASK_63


def sample_seed(seed: int, micro_step: int, position: int) -> int:
    """The seed of the sample at `position` of the global batch of micro-step `micro_step`."""
    return derive_seed(seed, micro_step, position)


def micro_step_seed(seed: int, micro_step: int) -> int:
    """The seed of the global RNG during a micro-step (only LoRA dropout's salts draw from it)."""
    return derive_seed(seed, micro_step, -1)


def sample_generator(seed_of_sample: int, stream: int = DRAWS, device="cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(derive_seed(seed_of_sample, stream))


class SampleDropout(nn.Module):
    """Dropout whose mask for each sample depends on that sample's seed only, not on the batch.

    During `sample_draws(seeds)` a batch of k * len(seeds) rows is read as k copies of the
    samples (classifier-free guidance stacks [negative, text]); each row gets its own mask.
    Outside it (or in eval mode) it is plain `nn.Dropout`."""

    def __init__(self, p: float, layer: int):
        super().__init__()
        self.p, self.layer = p, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds = _active_sample_seeds.get()
        if not self.training or self.p == 0:
            return x
        if seeds is None:
            return F.dropout(x, self.p, training=True)
        if x.shape[0] % len(seeds):
            raise ValueError(f"a batch of {x.shape[0]} rows is not a multiple of its {len(seeds)} samples")
        salt = int(torch.randint(0, 1 << 62, (1,)).item())
        keep = torch.stack([
            torch.rand(x.shape[1:], device=x.device, generator=sample_generator(
                derive_seed(seeds[row % len(seeds)], self.layer, salt, row // len(seeds)), DROPOUT, x.device))
            for row in range(x.shape[0])
        ]) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, layer={self.layer}"


def use_sample_dropout(model: nn.Module) -> int:
    """Replace the `nn.Dropout` of every peft LoRA layer in `model` by a SampleDropout; returns how many."""
    layer = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if isinstance(dropout, nn.Dropout):
                dropouts[name] = SampleDropout(dropout.p, layer)
                layer += 1
    return layer


@contextlib.contextmanager
def sample_draws(seeds: list[int]):
    """Forward and backward passes inside draw each sample's LoRA dropout mask from its seed."""
    token = _active_sample_seeds.set(tuple(int(s) for s in seeds))
    try:
        yield
    finally:
        _active_sample_seeds.reset(token)

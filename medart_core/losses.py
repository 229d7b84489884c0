"""Training losses: latent noise prediction, and HLDF's pixel-level colour-distribution loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_prediction_loss(predicted_noise: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and true noise, reduced in fp32 whatever the model dtype."""
    return F.mse_loss(predicted_noise.float(), noise.float())


def channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over a whole batch of (B, C, H, W) images."""
    flat = images.float().transpose(0, 1).reshape(images.shape[1], -1)
    return flat.mean(dim=1), flat.std(dim=1)


def color_distribution_loss(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """HLDF's colour loss: squared differences of per-channel mean and std between the generated
    and the real batch, summed over channels (the paper sums over R, G, B).

    Both batches are (B, C, H, W) in the same range (Med-Art uses [0, 1]); they may differ in
    batch size and resolution, since only their colour distributions are compared.
    """
    if generated.shape[1] != real.shape[1]:
        raise ValueError(f"channel counts differ: {generated.shape[1]} generated vs {real.shape[1]} real")
    gen_mean, gen_std = channel_statistics(generated)
    real_mean, real_std = channel_statistics(real)
    return ((gen_mean - real_mean) ** 2 + (gen_std - real_std) ** 2).sum()

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


def image_channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and std, (B, C) each: what the training cache keeps of a real
    image, so HLDF needs no pixels."""
    flat = images.float().reshape(images.shape[0], images.shape[1], -1)
    return flat.mean(dim=2), flat.std(dim=2)


def pool_channel_statistics(means: torch.Tensor, stds: torch.Tensor, pixels_per_image: int):
    """Batch statistics from per-image ones (B, C) of equal-sized images: the same numbers
    `channel_statistics` gives on the stacked images (unbiased std over all B*H*W pixels)."""
    sums, sum_squares = channel_sums_from_statistics(means, stds, pixels_per_image)
    return statistics_from_sums(sums.sum(dim=0), sum_squares.sum(dim=0), pixels_per_image * means.shape[0])


def channel_sums_from_statistics(means: torch.Tensor, stds: torch.Tensor, pixels: int):
    """The per-channel sum and sum of squares of `pixels` values with these means and (unbiased) stds."""
    means, stds = means.float(), stds.float()
    return pixels * means, (pixels - 1) * stds ** 2 + pixels * means ** 2


def statistics_from_sums(sums: torch.Tensor, sum_squares: torch.Tensor, count: int):
    """Per-channel mean and unbiased std of `count` values from their sum and sum of squares
    (sums can be added across batches and processes; means and stds cannot)."""
    mean = sums / count
    variance = (sum_squares - count * mean ** 2) / (count - 1)
    return mean, variance.clamp_min(0).sqrt()


def color_distribution_loss_to_statistics(generated: torch.Tensor, real_mean: torch.Tensor,
                                          real_std: torch.Tensor) -> torch.Tensor:
    """HLDF's colour loss against the real batch's per-channel mean and std: squared differences
    of mean and std, summed over channels (the paper sums over R, G, B)."""
    if generated.shape[1] != real_mean.shape[0]:
        raise ValueError(f"channel counts differ: {generated.shape[1]} generated vs {real_mean.shape[0]} real")
    return colour_statistics_distance(*channel_statistics(generated), real_mean, real_std)


def colour_statistics_distance(gen_mean: torch.Tensor, gen_std: torch.Tensor, real_mean: torch.Tensor,
                               real_std: torch.Tensor) -> torch.Tensor:
    """Squared differences of per-channel mean and std, summed over channels (the paper's colour loss)."""
    return ((gen_mean - real_mean.to(gen_mean)) ** 2 + (gen_std - real_std.to(gen_std)) ** 2).sum()


def color_distribution_loss(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """HLDF's colour loss between a generated and a real batch of (B, C, H, W) images in the same
    range (Med-Art uses [0, 1]); they may differ in batch size and resolution, since only their
    colour distributions are compared."""
    if generated.shape[1] != real.shape[1]:
        raise ValueError(f"channel counts differ: {generated.shape[1]} generated vs {real.shape[1]} real")
    return color_distribution_loss_to_statistics(generated, *channel_statistics(real))


def paired_color_distribution_loss(generated: torch.Tensor, real_means: torch.Tensor,
                                   real_stds: torch.Tensor) -> torch.Tensor:
    """The paper's colour loss per pair, generated image i against real image i (from its
    per-image, per-channel mean and std, (B, C) each), averaged over the batch. At batch 1 it is
    `color_distribution_loss_to_statistics`; at batch > 1 a batch mixing classes is still matched
    image by image, not only as a mixture."""
    if generated.shape[:2] != real_means.shape:
        raise ValueError(f"{tuple(generated.shape[:2])} generated images and channels vs "
                         f"{tuple(real_means.shape)} real ones: pairing needs one real image per generated one")
    gen_mean, gen_std = image_channel_statistics(generated)
    per_image = ((gen_mean - real_means.to(gen_mean)) ** 2 + (gen_std - real_stds.to(gen_std)) ** 2).sum(dim=1)
    return per_image.mean()


def hldf_color_loss(generated: torch.Tensor, real_means: torch.Tensor, real_stds: torch.Tensor, *,
                    pixels_per_image: int, pairing: str = "per_image") -> torch.Tensor:
    """HLDF's colour term from the real images' per-image statistics: `per_image` pairs each
    generated image with its real image (the paper's), `batch` compares the generated batch with
    the real batch pooled (`pixels_per_image`: pixels of one real image, for the pooling)."""
    if pairing == "per_image":
        return paired_color_distribution_loss(generated, real_means, real_stds)
    if pairing == "batch":
        pooled = pool_channel_statistics(real_means, real_stds, pixels_per_image)
        return color_distribution_loss_to_statistics(generated, *pooled)
    raise ValueError(f"colour pairing must be per_image or batch, got {pairing!r}")


def flow_matching_loss(predicted: torch.Tensor, target: torch.Tensor, weighting: torch.Tensor | None = None):
    """Flow matching's weighted squared error (velocity target noise - x_0), a mean per image then
    over the batch, in fp32, as diffusers' Sana LoRA script reduces it."""
    error = (predicted.float() - target.float()) ** 2
    if weighting is not None:
        error = weighting.float() * error
    return error.reshape(error.shape[0], -1).mean(dim=1).mean()

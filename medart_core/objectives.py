"""The training objective of each prediction type: which timesteps, which noisy input, which target.

A base's `prediction_type` (medart_core.bases) picks its objective; the trainer calls `noise` and
`loss` and never asks which base it trains:

- epsilon (PixArt): DDPM noise at a uniformly drawn training timestep, the target is the noise;
- flow_prediction (Sana): flow matching as diffusers' `train_dreambooth_lora_sana.py` trains it,
  x_t = (1 - sigma) x_0 + sigma noise, the target is noise - x_0, the timestep drawn by
  `weighting_scheme` (diffusers.training_utils' `compute_density_for_timestep_sampling`) and the
  loss weighted by `compute_loss_weighting_for_sd3`.

Every random draw comes from the sample's own generator (one per image, after the draws of the
noise), so a sample's timestep does not depend on the rest of its batch, on resuming or on processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medart_core.errors import MedArtError
from medart_core.losses import flow_matching_loss, noise_prediction_loss

# diffusers' train_dreambooth_lora_sana.py choices, its default first
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")


@dataclass
class Noised:
    """A noised batch: the transformer's input, its timesteps, and what the prediction is compared with."""

    latents: torch.Tensor
    timesteps: torch.Tensor  # one per image, on the latents' device
    target: torch.Tensor
    weighting: torch.Tensor | None = None  # per image (B, 1, 1, 1), flow matching only


class EpsilonObjective:
    """PixArt: predict the noise DDPM added at a uniformly drawn timestep (the base's own schedule)."""

    def __init__(self, scheduler_config):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)

    def noise(self, latents: torch.Tensor, noise: torch.Tensor, generators: list[torch.Generator]) -> Noised:
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(latents.device)
        return Noised(self.scheduler.add_noise(latents, noise, timesteps), timesteps, noise)

    def loss(self, predicted: torch.Tensor, noised: Noised) -> torch.Tensor:
        return noise_prediction_loss(predicted, noised.target)


class FlowMatchingObjective:
    """Sana: predict the velocity noise - x_0 at a sigma drawn by `weighting_scheme`.

    The schedule is `FlowMatchEulerDiscreteScheduler` from the base's scheduler config, as diffusers'
    Sana script builds it: the config's `flow_shift` is a DPM-Solver key the flow-match scheduler does
    not read, so training sigmas are unshifted (t / 1000), while sampling keeps the shift."""

    def __init__(self, scheduler_config, *, weighting_scheme: str = "none", logit_mean: float = 0.0,
                 logit_std: float = 1.0, mode_scale: float = 1.29):
        import inspect

        from diffusers import FlowMatchEulerDiscreteScheduler

        if weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"weighting_scheme must be one of {', '.join(WEIGHTING_SCHEMES)}, got {weighting_scheme!r}")
        known = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
        # the same scheduler as from_config, without its warning about the DPM-Solver keys it ignores
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            {k: v for k, v in dict(scheduler_config).items() if k in known})
        self.weighting_scheme, self.logit_mean, self.logit_std, self.mode_scale = (weighting_scheme, logit_mean,
                                                                                   logit_std, mode_scale)

    def noise(self, latents: torch.Tensor, noise: torch.Tensor, generators: list[torch.Generator]) -> Noised:
        from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

        u = torch.cat([compute_density_for_timestep_sampling(self.weighting_scheme, 1, logit_mean=self.logit_mean,
                                                             logit_std=self.logit_std, mode_scale=self.mode_scale,
                                                             generator=g) for g in generators])
        # the schedule's timesteps are distinct, so index i is diffusers' get_sigmas lookup of timestep i
        indices = (u * self.scheduler.config.num_train_timesteps).long()
        timesteps = self.scheduler.timesteps[indices].to(latents.device)
        sigmas = self.scheduler.sigmas[indices].to(latents.device, latents.dtype)[:, None, None, None]
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        weighting = compute_loss_weighting_for_sd3(self.weighting_scheme, sigmas=sigmas)
        return Noised(noisy, timesteps, noise - latents, weighting)

    def loss(self, predicted: torch.Tensor, noised: Noised) -> torch.Tensor:
        return flow_matching_loss(predicted, noised.target, noised.weighting)


def training_objective(base, scheduler_config, **flow_options):
    """The objective of `base` (a medart_core.bases entry); `flow_options` (weighting_scheme,
    logit_mean, logit_std, mode_scale) configure flow matching; a weighting scheme other than
    "none" is refused for an epsilon base, which would silently ignore it."""
    if base.prediction_type == "flow_prediction":
        return FlowMatchingObjective(scheduler_config, **flow_options)
    if base.prediction_type == "epsilon":
        if flow_options.get("weighting_scheme", "none") != "none":
            raise MedArtError(f"weighting_scheme {flow_options['weighting_scheme']} is for flow-matching bases (Sana); "
                              f"{base.name} trains on noise prediction at uniform timesteps: set weighting_scheme none")
        return EpsilonObjective(scheduler_config)
    raise ValueError(f"{base.name} predicts {base.prediction_type!r}, which no training objective handles")

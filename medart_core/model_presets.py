"""The real checkpoints Med-Art knows by name: one table that feeds `--help`, the app and the memory plan.

A preset names its base, where its transformer comes from and where the other components
(text encoder, tokenizer, VAE, scheduler) come from: the PixArt-Sigma transformer repositories hold
the transformer only, and the usual recipe takes the rest from
`PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers`. The component configs are the repositories'
config.json files (the keys that shape the models), so `--plan` needs no download.
"""

from __future__ import annotations

from dataclasses import dataclass

from medart_core.bases import PIXART_ALPHA, PIXART_SIGMA, SANA, Base


@dataclass(frozen=True)
class Preset:
    """A hub checkpoint: its base, its repositories and its component configs."""

    base: Base
    resolution: int  # native image size in pixels
    transformer_repo: str  # holds transformer/
    components_repo: str  # holds the other components (the same repository for a full pipeline)
    configs: dict  # transformer, vae, text_encoder config.json keys

    def describe(self) -> str:
        return f"{self.base.name} {self.resolution} px"


_PIXART_XL_TRANSFORMER = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                              num_layers=28, cross_attention_dim=1152, attention_bias=True, patch_size=2,
                              activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                              norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                              caption_channels=4096)
_KL_F8_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                  layers_per_block=2, latent_channels=4, norm_num_groups=32)
_SD_VAE = {**_KL_F8_VAE, "scaling_factor": 0.18215}
_SDXL_VAE = {**_KL_F8_VAE, "scaling_factor": 0.13025, "force_upcast": True, "sample_size": 1024}
_T5_V1_1_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    feed_forward_proj="gated-gelu", is_encoder_decoder=False)
SIGMA_COMPONENTS = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"


def _alpha(repo: str, resolution: int) -> Preset:
    # PixArt-alpha's 1024 model takes resolution micro-conditions (diffusers: sample size 128 sets them)
    transformer = {**_PIXART_XL_TRANSFORMER, "sample_size": resolution // 8}
    return Preset(PIXART_ALPHA, resolution, repo, repo,
                  {"transformer": transformer, "vae": {**_SD_VAE, "sample_size": resolution},
                   "text_encoder": _T5_V1_1_XXL})


def _sigma(repo: str, resolution: int) -> Preset:
    # PixArt-Sigma has no micro-conditions at any size; its position embeddings scale with the size
    transformer = {**_PIXART_XL_TRANSFORMER, "sample_size": resolution // 8, "use_additional_conditions": False,
                   "interpolation_scale": resolution // 512}
    return Preset(PIXART_SIGMA, resolution, repo, SIGMA_COMPONENTS,
                  {"transformer": transformer, "vae": _SDXL_VAE, "text_encoder": _T5_V1_1_XXL})


# Sana 600M (SanaMS_600M_P1_D28) and its DC-AE f32c32 as diffusers' scripts/convert_sana_to_diffusers.py and
# scripts/convert_dcae_to_diffusers.py build them; Gemma 2 2B-it's text model (Gemma2Model).
_SANA_600M_TRANSFORMER = dict(in_channels=32, out_channels=32, num_attention_heads=36, attention_head_dim=32,
                              num_layers=28, num_cross_attention_heads=16, cross_attention_head_dim=72,
                              cross_attention_dim=1152, caption_channels=2304, mlp_ratio=2.5, patch_size=1,
                              attention_bias=False, norm_elementwise_affine=False, norm_eps=1e-6,
                              interpolation_scale=None)
_DC_AE_F32C32 = dict(in_channels=3, latent_channels=32, attention_head_dim=32,
                     encoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock",
                                          "EfficientViTBlock", "EfficientViTBlock"],
                     decoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock",
                                          "EfficientViTBlock", "EfficientViTBlock"],
                     encoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
                     decoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
                     encoder_layers_per_block=[2, 2, 2, 3, 3, 3], decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
                     encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
                     decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
                     upsample_block_type="interpolate", downsample_block_type="conv", decoder_norm_types="rms_norm",
                     decoder_act_fns="silu", scaling_factor=0.41407)
_GEMMA2_2B = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256)


def _sana(repo: str, resolution: int) -> Preset:
    # DC-AE compresses 32x, and Sana's transformer patches at 1: 512 px is a 16x16 latent
    transformer = {**_SANA_600M_TRANSFORMER, "sample_size": resolution // 32}
    return Preset(SANA, resolution, repo, repo,
                  {"transformer": transformer, "vae": _DC_AE_F32C32, "text_encoder": _GEMMA2_2B})


PRESETS: dict[str, Preset] = {
    "PixArt-alpha/PixArt-XL-2-512x512": _alpha("PixArt-alpha/PixArt-XL-2-512x512", 512),
    "PixArt-alpha/PixArt-XL-2-1024-MS": _alpha("PixArt-alpha/PixArt-XL-2-1024-MS", 1024),
    "PixArt-alpha/PixArt-Sigma-XL-2-512-MS": _sigma("PixArt-alpha/PixArt-Sigma-XL-2-512-MS", 512),
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": _sigma("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", 1024),
    "Efficient-Large-Model/Sana_600M_512px_diffusers": _sana("Efficient-Large-Model/Sana_600M_512px_diffusers", 512),
    "Efficient-Large-Model/Sana_600M_1024px_diffusers": _sana("Efficient-Large-Model/Sana_600M_1024px_diffusers",
                                                              1024),
}


def preset_help() -> str:
    """One line for --help texts: every preset and what it is."""
    return "; ".join(f"{name} ({preset.describe()})" for name, preset in PRESETS.items())

"""The base models Med-Art fine-tunes, one entry each, and which one a model folder or hub id is.

Everything that differs between bases lives in its `Base` entry: the diffusers pipeline class,
the text encoder and its token limit, the VAE, the prediction type and who used it. The sampler,
the trainer, generation, captioning's token budget and the memory plan ask `detect_base` (or
`base_of_pipeline`) instead of branching on the base themselves; a new base is one more entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medart_core.errors import MedArtError

# LoRA targets. PixArtTransformer2DModel: attention (self and cross), feed-forward, and the adaLN-single /
# timestep / caption-projection linears.
PIXART_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0",
    "ff.net.0.proj", "ff.net.2",
    "adaln_single.linear", "timestep_embedder.linear_1", "timestep_embedder.linear_2",
    "caption_projection.linear_1", "caption_projection.linear_2",
)
# T5 v1.1 (PixArt's T5-XXL) has gated feed-forwards: wi_0 and wi_1, no wi.
T5_LORA_TARGETS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
# SanaTransformer2DModel: attn1 (linear self-attention) and attn2 (cross-attention), the timestep embedding
# and its adaLN-single linear, the caption projection. Its feed-forward (GLUMBConv) is convolutions.
SANA_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0",
    "timestep_embedder.linear_1", "timestep_embedder.linear_2", "time_embed.linear",
    "caption_projection.linear_1", "caption_projection.linear_2",
)
# GLUMBConv's pointwise Conv2d layers (the depthwise conv_depth between them stays frozen)
SANA_FEED_FORWARD_CONVS = ("ff.conv_inverted", "ff.conv_point")
GEMMA2_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Base:
    """What the code needs to know about one family of checkpoints."""

    name: str
    pipeline_class: str  # diffusers class, as model_index.json's _class_name names it
    text_encoder: str  # which text encoder, for people
    max_prompt_tokens: int  # the text encoder's token limit, as the stock pipeline encodes prompts
    vae: str  # which VAE, for people
    prediction_type: str  # what the transformer predicts
    learned_sigma: bool  # the transformer outputs (prediction, variance) halves
    used_by_paper: bool  # Guo et al. 2025 fine-tuned this base
    clean_caption: bool = True  # the stock pipeline's default caption cleaning (PixArt: on, Sana: off)
    # the component classes, by name: the memory plan builds them empty from config files
    transformer_class: str = "PixArtTransformer2DModel"  # diffusers
    vae_class: str = "AutoencoderKL"  # diffusers
    text_encoder_class: str = "T5EncoderModel"  # transformers
    text_encoder_config_class: str = "T5Config"  # transformers
    # LoRA: peft target module names (suffixes of module paths)
    lora_targets: tuple[str, ...] = PIXART_LORA_TARGETS
    lora_conv_targets: tuple[str, ...] = ()  # Conv2d layers adapted only on request (lora_feed_forward_convs)
    text_encoder_lora_targets: tuple[str, ...] = T5_LORA_TARGETS
    # which adapters the single-file LoRA holds: those the base's stock LoRA loader reads (Sana's loads the
    # transformer only, so a Gemma2 LoRA stays a PEFT folder); PixArt has no stock loader: Med-Art reads both
    lora_file_components: tuple[str, ...] = ("transformer", "text_encoder")
    # the stock pipeline keeps latents in fp32 and casts only the transformer's input (Sana); PixArt's keep
    # the transformer's dtype
    fp32_latents: bool = False

    def pipeline_type(self):
        """The diffusers pipeline class (imported only when asked for)."""
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def prompt_instruction(self) -> list[str] | None:
        """The text the stock pipeline puts before every (non-negative) prompt: Sana's "complex
        human instruction", read from `SanaPipeline.__call__`'s default so it is the stock one to
        the letter; None for bases without one (PixArt)."""
        import inspect

        parameter = inspect.signature(self.pipeline_type().__call__).parameters.get("complex_human_instruction")
        return list(parameter.default) if parameter is not None and parameter.default else None

    def transformer_lora_targets(self, feed_forward_convs: bool = False) -> tuple[str, ...]:
        """peft targets of the transformer LoRA; with `feed_forward_convs` also the optional convolutions."""
        return self.lora_targets + (self.lora_conv_targets if feed_forward_convs else ())

    def latent_dtype(self, transformer_dtype):
        """The dtype sampling keeps latents in, as the stock pipeline does (the transformer's input is cast)."""
        import torch

        return torch.float32 if self.fp32_latents else transformer_dtype


PIXART_ALPHA = Base(
    name="PixArt-alpha",
    pipeline_class="PixArtAlphaPipeline",
    text_encoder="T5 v1.1 XXL",
    max_prompt_tokens=120,
    vae="SD VAE (KL-f8, 4 channels, scaling 0.18215)",
    prediction_type="epsilon",
    learned_sigma=True,
    used_by_paper=True,
)
PIXART_SIGMA = Base(
    name="PixArt-Sigma",
    pipeline_class="PixArtSigmaPipeline",
    text_encoder="T5 v1.1 XXL",
    max_prompt_tokens=300,
    vae="SDXL VAE (KL-f8, 4 channels, scaling 0.13025)",
    prediction_type="epsilon",
    learned_sigma=True,
    used_by_paper=False,
)

SANA = Base(
    name="Sana",
    pipeline_class="SanaPipeline",
    text_encoder="Gemma 2 2B-it, with the complex human instruction prefix",
    max_prompt_tokens=300,
    vae="DC-AE (f32c32, 32 channels, scaling 0.41407)",
    prediction_type="flow_prediction",
    learned_sigma=False,
    used_by_paper=False,
    clean_caption=False,
    transformer_class="SanaTransformer2DModel",
    vae_class="AutoencoderDC",
    text_encoder_class="Gemma2Model",
    text_encoder_config_class="Gemma2Config",
    lora_targets=SANA_LORA_TARGETS,
    lora_conv_targets=SANA_FEED_FORWARD_CONVS,
    text_encoder_lora_targets=GEMMA2_LORA_TARGETS,
    lora_file_components=("transformer",),
    fp32_latents=True,
)

BASES: dict[str, Base] = {base.pipeline_class: base for base in (PIXART_ALPHA, PIXART_SIGMA, SANA)}


def supported() -> str:
    return ", ".join(f"{b.pipeline_class} ({b.name})" for b in BASES.values())


def base_for_class(class_name: str | None, where: str) -> Base:
    """The entry for a pipeline class name, or one line naming what is supported."""
    if class_name not in BASES:
        raise MedArtError(f"{where} is a {class_name or 'pipeline of unknown class'}, which Med-Art does not support; "
                          f"supported: {supported()}")
    return BASES[class_name]


def read_model_index(model: str) -> dict | None:
    """model_index.json of a local folder, or of a hub id already in the local Hugging Face cache
    (or reachable online); None when there is none to read."""
    folder = Path(model).expanduser()
    if (folder / "model_index.json").is_file():
        return json.loads((folder / "model_index.json").read_text())
    if folder.exists() or str(model).startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(model), "model_index.json")).read_text())
    except Exception:  # offline, no such repository, a transformer-only repository: the caller says what is missing
        return None


def detect_base(model: str) -> Base:
    """The base of a local diffusers folder or hub id, from model_index.json's `_class_name`
    (a preset names its own base: the PixArt-Sigma transformer repositories have no model_index.json)."""
    from medart_core.model_presets import PRESETS

    if str(model) in PRESETS:
        return PRESETS[str(model)].base
    index = read_model_index(str(model))
    if index is None:
        raise MedArtError(f"cannot tell which model {str(model)!r} is: no model_index.json in a local folder of that "
                          f"name, in the Hugging Face cache or on the Hub; use a diffusers folder or a preset "
                          f"({', '.join(PRESETS)})")
    return base_for_class(index.get("_class_name"), str(model))


def base_of_pipeline(pipe) -> Base:
    """The entry for a loaded pipeline object."""
    return base_for_class(type(pipe).__name__, f"the loaded pipeline {type(pipe).__name__}")


def uses_micro_conditions(transformer) -> bool:
    """PixArt's resolution / aspect-ratio conditions, as the transformer itself decides
    (`use_additional_conditions`; diffusers sets it from sample_size only when the config leaves it
    unset): PixArt-alpha-1024 takes them, PixArt-Sigma-1024 (also sample size 128) does not."""
    return bool(getattr(transformer, "use_additional_conditions", False))

"""Memory plan of a fine-tuning config, before any weights are downloaded or loaded.

    python finetune/train.py --config finetune/configs/paper.yaml --plan [cpu|cuda]

Parameter counts are exact: the model classes are built from their config.json files (a local
folder's, or a preset's from medart_core.model_presets) on the `meta` device, which holds
shapes and no data; which classes, the base's medart_core.bases entry says. Activation sizes are
estimates from the architecture (tensors a transformer block keeps for its backward pass, in units
of tokens x width), checked against measured peaks by bench/bench_train.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from finetune.config import TrainConfig
from medart_core.bases import PIXART_ALPHA, Base, detect_base
from medart_core.errors import MedArtError
from medart_core.model_presets import PRESETS

GIB = 2 ** 30

# Tensors one transformer block keeps for backward, in units of (tokens x width), per transformer class.
# PixArt: norms and modulations (~4), self-attention q, k, v, output and projection input (~6),
# cross-attention (~4), feed-forward input, GELU input and output at 4x width (~10), gates and
# residuals (~2). Sana: its GLUMBConv feed-forward keeps 2 x 2.5 = 5 widths after conv_inverted, after
# SiLU and after the depthwise conv, and 2.5 widths per GLU half and product, so it keeps more than
# PixArt's: 37, counted with autograd's saved tensors of Sana-600M blocks (tests/test_plan.py).
BLOCK_ACTIVATIONS = {"PixArtTransformer2DModel": 26, "SanaTransformer2DModel": 37}
# Tensors a VAE decoder ResNet block keeps for backward, in units of (channels x pixels).
RESNET_ACTIVATIONS = 7
# The same for DC-AE's decoder blocks (Sana), counted with autograd's saved tensors on single blocks:
# ResBlock (conv, RMS norm, SiLU, conv) 4; EfficientViTBlock (multi-scale linear attention, then a
# GLUMBConv at 4x width) 49.
DC_AE_BLOCK_ACTIVATIONS = {"ResBlock": 4, "EfficientViTBlock": 49}


def read_component_configs(model: str) -> tuple[Base, dict[str, dict]]:
    """The base and the config.json of the transformer, VAE and text encoder of a local folder, or a preset's."""
    folder = Path(model).expanduser()
    if (folder / "model_index.json").is_file():
        base = detect_base(str(folder))  # an unsupported pipeline is refused in one line
        configs = {}
        for part in ("transformer", "vae", "text_encoder"):
            path = folder / part / "config.json"
            if not path.is_file():
                raise MedArtError(f"{path} not found: {folder} is not a complete {base.name} pipeline folder")
            configs[part] = json.loads(path.read_text())
        return base, configs
    if model in PRESETS:
        return PRESETS[model].base, PRESETS[model].configs
    raise MedArtError(f"no local pipeline folder {model} and no memory-plan preset for it; presets: "
                      f"{', '.join(PRESETS)} (or pass --model with a local save_pretrained folder)")


def empty_models(configs: dict[str, dict], base: Base = PIXART_ALPHA):
    """The base's three models with the right shapes and no data (meta device): instant even for T5-XXL."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    with init_empty_weights():
        transformer = getattr(diffusers, base.transformer_class).from_config(configs["transformer"])
        vae = getattr(diffusers, base.vae_class).from_config(configs["vae"])
        text_config = {k: v for k, v in configs["text_encoder"].items() if not k.startswith("_")}
        text_config_class = getattr(transformers, base.text_encoder_config_class)
        text_encoder = getattr(transformers, base.text_encoder_class)(text_config_class(**text_config))
    if hasattr(text_encoder, "shared"):  # T5's encoder embedding is its shared one; init_empty_weights loses that tie
        text_encoder.encoder.embed_tokens.weight = text_encoder.shared.weight
    return transformer, vae, text_encoder


def lora_tensor_sizes(module, targets: list[str], rank: int) -> list[int]:
    """Element counts of the LoRA A and B matrices peft would add (same target matching as peft):
    a Linear's A is rank x in, a Conv2d's A a conv of rank channels with the layer's kernel."""
    import torch

    sizes = []
    for name, child in module.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(child, torch.nn.Linear):
            sizes += [rank * child.in_features, rank * child.out_features]
        elif isinstance(child, torch.nn.Conv2d):
            kernel = child.kernel_size[0] * child.kernel_size[1]
            sizes += [rank * child.in_channels // child.groups * kernel, rank * child.out_channels]
    return sizes


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _dtype_bytes(mixed_precision: str, device: str) -> tuple[int, int]:
    """(transformer/VAE bytes, T5 bytes) per value, as train.py chooses them."""
    if mixed_precision == "auto":
        mixed_precision = "bf16" if device == "cuda" else "no"
    model = {"bf16": 2, "fp16": 2}.get(mixed_precision, 4)
    return model, 4 if mixed_precision in ("fp16", "no") else 2


def t5_weight_bytes(text_encoder, quantization: str, dtype_bytes: int) -> int:
    """bitsandbytes stores linear weights in 1 byte (8-bit) or half a byte plus block scales (4-bit);
    T5's `wo` stays unquantised, in T5's dtype (transformers' _keep_in_fp32_modules)."""
    import torch

    if quantization == "none":
        return count(text_encoder) * dtype_bytes
    total = 0
    for name, child in text_encoder.named_modules():
        if isinstance(child, torch.nn.Linear):
            n = child.weight.numel()
            if name.endswith("wo"):
                total += dtype_bytes * n
            elif quantization == "8bit":
                total += n + 4 * child.out_features  # int8 weights + one fp32 scale per row
            else:
                total += n // 2 + 4 * (n // 64)  # nf4 + one fp32 absmax per block of 64
    linear = sum(c.weight.numel() for c in text_encoder.modules() if isinstance(c, torch.nn.Linear))
    return total + (count(text_encoder) - linear) * dtype_bytes


def transformer_activations(transformer, batch: int, resolution: int, vae_scale: int, value_bytes: int, *,
                            checkpointing: bool, prompt_tokens: int) -> int:
    """Tensors kept for backward by one transformer call on `batch` images (+ a backward workspace);
    `prompt_tokens`: the base's text-encoder limit (cross-attention keys and values)."""
    c = transformer.config
    tokens = (resolution // vae_scale // c.patch_size) ** 2
    width = c.num_attention_heads * c.attention_head_dim
    per_block = BLOCK_ACTIVATIONS[type(transformer).__name__] * batch * tokens * width + 2 * batch * prompt_tokens * width
    workspace = 8 * batch * tokens * width  # gradients of the widest (4x) feed-forward tensors
    if checkpointing:  # block inputs only, plus one block recomputed at a time
        return (c.num_layers * batch * tokens * width + per_block + workspace) * value_bytes
    return (c.num_layers * per_block + workspace) * value_bytes


def vae_decoder_activations(vae, batch: int, resolution: int, value_bytes: int, *, checkpointing: bool) -> int:
    """Tensors the VAE decoder keeps for backward when HLDF decodes with gradients."""
    if "decoder_block_types" in vae.config:
        return dc_ae_decoder_activations(vae, batch, resolution, value_bytes)
    c = vae.config
    channels = list(reversed(c.block_out_channels))
    size = resolution // 2 ** (len(channels) - 1)
    blocks = [2 * RESNET_ACTIVATIONS * channels[0] * size * size + 5 * channels[0] * size * size]  # mid block
    for level, width in enumerate(channels):
        level_values = (c.layers_per_block + 1) * RESNET_ACTIVATIONS * width * size * size
        if level < len(channels) - 1:
            size *= 2
            level_values += width * size * size  # the upsampled input of the upsampler's conv
        blocks.append(level_values)
    blocks.append(3 * c.block_out_channels[0] * resolution * resolution)  # norm, SiLU, conv_out
    if checkpointing:
        return batch * (max(blocks) + sum(blocks) // max(len(blocks), 1)) * value_bytes
    return batch * sum(blocks) * value_bytes


def dc_ae_decoder_activations(vae, batch: int, resolution: int, value_bytes: int) -> int:
    """DC-AE's decoder (Sana): stage i works at resolution / 2**i with its channels and layers; it
    has no gradient checkpointing in diffusers (training refuses vae_gradient_checkpointing)."""
    c = vae.config
    values = 0
    for level, (kind, width, layers) in enumerate(zip(c.decoder_block_types, c.decoder_block_out_channels,
                                                      c.decoder_layers_per_block)):
        size = resolution // 2 ** level
        values += layers * DC_AE_BLOCK_ACTIVATIONS[kind] * width * size * size
        values += width * size * size  # the upsampled input of the stage
    values += 3 * c.decoder_block_out_channels[0] * resolution * resolution  # norm, SiLU, conv_out
    return batch * values * value_bytes


@dataclass
class MemoryPlan:
    """Estimated bytes of each part of a training step on one device."""

    model: str
    device: str
    parameters: dict[str, int]
    base: Base | None = None
    prompt_tokens: int = 0  # T5 tokens a caption reaches the model with (max_prompt_tokens, else the base's limit)
    rows: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def fixed(self) -> int:
        return sum(self.rows[k] for k in ("transformer", "vae", "text_encoder", "adapters", "gradients", "optimizer"))

    @property
    def peak_plain(self) -> int:
        return self.fixed + self.rows["activations"]

    @property
    def peak_hldf(self) -> int:
        # the noise-prediction graph is still alive when the HLDF sample runs (one backward for both)
        return self.fixed + self.rows["activations"] + self.rows["hldf"] if self.rows["hldf"] else 0

    @property
    def peak(self) -> int:
        return max(self.peak_plain, self.peak_hldf, self.rows["caching"])

    def report(self) -> str:
        gib = lambda n: f"{n / GIB:8.2f} GiB"  # noqa: E731
        p = self.parameters
        text = self.base.text_encoder.split()[0] if self.base else "text encoder"  # T5, Gemma
        lines = [f"memory plan for {self.model} on {self.device} (estimate; no weights were loaded)",
                 f"base: {self.base.name}, prompts up to {self.prompt_tokens} tokens of its "
                 f"{self.base.text_encoder} (limit {self.base.max_prompt_tokens})" if self.base else "base: unknown",
                 f"parameters: transformer {p['transformer'] / 1e6:.1f}M, VAE {p['vae'] / 1e6:.1f}M, "
                 f"{text} {p['text_encoder'] / 1e6:.1f}M, LoRA {p['lora'] / 1e6:.2f}M"]
        labels = {"transformer": "transformer weights", "vae": "VAE weights",
                  "text_encoder": f"{text} weights during the loop",
                  "adapters": "LoRA weights (fp32)", "gradients": "LoRA gradients (fp32)",
                  "optimizer": "optimizer state", "activations": "activations, plain step",
                  "activations_other": "  the same, checkpointing switched", "hldf": "HLDF step on top",
                  "caching": f"caching phase ({text} + VAE + transformer)"}
        for key, label in labels.items():
            lines.append(f"  {label:<40}{gib(self.rows[key])}  {self.notes.get(key, '')}".rstrip())
        lines.append(f"  {'peak, plain step':<40}{gib(self.peak_plain)}")
        if self.rows["hldf"]:
            lines.append(f"  {'peak, HLDF step':<40}{gib(self.peak_hldf)}")
        lines.append(f"  {'peak overall':<40}{gib(self.peak)}")
        return "\n".join(lines)


def memory_plan(config: TrainConfig, device: str = "cpu") -> MemoryPlan:
    """Estimate the memory of `config` on `device` ("cpu" or "cuda") from config files alone."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    base, configs = read_component_configs(config.model)
    transformer, vae, text_encoder = empty_models(configs, base)
    prompt_tokens = config.max_prompt_tokens or base.max_prompt_tokens
    model_bytes, text_bytes = _dtype_bytes(config.mixed_precision, device)
    vae_scale = 2 ** (len(vae.config.get("block_out_channels") or vae.config.encoder_block_out_channels) - 1)
    lora = lora_tensor_sizes(transformer, base.transformer_lora_targets(config.lora_feed_forward_convs),
                             config.lora_rank)
    if config.train_text_encoder_lora:
        lora += lora_tensor_sizes(text_encoder, base.text_encoder_lora_targets,
                                  config.text_encoder_lora_rank or config.lora_rank)
    plan = MemoryPlan(config.model, device, {"transformer": count(transformer), "vae": count(vae),
                                             "text_encoder": count(text_encoder), "lora": sum(lora)},
                      base=base, prompt_tokens=prompt_tokens)
    rows, notes = plan.rows, plan.notes
    rows["transformer"] = count(transformer) * model_bytes
    rows["vae"] = count(vae) * model_bytes
    t5 = t5_weight_bytes(text_encoder, config.text_encoder_quantization, text_bytes)
    t5_freed = config.caches_text and device == "cuda" and config.text_encoder_quantization == "none"
    rows["text_encoder"] = 0 if t5_freed else t5
    notes["text_encoder"] = (f"{t5 / GIB:.2f} GiB {config.text_encoder_quantization}; moved off the GPU once its "
                             "embeddings are cached" if t5_freed else
                             f"{config.text_encoder_quantization if config.text_encoder_quantization != 'none' else ''}"
                             f"{' (embeddings cached: not run in the loop)' if config.caches_text else ''}")
    rows["adapters"] = rows["gradients"] = 4 * sum(lora)
    if config.optimizer == "adamw8bit":  # bitsandbytes keeps fp32 state for tensors under 4096 values
        rows["optimizer"] = sum(2 * n if n >= 4096 else 8 * n for n in lora)
        notes["optimizer"] = "AdamW8bit (2 bytes per LoRA value)"
    else:
        rows["optimizer"] = 8 * sum(lora)
        notes["optimizer"] = "AdamW (8 bytes per LoRA value)"

    batch, resolution = config.train_batch_size, config.resolution
    activations = {ckpt: transformer_activations(transformer, batch, resolution, vae_scale, model_bytes,
                                                 checkpointing=ckpt, prompt_tokens=prompt_tokens)
                   for ckpt in (False, True)}
    rows["activations"] = activations[config.gradient_checkpointing]
    rows["activations_other"] = activations[not config.gradient_checkpointing]
    notes["activations"] = f"batch {batch} at {resolution} px, gradient_checkpointing {config.gradient_checkpointing}"
    notes["activations_other"] = f"with gradient_checkpointing {not config.gradient_checkpointing}"
    if config.train_text_encoder_lora:
        t5_width = text_encoder.config.hidden_size  # T5's d_model, Gemma2's hidden size
        t5_acts = text_encoder.config.num_hidden_layers * 12 * batch * prompt_tokens * t5_width * text_bytes
        rows["activations"] += t5_acts
        rows["activations_other"] += t5_acts

    if config.hldf_every:
        grad_steps = min(config.hldf_grad_last_k or config.hldf_steps, config.hldf_steps)
        # inside a checkpointed HLDF sample the blocks are not checkpointed (medart_core.sampling)
        blocks_checkpointed = config.gradient_checkpointing and not config.hldf_checkpointing
        one_call = transformer_activations(transformer, 2 * batch, resolution, vae_scale, model_bytes,
                                           checkpointing=blocks_checkpointed, prompt_tokens=prompt_tokens)
        sampling = one_call if config.hldf_checkpointing else grad_steps * one_call
        decode = vae_decoder_activations(vae, batch, resolution, model_bytes,
                                         checkpointing=config.vae_gradient_checkpointing)
        # The backward runs through the decoder first. With each sampling call checkpointed, the
        # decoder's activations are freed before the first call is recomputed, so the two never
        # coexist; without, every call's activations wait through the decoder's backward.
        rows["hldf"] = max(sampling, decode) if config.hldf_checkpointing else sampling + decode
        notes["hldf"] = (f"{config.hldf_steps}-step sample with CFG, gradients through {grad_steps} steps "
                         f"({'one call recomputed at a time' if config.hldf_checkpointing else 'all kept'}), "
                         f"VAE decode {decode / GIB:.2f} GiB")
    else:
        rows["hldf"] = 0
        notes["hldf"] = "HLDF off"
    rows["caching"] = t5 + rows["vae"] + rows["transformer"] if config.cache else 0
    notes["caching"] = "once per dataset" if config.cache else "cache off"
    return plan

"""Fine-tuning configuration: one dataclass, read from YAML, every key overridable as `--key value`.

The key names are a contract (users' scripts and other Med-Art tools pass them): model, data,
output_dir, resolution, train_batch_size, max_train_steps, num_train_epochs, learning_rate, lora_rank,
lora_alpha, lora_init, train_text_encoder_lora, max_prompt_tokens, hldf_every, hldf_steps, hldf_guidance,
hldf_weight, hldf_color_pairing, seed, resume.

Two presets ship in finetune/configs/: paper.yaml (the paper's settings, key for key, each with its
source) and recommended.yaml (Med-Art's choices, each difference from the paper explained).
Keys left null are filled in at start (`DERIVED_AT_START` says how); `--print-config` shows them so.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medart_core.bases import supported
from medart_core.errors import MedArtError
from medart_core.model_presets import preset_help
from medart_core.objectives import WEIGHTING_SCHEMES


DEFAULT_TRAIN_STEPS = 1000
LORA_INITS = (True, "gaussian")
HLDF_COLOR_PAIRINGS = ("per_image", "batch")
# keys that may stay null in a config and are filled in when training starts
DERIVED_AT_START = {
    "max_train_steps": "derived at start: num_train_epochs x images / (train_batch_size x processes x "
                       f"gradient_accumulation_steps), rounded up ({DEFAULT_TRAIN_STEPS} without num_train_epochs)",
    "num_train_epochs": "not used: max_train_steps sets the length",
    "max_prompt_tokens": "derived at start: the base model's own text-encoder limit (120 for PixArt-alpha, 300 for PixArt-Sigma and Sana)",
    "lora_alpha": "derived at start: the rank (scale 1)",
    "text_encoder_lora_rank": "derived at start: lora_rank",
    "hldf_weight": "derived at start: 1 / hldf_steps",
    "hldf_grad_last_k": "all sampling steps",
    "cache_text_embeddings": "derived at start: on when `cache` is on and T5 is frozen",
    "cache_dir": "derived at start: DATA/.medart-cache",
    "validation_prompts": "derived at start: the first 4 distinct training captions",
    "validation_seeds": "derived at start: 0, 1, 2, ...",
}


def option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # what to train on, and where results go
    model: str = option("PixArt-alpha/PixArt-XL-2-512x512",
                        f"base pipeline: a preset ({preset_help()}), or a hub id or local save_pretrained folder "
                        f"of a supported pipeline ({supported()})")
    data: str = option("", "imagefolder with metadata.jsonl (file_name, text); its train/ split when it has one")
    output_dir: str = option("runs/medart-lora", "adapters, checkpoints, logs and model card go here")
    # data
    resolution: int = option(512, "training image size in pixels (resize, then crop)")
    center_crop: bool = option(True, "center crop (false: random crop)")
    random_flip: bool = option(True, "flip images horizontally with probability 0.5")
    caption_dropout: float = option(0.1, "probability of training on the empty prompt (needed for classifier-free guidance)")
    dataloader_num_workers: int = option(0, "image decoding worker processes")
    # optimisation
    train_batch_size: int = option(1, "images per process per micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    num_train_epochs: int | None = option(None, "passes over the training images; set this or max_train_steps, "
                                                "the other is derived at start")
    max_train_steps: int | None = option(None, "optimizer steps in total (with neither this nor num_train_epochs "
                                               f"set: {DEFAULT_TRAIN_STEPS})")
    learning_rate: float = option(1e-4, "peak learning rate of the LoRA weights")
    lr_scheduler: str = option("constant", "diffusers schedule: constant, constant_with_warmup, linear, cosine, ...")
    lr_warmup_steps: int = option(0, "warm-up optimizer steps")
    optimizer: str = option("adamw8bit", "adamw8bit (bitsandbytes; falls back to adamw where unavailable) or adamw")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 turns clipping off)")
    mixed_precision: str = option("auto", "auto (bf16 on GPUs that have it, else no), no, bf16 or fp16 "
                                                  "(GPU only: loss scaling)")
    gradient_checkpointing: bool = option(False, "recompute transformer blocks in the backward pass (less memory)")
    # flow matching (Sana): the timestep sampling of diffusers' train_dreambooth_lora_sana.py
    weighting_scheme: str = option("none", "flow-matching bases (Sana) only: how training timesteps are drawn and "
                                           "the loss weighted, one of " + ", ".join(WEIGHTING_SCHEMES) +
                                           " (none: uniform timesteps, unweighted loss; logit_normal, mode: drawn "
                                           "from that density; sigma_sqrt, cosmap: uniform, loss weighted)")
    logit_mean: float = option(0.0, "mean of the logit_normal weighting scheme")
    logit_std: float = option(1.0, "std of the logit_normal weighting scheme")
    mode_scale: float = option(1.29, "scale of the mode weighting scheme")
    max_prompt_tokens: int | None = option(None, "text-encoder tokens of a caption that reach the model; longer ones "
                                                 "are cut (default: the base model's own limit, 120 for PixArt-alpha, "
                                                 "300 for PixArt-Sigma and Sana)")
    text_encoder_quantization: str = option("none", "load the frozen T5 in 8bit or 4bit through bitsandbytes, or none")
    # caching (medart_core.cache): T5 and the VAE encoder run once per dataset, not every step
    cache: bool = option(True, "train from cached VAE latents (with center_crop) and T5 embeddings (with T5 frozen)")
    cache_text_embeddings: bool | None = option(None, "cache T5 embeddings (default: when `cache` is on and T5 "
                                                      "is frozen; refused with train_text_encoder_lora)")
    cache_dir: str | None = option(None, "cache folder (default: DATA/.medart-cache)")
    # LoRA
    lora_rank: int = option(16, "LoRA rank of the transformer adapter")
    lora_alpha: float | None = option(None, "LoRA alpha (default: the rank, i.e. scale 1)")
    lora_init: bool | str = option(True, "LoRA initialisation, peft's init_lora_weights: true (peft's default: "
                                         "Kaiming-uniform A) or gaussian (Gaussian A); B starts at zero in both")
    lora_dropout: float = option(0.0, "dropout on the LoRA path")
    use_dora: bool = option(False, "weight-decomposed LoRA (DoRA)")
    lora_feed_forward_convs: bool = option(False, "Sana: also adapt the GLUMBConv feed-forward convolutions "
                                                  "(conv_inverted, conv_point; Conv2d); PixArt's feed-forward "
                                                  "linears are always adapted")
    train_text_encoder_lora: bool = option(False, "also train a LoRA adapter on the text encoder (T5, or Sana's "
                                                  "Gemma2: that one stays a PEFT folder, outside the single-file LoRA)")
    text_encoder_lora_rank: int | None = option(None, "rank of the text-encoder adapter (default: lora_rank)")
    # HLDF: Hybrid-Level Diffusion Fine-tuning
    hldf_every: int = option(500, "run an HLDF colour step every N optimizer steps (0 turns HLDF off)")
    hldf_steps: int = option(20, "DPM-Solver++ steps of the HLDF sample")
    hldf_guidance: float = option(4.5, "classifier-free guidance of the HLDF sample")
    hldf_weight: float | None = option(None, "weight of the colour loss (default: 1 / hldf_steps, as in the paper)")
    hldf_color_pairing: str = option("per_image", "per_image: each generated image against its own real image, "
                                                  "averaged over the batch (the paper's loss at any batch size); "
                                                  "batch: the generated batch against the pooled real batch")
    hldf_grad_last_k: int | None = option(None, "back-propagate through the last k >= 1 sampling steps "
                                                      "only (default: all)")
    hldf_checkpointing: bool = option(True, "recompute each sampling step's transformer call in the backward pass")
    vae_gradient_checkpointing: bool = option(False, "recompute VAE decoder blocks in the HLDF backward pass")
    # bookkeeping
    seed: int = option(0, "seed of data order, noise, timesteps, flips and caption dropout")
    resume: str | None = option(None, "'latest' or a checkpoint folder to continue from")
    checkpointing_steps: int = option(500, "save a resumable checkpoint every N optimizer steps (and at the end)")
    checkpoints_total_limit: int = option(3, "keep only the last K checkpoints")
    validation_steps: int = option(0, "generate validation images every N steps (0: only at the end)")
    validation_prompts: list[str] | None = option(None, "fixed validation prompts (default: the first 4 distinct training captions)")
    validation_seeds: list[int] | None = option(None, "one seed per validation prompt (default: 0, 1, 2, ...)")
    validation_inference_steps: int = option(20, "DPM-Solver++ steps of validation images")
    logging_steps: int = option(1, "log losses every N optimizer steps")

    @property
    def caches_latents(self) -> bool:
        """A random crop cached once would be one crop forever, so latents are cached with center crops only."""
        return self.cache and self.center_crop

    @property
    def caches_text(self) -> bool:
        if self.cache_text_embeddings is not None:
            return self.cache_text_embeddings
        return self.cache and not self.train_text_encoder_lora

    @property
    def colour_weight(self) -> float:
        return self.hldf_weight if self.hldf_weight is not None else 1.0 / max(self.hldf_steps, 1)

    def check(self) -> None:
        if not self.data:
            raise MedArtError("no training data: set `data` in the config or pass --data DIR")
        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "lora_rank"):
            if getattr(self, name) < 1:
                raise MedArtError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_train_steps", "num_train_epochs", "max_prompt_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MedArtError(f"{name} must be at least 1 (or null), got {getattr(self, name)}")
        if self.lora_init not in LORA_INITS:
            raise MedArtError(f"lora_init must be true or gaussian, got {self.lora_init!r} (initialisations that "
                              "rewrite the base weights, such as pissa or olora, would give adapters that do not "
                              "apply to the stock base model)")
        if self.hldf_color_pairing not in HLDF_COLOR_PAIRINGS:
            raise MedArtError(f"hldf_color_pairing must be per_image or batch, got {self.hldf_color_pairing!r}")
        if self.hldf_every < 0 or (self.hldf_every and self.hldf_steps < 1):
            raise MedArtError("hldf_every must be >= 0 and hldf_steps >= 1")
        if self.hldf_grad_last_k is not None and self.hldf_grad_last_k < 1:
            raise MedArtError(f"hldf_grad_last_k must be at least 1, got {self.hldf_grad_last_k}: with 0 the HLDF "
                              "sample would run and send no gradient; leave it unset to back-propagate through "
                              "every sampling step, or set hldf_every 0 to turn HLDF off")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise MedArtError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise MedArtError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.cache_text_embeddings and self.train_text_encoder_lora:
            raise MedArtError(
                "cache_text_embeddings cannot be true while train_text_encoder_lora is on: the T5 LoRA changes "
                "the embeddings every step, so cached ones would be stale; set cache_text_embeddings false "
                "(VAE latents are still cached)")
        if self.text_encoder_quantization not in ("none", "8bit", "4bit"):
            raise MedArtError(f"text_encoder_quantization must be none, 8bit or 4bit, got {self.text_encoder_quantization!r}")
        if self.text_encoder_quantization != "none" and self.train_text_encoder_lora:
            raise MedArtError("a quantised T5 is for frozen-T5 training; set text_encoder_quantization none to "
                              "train a T5 LoRA, or train_text_encoder_lora false")
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise MedArtError(f"weighting_scheme must be one of {', '.join(WEIGHTING_SCHEMES)}, "
                              f"got {self.weighting_scheme!r}")
        if self.optimizer not in ("adamw8bit", "adamw"):
            raise MedArtError(f"optimizer must be adamw8bit or adamw, got {self.optimizer!r}")

    def to_yaml(self) -> str:
        """The config as YAML; a key still null that is filled in at start says so in a comment."""
        lines = []
        for line in yaml.safe_dump(dataclasses.asdict(self), sort_keys=False).splitlines():
            key, _, value = line.partition(":")
            if value.strip() == "null" and key in DERIVED_AT_START:
                line = f"{line}  # {DERIVED_AT_START[key]}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def with_train_steps(self, num_images: int, num_processes: int) -> "TrainConfig":
        """The config with max_train_steps filled in: from num_train_epochs over `num_images`, or
        the default. An epoch is every image once, over all processes and accumulated micro-batches."""
        if self.max_train_steps is not None:
            return self
        if self.num_train_epochs is None:
            return dataclasses.replace(self, max_train_steps=DEFAULT_TRAIN_STEPS)
        images_per_step = self.train_batch_size * num_processes * self.gradient_accumulation_steps
        return dataclasses.replace(self, max_train_steps=math.ceil(self.num_train_epochs * num_images / images_per_step))


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _bool_or_text(text: str) -> bool | str:
    try:
        return _parse_bool(text)
    except argparse.ArgumentTypeError:
        return text


def _option_type(annotation):
    """argparse type for a field annotation like `int | None`, `bool | str` or `list[str]`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if set(args) == {bool, str}:
        return _bool_or_text, None
    base = args[0]
    if typing.get_origin(base) is list:
        return typing.get_args(base)[0], "+"
    return {bool: _parse_bool}.get(base, base), None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="LoRA + HLDF fine-tuning of PixArt-alpha, PixArt-Sigma or Sana. Run with `accelerate launch finetune/train.py "
                    "--config CONFIG.yaml [--key value ...]`: options override the config file.")
    parser.add_argument("--config", help="YAML file with any of the keys below")
    parser.add_argument("--plan", nargs="?", const="auto", choices=["auto", "cpu", "cuda"],
                        help="print the estimated memory of this config on this machine's device (or on cpu / "
                             "cuda) without loading weights, and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective config (defaults < config file < options) as YAML and exit; keys "
                             "filled in at start (e.g. max_train_steps from num_train_epochs) show as null")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind, nargs = _option_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(f"--{f.name}", type=kind, nargs=nargs, default=argparse.SUPPRESS,
                            help=f"{f.metadata['help']} (default: {default})")
    return parser


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < YAML file < command-line options."""
    args = vars(build_parser().parse_args(argv))
    values: dict = {}
    args.pop("plan", None)  # finetune/train.py acts on it, and on print_config
    args.pop("print_config", None)
    config_file = args.pop("config", None)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise MedArtError(f"config file {path} not found")
        values = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedArtError(f"{path}: unknown keys {', '.join(unknown)} (see --help)")
    values.update(choose_training_length(values, args, where=config_file))
    config = TrainConfig(**values)
    config.check()
    return config


def choose_training_length(file_values: dict, options: dict, *, where: str | None) -> dict:
    """The file's values updated by the options, with at most one of num_train_epochs and
    max_train_steps: a file may set one, and an option replaces the file's choice."""
    length = ("num_train_epochs", "max_train_steps")
    if where and all(file_values.get(k) is not None for k in length):
        raise MedArtError(f"{where} sets both num_train_epochs and max_train_steps: keep one (the other is derived "
                          "at start from the number of images, batch size, processes and accumulation)")
    if all(options.get(k) is not None for k in length):
        raise MedArtError("--num_train_epochs and --max_train_steps were both given: pass one")
    merged = dict(file_values)
    for key, other in (length, length[::-1]):
        if options.get(key) is not None:
            merged[other] = None
    merged.update(options)
    return merged

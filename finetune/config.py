"""Fine-tuning configuration: one dataclass, read from YAML, every key overridable as `--key value`.

The key names are a contract (users' scripts and other Med-Art tools pass them): model, data,
output_dir, resolution, train_batch_size, max_train_steps, learning_rate, lora_rank,
train_text_encoder_lora, hldf_every, hldf_steps, hldf_guidance, hldf_weight, seed, resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medart_core.errors import MedArtError


def option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # what to train on, and where results go
    model: str = option("PixArt-alpha/PixArt-XL-2-512x512", "base pipeline: hub id or local save_pretrained folder")
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
    max_train_steps: int = option(1000, "optimizer steps in total")
    learning_rate: float = option(1e-4, "peak learning rate of the LoRA weights")
    lr_scheduler: str = option("constant", "diffusers schedule: constant, constant_with_warmup, linear, cosine, ...")
    lr_warmup_steps: int = option(0, "warm-up optimizer steps")
    optimizer: str = option("adamw8bit", "adamw8bit (bitsandbytes; falls back to adamw where unavailable) or adamw")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 turns clipping off)")
    mixed_precision: str = option("auto", "auto (bf16 on GPUs that have it, else no), no, bf16 or fp16")
    gradient_checkpointing: bool = option(False, "recompute transformer blocks in the backward pass (less memory)")
    text_encoder_quantization: str = option("none", "load the frozen T5 in 8bit or 4bit through bitsandbytes, or none")
    # caching (medart_core.cache): T5 and the VAE encoder run once per dataset, not every step
    cache: bool = option(True, "train from cached VAE latents (with center_crop) and T5 embeddings (with T5 frozen)")
    cache_text_embeddings: bool | None = option(None, "cache T5 embeddings (default: when `cache` is on and T5 "
                                                      "is frozen; refused with train_text_encoder_lora)")
    cache_dir: str | None = option(None, "cache folder (default: DATA/.medart-cache)")
    # LoRA
    lora_rank: int = option(16, "LoRA rank of the transformer adapter")
    lora_alpha: float | None = option(None, "LoRA alpha (default: the rank, i.e. scale 1)")
    lora_dropout: float = option(0.0, "dropout on the LoRA path")
    use_dora: bool = option(False, "weight-decomposed LoRA (DoRA)")
    train_text_encoder_lora: bool = option(False, "also train a LoRA adapter on the T5 text encoder")
    text_encoder_lora_rank: int | None = option(None, "rank of the T5 adapter (default: lora_rank)")
    # HLDF: Hybrid-Level Diffusion Fine-tuning
    hldf_every: int = option(500, "run an HLDF colour step every N optimizer steps (0 turns HLDF off)")
    hldf_steps: int = option(20, "DPM-Solver++ steps of the HLDF sample")
    hldf_guidance: float = option(4.5, "classifier-free guidance of the HLDF sample")
    hldf_weight: float | None = option(None, "weight of the colour loss (default: 1 / hldf_steps, as in the paper)")
    hldf_grad_last_k: int | None = option(None, "back-propagate through the last k sampling steps only (default: all)")
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
        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "lora_rank"):
            if getattr(self, name) < 1:
                raise MedArtError(f"{name} must be at least 1, got {getattr(self, name)}")
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
        if self.optimizer not in ("adamw8bit", "adamw"):
            raise MedArtError(f"optimizer must be adamw8bit or adamw, got {self.optimizer!r}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _option_type(annotation):
    """argparse type for a field annotation like `int | None` or `list[str]`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    base = args[0]
    if typing.get_origin(base) is list:
        return typing.get_args(base)[0], "+"
    return {bool: _parse_bool}.get(base, base), None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="LoRA + HLDF fine-tuning of PixArt-alpha. Run with `accelerate launch finetune/train.py "
                    "--config CONFIG.yaml [--key value ...]`: options override the config file.")
    parser.add_argument("--config", help="YAML file with any of the keys below")
    parser.add_argument("--plan", nargs="?", const="auto", choices=["auto", "cpu", "cuda"],
                        help="print the estimated memory of this config on this machine's device (or on cpu / "
                             "cuda) without loading weights, and exit")
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
    args.pop("plan", None)  # finetune/train.py acts on it
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
    values.update(args)
    config = TrainConfig(**values)
    config.check()
    return config

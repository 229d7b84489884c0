"""Load PixArt-alpha (a hub id or a local `save_pretrained` folder) with its LoRA adapters.

Precision follows what works for PixArt: on a GPU the transformer and VAE in bf16 (fp16 where
bf16 is unsupported) and the T5 text encoder in bf16 or fp32, never fp16 (T5 overflows in fp16
and PixArt's outputs turn to noise); on CPU everything in fp32. Adapters are stock PEFT folders,
attached in place, so the pipeline stays a plain `diffusers.PixArtAlphaPipeline`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from medart_core.errors import MedArtError
from medart_core.sampling import TextConditioning

logger = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 120  # PixArt-alpha's T5 budget (the paper's limit)
TRANSFORMER_ADAPTER = "transformer_lora"
TEXT_ENCODER_ADAPTER = "text_encoder_lora"


@dataclass(frozen=True)
class Precision:
    """Where the pipeline runs and in which dtypes."""

    device: torch.device
    model_dtype: torch.dtype  # transformer and VAE
    text_encoder_dtype: torch.dtype

    @classmethod
    def choose(cls, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "Precision":
        """fp32 on CPU; bf16 on a GPU that has it, else fp16 for the transformer/VAE and fp32 for T5."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is not None:
            model_dtype = parse_dtype(dtype)
        elif device.type == "cuda":
            model_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            model_dtype = torch.float32
        text_dtype = torch.float32 if model_dtype == torch.float16 else model_dtype
        return cls(device, model_dtype, text_dtype)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise MedArtError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16")
    return names[dtype]


def check_text_encoder_dtype(dtype: torch.dtype) -> None:
    """Refuse fp16 for T5: its activations overflow fp16 and PixArt then generates noise."""
    if dtype == torch.float16:
        raise MedArtError(
            "the T5 text encoder must run in bf16 or fp32, not fp16 (T5 overflows in fp16 and "
            "PixArt-alpha's images turn to noise); use bf16 on GPUs that support it, else fp32"
        )


@dataclass(frozen=True)
class AdapterPaths:
    """PEFT adapter folders for the transformer and (optionally) the T5 text encoder."""

    transformer: Path | None = None
    text_encoder: Path | None = None

    def describe(self) -> str:
        return ",".join(str(p) for p in (self.transformer, self.text_encoder) if p) or ""


def _is_peft_folder(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def find_adapters(lora: str | Path | None, text_encoder_lora: str | Path | None = None) -> AdapterPaths:
    """Resolve `--lora` (one PEFT folder, or a training output with transformer_lora/ and
    optionally text_encoder_lora/) and `--text-encoder-lora` into adapter folders."""
    transformer = text_encoder = None
    if lora is not None:
        path = Path(lora).expanduser()
        if not path.is_dir():
            raise MedArtError(f"LoRA folder {path} does not exist")
        if _is_peft_folder(path):
            transformer = path
        elif _is_peft_folder(path / TRANSFORMER_ADAPTER):
            transformer = path / TRANSFORMER_ADAPTER
            if _is_peft_folder(path / TEXT_ENCODER_ADAPTER):
                text_encoder = path / TEXT_ENCODER_ADAPTER
        else:
            raise MedArtError(
                f"{path} is not a LoRA adapter: expected adapter_config.json in it (a PEFT folder) "
                f"or a training output with {TRANSFORMER_ADAPTER}/adapter_config.json"
            )
    if text_encoder_lora is not None:
        path = Path(text_encoder_lora).expanduser()
        if not _is_peft_folder(path):
            raise MedArtError(f"{path} is not a PEFT adapter folder (no adapter_config.json)")
        text_encoder = path
    return AdapterPaths(transformer, text_encoder)


def attach_adapter(module: torch.nn.Module, folder: Path, *, trainable: bool = False) -> None:
    """Inject a PEFT LoRA adapter into `module` in place (its class and forward stay the same)."""
    from peft import PeftModel

    try:
        PeftModel.from_pretrained(module, str(folder), is_trainable=trainable)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise MedArtError(f"cannot load the LoRA adapter in {folder} into {type(module).__name__}: {err}") from err


@dataclass
class LoadedModel:
    """A loaded pipeline and what generated images must record about it."""

    pipe: "PixArtAlphaPipeline"  # noqa: F821 (diffusers is imported lazily)
    model_id: str
    adapters: AdapterPaths
    precision: Precision
    prompts: "PromptEncoder"


def load_pipeline(
    model: str | os.PathLike,
    *,
    lora: str | os.PathLike | None = None,
    text_encoder_lora: str | os.PathLike | None = None,
    precision: Precision | None = None,
    prompt_cache_size: int = 256,
) -> LoadedModel:
    """PixArt-alpha from a hub id or a local folder, with its adapters, in eval mode."""
    from diffusers import PixArtAlphaPipeline

    precision = precision or Precision.choose()
    check_text_encoder_dtype(precision.text_encoder_dtype)
    adapters = find_adapters(lora, text_encoder_lora)  # fail on a bad adapter before a long load
    source = Path(model).expanduser()
    looks_local = source.is_absolute() or str(model).startswith((".", "~")) or source.exists()
    if looks_local and not (source / "model_index.json").is_file():
        raise MedArtError(f"model folder {source} not found or not a diffusers pipeline (no model_index.json in it)")
    dtypes = {"text_encoder": precision.text_encoder_dtype, "default": precision.model_dtype}
    try:
        pipe = PixArtAlphaPipeline.from_pretrained(str(source) if looks_local else str(model), dtype=dtypes)
    except (OSError, ValueError) as err:
        raise MedArtError(
            f"cannot load model {str(model)!r}: it is neither a local diffusers folder nor a model "
            f"reachable on the Hugging Face Hub ({type(err).__name__}: {err})"
        ) from err
    if adapters.transformer:
        attach_adapter(pipe.transformer, adapters.transformer)
    if adapters.text_encoder:
        attach_adapter(pipe.text_encoder, adapters.text_encoder)
    pipe.to(precision.device)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.eval()  # T5 dropout would make a seed non-deterministic
    pipe.set_progress_bar_config(disable=True)
    encoder = PromptEncoder(pipe, max_entries=prompt_cache_size)
    return LoadedModel(pipe, str(model), adapters, precision, encoder)


def count_prompt_tokens(tokenizer, prompt: str) -> int:
    """T5 tokens of a prompt including its end-of-sequence token, as the pipeline counts them."""
    return len(tokenizer(prompt, add_special_tokens=True).input_ids)


class PromptEncoder:
    """T5 prompt embeddings with an LRU cache: T5-XXL is the expensive part of a request, and
    apps and dataset generation repeat the same prompts (and always the empty negative prompt).

    The cache must be cleared (`clear()`) when the text encoder's weights change.
    """

    def __init__(self, pipe, *, max_entries: int = 256, clean_caption: bool = True,
                 max_tokens: int = MAX_PROMPT_TOKENS):
        self.pipe = pipe
        self.max_entries = max_entries
        self.clean_caption = clean_caption
        self.max_tokens = max_tokens
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def clear(self) -> None:
        self._cache.clear()

    def warn_if_truncated(self, prompts: list[str]) -> None:
        for prompt in prompts:
            n = count_prompt_tokens(self.pipe.tokenizer, prompt)
            if n > self.max_tokens:
                logger.warning(
                    "prompt is %d T5 tokens, over the %d-token limit: it was truncated, the end is ignored: %.80r",
                    n, self.max_tokens, prompt,
                )

    def encode_trainable(self, prompts: list[str]) -> TextConditioning:
        """Embeddings with autograd on and no cache, for training a LoRA on the text encoder."""
        return TextConditioning(*self._encode_uncached(list(prompts)))

    def _encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=self.pipe._execution_device,
            clean_caption=self.clean_caption,
            max_sequence_length=self.max_tokens,
        )
        return embeds, mask

    def __call__(self, prompts: list[str]) -> TextConditioning:
        """Embeddings for each prompt (the empty string is PixArt's negative prompt)."""
        if self.max_entries == 0:
            self.misses += len(prompts)
            self.warn_if_truncated([p for p in prompts if p])
            with torch.no_grad():
                return TextConditioning(*self._encode_uncached(list(prompts)))
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        self.misses += len(missing)
        self.hits += len(prompts) - len(missing)
        if missing:
            self.warn_if_truncated([p for p in missing if p])
            with torch.no_grad():
                embeds, mask = self._encode_uncached(missing)
            for i, prompt in enumerate(missing):
                self._cache[prompt] = (embeds[i], mask[i])
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        rows = [self._cache[p] for p in prompts]
        while len(self._cache) > max(self.max_entries, len(prompts)):
            self._cache.popitem(last=False)
        return TextConditioning(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

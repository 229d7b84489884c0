"""Load a base model (a hub id, a preset or a local `save_pretrained` folder) with its LoRA adapters.

Which base it is (PixArt-alpha, PixArt-Sigma) comes from medart_core.bases; the pipeline is that
base's stock diffusers class.

Precision follows what works for PixArt: on a GPU the transformer and VAE in bf16 (fp16 where
bf16 is unsupported) and the T5 text encoder in bf16 or fp32, never fp16 (T5 overflows in fp16
and PixArt's outputs turn to noise); on CPU everything in fp32. Adapters are stock PEFT folders,
attached in place, so the pipeline stays a plain diffusers pipeline (e.g. `PixArtAlphaPipeline`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from medart_core.bases import Base, base_of_pipeline, detect_base
from medart_core.errors import MedArtError
from medart_core.sampling import TextConditioning
from medart_core.text_limits import MAX_PROMPT_CHARS, bound_prompt

logger = logging.getLogger(__name__)

TRANSFORMER_ADAPTER = "transformer_lora"
TEXT_ENCODER_ADAPTER = "text_encoder_lora"


@dataclass(frozen=True)
class Precision:
    """Where the pipeline runs and in which dtypes."""

    device: torch.device
    model_dtype: torch.dtype  # transformer and VAE
    text_encoder_dtype: torch.dtype

    def __post_init__(self):
        check_text_encoder_dtype(self.text_encoder_dtype)

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


def check_loaded_text_encoder(text_encoder) -> None:
    """After loading: no floating-point T5 weight may be fp16 (a checkpoint saved in fp16, or a
    quantised load left at transformers' fp16 default, would slip past the requested dtype)."""
    dtypes = {p.dtype for p in text_encoder.parameters() if p.is_floating_point()}
    if torch.float16 in dtypes:
        check_text_encoder_dtype(torch.float16)


TEXT_ENCODER_QUANTIZATIONS = ("none", "8bit", "4bit")


def text_encoder_quantization_config(quantization: str, device: torch.device, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for T5, or None; refuses devices bitsandbytes cannot run on."""
    if quantization not in TEXT_ENCODER_QUANTIZATIONS:
        raise MedArtError(f"text_encoder_quantization must be one of {', '.join(TEXT_ENCODER_QUANTIZATIONS)}, "
                          f"got {quantization!r}")
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as err:
        raise MedArtError(f"{quantization} T5 needs bitsandbytes (pip install bitsandbytes): {err}") from err
    if device.type not in ("cuda", "cpu", "xpu"):
        raise MedArtError(f"bitsandbytes cannot run a {quantization} T5 on {device.type}; use "
                          "text_encoder_quantization none on this device (or a CUDA GPU or the CPU)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedArtError("a quantised T5 on cuda was asked for, but no CUDA GPU is available")
    if quantization == "8bit":
        # T5's `wo` stays unquantised (transformers' _keep_in_fp32_modules), which keeps T5 from overflowing
        # in the int8 matmuls' fp16 inputs.
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def load_quantized_text_encoder(source: str, quantization: str, precision: "Precision", base: Base | None = None):
    """The base's text encoder (T5EncoderModel, Sana's Gemma2Model) with 8-bit or 4-bit linears
    (bitsandbytes), placed on the target device."""
    import transformers

    encoder_class = getattr(transformers, base.text_encoder_class if base is not None else "T5EncoderModel")
    config = text_encoder_quantization_config(quantization, precision.device, precision.text_encoder_dtype)
    device_map = {"": precision.device.index or 0} if precision.device.type == "cuda" else {"": str(precision.device)}
    try:
        # the dtype must be explicit: left out, transformers loads a quantised model's other weights in fp16
        return encoder_class.from_pretrained(source, subfolder="text_encoder", quantization_config=config,
                                              dtype=precision.text_encoder_dtype, device_map=device_map)
    except (RuntimeError, ValueError, ImportError) as err:
        raise MedArtError(f"cannot load T5 in {quantization} on {precision.device} with bitsandbytes "
                          f"({type(err).__name__}: {err}); use text_encoder_quantization none") from err


def check_quantized_text_encoder_runs(pipe, quantization: str, device: torch.device) -> None:
    """One tiny T5 call right after loading: some bitsandbytes kernels load fine on a device and
    fail only at the first matmul (e.g. 4-bit on CPU with layers narrower than a quantisation block)."""
    ids = torch.ones((1, 2), dtype=torch.long, device=pipe.text_encoder.device)
    try:
        with torch.no_grad():
            pipe.text_encoder(ids)
    except (RuntimeError, NotImplementedError) as err:
        raise MedArtError(f"bitsandbytes loaded T5 in {quantization} but cannot run it on {device} "
                          f"({type(err).__name__}: {err}); use text_encoder_quantization none") from err


@dataclass(frozen=True)
class AdapterPaths:
    """PEFT adapter folders for the transformer and (optionally) the T5 text encoder, or one
    single-file LoRA (medart_core.lora_file) holding either or both."""

    transformer: Path | None = None
    text_encoder: Path | None = None
    single_file: Path | None = None

    def describe(self) -> str:
        return ",".join(str(p) for p in (self.transformer, self.text_encoder, self.single_file) if p) or ""


def _is_peft_folder(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def find_adapters(lora: str | Path | None, text_encoder_lora: str | Path | None = None) -> AdapterPaths:
    """Resolve `--lora` (one PEFT folder, a training output with transformer_lora/ and
    optionally text_encoder_lora/, or a single-file LoRA .safetensors) and `--text-encoder-lora`
    into adapter paths."""
    transformer = text_encoder = single_file = None
    if lora is not None:
        path = Path(lora).expanduser()
        if path.is_file() and path.suffix == ".safetensors":
            single_file = path
        elif not path.is_dir():
            raise MedArtError(f"LoRA folder {path} does not exist")
        elif _is_peft_folder(path):
            transformer = path
        elif _is_peft_folder(path / TRANSFORMER_ADAPTER):
            transformer = path / TRANSFORMER_ADAPTER
            if _is_peft_folder(path / TEXT_ENCODER_ADAPTER):
                text_encoder = path / TEXT_ENCODER_ADAPTER
        else:
            raise MedArtError(
                f"{path} is not a LoRA adapter: expected adapter_config.json in it (a PEFT folder), "
                f"a training output with {TRANSFORMER_ADAPTER}/adapter_config.json, or a .safetensors LoRA file"
            )
    if text_encoder_lora is not None:
        path = Path(text_encoder_lora).expanduser()
        if not _is_peft_folder(path):
            raise MedArtError(f"{path} is not a PEFT adapter folder (no adapter_config.json)")
        text_encoder = path
    return AdapterPaths(transformer, text_encoder, single_file)


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

    pipe: "PixArtAlphaPipeline"  # noqa: F821 (diffusers is imported lazily; the base's pipeline class)
    model_id: str
    adapters: AdapterPaths
    precision: Precision
    prompts: "PromptEncoder"

    @property
    def base(self) -> Base:
        return base_of_pipeline(self.pipe)


def load_pipeline(
    model: str | os.PathLike,
    *,
    lora: str | os.PathLike | None = None,
    text_encoder_lora: str | os.PathLike | None = None,
    precision: Precision | None = None,
    prompt_cache_size: int = 256,
    text_encoder_quantization: str = "none",
    embedding_cache: str | os.PathLike | None = None,
) -> LoadedModel:
    """A supported base (medart_core.bases) from a hub id, a preset or a local folder, with its
    adapters, in eval mode, as the base's stock diffusers pipeline.

    text_encoder_quantization: "8bit" or "4bit" loads T5 through bitsandbytes (about 60% or 45%
        of T5-XXL's bf16 memory: its `wo` layers stay unquantised); "none" loads it as before.
    embedding_cache: a folder where prompt embeddings persist across runs (see PromptEncoder).
    """
    from medart_core.model_presets import PRESETS

    precision = precision or Precision.choose()
    check_text_encoder_dtype(precision.text_encoder_dtype)
    text_encoder_quantization_config(text_encoder_quantization, precision.device, precision.text_encoder_dtype)
    adapters = find_adapters(lora, text_encoder_lora)  # fail on a bad adapter before a long load
    source = Path(model).expanduser()
    looks_local = source.is_absolute() or str(model).startswith((".", "~")) or source.exists()
    if looks_local and not (source / "model_index.json").is_file():
        raise MedArtError(f"model folder {source} not found or not a diffusers pipeline (no model_index.json in it)")
    base = detect_base(str(source) if looks_local else str(model))  # an unsupported pipeline fails here, in one line
    dtypes = {"text_encoder": precision.text_encoder_dtype, "default": precision.model_dtype}
    where = str(source) if looks_local else str(model)
    components = {}
    preset = None if looks_local else PRESETS.get(str(model))
    try:
        if preset is not None and preset.transformer_repo != preset.components_repo:
            from diffusers import AutoModel

            # a transformer-only repository: the other components come from the preset's components repository
            components["transformer"] = AutoModel.from_pretrained(preset.transformer_repo, subfolder="transformer",
                                                                  dtype=precision.model_dtype)
            where = preset.components_repo
        if text_encoder_quantization != "none":
            components["text_encoder"] = load_quantized_text_encoder(where, text_encoder_quantization, precision, base)
        pipe = base.pipeline_type().from_pretrained(where, dtype=dtypes, **components)
    except (OSError, ValueError) as err:
        raise MedArtError(
            f"cannot load model {str(model)!r}: it is neither a local diffusers folder nor a model "
            f"reachable on the Hugging Face Hub ({type(err).__name__}: {err})"
        ) from err
    if adapters.transformer:
        attach_adapter(pipe.transformer, adapters.transformer)
    if adapters.text_encoder:
        attach_adapter(pipe.text_encoder, adapters.text_encoder)
    if adapters.single_file:
        from medart_core.lora_file import attach_lora_file

        attach_lora_file(adapters.single_file, {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder})
    check_loaded_text_encoder(pipe.text_encoder)
    if text_encoder_quantization != "none":
        check_quantized_text_encoder_runs(pipe, text_encoder_quantization, precision.device)
    pipe.to(precision.device)  # diffusers leaves a bitsandbytes T5 where it was loaded
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        module.eval()  # T5 dropout would make a seed non-deterministic
    pipe.set_progress_bar_config(disable=True)
    store = None
    if embedding_cache is not None:
        from medart_core.cache import EmbeddingStore, text_cache_key

        key = text_cache_key(pipe, str(model), max_tokens=base.max_prompt_tokens, clean_caption=base.clean_caption,
                             adapters=str(adapters.text_encoder or adapters.single_file or ""),
                             quantization=text_encoder_quantization)
        store = EmbeddingStore(embedding_cache, key)
    encoder = PromptEncoder(pipe, max_entries=prompt_cache_size, store=store)
    return LoadedModel(pipe, str(model), adapters, precision, encoder)


def count_prompt_tokens(tokenizer, prompt: str) -> int:
    """T5 tokens of a prompt including its end-of-sequence token, as the pipeline counts them."""
    return len(tokenizer(prompt, add_special_tokens=True).input_ids)


class PromptEncoder:
    """T5 prompt embeddings with an LRU cache: T5-XXL is the expensive part of a request, and
    apps and dataset generation repeat the same prompts (and always the empty negative prompt).

    With a `store` (medart_core.cache.EmbeddingStore) embeddings also persist on disk, so later
    runs and training skip T5 for prompts seen before. The in-memory cache must be cleared
    (`clear()`) when the text encoder's weights change; the store is keyed by those weights.
    """

    def __init__(self, pipe, *, max_entries: int = 256, clean_caption: bool | None = None,
                 max_tokens: int | None = None, store=None):
        base = base_of_pipeline(pipe)
        self.pipe = pipe
        self.max_entries = max_entries
        self.clean_caption = base.clean_caption if clean_caption is None else clean_caption
        self.max_tokens = max_tokens or base.max_prompt_tokens  # 120 alpha, 300 Sigma and Sana
        self.instruction = base.prompt_instruction()  # Sana's complex human instruction; None for PixArt
        self.store = store
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = self.t5_calls = 0

    def precompute(self, prompts: list[str], batch_size: int = 16) -> None:
        """Encode every prompt not yet in the store (training's captions, once per dataset)."""
        if self.store is None:
            raise ValueError("precompute needs a persistent store")
        missing = [p for p in dict.fromkeys(prompts) if self.store.get(p) is None]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start: start + batch_size]
            self.warn_if_truncated([p for p in chunk if p])
            with torch.no_grad():
                embeds, mask = self._encode_uncached(chunk)
            self.store.add(chunk, embeds, mask)

    def clear(self) -> None:
        self._cache.clear()

    def warn_if_truncated(self, prompts: list[str]) -> None:
        for prompt in prompts:
            if len(prompt) > MAX_PROMPT_CHARS:  # never tokenised whole: see _encode_uncached
                logger.warning("prompt is %d characters, over the %d-character limit: it was truncated, the end is "
                               "ignored: %.80r", len(prompt), MAX_PROMPT_CHARS, prompt)
                continue
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
        self.t5_calls += 1
        if self.instruction is None:
            return self._encode_prompts(prompts)
        # Sana: the stock pipeline prefixes the instruction to the prompts, not to the empty negative
        # prompt; both come out max_tokens long, so one batch holds them again.
        negatives = [i for i, p in enumerate(prompts) if p == ""]
        positives = [i for i, p in enumerate(prompts) if p != ""]
        parts = [(idx, self._encode_prompts([prompts[i] for i in idx], instruction))
                 for idx, instruction in ((negatives, None), (positives, self.instruction)) if idx]
        if len(parts) == 1:
            return parts[0][1]
        order = torch.tensor([i for idx, _ in parts for i in idx]).argsort()
        embeds = torch.cat([encoded[0] for _, encoded in parts])[order.to(parts[0][1][0].device)]
        mask = torch.cat([encoded[1] for _, encoded in parts])[order.to(parts[0][1][1].device)]
        return embeds, mask

    def _encode_prompts(self, prompts: list[str], instruction: list[str] | None = None):
        # Cut before encode_prompt: its caption cleaning is quadratic on a long unbroken run, and
        # holds the interpreter (every other request of the app waits) while it runs.
        extra = {} if self.instruction is None else {"complex_human_instruction": instruction}
        embeds, mask, _, _ = self.pipe.encode_prompt(
            [bound_prompt(prompt) for prompt in prompts],
            do_classifier_free_guidance=False,
            device=self.pipe._execution_device,
            clean_caption=self.clean_caption,
            max_sequence_length=self.max_tokens,
            **extra,
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
        if missing and self.store is not None:
            device = self.pipe.transformer.device  # T5 may sit elsewhere (offloaded) once cached
            for prompt in list(missing):
                stored = self.store.get(prompt)
                if stored is not None:
                    self._cache[prompt] = (stored[0].to(device), stored[1].to(device))
                    missing.remove(prompt)
        if missing:
            self.warn_if_truncated([p for p in missing if p])
            with torch.no_grad():
                embeds, mask = self._encode_uncached(missing)
            for i, prompt in enumerate(missing):
                self._cache[prompt] = (embeds[i], mask[i])
            if self.store is not None:
                self.store.add(missing, embeds, mask)
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        rows = [self._cache[p] for p in prompts]
        while len(self._cache) > max(self.max_entries, len(prompts)):
            self._cache.popitem(last=False)
        return TextConditioning(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

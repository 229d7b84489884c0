"""LoRA adapter configurations for a base's transformer and its text encoder (PEFT).

Adapters are stock PEFT folders (adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained` loads onto the stock diffusers/transformers modules.
"""

from __future__ import annotations

from medart_core.bases import PIXART_LORA_TARGETS, T5_LORA_TARGETS

# Each base's targets live in its medart_core.bases entry; these name PixArt's (and its T5's).
TRANSFORMER_TARGETS = list(PIXART_LORA_TARGETS)
TEXT_ENCODER_TARGETS = list(T5_LORA_TARGETS)


def lora_config(targets: list[str], *, rank: int = 16, alpha: float | None = None,
                dropout: float = 0.0, use_dora: bool = False, init: bool | str = True):
    """A peft LoraConfig; alpha defaults to the rank (scale 1). `init` is peft's
    init_lora_weights: True (its default, Kaiming-uniform A) or "gaussian" (the paper's); LoRA B
    starts at zero with either, so training starts from the base model."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        use_dora=use_dora,
        init_lora_weights=init,
        target_modules=list(targets),
    )


def add_lora(module, config):
    """Wrap `module` with a trainable LoRA adapter, in place; returns the PeftModel (whose
    `save_pretrained` writes the adapter folder). LoRA weights are kept in fp32 whatever the
    base dtype, so updates to them are not rounded away in bf16."""
    from peft import get_peft_model

    peft_model = get_peft_model(module, config, autocast_adapter_dtype=True)
    for param in peft_model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return peft_model

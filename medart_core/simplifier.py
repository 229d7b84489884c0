"""The paper's `simplify:` pass: a T5 text-to-text model shortens a description over the T5 budget.

The Visual Symptom Generator of the paper (Guo et al. 2025) sends a description longer than
PixArt-alpha's 120 T5 tokens through t5-large with the task prefix "simplify: " before it is cut
at a sentence boundary; `caption --generation-preset paper` does the same with `--simplifier`.
Whatever comes back is validated again and, if it still breaks a rule, repaired as before.
"""

from __future__ import annotations

import logging

from medart_core.caption_validation import MAX_T5_TOKENS

logger = logging.getLogger(__name__)

TASK_PREFIX = "simplify: "


class T5Simplifier:
    """texts -> simplified texts, one batched greedy `generate` of a seq2seq model per call."""

    def __init__(self, model, tokenizer, *, source: str, max_new_tokens: int = MAX_T5_TOKENS):
        self.model, self.tokenizer, self.source, self.max_new_tokens = model, tokenizer, source, max_new_tokens

    def __call__(self, texts: list[str]) -> list[str]:
        import torch

        if not texts:
            return []
        inputs = self.tokenizer([TASK_PREFIX + text for text in texts], return_tensors="pt", padding=True,
                                truncation=True).to(self.model.device)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [" ".join(text.split()) for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]


def load_simplifier(name: str, *, device=None, dtype=None) -> T5Simplifier:
    """A T5 (or any seq2seq) model and its tokenizer through transformers' Auto classes: a hub id
    (e.g. t5-large) or a local save_pretrained folder, local cache first."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from medart_core.captioning import load_local_first
    from medart_core.pipeline import Precision

    precision = Precision.choose(device, dtype)
    # T5 in bf16 or fp32, never fp16 (it overflows there), as for PixArt's text encoder
    tokenizer, model = load_local_first(
        name, AutoTokenizer, AutoModelForSeq2SeqLM, dtype=precision.text_encoder_dtype, what="simplifier",
        advice="pass a local folder with --simplifier, or --simplifier none to cut over-long descriptions at "
               "sentence boundaries only")
    model.to(precision.device).eval()
    logger.info("simplifier %s on %s", name, precision.device)
    return T5Simplifier(model, tokenizer, source=name)

"""Build a tiny LLaVA (CLIP vision tower + Llama language model) from scratch, offline.

No VLM weights exist on the machines we test on, so tests and bench/bench_caption.py save a
randomly initialised `LlavaForConditionalGeneration` with a `LlavaProcessor` (CLIP image
processor + a fast BPE tokenizer trained here, with an `<image>` token and a chat template) and
load it back through `AutoProcessor` / `AutoModelForImageTextToText`, exactly as a hub VLM loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medart_core.scratch import _CAPTION_CORPUS

IMAGE_TOKEN = "<image>"
# A minimal chat format: one block per message, the image placeholder where the image goes.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '</s>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyVLMConfig:
    """Size of a from-scratch LLaVA; 32x32 images in 8x8 patches give 16 image tokens."""

    image_size: int = 32
    patch_size: int = 8
    vision_width: int = 32
    vision_layers: int = 2
    text_width: int = 32
    text_layers: int = 2
    heads: int = 4
    vocab_size: int = 400


def train_chat_tokenizer(vocab_size: int = 400):
    """A PreTrainedTokenizerFast over a BPE trained on the caption corpus, padding on the left."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    lines = [line for line in _CAPTION_CORPUS.strip().splitlines() if line]
    bpe.train_from_iterator(lines + ["Describe the image. Begin your answer with exactly"],
                            trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN}, chat_template=CHAT_TEMPLATE, padding_side="left",
    )


def build_tiny_llava(config: TinyVLMConfig = TinyVLMConfig(), *, seed: int = 0):
    """(model, processor): a randomly initialised LlavaForConditionalGeneration in eval mode."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = train_chat_tokenizer(config.vocab_size)
    image_processor = CLIPImageProcessor(size={"shortest_edge": config.image_size},
                                         crop_size={"height": config.image_size, "width": config.image_size})
    # A CLIP tower emits a CLS token that the "default" strategy drops: the processor must know
    # about it (num_additional_image_tokens=1) or image features and <image> tokens disagree.
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=config.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=config.vision_width, intermediate_size=2 * config.vision_width,
                              num_hidden_layers=config.vision_layers, num_attention_heads=config.heads,
                              image_size=config.image_size, patch_size=config.patch_size)
    text = LlamaConfig(hidden_size=config.text_width, intermediate_size=2 * config.text_width,
                       num_hidden_layers=config.text_layers, num_attention_heads=config.heads,
                       num_key_value_heads=config.heads // 2, vocab_size=len(tokenizer), max_position_embeddings=1024,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    llava = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                        vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def save_tiny_llava(folder: str | Path, config: TinyVLMConfig = TinyVLMConfig(), *, seed: int = 0) -> Path:
    """A save_pretrained folder (model + processor) loadable with --vlm FOLDER."""
    folder = Path(folder)
    model, processor = build_tiny_llava(config, seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

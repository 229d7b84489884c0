"""Build PixArt-architecture pipelines (alpha or Sigma) from scratch, offline.

No weights can be downloaded on the machines we test on, so tests, benchmarks and the demo model
build the *real* diffusers/transformers classes (PixArtTransformer2DModel, AutoencoderKL,
T5EncoderModel, T5Tokenizer, DPMSolverMultistepScheduler) at a chosen size, randomly initialised,
with a T5 tokenizer trained here by sentencepiece. Every other code path then loads them exactly
as it would load PixArt-alpha from the Hub. A PixArt-Sigma pipeline is the same component
classes saved as `PixArtSigmaPipeline`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from medart_core.bases import PIXART_ALPHA, Base
# A small corpus in the language of the captions, enough for a tokenizer that splits them into
# word pieces the way T5's does. Users' own captions can be added with `extra_text`.
_CAPTION_CORPUS = """
An endoscopic image of a polyp: pink, round, smooth surface, no bleeding, surrounded by normal mucosa.
A dermoscopic image of a melanocytic nevus with a brown reticular pattern and regular borders.
A chest X-ray, frontal view, showing clear lungs, a normal heart size and no effusion.
An axial CT slice of the head at the level of the ventricles, bone window, symmetric structures.
A histopathology tile stained with hematoxylin and eosin, dense cells, purple nuclei, pink stroma.
An immunohistochemistry tile with brown DAB staining on a blue hematoxylin background.
A fundus photograph of the retina: orange background, optic disc, branching vessels, dark macula.
A brain MRI slice, T1-weighted, axial, coronal or sagittal view, grey matter, white matter, ventricles.
Colour, shape, texture, size, location, border, surroundings, contrast, brightness, bleeding, lesion.
Red, green, blue, yellow, white, black, grey, brown, purple, orange, dark, bright, smooth, rough.
"""


@dataclass(frozen=True)
class ScratchConfig:
    """Size of a from-scratch PixArt-alpha-architecture pipeline."""

    image_size: int = 32  # pixels; the latent is image_size / 2**(len(vae_channels)-1)
    vae_channels: tuple[int, ...] = (8, 16)
    vae_norm_groups: int = 4
    latent_channels: int = 4
    transformer_layers: int = 2
    attention_heads: int = 2
    attention_head_dim: int = 8
    patch_size: int = 2
    text_layers: int = 2
    text_width: int = 32
    text_heads: int = 4
    text_ff: int = 64
    vocab_size: int = 256

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


def train_t5_tokenizer(vocab_size: int = 256, extra_text: Iterable[str] = ()):
    """A T5Tokenizer over a sentencepiece unigram model trained here (T5's ids: pad 0, eos 1, unk 2).

    transformers 5 ignores `vocab_file=` for T5Tokenizer, so the tokenizer is built from the
    trained pieces and their scores, and its size is checked.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import T5Tokenizer

    sentences = [line for line in _CAPTION_CORPUS.strip().splitlines() if line]
    sentences += [str(t) for t in extra_text if str(t).strip()]
    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model_bytes,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes.getvalue())
    pieces = [(p.piece, p.score) for p in proto.pieces]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    if len(tokenizer) != len(pieces):
        raise RuntimeError(f"T5Tokenizer has {len(tokenizer)} tokens, expected {len(pieces)}")
    return tokenizer


def build_pipeline(config: ScratchConfig = ScratchConfig(), *, seed: int = 0, tokenizer=None, base: Base = PIXART_ALPHA):
    """A randomly initialised pipeline of `base` (PixArt-alpha or PixArt-Sigma) of the given size,
    in eval mode, fp32, on CPU."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = tokenizer or train_t5_tokenizer(config.vocab_size)
    torch.manual_seed(seed)
    inner_dim = config.attention_heads * config.attention_head_dim
    transformer = PixArtTransformer2DModel(
        sample_size=config.image_size // config.vae_scale_factor,
        num_layers=config.transformer_layers,
        num_attention_heads=config.attention_heads,
        attention_head_dim=config.attention_head_dim,
        in_channels=config.latent_channels,
        out_channels=2 * config.latent_channels,  # PixArt learns sigma: epsilon and variance halves
        patch_size=config.patch_size,
        cross_attention_dim=inner_dim,
        caption_channels=config.text_width,
        norm_num_groups=1,
    )
    n_blocks = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_blocks,
        up_block_types=("UpDecoderBlock2D",) * n_blocks,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_groups,
        sample_size=config.image_size,
    )
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=config.text_width,
            d_kv=config.text_width // config.text_heads,
            d_ff=config.text_ff,
            num_layers=config.text_layers,
            num_heads=config.text_heads,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as in PixArt: wi_0/wi_1, no wi
            is_encoder_decoder=False,
        )
    )
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++")
    pipe = base.pipeline_type()(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    for module in (transformer, vae, text_encoder):
        module.eval()
    return pipe


def save_pipeline(pipe, folder: str | Path) -> Path:
    """Write a diffusers `save_pretrained` folder that the pipeline class's `from_pretrained` reads."""
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder

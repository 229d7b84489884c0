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


@dataclass(frozen=True)
class SanaScratchConfig:
    """Size of a from-scratch Sana pipeline (the stock classes at a few thousand parameters)."""

    image_size: int = 32  # pixels; SanaPipeline needs a multiple of 32
    vae_channels: tuple[int, ...] = (8, 8)  # one DC-AE stage each: ResBlock, then EfficientViTBlock
    latent_channels: int = 4
    transformer_layers: int = 2
    attention_heads: int = 2
    attention_head_dim: int = 8
    text_width: int = 16  # Gemma2 hidden size = the transformer's caption_channels
    text_layers: int = 2
    vocab_size: int = 384
    flow_shift: float = 3.0

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # Gemma's ids 0..4 (the tokenizer adds <mask> if absent)


def train_gemma_tokenizer(vocab_size: int = 384, extra_text: Iterable[str] = ()):
    """A GemmaTokenizerFast over a byte-pair model trained here with `tokenizers`.

    transformers 5's `GemmaTokenizer(vocab_file=...)` silently yields a 5-token tokenizer, so the
    trained model is wrapped as `tokenizer_object` and the length is checked. Sana's "complex human
    instruction" prefix is in the corpus, so it splits into word pieces and not single letters.
    """
    import inspect

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GemmaTokenizerFast
    from diffusers import SanaPipeline

    instruction = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    sentences = [line for line in _CAPTION_CORPUS.strip().splitlines() if line] + list(instruction)
    sentences += [str(t) for t in extra_text if str(t).strip()]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(sentences, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(GEMMA_SPECIALS),
                                                           show_progress=False))
    pad, eos, bos, unk, mask = GEMMA_SPECIALS
    bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bpe.token_to_id(bos))])
    tokenizer = GemmaTokenizerFast(tokenizer_object=bpe, pad_token=pad, eos_token=eos, bos_token=bos, unk_token=unk,
                                   mask_token=mask)
    if len(tokenizer) != bpe.get_vocab_size():
        raise RuntimeError(f"GemmaTokenizerFast has {len(tokenizer)} tokens, expected {bpe.get_vocab_size()}")
    return tokenizer


def build_sana_pipeline(config: SanaScratchConfig = SanaScratchConfig(), *, seed: int = 0, tokenizer=None):
    """A randomly initialised `SanaPipeline` (SanaTransformer2DModel, AutoencoderDC, Gemma2Model,
    DPM-Solver++ with flow prediction as Sana ships it), in eval mode, fp32, on CPU."""
    from diffusers import AutoencoderDC, SanaPipeline, SanaTransformer2DModel

    tokenizer = tokenizer or train_gemma_tokenizer(config.vocab_size)
    torch.manual_seed(seed)
    inner_dim = config.attention_heads * config.attention_head_dim
    transformer = SanaTransformer2DModel(
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,  # flow prediction: no variance half
        num_attention_heads=config.attention_heads,
        attention_head_dim=config.attention_head_dim,
        num_layers=config.transformer_layers,
        num_cross_attention_heads=config.attention_heads,
        cross_attention_head_dim=config.attention_head_dim,
        cross_attention_dim=inner_dim,
        caption_channels=config.text_width,
        sample_size=config.image_size // config.vae_scale_factor,
        patch_size=1,
    )
    stages = len(config.vae_channels)
    block_types = ("ResBlock",) + ("EfficientViTBlock",) * (stages - 1)
    multiscales = ((),) + ((5,),) * (stages - 1)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=config.latent_channels,
        attention_head_dim=config.vae_channels[-1],  # one linear-attention head (32 would leave none)
        encoder_block_types=block_types,
        decoder_block_types=block_types,
        encoder_block_out_channels=config.vae_channels,
        decoder_block_out_channels=config.vae_channels,
        encoder_layers_per_block=(1,) * stages,
        decoder_layers_per_block=(1,) * stages,
        encoder_qkv_multiscales=multiscales,
        decoder_qkv_multiscales=multiscales,
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,  # Sana's DC-AE f32c32
    )
    text_encoder = gemma2_encoder(tokenizer, hidden_size=config.text_width, intermediate_size=2 * config.text_width,
                                  num_hidden_layers=config.text_layers, num_attention_heads=2, num_key_value_heads=1,
                                  head_dim=config.text_width // 2)
    scheduler = sana_scheduler(config.flow_shift)
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=scheduler)
    for module in (transformer, vae, text_encoder):
        module.eval()
    return pipe


def sana_scheduler(flow_shift: float = 3.0):
    """DPM-Solver++ with flow prediction and flow sigmas, as Sana's 512 and 1024 px pipelines ship it."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", prediction_type="flow_prediction",
                                       use_flow_sigmas=True, flow_shift=flow_shift)


def gemma2_encoder(tokenizer, **shape):
    """A randomly initialised Gemma2Model of the given shape (Gemma2Config keys; its defaults are
    Gemma-2 2B's) that speaks `tokenizer`: its special-token ids, and its vocabulary unless the
    shape names a (larger) one."""
    from transformers import Gemma2Config, Gemma2Model

    shape = {"vocab_size": len(tokenizer), **shape}
    return Gemma2Model(Gemma2Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                    bos_token_id=tokenizer.bos_token_id))

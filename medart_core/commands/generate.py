"""`python -m medart_core generate`: a synthetic dataset from prompts, in the imagefolder layout."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "generate synthetic images (imagefolder + metadata.jsonl), resumable, shardable with accelerate"


def add_model_arguments(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    """The model and sampling options, shared with every command that generates (e.g. privacy)."""
    from medart_core.bases import supported
    from medart_core.model_presets import preset_help

    parser.add_argument("--model", required=model_required,
                        help=f"base pipeline: a preset ({preset_help()}), or a hub id or local save_pretrained folder "
                             f"of a supported pipeline ({supported()})")
    parser.add_argument("--lora", default=None,
                        help="LoRA adapter: one PEFT folder for the transformer, a training output folder "
                             "(its transformer_lora/ and, if present, text_encoder_lora/ are used), or a single-file "
                             "LoRA (.safetensors in diffusers' layout, e.g. a training output's "
                             "pytorch_lora_weights.safetensors)")
    parser.add_argument("--text-encoder-lora", default=None, help="PEFT adapter folder for the T5 text encoder")
    parser.add_argument("--steps", type=int, default=None,
                        help="DPM-Solver++ steps (default: the model card's inference.parameters.num_inference_steps, "
                             "else 20)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale; 1 turns it off (default: the model card's "
                             "inference.parameters.guidance_scale, else 4.5 as for PixArt-alpha)")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: the model's native size)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's native size)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per transformer batch (default: 4)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu; "
                                                       "under accelerate launch, each process's own device)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="transformer/VAE precision (default: bf16 on GPU, fp32 on CPU); T5 is never fp16")
    parser.add_argument("--text-encoder-quantization", default="none", choices=["none", "8bit", "4bit"],
                        help="load T5 in 8-bit or 4-bit through bitsandbytes, for GPUs (or CPUs) short of memory "
                             "(default: none)")
    parser.add_argument("--embedding-cache", metavar="DIR", default=None,
                        help="keep T5 prompt embeddings in DIR across runs, so repeated prompts skip T5 "
                             "(keyed by model, dtype, quantisation and T5 adapter; default: memory only)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt (use --n for several images of it)")
    source.add_argument("--prompts", metavar="FILE",
                        help="JSONL with \"text\" and optional \"label\" per line; a real set's metadata.jsonl works")
    parser.add_argument("--label", default=None, help="class label recorded for --prompt (default: none)")
    parser.add_argument("--n", type=int, default=1, help="images per prompt (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; image k gets seed+k (default: 0)")
    parser.add_argument("--out", required=True, help="output folder; an interrupted run with the same settings resumes there")


def generate_prompts(args: argparse.Namespace, prompts: list[dict], images_per_prompt: int, seed: int,
                     out: str | Path) -> tuple[Path, int, bool]:
    """`images_per_prompt` images of every prompt ({"text", "label"}) into `out` with the model and
    sampling options of `add_model_arguments`. Returns (metadata.jsonl, images, main process?)."""
    from medart_core.errors import MedArtError
    from medart_core.generation import GenerationSettings, generate_dataset, plan_jobs, process_state
    from medart_core.model_card import sampling_defaults
    from medart_core.pipeline import Precision, load_pipeline

    if args.batch_size < 1:
        raise MedArtError(f"--batch-size must be at least 1, got {args.batch_size}")
    defaults = sampling_defaults(args.model)
    settings = GenerationSettings(steps=defaults.steps if args.steps is None else args.steps,
                                  guidance=defaults.guidance if args.guidance is None else args.guidance,
                                  height=args.height, width=args.width)
    settings.check()
    jobs = plan_jobs(prompts, images_per_prompt, seed)

    state = process_state()
    device = args.device if (args.device and state.num_processes == 1) else state.device
    precision = Precision.choose(device, args.dtype)
    model = load_pipeline(args.model, lora=args.lora, text_encoder_lora=args.text_encoder_lora, precision=precision,
                          text_encoder_quantization=args.text_encoder_quantization,
                          embedding_cache=args.embedding_cache)
    metadata = generate_dataset(model, jobs, out, settings, batch_size=args.batch_size, state=state)
    return metadata, len(jobs), state.is_main_process


def run(args: argparse.Namespace) -> None:
    from medart_core.data import read_prompts
    from medart_core.errors import MedArtError

    if args.prompt is not None:
        if not args.prompt.strip():
            raise MedArtError("--prompt is empty")
        prompts = [{"text": args.prompt.strip(), "label": args.label}]
    else:
        prompts = read_prompts(args.prompts)
    metadata, count, main_process = generate_prompts(args, prompts, args.n, args.seed, args.out)
    if main_process:
        print(f"{count} synthetic images and {metadata}")

"""Generation speed: medart_core vs the stock diffusers PixArtAlphaPipeline vs the floor.

Side by side in one run, on the same randomly-initialised weights (a PixArt-architecture model
large enough that the transformer dominates), same prompts, seeds, steps and guidance:
  stock   diffusers' PixArtAlphaPipeline.__call__
  medart  medart_core.generation.generate_images, prompt cache off (the same work as stock)
  floor   the same transformer forwards alone (steps x one CFG batch), nothing else
and the cost of a repeated prompt with and without the prompt-embedding cache.

    python bench/bench_generate.py            # about 2-3 minutes on 2 CPU cores
    python bench/bench_generate.py --quick    # a smaller model, seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from medart_core.bases import base_of_pipeline
from medart_core.generation import GenerationSettings, generate_images
from medart_core.pipeline import Precision, PromptEncoder, load_pipeline
from medart_core.sampling import TextConditioning, decode_latents, micro_conditions, predict_noise
from medart_core.scratch import ScratchConfig, build_pipeline, save_pipeline

BENCH_MODEL = ScratchConfig(image_size=64, transformer_layers=8, attention_heads=8, attention_head_dim=32,
                            text_layers=4, text_width=256, text_heads=8, text_ff=512)
QUICK_MODEL = ScratchConfig(image_size=32, transformer_layers=4, attention_heads=4, attention_head_dim=16)
PROMPTS = ["An axial brain MRI slice, T1-weighted, at the level of the ventricles",
           "An immunohistochemistry tile with brown staining on a blue background"]


def median_seconds(fns: dict, repeats: int, *, warmup: bool = True, clock=time.perf_counter) -> dict[str, float]:
    """Median time of each function on `clock` (default: wall time), run in interleaved rounds so
    that load from other processes on the machine hits every row alike (warm-up off: for models so
    large on a CPU that one round is all there is time for, and first-call costs are swamped)."""
    for fn in fns.values() if warmup else ():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def generation_paths(model, prompts: list[str], seeds: list[int], settings: GenerationSettings) -> dict:
    """The three ways to make the same images, as callables (each waits for the GPU to finish):
    "stock" diffusers' pipeline (PixArt's or Sana's), "medart" generate_images, and "floor", the transformer forwards
    alone (steps x one CFG batch, inputs prepared beforehand); and "decode", one VAE decode of
    the batch, the part of a request the floor leaves out."""
    pipe, precision = model.pipe, model.precision
    clean_caption = base_of_pipeline(pipe).clean_caption  # the stock default of the base, as medart encodes
    size = settings.height
    sync = torch.cuda.synchronize if precision.device.type == "cuda" else (lambda: None)

    def stock():
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        pipe(prompts, generator=generators, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
             height=size, width=size, use_resolution_binning=False, output_type="pil", clean_caption=clean_caption)
        sync()

    def medart():
        generate_images(model, prompts, seeds, settings)
        sync()

    conditioning = TextConditioning.cat([model.prompts([""] * len(prompts)), model.prompts(prompts)])
    conditioning = conditioning.to(precision.device, pipe.transformer.dtype)
    latent = torch.randn(2 * len(prompts), pipe.transformer.config.in_channels, size // pipe.vae_scale_factor,
                         size // pipe.vae_scale_factor, device=precision.device, dtype=pipe.transformer.dtype)
    added = micro_conditions(pipe.transformer, latent.shape[0], size, size, device=precision.device, dtype=latent.dtype)
    timesteps = torch.linspace(999, 0, settings.steps, device=precision.device).long()

    def floor():
        with torch.no_grad():
            for t in timesteps:
                predict_noise(pipe.transformer, latent, t, conditioning, added)
        sync()

    def decode():
        with torch.no_grad():
            decode_latents(pipe.vae, latent[: len(prompts)])
        sync()

    return {"stock": stock, "medart": medart, "floor": floor, "decode": decode}


def main() -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, for a smoke run")
    parser.add_argument("--steps", type=int, default=20, help="DPM-Solver++ steps (default: 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row; the median is shown (default: 5)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()
    config = QUICK_MODEL if args.quick else BENCH_MODEL
    precision = Precision.choose(args.device)
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as folder:
        save_pipeline(build_pipeline(config, seed=0), folder)
        model = load_pipeline(folder, precision=precision, prompt_cache_size=0)
    pipe = model.pipe
    size = config.image_size
    seeds = list(range(len(PROMPTS)))
    settings = GenerationSettings(steps=args.steps, guidance=4.5, height=size, width=size)
    sync = torch.cuda.synchronize if precision.device.type == "cuda" else (lambda: None)
    paths = generation_paths(model, PROMPTS, seeds, settings)
    stock, medart, floor = paths["stock"], paths["medart"], paths["floor"]

    cached = PromptEncoder(pipe, max_entries=256)
    uncached = PromptEncoder(pipe, max_entries=0)
    cached_model = type(model)(pipe, model.model_id, model.adapters, model.precision, cached)

    def medart_cached():
        generate_images(cached_model, PROMPTS, seeds, settings)
        sync()

    rows = median_seconds({"stock": stock, "medart": medart, "floor": floor, "cached": medart_cached}, args.repeats)
    encoding = median_seconds({"cached": lambda: cached(PROMPTS), "uncached": lambda: uncached(PROMPTS)},
                              args.repeats * 4)
    encode_cached, encode_uncached, request_cached = encoding["cached"], encoding["uncached"], rows["cached"]

    n_params = sum(p.numel() for p in pipe.transformer.parameters()) / 1e6
    print(f"device {precision.device}, {precision.model_dtype}; transformer {n_params:.1f}M params, "
          f"{size}x{size} px, batch {len(PROMPTS)}, {args.steps} steps, CFG 4.5; median of {args.repeats}")
    print(f"{'path':<34}{'seconds':>10}{'vs stock':>10}{'vs floor':>10}")
    for name, label in [("stock", "stock PixArtAlphaPipeline"), ("medart", "medart_core generate_images"),
                        ("floor", "floor: transformer forwards only")]:
        print(f"{label:<34}{rows[name]:>10.3f}{rows[name] / rows['stock']:>10.3f}{rows[name] / rows['floor']:>10.3f}")
    print(f"{'medart, repeated prompt, cached':<34}{request_cached:>10.3f}"
          f"{request_cached / rows['stock']:>10.3f}{request_cached / rows['floor']:>10.3f}")
    print(f"prompt encoding of a repeated prompt: {encode_uncached * 1e3:.2f} ms without cache, "
          f"{encode_cached * 1e3:.3f} ms with cache ({encode_uncached / encode_cached:.0f}x)")


if __name__ == "__main__":
    main()

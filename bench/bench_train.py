"""Training-step cost: plain LoRA step vs HLDF step (with and without checkpointing), side by side.

Same model (a PixArt-architecture model large enough not to be trivial), same data, same seed.
Each configuration runs in a fresh process so its peak memory is its own (CPU: the peak resident
size of a step after the first over the resident size before it, measured in processes whose C
library returns freed memory at once; GPU: torch's peak allocated memory).
Also: the amortised cost of HLDF at the paper's schedule (a 20-step sample every 500 steps),
against rebuilding the pipeline from disk at each HLDF step as the paper's released code does;
a plain step with T5 and the VAE encoder run every step, with the in-memory prompt cache only
(VAE every step), and from the training cache (medart_core.cache); and the memory plan's
estimate (finetune/plan.py) against the measured peak, for the tests' tiny model and this one.

    python bench/bench_train.py            # a few minutes on 2 CPU cores
    python bench/bench_train.py --quick    # smaller model and fewer steps
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# T5 and VAE wide enough that their share of a step is not negligible, as it is not at full size
BENCH_MODEL = dict(image_size=64, transformer_layers=6, attention_heads=8, attention_head_dim=32,
                   text_layers=4, text_width=512, text_heads=8, text_ff=1280, vae_channels=(64, 128),
                   vae_norm_groups=32)
QUICK_MODEL = dict(image_size=32, transformer_layers=2, attention_heads=4, attention_head_dim=16)


def make_data(root: Path, size: int, count: int = 8) -> Path:
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    rows = []
    for i in range(count):
        pixels = rng.random((size, size, 3)) * 80 + [170, 80, 40]
        Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(root / "train" / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": "A fundus photograph of the retina, orange background"})
    (root / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def reset_peak_resident() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM), so loading the models does not hide a step's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(kind: str, model_dir: str, data_dir: str, resolution: int, hldf_steps: int, repeats: int, queue) -> None:
    """One configuration in its own process: median step time, peak memory over the baseline
    (resident size before the timed steps), and for the memory plan: memory taken by loading the
    models, and the peak of the first steps over the loaded models, each with the plan's estimate.
    (CPU: resident size, which also holds allocator caches and library buffers; GPU: torch's
    allocated memory.)"""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    import finetune.train as T
    from finetune.config import TrainConfig
    from finetune.plan import memory_plan
    from medart_core.pipeline import PromptEncoder, load_pipeline
    from medart_core.training_data import ImageCaptionDataset

    config = TrainConfig(model=model_dir, data=data_dir, resolution=resolution, train_batch_size=2, lora_rank=16,
                         hldf_steps=hldf_steps, hldf_checkpointing=(kind == "hldf+ckpt"), caption_dropout=0.0,
                         optimizer="adamw", cache_dir=str(Path(data_dir).parent / f"cache-{kind}"))
    accelerator = Accelerator(mixed_precision="no" if not torch.cuda.is_available() else "bf16")
    import peft  # noqa: F401  (imported before the baseline, as are the model classes below)
    from diffusers import PixArtAlphaPipeline  # noqa: F401
    from transformers import T5EncoderModel  # noqa: F401

    torch.ones(64, 64) @ torch.ones(64, 64)  # start the thread pool before the baseline
    on_gpu = accelerator.device.type == "cuda"
    before_models = torch.cuda.memory_allocated() if on_gpu else resident_bytes()
    precision = T.training_precision(accelerator.device, accelerator.mixed_precision)
    if kind == "reload":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            load_pipeline(model_dir, precision=precision)
            times.append(time.perf_counter() - start)
        queue.put((kind, statistics.median(times), 0, {}))
        return
    models, transformer_lora, _ = T.build_models(config, precision)
    images = ImageCaptionDataset(data_dir, resolution)
    if kind == "plain-cached":  # T5 and the VAE encoder ran once, before this process's timing
        prompts = [r.text for r in images.records] + [""]
        dataset, models.prompts = T.prepare_cached_inputs(models, images, prompts, config, accelerator)
    else:  # "plain-uncached" runs T5 on every step; the others keep prompt embeddings in memory
        dataset, models.prompts = images, PromptEncoder(models.pipe, max_entries=0 if kind == "plain-uncached" else 256)
    trainable = [p for p in models.pipe.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    objective = T.build_objective(models, config)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    loaded = torch.cuda.memory_allocated() if on_gpu else resident_bytes()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_resident()

    def step(i):
        generator = T.step_generators(0, i, len(batch["text"]))
        loss, real_colour = T.noise_prediction_step(models, batch, config, generator, objective, accelerator)
        if kind.startswith("hldf"):
            loss = loss + config.colour_weight * T.hldf_colour_step(models, real_colour, batch["text"], config,
                                                                    generator, accelerator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()

    step(0)  # warm-up
    first_peak = torch.cuda.max_memory_allocated() if on_gpu else peak_resident_bytes()
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        reset_peak_resident()
        baseline = resident_bytes()
    times = []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    highest = torch.cuda.max_memory_allocated() if on_gpu else peak_resident_bytes()
    plan = memory_plan(config, device=accelerator.device.type)
    weights = sum(plan.rows[k] for k in ("transformer", "vae", "text_encoder", "adapters"))
    first_estimate = (plan.peak_hldf if kind.startswith("hldf") else plan.peak_plain) - weights
    # after the first step the optimizer state exists; a step then adds activations and gradients
    later_estimate = first_estimate - plan.rows["optimizer"]
    memory = {"weights": (weights, loaded - before_models), "first": (first_estimate, first_peak - loaded),
              "later": (later_estimate, highest - baseline)}
    queue.put((kind, statistics.median(times) if times else float("nan"), max(highest - baseline, 0), memory))


def main() -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer repeats")
    parser.add_argument("--hldf-steps", type=int, default=20, help="sampling steps of the HLDF sample (default: 20)")
    parser.add_argument("--hldf-every", type=int, default=500, help="HLDF schedule for the amortised row (default: 500)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (default: 3)")
    args = parser.parse_args()

    from medart_core.scratch import ScratchConfig, build_pipeline, save_pipeline

    size = (QUICK_MODEL if args.quick else BENCH_MODEL)
    config = ScratchConfig(**size)
    hldf_steps = 4 if args.quick else args.hldf_steps
    context = multiprocessing.get_context("spawn")

    def run_all(scratch: ScratchConfig, kinds: tuple[str, ...], folder: Path, *, repeats: int,
                environment: dict | None = None) -> dict:
        model_dir = str(save_pipeline(build_pipeline(scratch), folder / "model"))
        data_dir = str(make_data(folder / "data", scratch.image_size))
        found = {}
        saved = dict(os.environ)
        os.environ.update(environment or {})  # read by the spawned worker's C library at start-up
        try:
            for kind in kinds:
                queue = context.Queue()
                worker = context.Process(target=measure, args=(kind, model_dir, data_dir, scratch.image_size,
                                                               hldf_steps, repeats, queue))
                worker.start()
                found[kind] = queue.get()
                worker.join()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return found

    with tempfile.TemporaryDirectory() as folder:
        results = run_all(config, ("plain", "hldf", "hldf+ckpt", "reload", "plain-uncached", "plain-cached"),
                          Path(folder) / "bench", repeats=args.repeats)
        # Memory rows in processes of their own whose C library returns freed memory at once: by
        # default glibc keeps freed tensor memory resident (its mmap threshold grows after frees), and
        # the resident size then measures the allocator's history rather than the live tensors.
        exact = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        memory = {"tiny": run_all(ScratchConfig(), ("plain", "hldf+ckpt"), Path(folder) / "tiny", repeats=1,
                                  environment=exact),
                  "bench": run_all(config, ("plain", "hldf", "hldf+ckpt"), Path(folder) / "bench-memory", repeats=1,
                                   environment=exact)}

    plain = results["plain"][1]
    print(f"transformer {config.transformer_layers} layers x {config.attention_heads * config.attention_head_dim} wide, "
          f"{config.image_size} px, batch 2, LoRA rank 16, HLDF sample {hldf_steps} steps with CFG; "
          f"median of {args.repeats} steps, each configuration in a fresh process")
    print(f"{'step':<34}{'seconds':>9}{'x plain':>9}{'peak MB':>10}   (peak: a later step's, over the memory before it)")
    names = {"plain": "plain LoRA step", "hldf": "HLDF step", "hldf+ckpt": "HLDF step, checkpointed"}
    for kind, label in names.items():
        seconds, peak = results[kind][1], memory["bench"][kind][3]["later"][1]
        print(f"{label:<34}{seconds:>9.3f}{seconds / plain:>9.2f}{peak / 2**20:>10.1f}")
    reload_seconds = results["reload"][1]
    hldf_extra = results["hldf+ckpt"][1] - plain
    every = args.hldf_every
    print(f"pipeline reload from disk: {reload_seconds:.3f} s")
    print(f"amortised over {every} steps (HLDF every {every}): in-memory HLDF adds {hldf_extra / every / plain:.2%} "
          f"per step; rebuilding the pipeline at each HLDF step adds {(hldf_extra + reload_seconds) / every / plain:.2%}")

    uncached, cached = results["plain-uncached"][1], results["plain-cached"][1]
    print("\nplain LoRA step, same model and batch:")
    print(f"{'inputs':<52}{'seconds':>9}{'x cached':>10}")
    for label, seconds in (("T5 and VAE encoder every step (no cache)", uncached),
                           ("prompt embeddings in memory, VAE encoder every step", plain),
                           ("cached latents and embeddings (cache: true)", cached)):
        print(f"{label:<52}{seconds:>9.3f}{seconds / cached:>10.2f}")

    import torch

    where = "torch's allocated memory" if torch.cuda.is_available() else "resident size, freed memory returned at once"
    print(f"\nmemory plan (finetune/plan.py, no weights loaded) vs measured ({where}): the models' weights + LoRA; "
          "the first step's peak over them (optimizer state, gradients, activations, and the libraries' "
          "first-use buffers); a later step's peak over the memory before it (gradients, activations)")
    print(f"{'model':<30}{'part':<30}{'plan MB':>10}{'measured MB':>13}{'plan/measured':>15}")
    for name, found in ((f"tests' tiny ({ScratchConfig().transformer_layers} layers, 32 px)", memory["tiny"]),
                        (f"bench ({config.transformer_layers} layers, {config.image_size} px)", memory["bench"])):
        labels = {"plain": "plain step", "hldf": "HLDF step", "hldf+ckpt": "HLDF step, ckpt"}
        for kind, label in ((k, v) for k, v in labels.items() if k in found):
            for part in ("weights", "first", "later"):
                if part == "weights" and kind != "plain":
                    continue
                estimate, measured = found[kind][3][part]
                ratio = estimate / measured if measured > 0 else float("nan")
                row = {"weights": "weights + LoRA", "first": f"{label}, first", "later": f"{label}, later"}[part]
                print(f"{name:<30}{row:<30}{estimate / 2**20:>10.1f}{measured / 2**20:>13.1f}{ratio:>15.2f}")


if __name__ == "__main__":
    main()

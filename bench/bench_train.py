"""Training-step cost: plain LoRA step vs HLDF step (with and without checkpointing), side by side.

Same model (a PixArt-architecture model large enough not to be trivial), same data, same seed.
Each configuration runs in a fresh process so its peak memory is its own (CPU: peak RSS over
the process's resident size before the first step; GPU: torch's peak allocated memory).
Also: the amortised cost of HLDF at the paper's schedule (a 20-step sample every 500 steps),
against rebuilding the pipeline from disk at each HLDF step as the paper's released code does.

    python bench/bench_train.py            # a few minutes on 2 CPU cores
    python bench/bench_train.py --quick    # smaller model and fewer steps
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

BENCH_MODEL = dict(image_size=64, transformer_layers=6, attention_heads=8, attention_head_dim=32)
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


def measure(kind: str, model_dir: str, data_dir: str, resolution: int, hldf_steps: int, repeats: int, queue) -> None:
    """One configuration in its own process: median step time and peak memory over the baseline."""
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from torch.utils.data import DataLoader

    import finetune.train as T
    from finetune.config import TrainConfig
    from medart_core.pipeline import PromptEncoder, load_pipeline
    from medart_core.training_data import ImageCaptionDataset

    config = TrainConfig(model=model_dir, data=data_dir, resolution=resolution, train_batch_size=2, lora_rank=16,
                         hldf_steps=hldf_steps, hldf_checkpointing=(kind == "hldf+ckpt"), caption_dropout=0.0)
    accelerator = Accelerator(mixed_precision="no" if not torch.cuda.is_available() else "bf16")
    precision = T.training_precision(accelerator.device, accelerator.mixed_precision)
    if kind == "reload":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            load_pipeline(model_dir, precision=precision)
            times.append(time.perf_counter() - start)
        queue.put((kind, statistics.median(times), 0))
        return
    models, transformer_lora, _ = T.build_models(config, precision)
    models.prompts = PromptEncoder(models.pipe)
    trainable = [p for p in models.pipe.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    noise_scheduler = DDPMScheduler.from_config(models.pipe.scheduler.config)
    batch = next(iter(DataLoader(ImageCaptionDataset(data_dir, resolution), batch_size=2)))

    def step(i):
        generator = T.step_generator(0, i, 0)
        loss, pixels = T.noise_prediction_step(models, batch, config, generator, noise_scheduler, accelerator)
        if kind != "plain":
            loss = loss + config.colour_weight * T.hldf_colour_step(models, pixels, batch["text"], config, generator,
                                                                    accelerator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()

    step(0)  # warm-up
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = resident_bytes()
    times = []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    if accelerator.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    queue.put((kind, statistics.median(times), max(peak, 0)))


def main() -> None:
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
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        model_dir = str(save_pipeline(build_pipeline(config), Path(folder) / "model"))
        data_dir = str(make_data(Path(folder) / "data", config.image_size))
        for kind in ("plain", "hldf", "hldf+ckpt", "reload"):
            queue = context.Queue()
            worker = context.Process(target=measure, args=(kind, model_dir, data_dir, config.image_size, hldf_steps,
                                                           args.repeats, queue))
            worker.start()
            results[kind] = queue.get()
            worker.join()

    plain = results["plain"][1]
    print(f"transformer {config.transformer_layers} layers x {config.attention_heads * config.attention_head_dim} wide, "
          f"{config.image_size} px, batch 2, LoRA rank 16, HLDF sample {hldf_steps} steps with CFG; "
          f"median of {args.repeats} steps, each configuration in a fresh process")
    print(f"{'step':<34}{'seconds':>9}{'x plain':>9}{'peak MB':>10}")
    names = {"plain": "plain LoRA step", "hldf": "HLDF step", "hldf+ckpt": "HLDF step, checkpointed"}
    for kind, label in names.items():
        _, seconds, peak = results[kind]
        print(f"{label:<34}{seconds:>9.3f}{seconds / plain:>9.2f}{peak / 2**20:>10.1f}")
    reload_seconds = results["reload"][1]
    hldf_extra = results["hldf+ckpt"][1] - plain
    every = args.hldf_every
    print(f"pipeline reload from disk: {reload_seconds:.3f} s")
    print(f"amortised over {every} steps (HLDF every {every}): in-memory HLDF adds {hldf_extra / every / plain:.2%} "
          f"per step; rebuilding the pipeline at each HLDF step adds {(hldf_extra + reload_seconds) / every / plain:.2%}")


if __name__ == "__main__":
    main()

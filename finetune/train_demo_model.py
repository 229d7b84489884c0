"""Train the bundled demo model (assets/demo_model/) from scratch on the demo dataset's train split.

    OMP_NUM_THREADS=1 python finetune/train_demo_model.py --data assets/demo --out assets/demo_model

(about 40 minutes on one CPU core; one thread is steadier than two on a shared 2-core machine)

A small pipeline of PixArt-alpha's classes (PixArtTransformer2DModel, AutoencoderKL,
T5EncoderModel, DPM-Solver++) at 64x64 px, so the app works offline and the tests have a
generator that makes recognisable images. No pretrained VAE or T5 ships offline, so:
  1. a T5 tokenizer is trained on the demo captions (sentencepiece) and a small T5 is randomly
     initialised and kept frozen: random but fixed embeddings still tell the captions apart, and
     the transformer's cross-attention learns to read them;
  2. the AutoencoderKL is trained first (L1 + MSE reconstruction, a small KL term), and its
     latent scaling factor is set to 1 / std of the training latents, as for Stable Diffusion;
  3. the transformer is trained on the noise-prediction loss with finetune/train.py's own step
     (`noise_prediction_step`), on both the full descriptions and the short simple captions.
It is a tiny model for the demo and the tests, not a medical tool.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.config import TrainConfig
from finetune.train import noise_prediction_step, step_generator
from medart_core.pipeline import AdapterPaths, LoadedModel, Precision, PromptEncoder
from medart_core.scratch import ScratchConfig, build_pipeline, save_pipeline, train_t5_tokenizer
from medart_core.training_data import ImageCaptionDataset, ResumableShuffleSampler

DEMO_CONFIG = ScratchConfig(
    image_size=64,
    vae_channels=(32, 64, 64),  # 64 px -> 16x16x4 latents
    vae_norm_groups=16,
    transformer_layers=8,
    attention_heads=6,
    attention_head_dim=32,
    patch_size=2,
    text_layers=2,
    text_width=64,
    text_heads=4,
    text_ff=128,
    vocab_size=512,
)


def batches(dataset, batch_size: int, seed: int):
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ResumableShuffleSampler(len(dataset), seed=seed),
                        drop_last=True)
    return iter(loader)


def train_vae(vae, dataset, *, steps: int, batch_size: int, lr: float, kl_weight: float, log) -> float:
    """Reconstruction training of the AutoencoderKL; returns the latent scaling factor."""
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    stream = batches(dataset, batch_size, seed=1)
    for step in tqdm(range(1, steps + 1), desc="VAE"):
        pixels = next(stream)["pixels"]
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        rec = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels)
        kl = posterior.kl().mean() / pixels[0].numel()
        loss = rec + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps:
            log({"stage": "vae", "step": step, "reconstruction": rec.item(), "kl": kl.item()})
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(next(stream)["pixels"]).latent_dist.mean for _ in range(4)])
    return float(1.0 / latents.std())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="assets/demo", help="demo imagefolder (default: assets/demo)")
    parser.add_argument("--out", default="assets/demo_model", help="output pipeline folder (default: assets/demo_model)")
    parser.add_argument("--vae-steps", type=int, default=800, help="AutoencoderKL training steps (default: 800)")
    parser.add_argument("--steps", type=int, default=3000, help="transformer training steps (default: 3000)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    parser.add_argument("--lr", type=float, default=5e-4, help="transformer peak learning rate (default: 5e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "training_log.jsonl"
    log_path.write_text("")
    started = time.time()

    def log(row):
        with open(log_path, "a") as handle:
            handle.write(json.dumps({**row, "seconds": round(time.time() - started, 1)}) + "\n")

    # data: every image twice, with its full description and with its simple caption
    dataset = ImageCaptionDataset(args.data, DEMO_CONFIG.image_size)
    dataset.records += [dataclasses.replace(r, text=r.row["simple_caption"]) for r in dataset.records]
    captions = sorted({r.text for r in dataset.records})

    # 1. models: tokenizer trained on the captions, everything else randomly initialised
    tokenizer = train_t5_tokenizer(DEMO_CONFIG.vocab_size, extra_text=captions)
    pipe = build_pipeline(DEMO_CONFIG, seed=args.seed, tokenizer=tokenizer)

    # 2. the VAE
    scaling = train_vae(pipe.vae, dataset, steps=args.vae_steps, batch_size=args.batch_size, lr=1e-3,
                        kl_weight=1e-3, log=log)
    pipe.vae.register_to_config(scaling_factor=scaling)

    # 3. the transformer, with finetune/train.py's noise-prediction step
    config = TrainConfig(model=str(out), data=args.data, resolution=DEMO_CONFIG.image_size, random_flip=True,
                         caption_dropout=0.1, train_batch_size=args.batch_size, seed=args.seed)
    precision = Precision.choose("cpu")
    models = LoadedModel(pipe, str(out), AdapterPaths(), precision, PromptEncoder(pipe, max_entries=len(captions) + 2))
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    transformer = pipe.transformer.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / args.steps, 1.0))))
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    stream = batches(dataset, args.batch_size, seed=args.seed)
    ema = None
    for step in tqdm(range(1, args.steps + 1), desc="transformer"):
        loss, _ = noise_prediction_step(models, next(stream), config, step_generator(args.seed, step, 0),
                                        noise_scheduler, accelerator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 50 == 0 or step == args.steps:
            log({"stage": "transformer", "step": step, "loss": loss.item(), "loss_ema": ema, "lr": schedule.get_last_lr()[0]})
    transformer.eval().requires_grad_(False)

    # stored in fp16 to keep the bundled folder small; loading upcasts to fp32 on CPU (T5 stays fp32)
    pipe.transformer.to(torch.float16)
    pipe.vae.to(torch.float16)
    save_pipeline(pipe, out)
    (out / "train_config.json").write_text(json.dumps({
        "command": "python finetune/train_demo_model.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "architecture": dataclasses.asdict(DEMO_CONFIG), "vae_scaling_factor": scaling,
        "captions": len(captions), "images": len(dataset.records) // 2,
        "wall_time_seconds": round(time.time() - started), "final_loss_ema": ema,
    }, indent=1))
    n_params = {name: sum(p.numel() for p in module.parameters())
                for name, module in (("transformer", pipe.transformer), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder))}
    print(json.dumps({"parameters": n_params, "scaling_factor": scaling, "seconds": round(time.time() - started)}))


if __name__ == "__main__":
    main()

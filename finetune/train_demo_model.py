"""Train the bundled demo model (assets/demo_model/) from scratch on the demo dataset's train split.

    OMP_NUM_THREADS=2 python finetune/train_demo_model.py --data assets/demo --out assets/demo_model

(under an hour on 2 CPU cores left to it: two threads run 1.7x faster than one on an idle 2-core
machine, but far slower than one when something else is busy on it)

A small pipeline of PixArt-alpha's classes (PixArtTransformer2DModel, AutoencoderKL,
T5EncoderModel, DPM-Solver++) at 64x64 px, so the app works offline and the tests have a
generator that makes recognisable images. No pretrained VAE or T5 ships offline, so:
  1. a T5 tokenizer is trained on the demo captions (sentencepiece) and a small T5 is randomly
     initialised and kept frozen: random but fixed embeddings still tell the captions apart, and
     the transformer's cross-attention learns to read them;
  2. the AutoencoderKL is trained first (L1 + MSE reconstruction, a small KL term), and its
     latent scaling factor is set to 1 / std of the training latents, as for Stable Diffusion;
  3. the transformer is trained on the noise-prediction loss with finetune/train.py's own step
     (`noise_prediction_step`, on latents cached once by medart_core.training_data), on both the
     full descriptions and the short simple captions; the moving average of its weights is saved;
  4. the model card (README.md) records the sampling defaults the app and `generate` read.
It is a tiny model for the demo and the tests, not a medical tool.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from huggingface_hub import ModelCard, ModelCardData
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.config import TrainConfig
from finetune.train import build_objective, noise_prediction_step, step_generators
from medart_core.pipeline import AdapterPaths, LoadedModel, Precision, PromptEncoder
from medart_core.scratch import ScratchConfig, build_pipeline, save_pipeline, train_t5_tokenizer
from medart_core.training_data import ImageCaptionDataset, ResumableShuffleSampler, cache_latents

CARD_GUIDANCE = 3.0

DEMO_CONFIG = ScratchConfig(
    image_size=64,
    vae_channels=(32, 64, 64),  # 64 px -> 16x16x4 latents (a trial with 8 channels reconstructed better, but
    # the tiny transformer drew less recognisable images from them after 3000 steps)
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


def command(args: argparse.Namespace) -> str:
    return "python finetune/train_demo_model.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())


def write_model_card(out: Path, how: str, n_params: dict, n_images: int, seconds: int, guidance: float,
                     threads: int) -> None:
    """README.md in the Hub's format; `inference.parameters` is where the app and `generate` read
    this model's sampling defaults (medart_core.model_card)."""
    data = ModelCardData(library_name="diffusers", pipeline_tag="text-to-image",
                         tags=["medart", "pixart-alpha", "demo", "tiny", "not-for-clinical-use"],
                         inference={"parameters": {"guidance_scale": guidance, "num_inference_steps": 20}})
    latent = f"{DEMO_CONFIG.image_size // DEMO_CONFIG.vae_scale_factor}x" * 2 + str(DEMO_CONFIG.latent_channels)
    millions = {name: f"{count / 1e6:.2f}M" for name, count in n_params.items()}
    body = f"""
# Med-Art demo model (tiny, for the demo and the tests)

A **tiny PixArt-alpha-architecture pipeline** (diffusers `save_pretrained` folder: the real
`PixArtTransformer2DModel`, `AutoencoderKL`, `T5EncoderModel`, `T5Tokenizer` and
`DPMSolverMultistepScheduler` classes) trained **from scratch** on the train split of the bundled
demo dataset (`assets/demo/train`, {n_images} real images, 6 classes) at {DEMO_CONFIG.image_size}x{DEMO_CONFIG.image_size} px,
so that `python app.py` works offline. It is not a medical tool and not PixArt-alpha:
a {millions["transformer"]}-parameter transformer ({DEMO_CONFIG.transformer_layers} layers, \
{DEMO_CONFIG.attention_heads * DEMO_CONFIG.attention_head_dim} wide), a {millions["vae"]}-parameter VAE \
({latent} latents) and a {millions["text_encoder"]}-parameter random, frozen T5 with a sentencepiece tokenizer
trained on the demo captions. Weights stored in fp16.

Sample with guidance {guidance:g} and 20 DPM-Solver++ steps: the defaults the app and
`python -m medart_core generate` read from this card, chosen by
`finetune/experiments/guidance_sweep.py` on train-split prompts (PixArt-alpha's usual 4.5 is
not what a model this small wants).

Made in {seconds / 60:.0f} minutes on the CPU with {threads} thread(s) by:

    OMP_NUM_THREADS={threads} {how}

`train_config.json` has the exact settings, `training_log.jsonl` the VAE and transformer losses,
`evaluation/` the evaluation against the held-out test split (summarised in the project README,
"The demo model").

**Not for clinical use.** Everything it generates is synthetic.
"""
    ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").save(out / "README.md")


def main(argv: list[str] | None = None) -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="assets/demo", help="demo imagefolder (default: assets/demo)")
    parser.add_argument("--out", default="assets/demo_model", help="output pipeline folder (default: assets/demo_model)")
    parser.add_argument("--vae-steps", type=int, default=1500, help="AutoencoderKL training steps (default: 1500)")
    parser.add_argument("--steps", type=int, default=8000, help="transformer training steps (default: 8000)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    parser.add_argument("--lr", type=float, default=5e-4, help="transformer peak learning rate (default: 5e-4)")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="decay of the moving average of the transformer weights that is saved; 0 saves the "
                             "last step's weights (default: 0.999)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--card-guidance", type=float, default=CARD_GUIDANCE,
                        help="guidance scale the model card recommends, read by the app and `generate` as their "
                             f"default (default: {CARD_GUIDANCE}, the best of a sweep on train-split prompts, see the "
                             "README)")
    args = parser.parse_args(argv)
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
    objective = build_objective(models, config)
    # the VAE is frozen from here on: encode every image (and its mirror image) once
    latent_dir = tempfile.TemporaryDirectory(prefix="medart-demo-latents-")
    latents = cache_latents(dataset, pipe.vae, latent_dir.name, model_id=str(out))
    stream = batches(latents, args.batch_size, seed=args.seed)
    loss_ema = None
    from diffusers.training_utils import EMAModel  # imports bitsandbytes: only after quiet_start()

    # an exponential moving average of the weights is what gets saved: smoother samples than the last step's
    weights_ema = EMAModel(transformer.parameters(), decay=args.ema_decay, foreach=True) if args.ema_decay else None
    for step in tqdm(range(1, args.steps + 1), desc="transformer"):
        loss, _ = noise_prediction_step(models, next(stream), config, step_generators(args.seed, step, args.batch_size),
                                        objective, accelerator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if weights_ema is not None:
            weights_ema.step(transformer.parameters())
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 50 == 0 or step == args.steps:
            log({"stage": "transformer", "step": step, "loss": loss.item(), "loss_ema": loss_ema, "lr": schedule.get_last_lr()[0]})
    if weights_ema is not None:
        weights_ema.copy_to(transformer.parameters())
    transformer.eval().requires_grad_(False)
    latent_dir.cleanup()

    # stored in fp16 to keep the bundled folder small; loading upcasts to fp32 on CPU (T5 stays fp32)
    pipe.transformer.to(torch.float16)
    pipe.vae.to(torch.float16)
    save_pipeline(pipe, out)
    (out / "train_config.json").write_text(json.dumps({
        "command": command(args),
        "architecture": dataclasses.asdict(DEMO_CONFIG), "vae_scaling_factor": scaling,
        "captions": len(captions), "images": len(dataset.records) // 2,
        "wall_time_seconds": round(time.time() - started), "final_loss_ema": loss_ema,
    }, indent=1))
    n_params = {name: sum(p.numel() for p in module.parameters())
                for name, module in (("transformer", pipe.transformer), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder))}
    write_model_card(out, command(args), n_params, len(dataset.records) // 2, round(time.time() - started),
                     args.card_guidance, torch.get_num_threads())
    print(json.dumps({"parameters": n_params, "scaling_factor": scaling, "seconds": round(time.time() - started)}))


if __name__ == "__main__":
    main()

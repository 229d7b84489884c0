"""Text-to-image generation: single requests (the app) and resumable synthetic datasets (the CLI).

Both go through `generate_images`, which runs the shared DPM-Solver++ loop of
`medart_core.sampling` on a loaded pipeline, with cached prompt embeddings.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from medart_core.data import METADATA_FILE, write_jsonl_atomic
from medart_core.errors import MedArtError
from medart_core.pipeline import LoadedModel
from medart_core.sampling import decode_latents, dpm_solver_sample, initial_noise
from medart_core.synthetic import save_synthetic_png

logger = logging.getLogger(__name__)

MANIFEST_FILE = ".medart-generate.json"
MAX_SEED = 2**32 - 1  # the usual seed range (numpy's); a browser's numbers are exact only up to 2**53
MAX_STEPS = 1000  # DPM-Solver++ cannot take more steps than the 1,000 training timesteps


@dataclass(frozen=True)
class GenerationSettings:
    """How images are sampled; height/width None means the model's native size."""

    steps: int = 20
    guidance: float = 4.5
    height: int | None = None
    width: int | None = None

    def image_size(self, pipe) -> tuple[int, int]:
        native = pipe.transformer.config.sample_size * pipe.vae_scale_factor
        height, width = self.height or native, self.width or native
        multiple = pipe.vae_scale_factor * pipe.transformer.config.patch_size
        if height % multiple or width % multiple or height <= 0 or width <= 0:
            raise MedArtError(f"height and width must be positive multiples of {multiple} for this model, got {height}x{width}")
        return height, width

    def check(self) -> None:
        if self.steps < 1:
            raise MedArtError(f"steps must be at least 1, got {self.steps}")
        if self.steps > MAX_STEPS:
            raise MedArtError(f"steps must be at most {MAX_STEPS} (the scheduler's training timesteps), "
                              f"got {str(self.steps)[:40]}")
        # NaN passes every comparison and silently gave an unguided image: refused, as is infinity.
        if not (isinstance(self.guidance, (int, float)) and math.isfinite(self.guidance) and self.guidance >= 0):
            raise MedArtError(f"guidance must be a finite number, 0 or more, got {self.guidance!r:.40}")


def check_seeds(seeds: list[int]) -> None:
    """Refuse seeds outside 0..MAX_SEED (2**70 used to end in an internal error deep in torch)."""
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise MedArtError(f"seed must be a whole number from 0 to {MAX_SEED:,}, got {str(seed)[:40]}")


def generate_images(
    model: LoadedModel,
    prompts: list[str],
    seeds: list[int],
    settings: GenerationSettings = GenerationSettings(),
    *,
    step_callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    output_type: str = "pil",
) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in one batch (output_type "np" gives float arrays)."""
    settings.check()
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    check_seeds(seeds)
    pipe = model.pipe
    height, width = settings.image_size(pipe)
    dtype, device = pipe.transformer.dtype, model.precision.device
    text = model.prompts(prompts).to(device, dtype)
    negative = model.prompts([""] * len(prompts)).to(device, dtype) if settings.guidance > 1 else None
    channels = pipe.transformer.config.in_channels
    shape = (len(prompts), channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    noise = initial_noise(shape, seeds, device=device, dtype=model.base.latent_dtype(dtype),
                          init_sigma=pipe.scheduler.init_noise_sigma)
    with torch.no_grad():
        latents = dpm_solver_sample(
            pipe.transformer, pipe.scheduler, noise, text, negative,
            num_steps=settings.steps, guidance_scale=settings.guidance, image_size=(height, width),
            callback=step_callback,
        )
        images = decode_latents(pipe.vae, latents)
    return pipe.image_processor.postprocess(images, output_type=output_type)


@dataclass(frozen=True)
class ImageJob:
    """One image of a synthetic dataset: which prompt, which seed, which file."""

    index: int
    text: str
    label: str | None
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.index:06d}.png"


def plan_jobs(prompts: list[dict], images_per_prompt: int, base_seed: int) -> list[ImageJob]:
    """Image k (counting over prompts, then images per prompt) gets seed base_seed + k."""
    if images_per_prompt < 1:
        raise MedArtError(f"--n must be at least 1, got {images_per_prompt}")
    jobs = []
    for prompt in prompts:
        for _ in range(images_per_prompt):
            k = len(jobs)
            jobs.append(ImageJob(k, prompt["text"], prompt.get("label"), base_seed + k))
    check_seeds([base_seed, jobs[-1].seed] if jobs else [base_seed])  # before a model loads
    return jobs


def _record(job: ImageJob, settings: GenerationSettings, model: LoadedModel) -> dict:
    """The metadata.jsonl row (and PNG text chunks) of one generated image."""
    return {
        "file_name": job.file_name,
        "text": job.text,
        "label": job.label,
        "seed": job.seed,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "model": model.model_id,
        "adapters": model.adapters.describe(),
        "synthetic": True,
    }


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    """An interrupted run resumes only with the same model, settings and prompts."""
    path = out_dir / MANIFEST_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != manifest:
            changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
            raise MedArtError(
                f"{out_dir} holds images from a different generation run (changed: {', '.join(changed)}); "
                "use a new --out folder, or the same settings to resume"
            )
    else:
        path.write_text(json.dumps(manifest, indent=1))


def process_state():
    """accelerate's view of this process (rank, world size, device). PartialState, unlike
    Accelerator, ignores ACCELERATE_USE_CPU, without which CPU processes started by
    `accelerate launch` do not join one process group."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def generate_dataset(
    model: LoadedModel,
    jobs: list[ImageJob],
    out_dir: str | Path,
    settings: GenerationSettings,
    *,
    batch_size: int = 4,
    state=None,
    progress: bool = True,
) -> Path:
    """Generate every job into out_dir/<index>.png and write out_dir/metadata.jsonl.

    Resumable: images already on disk (written atomically) are skipped. Under
    `accelerate launch`, each process takes every num_processes-th job and the main process
    writes the one metadata.jsonl once all are done.
    """
    from tqdm.auto import tqdm

    settings.check()
    settings.image_size(model.pipe)
    state = state or process_state()
    out_dir = Path(out_dir)
    manifest = {
        "model": model.model_id,
        "adapters": model.adapters.describe(),
        "settings": asdict(settings),
        "jobs": [[j.text, j.label, j.seed] for j in jobs],
    }
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_manifest(out_dir, manifest)
    state.wait_for_everyone()
    if not state.is_main_process:
        _check_manifest(out_dir, manifest)

    mine = jobs[state.process_index :: state.num_processes]
    logger.debug("process %d of %d on %s: %d images", state.process_index, state.num_processes, state.device, len(mine))
    todo = [j for j in mine if not (out_dir / j.file_name).is_file()]
    if len(todo) < len(mine):
        logger.info("resuming: %d of this process's %d images are already in %s", len(mine) - len(todo), len(mine), out_dir)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="generating", unit="img",
               disable=not (progress and state.is_main_process))
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        images = generate_images(model, [j.text for j in batch], [j.seed for j in batch], settings)
        for job, image in zip(batch, images):
            save_synthetic_png(image, out_dir / job.file_name, _record(job, settings, model))
        bar.update(len(batch))
    bar.close()

    state.wait_for_everyone()
    if state.is_main_process:
        missing = [j.file_name for j in jobs if not (out_dir / j.file_name).is_file()]
        if missing:
            raise MedArtError(f"{len(missing)} images are missing from {out_dir} (e.g. {missing[0]}); run again to finish")
        write_jsonl_atomic(out_dir / METADATA_FILE, (_record(j, settings, model) for j in jobs))
    state.wait_for_everyone()
    return out_dir / METADATA_FILE

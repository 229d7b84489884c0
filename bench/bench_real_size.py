"""Real size, measured: PixArt-XL-2's transformer and the SD VAE (or, with --base sana, Sana
0.6B's transformer and DC-AE) at their real configs.

Random weights, built from the configs embedded in medart_core/model_presets.py (nothing is downloaded),
saved as a diffusers folder and loaded back by the project's own code (load_pipeline,
finetune/train.py's build_models, cache and step functions). Each part runs in a fresh process,
so its peak memory is its own (CPU: peak resident size over the process's size before the models
were loaded, C library returning freed memory at once; GPU: torch's peak allocated memory):

  plain      one LoRA step on cached inputs: seconds and peak memory, beside the memory plan
             (`finetune/train.py --plan`) of the same settings
  hldf       one HLDF step (a 2-step sample with CFG, each transformer call checkpointed, VAE
             gradient checkpointing) likewise, and its floor: the same transformer forwards and
             backwards (the noise-prediction call and each sampling step's CFG batch) plus the
             VAE decode and its backward, each alone, without recomputation
  generate   medart_core's generation vs the stock pipeline (PixArtAlphaPipeline, SanaPipeline)
             vs the floor (the transformer forwards alone; the VAE decode is shown beside it)
  text-cache the prompt-embedding cache: a repeated prompt encoded with and without it
  quant-t5   T5 in none / 8-bit / 4-bit (bitsandbytes): weight memory and encoding time

On a CPU the text encoder is a small T5: T5-XXL's width (PixArt's caption projection takes
4096-wide embeddings) with one of its 24 layers and the test tokenizer's vocabulary, about 0.2B
parameters. T5-XXL itself (4.76B parameters, 19 GB in fp32) does not fit beside the transformer
and the VAE in this machine's 24 GB; `--text-encoder xxl` (bench/gpu_check.sh) measures it.

Sana's text encoder on a CPU is likewise Gemma-2 2B's width (2304, Sana's caption channels) with
one of its 26 layers; `--text-encoder full` builds Gemma-2 2B itself.

The last line of each part: `plain: measured X MB, planned Y MB, ratio Z` (Z = planned /
measured; likewise `hldf: ...`) and `generate: medart/stock R, medart/floor F`; a Sana part's
starts with `sana ` (`sana plain: ...`).

    OMP_NUM_THREADS=1 nice python bench/bench_real_size.py --which plain   # a few minutes on one core
    python bench/bench_real_size.py --which all --model-dir /tmp/pixart-xl  # keeps the 3 GB model folder
    python bench/bench_real_size.py --base sana --which generate             # Sana 0.6B
    python bench/bench_real_size.py --tiny --which plain                     # the tests' tiny model: seconds
    python bench/bench_real_size.py --markdown bench/results/gpu-DATE.json   # a results file as a table
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

CPU_PARTS = ("plain", "hldf", "generate")
DEFAULT_PRESETS = {"pixart-alpha": "PixArt-alpha/PixArt-XL-2-512x512",
                   "sana": "Efficient-Large-Model/Sana_600M_512px_diffusers"}  # --base: the preset it builds
PARTS = CPU_PARTS + ("text-cache", "quant-t5")
PROMPT = "An endoscopic image of a polyp: pink, round, smooth surface, no bleeding, surrounded by normal mucosa"
BUILD_FILE = "medart-bench-build.json"
MB = 2 ** 20
# Memory measured exactly (see bench_train.py): glibc otherwise keeps freed tensor memory resident.
EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# ---------------------------------------------------------------------------------------------
# the model folder


def build_settings(args) -> dict:
    return {"base": args.base, "preset": None if args.tiny else args.preset, "text_encoder": args.text_encoder,
            "dtype": args.dtype, "tiny": args.tiny}


def real_components(preset, text_encoder: str, device: str):
    """The preset's transformer and VAE at their real configs (random weights, on `device`), a
    text encoder (the real config, or its width with one layer), a tokenizer trained here and
    the base's scheduler: the keyword arguments of the base's pipeline class."""
    import torch
    from diffusers import (AutoencoderDC, AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel,
                           SanaTransformer2DModel)
    from transformers import T5Config, T5EncoderModel

    from medart_core.bases import SANA
    from medart_core.scratch import gemma2_encoder, sana_scheduler, train_gemma_tokenizer, train_t5_tokenizer

    configs = preset.configs
    text = {k: v for k, v in configs["text_encoder"].items() if not k.startswith("_")}
    torch.manual_seed(0)
    with torch.device(device):  # T5-XXL materialises on the GPU in seconds, not minutes on a CPU
        if preset.base == SANA:
            tokenizer = train_gemma_tokenizer()
            if text_encoder == "small":  # Gemma-2's width (the caption projection's input), one layer
                text.update(num_hidden_layers=1, vocab_size=len(tokenizer))
            return dict(tokenizer=tokenizer, text_encoder=gemma2_encoder(tokenizer, **text),
                        vae=AutoencoderDC.from_config(configs["vae"]),
                        transformer=SanaTransformer2DModel.from_config(configs["transformer"]),
                        scheduler=sana_scheduler())
        tokenizer = train_t5_tokenizer()
        if text_encoder == "small":  # T5-XXL's width (the caption projection's input), one layer
            text.update(num_layers=1, vocab_size=len(tokenizer))
        return dict(tokenizer=tokenizer, text_encoder=T5EncoderModel(T5Config(**text)),
                    vae=AutoencoderKL.from_config(configs["vae"]),
                    transformer=PixArtTransformer2DModel.from_config(configs["transformer"]),
                    scheduler=DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"))


def build_folder(folder: str, settings: dict, device: str, queue) -> None:
    """A save_pretrained folder of the base's pipeline with random weights at the preset's real
    configs (or the tests' tiny model of the base), built on `device` in the run's dtype."""
    import torch

    from medart_core.model_presets import PRESETS
    from medart_core.pipeline import parse_dtype
    from medart_core.scratch import build_pipeline, build_sana_pipeline, save_pipeline

    if settings["tiny"]:
        save_pipeline(build_sana_pipeline() if settings["base"] == "sana" else build_pipeline(), folder)
    else:
        preset = PRESETS[settings["preset"]]
        components = real_components(preset, settings["text_encoder"], device)
        dtype = parse_dtype(settings["dtype"])
        for name in ("transformer", "vae", "text_encoder"):
            if dtype != torch.float32:
                components[name] = components[name].to(dtype)
        save_pipeline(preset.base.pipeline_type()(**components), folder)
    (Path(folder) / BUILD_FILE).write_text(json.dumps(settings))
    queue.put(folder)


def ensure_folder(folder: Path, settings: dict, device: str, context) -> Path:
    """Build the model folder in a process of its own (its memory goes back), or reuse it when
    it was built with the same settings."""
    marker = folder / BUILD_FILE
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"reusing the model folder {folder}")
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"error: {folder} is not empty and holds no model built by this bench with these "
                         "settings; pass an empty or new --model-dir")
    print(f"building the model folder {folder} (random weights) ...", flush=True)
    start = time.perf_counter()
    run_in_process(context, build_folder, str(folder), settings, device)
    print(f"built in {time.perf_counter() - start:.0f} s")
    return folder


def run_in_process(context, target, *args, environment: dict | None = None):
    """target(*args, queue) in a fresh spawned process; returns what it put on the queue."""
    saved = dict(os.environ)
    os.environ.update(environment or {})  # read by the spawned process's C library at start-up
    try:
        queue = context.Queue()
        worker = context.Process(target=run_quietly, args=(target, *args, queue))
        worker.start()
        while worker.is_alive() and queue.empty():
            worker.join(timeout=1)  # a process that dies puts nothing: do not wait on the queue forever
        result = queue.get() if not queue.empty() else None
        worker.join()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if worker.exitcode != 0:
        raise SystemExit(f"error: the {target.__name__} process failed (exit code {worker.exitcode}); see above")
    return result


def run_quietly(target, *args) -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    target(*args)


# ---------------------------------------------------------------------------------------------
# memory, on either device


class Meter:
    """Memory now and at its peak since the last reset: torch's allocated bytes on a GPU, the
    resident size on a CPU (bench_train.py's readings); and the clock that times a part: wall time
    on a GPU, the process's CPU time on a CPU, where other jobs on a shared machine stretch wall
    time by whatever share of the cores they take (a nice'd bench the most)."""

    def __init__(self, device):
        import torch

        self.torch, self.gpu = torch, device.type == "cuda"
        self.clock = time.perf_counter if self.gpu else time.process_time
        self.clock_name = "wall" if self.gpu else "process CPU"

    def now(self) -> int:
        from bench_train import resident_bytes

        return self.torch.cuda.memory_allocated() if self.gpu else resident_bytes()

    def reset(self) -> None:
        from bench_train import reset_peak_resident

        self.torch.cuda.reset_peak_memory_stats() if self.gpu else reset_peak_resident()

    def peak(self) -> int:
        from bench_train import peak_resident_bytes

        return self.torch.cuda.max_memory_allocated() if self.gpu else peak_resident_bytes()

    def sync(self) -> None:
        if self.gpu:
            self.torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# plain and HLDF steps


def train_arguments(options: dict, kind: str, resolution: int) -> list[str]:
    """finetune/train.py options of the measured step: the paper config's, or the CPU settings."""
    arguments = ["--model", options["model_dir"], "--data", options["data_dir"], "--resolution", str(resolution),
                 "--caption_dropout", "0", "--cache_dir", str(Path(options["data_dir"]).parent / f"cache-{kind}")]
    if options["config"]:
        arguments = ["--config", options["config"], *arguments]
    else:  # DC-AE (Sana) has no gradient checkpointing in diffusers: its decode keeps its activations
        vae_checkpointing = kind == "hldf" and options["vae_checkpointing"]
        arguments += ["--train_batch_size", "1", "--lora_rank", "16", "--hldf_steps", str(options["hldf_steps"]),
                      "--hldf_checkpointing", "true", "--vae_gradient_checkpointing", str(vae_checkpointing).lower()]
    return arguments + ["--hldf_every", "1" if kind == "hldf" else "0"]


def step_config(options: dict, kind: str, resolution: int):
    from finetune.config import load_config

    return load_config(train_arguments(options, kind, resolution))


def measure_step(kind: str, options: dict, resolution: int, queue) -> None:
    """One training step (plain or HLDF) as finetune/train.py runs it; for HLDF, also its floor."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    import finetune.train as T
    from finetune.plan import memory_plan
    from medart_core.bases import detect_base
    from medart_core.training_data import ImageCaptionDataset

    detect_base(options["model_dir"]).pipeline_type()  # its classes imported before the baseline

    config = step_config(options, kind, resolution)
    device = torch.device(options["device"])
    accelerator = Accelerator(mixed_precision=T.choose_mixed_precision(config, device), cpu=device.type == "cpu")
    meter = Meter(accelerator.device)
    torch.ones(64, 64) @ torch.ones(64, 64)  # start the thread pool before the baseline
    baseline = meter.now()
    meter.reset()
    models, _, text_encoder_lora = T.build_models(config, T.training_precision(accelerator.device,
                                                                             accelerator.mixed_precision))
    images = ImageCaptionDataset(config.data, config.resolution)
    prompts = list(dict.fromkeys([r.text for r in images.records] + [""]))
    dataset, models.prompts = T.prepare_cached_inputs(models, images, prompts, config, accelerator)
    caching_peak = meter.peak() - baseline
    trainable = [p for p in models.pipe.transformer.parameters() if p.requires_grad]
    if text_encoder_lora is not None:  # the paper preset trains a T5 LoRA too
        trainable += [p for p in models.pipe.text_encoder.parameters() if p.requires_grad]
    optimizer = T.make_optimizer(trainable, config, accelerator.device)
    objective = T.build_objective(models, config)
    batch = next(iter(DataLoader(dataset, batch_size=config.train_batch_size)))

    meter.reset()
    start = meter.clock()
    generators = T.step_generators(config.seed, 0, len(batch["text"]))
    loss, real_colour = T.noise_prediction_step(models, batch, config, generators, objective, accelerator)
    if kind == "hldf":
        colour = T.hldf_colour_step(models, real_colour, batch["text"], config, generators, accelerator)
        loss = loss + config.colour_weight * colour
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    meter.sync()
    seconds = meter.clock() - start
    step_peak = meter.peak() - baseline

    plan = memory_plan(config, device=accelerator.device.type)
    result = {"part": kind, "resolution": config.resolution, "batch": config.train_batch_size,
              "seconds": seconds, "clock": meter.clock_name, "measured_mb": step_peak / MB,
              "planned_mb": (plan.peak_hldf if kind == "hldf" else plan.peak_plain) / MB,
              "caching_measured_mb": caching_peak / MB, "caching_planned_mb": plan.rows["caching"] / MB,
              "plan_rows_mb": {k: v / MB for k, v in plan.rows.items()}}
    if kind == "hldf":
        result.update(hldf_steps=config.hldf_steps, **hldf_floor(models, config, accelerator, meter))
        result["floor_ratio"] = seconds / result["floor_seconds"]
    queue.put(result)


def hldf_floor(models, config, accelerator, meter) -> dict:
    """Seconds of the transformer forwards and backwards an HLDF step needs (the noise-prediction
    call, and one CFG batch per sampling step) and of the VAE decode and its backward, each run
    alone, without checkpointing: what an HLDF step costs at the least."""
    import torch

    from medart_core.sampling import decode_latents, micro_conditions, predict_noise

    pipe = models.pipe
    device, dtype, batch = accelerator.device, pipe.transformer.dtype, config.train_batch_size
    latent_size = config.resolution // pipe.vae_scale_factor
    channels = pipe.transformer.config.in_channels

    def timed(backward_of):
        meter.sync()
        start = meter.clock()
        with accelerator.autocast():
            output = backward_of()
        output.float().square().mean().backward()
        meter.sync()
        return meter.clock() - start

    def transformer_pass(n):
        latents = torch.randn(n, channels, latent_size, latent_size, device=device, dtype=dtype)
        text = models.prompts([""] * n).to(device, dtype)  # cached: on a GPU, T5 has left it by now
        added = micro_conditions(pipe.transformer, n, config.resolution, config.resolution, device=device, dtype=dtype)
        return lambda: predict_noise(pipe.transformer, latents, torch.tensor([500]), text, added)

    def vae_pass():
        latents = torch.randn(batch, channels, latent_size, latent_size, device=device, dtype=dtype, requires_grad=True)
        return lambda: decode_latents(pipe.vae, latents)

    pipe.vae.disable_gradient_checkpointing()
    pipe.transformer.disable_gradient_checkpointing()  # a floor recomputes nothing
    noise_prediction = timed(transformer_pass(batch))
    sampling_step = timed(transformer_pass(2 * batch))
    decode = timed(vae_pass())
    models.pipe.transformer.zero_grad(set_to_none=True)
    return {"floor_seconds": noise_prediction + config.hldf_steps * sampling_step + decode,
            "floor_parts": {"noise_prediction": noise_prediction, "sampling_step_cfg": sampling_step,
                            "vae_decode": decode}}


# ---------------------------------------------------------------------------------------------
# generation, the prompt cache, quantised T5


def load_for_inference(options: dict, **kwargs):
    from medart_core.pipeline import Precision, load_pipeline

    precision = Precision.choose(options["device"], options["dtype"])
    return load_pipeline(options["model_dir"], precision=precision, prompt_cache_size=0, **kwargs)


def measure_generation(options: dict, resolution: int, queue) -> None:
    from bench_generate import generation_paths, median_seconds

    from medart_core.generation import GenerationSettings

    model = load_for_inference(options)
    meter = Meter(model.precision.device)
    settings = GenerationSettings(steps=options["steps"], guidance=4.5, height=resolution, width=resolution)
    rows = median_seconds(generation_paths(model, [PROMPT], [0], settings), options["repeats"],
                          warmup=options["device"] == "cuda", clock=meter.clock)
    queue.put({"part": "generate", "resolution": resolution, "steps": settings.steps, "batch": 1,
               "seconds": rows, "clock": meter.clock_name, "medart/stock": rows["medart"] / rows["stock"],
               "medart/floor": rows["medart"] / rows["floor"],
               "medart/(floor+decode)": rows["medart"] / (rows["floor"] + rows["decode"])})


def measure_text_cache(options: dict, resolution: int, queue) -> None:
    """A repeated prompt: T5 every time vs the in-memory cache, alone and within a request."""
    from bench_generate import median_seconds

    from medart_core.generation import GenerationSettings, generate_images
    from medart_core.pipeline import PromptEncoder

    model = load_for_inference(options)
    cached = PromptEncoder(model.pipe, max_entries=16)
    cached_model = type(model)(model.pipe, model.model_id, model.adapters, model.precision, cached)
    settings = GenerationSettings(steps=options["steps"], guidance=4.5, height=resolution, width=resolution)
    sync = Meter(model.precision.device).sync
    encoding = median_seconds({"uncached": lambda: (model.prompts([PROMPT]), sync()),
                               "cached": lambda: (cached([PROMPT]), sync())}, max(options["repeats"], 3))
    requests = median_seconds({"uncached": lambda: generate_images(model, [PROMPT], [0], settings),
                               "cached": lambda: generate_images(cached_model, [PROMPT], [0], settings)},
                              options["repeats"], warmup=options["device"] == "cuda")
    queue.put({"part": "text-cache", "resolution": resolution, "steps": settings.steps,
               "encode_ms": {k: v * 1e3 for k, v in encoding.items()}, "request_seconds": requests,
               "request uncached/cached": requests["uncached"] / requests["cached"]})


def measure_quantised_t5(options: dict, quantization: str, queue) -> None:
    """T5's weight memory and the time to encode a batch of 4 full-length prompts, beside the
    plan's T5 row for the same quantisation."""
    import torch
    from transformers import T5EncoderModel

    from finetune.plan import empty_models, read_component_configs, t5_weight_bytes
    from medart_core.errors import MedArtError
    from medart_core.bases import PIXART_ALPHA
    from medart_core.pipeline import Precision, load_quantized_text_encoder

    precision = Precision.choose(options["device"], options["dtype"])
    meter = Meter(precision.device)
    torch.ones(64, 64) @ torch.ones(64, 64)
    before = meter.now()
    try:
        if quantization == "none":
            text_encoder = T5EncoderModel.from_pretrained(options["model_dir"], subfolder="text_encoder",
                                                          dtype=precision.text_encoder_dtype).to(precision.device)
        else:
            import bitsandbytes  # noqa: F401

            text_encoder = load_quantized_text_encoder(options["model_dir"], quantization, precision)
        weights = meter.now() - before
        ids = torch.randint(3, text_encoder.config.vocab_size, (4, PIXART_ALPHA.max_prompt_tokens),
                            generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            text_encoder(ids.to(precision.device))  # warm-up
            meter.sync()
            start = time.perf_counter()
            text_encoder(ids.to(precision.device))
            meter.sync()
        seconds = time.perf_counter() - start
    except (ImportError, MedArtError, RuntimeError) as err:
        queue.put({"quantization": quantization, "skipped": f"{type(err).__name__}: {err}".splitlines()[0]})
        return
    t5 = empty_models(read_component_configs(options["model_dir"])[1])[2]
    planned = t5_weight_bytes(t5, quantization, torch.finfo(precision.text_encoder_dtype).bits // 8)
    queue.put({"quantization": quantization, "weights_mb": weights / MB, "planned_mb": planned / MB,
               "encode_4x120_ms": seconds * 1e3})


# ---------------------------------------------------------------------------------------------
# results


def save_result(path: Path | None, result: dict) -> None:
    """Add one part's figures to the JSON results file at once (written atomically)."""
    if path is None:
        return
    found = json.loads(path.read_text()) if path.is_file() else {"results": []}
    found["results"].append(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(found, indent=1))
    os.replace(partial, path)


def markdown(results: list[dict]) -> str:
    """The README's "real architecture" table: one row per measured part."""
    rows = ["| part | settings | seconds | memory: measured / planned MB (ratio) | vs floor / stock |",
            "|---|---|---|---|---|"]
    for r in results:
        where = f"{r['date']}, {r.get('base', 'PixArt-alpha')}, {r['device']} {r['dtype']}, {text_label(r)}"
        if r.get("clock", "wall") != "wall":
            where += f", {r['clock']} seconds"
        if r["part"] in ("plain", "hldf"):
            settings = f"{where}, {r['resolution']} px, batch {r['batch']}"
            if r["part"] == "hldf":
                settings += f", {r['hldf_steps']}-step sample"
            floor = f"step/floor {r['floor_ratio']:.2f}" if "floor_ratio" in r else ""
            rows.append(f"| {r['part']} | {settings} | {r['seconds']:.1f} | {r['measured_mb']:.0f} / "
                        f"{r['planned_mb']:.0f} ({r['planned_mb'] / r['measured_mb']:.2f}) | {floor} |")
        elif r["part"] == "generate":
            s = r["seconds"]
            rows.append(f"| generate | {where}, {r['resolution']} px, {r['steps']} steps, CFG | stock {s['stock']:.1f}, "
                        f"medart {s['medart']:.1f}, floor {s['floor']:.1f}, decode {s['decode']:.1f} | | "
                        f"medart/stock {r['medart/stock']:.3f}, medart/floor {r['medart/floor']:.3f}, "
                        f"medart/(floor+decode) {r['medart/(floor+decode)']:.3f} |")
        elif r["part"] == "text-cache":
            e = r["encode_ms"]
            rows.append(f"| text-cache | {where}, {r['resolution']} px, {r['steps']} steps | encode {e['uncached']:.1f} "
                        f"vs {e['cached']:.3f} ms | | request uncached/cached {r['request uncached/cached']:.3f} |")
        elif r["part"] == "quant-t5":
            for q in r["variants"]:
                if "skipped" in q:
                    rows.append(f"| T5 {q['quantization']} | {where} | skipped: {q['skipped']} | | |")
                else:
                    rows.append(f"| T5 {q['quantization']} | {where}, 4 x 120 tokens | {q['encode_4x120_ms'] / 1e3:.3f} | "
                                f"{q['weights_mb']:.0f} / {q['planned_mb']:.0f} "
                                f"({q['planned_mb'] / q['weights_mb']:.2f}) | |")
    return "\n".join(rows)


def prefix(r: dict) -> str:
    """"sana " before a Sana part's lines; nothing for PixArt-alpha (results from before the
    --base option have no base: PixArt-alpha)."""
    base = r.get("base", "PixArt-alpha")
    return "" if base == "PixArt-alpha" else f"{base.lower()} "


def text_label(r: dict) -> str:
    return f"{'Gemma-2' if r.get('base') == 'Sana' else 'T5'} {r['text_encoder']}"


def summary_line(r: dict) -> str:
    if r["part"] in ("plain", "hldf"):
        return (f"{prefix(r)}{r['part']}: measured {r['measured_mb']:.0f} MB, planned {r['planned_mb']:.0f} MB, "
                f"ratio {r['planned_mb'] / r['measured_mb']:.2f}")
    if r["part"] == "generate":
        return f"{prefix(r)}generate: medart/stock {r['medart/stock']:.3f}, medart/floor {r['medart/floor']:.3f}"
    if r["part"] == "text-cache":
        e = r["encode_ms"]
        return f"{prefix(r)}text-cache: encode {e['uncached']:.1f} ms uncached, {e['cached']:.3f} ms cached"
    return "quant-t5: " + ", ".join(f"{q['quantization']} {q.get('weights_mb', 0):.0f} MB" if "skipped" not in q
                                    else f"{q['quantization']} skipped" for q in r["variants"])


def details(r: dict) -> str:
    """The part's figures in full, before its summary line."""
    clock = f", {r['clock']} seconds" if "clock" in r else ""
    lines = [f"{prefix(r)}{r['part']} ({r['device']}, {r['dtype']}, {text_label(r)}{clock}):"]
    if r["part"] in ("plain", "hldf"):
        lines.append(f"  {r['resolution']} px, batch {r['batch']}: step {r['seconds']:.1f} s; caching phase "
                     f"{r['caching_measured_mb']:.0f} MB measured, {r['caching_planned_mb']:.0f} MB planned")
        if r["part"] == "hldf":
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in r["floor_parts"].items())
            lines.append(f"  floor {r['floor_seconds']:.1f} s ({parts}); step/floor {r['floor_ratio']:.2f}")
    elif r["part"] == "generate":
        lines.append("  " + ", ".join(f"{k} {v:.2f} s" for k, v in r["seconds"].items())
                     + f"; medart/(floor+decode) {r['medart/(floor+decode)']:.3f}")
    elif r["part"] == "text-cache":
        lines.append(f"  request ({r['steps']} steps): " + ", ".join(f"{k} {v:.2f} s" for k, v in r["request_seconds"].items()))
    else:
        for q in r["variants"]:
            lines.append(f"  {q['quantization']}: {q.get('skipped') or '%.0f MB (plan %.0f), encode %.1f ms' % (q['weights_mb'], q['planned_mb'], q['encode_4x120_ms'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def hldf_resolution(options: dict, wanted: int, floor: int) -> tuple[int, str]:
    """The HLDF step at `wanted` px if the plan says it fits in the memory available now (CPU),
    else the largest multiple of 128 (down to `floor`) that does."""
    import psutil

    from finetune.plan import memory_plan

    if options["device"] == "cuda":
        return wanted, ""
    available = psutil.virtual_memory().available
    resolution = wanted
    while resolution > floor and memory_plan(step_config(options, "hldf", resolution), "cpu").peak_hldf > 0.85 * available:
        resolution -= 128
    if resolution == wanted:
        return wanted, ""
    return resolution, (f"hldf at {resolution} px, not {wanted}: the plan's HLDF peak at {wanted} px does not fit "
                        f"in the {available / 2**30:.1f} GiB available now")


def parse_args(argv=None):
    from medart_core.model_presets import PRESETS

    bases = {name: PRESETS[preset].base for name, preset in DEFAULT_PRESETS.items()}
    presets = [name for name, preset in PRESETS.items() if preset.base in bases.values()]

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--which", default="plain", choices=[*PARTS, "all"],
                        help="the part to measure; all: plain, hldf and generate (default: plain)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                        help="weights of the model folder and of inference (default: fp32 on cpu, bf16 on cuda); "
                             "training steps follow the config's mixed_precision (auto: bf16 on a GPU)")
    parser.add_argument("--base", choices=list(DEFAULT_PRESETS), default="pixart-alpha",
                        help="the architecture to build: " + "; ".join(f"{b}: {p}" for b, p in DEFAULT_PRESETS.items())
                             + " (default: pixart-alpha)")
    parser.add_argument("--text-encoder", choices=["small", "full", "xxl"], default=None,
                        help="small: the base's text encoder at its real width with 1 layer (T5-XXL's for PixArt, "
                             "Gemma-2 2B's for Sana); full: its real config; xxl: the same as full, T5-XXL's name "
                             "(default: small on cpu, full on cuda)")
    parser.add_argument("--preset", choices=presets, default=None,
                        help="whose real configs to build, of the --base (default: the base's, as above)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: 512; 32 with --tiny)")
    parser.add_argument("--hldf-resolution", type=int, default=None,
                        help="pixels of the HLDF step (default: --resolution, or on a CPU the largest multiple of "
                             "128 below it whose planned peak fits in the memory available)")
    parser.add_argument("--config", default=None,
                        help="a training config (e.g. finetune/configs/paper.yaml) whose settings the plain and hldf "
                             "steps use; default: batch 1, LoRA rank 16, the --hldf-steps sample")
    parser.add_argument("--hldf-steps", type=int, default=2, help="sampling steps of the HLDF sample (default: 2)")
    parser.add_argument("--steps", type=int, default=4, help="DPM-Solver++ steps of generate and text-cache (default: 4)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds of generate and text-cache, median shown (default: 1 on cpu, 3 on cuda; "
                             "a warm-up round first on cuda)")
    parser.add_argument("--model", default=None,
                        help="measure this local PixArt-alpha or Sana pipeline folder as it is (e.g. real weights) "
                             "instead of building one; --base, --preset, --text-encoder and --tiny then do not apply")
    parser.add_argument("--model-dir", default=None,
                        help="build the model folder here and keep it; reused when built with the same settings "
                             "(default: a temporary folder, deleted)")
    parser.add_argument("--json", default=None, help="add each part's figures to this JSON file as soon as it finishes")
    parser.add_argument("--markdown", metavar="JSON", default=None,
                        help="print the Markdown table of a results file and exit")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model at 32 px: a smoke run in seconds")
    args = parser.parse_args(argv)
    if args.markdown:
        return args
    import torch

    from medart_core.bases import detect_base
    from medart_core.errors import MedArtError

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available here")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.text_encoder = args.text_encoder or ("full" if args.device == "cuda" else "small")
    args.resolution = args.resolution or (32 if args.tiny else 512)
    args.repeats = args.repeats or (3 if args.device == "cuda" else 1)
    for name in ("hldf_steps", "steps", "repeats", "resolution"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.model and not (Path(args.model) / "model_index.json").is_file():
        parser.error(f"--model {args.model}: not a diffusers pipeline folder (no model_index.json in it)")
    if args.config and not Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file")
    args.preset = args.preset or DEFAULT_PRESETS[args.base]
    if PRESETS[args.preset].base != bases[args.base]:
        parser.error(f"--preset {args.preset} is a {PRESETS[args.preset].base.name} model, not --base {args.base}")
    try:
        base = detect_base(args.model) if args.model else bases[args.base]
    except MedArtError as err:
        parser.error(f"--model {args.model}: {err}")
    check_parts(parser, base, args.which)
    args.base_name = base.name
    args.vae_checkpointing = base_vae_checkpoints(base)
    return args


def base_vae_checkpoints(base) -> bool:
    """Whether the base's VAE class has gradient checkpointing in diffusers (AutoencoderKL yes, AutoencoderDC no)."""
    import diffusers

    return getattr(diffusers, base.vae_class)._supports_gradient_checkpointing


def check_parts(parser, base, which: str) -> None:
    """Refuse, before any model is built, a part the base cannot run."""
    from medart_core.bases import PIXART_ALPHA

    if which == "quant-t5" and base != PIXART_ALPHA:
        parser.error(f"--which quant-t5 measures PixArt's T5; {base.name}'s text encoder is {base.text_encoder}")


def main(argv=None) -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    args = parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())["results"]))
        return
    from bench_train import make_data

    context = multiprocessing.get_context("spawn")
    parts = CPU_PARTS if args.which == "all" else (args.which,)
    stamp = {"date": datetime.date.today().isoformat(), "base": args.base_name, "device": args.device, "dtype": args.dtype,
             "text_encoder": "tiny" if args.tiny else args.text_encoder}
    with tempfile.TemporaryDirectory() as scratch:
        if args.model:
            folder = Path(args.model)
            stamp["text_encoder"] = f"of {folder.name}"
        else:
            folder = Path(args.model_dir) if args.model_dir else Path(scratch) / "model"
            folder.mkdir(parents=True, exist_ok=True)
            ensure_folder(folder, build_settings(args), args.device, context)
        batch = 4 if args.config else 1
        data_dir = make_data(Path(scratch) / "data", args.resolution, count=batch)
        options = {"model_dir": str(folder), "data_dir": str(data_dir), "device": args.device, "dtype": args.dtype,
                   "config": args.config, "hldf_steps": args.hldf_steps, "steps": args.steps, "repeats": args.repeats,
                   "vae_checkpointing": args.vae_checkpointing}
        memory_env = EXACT_MALLOC if args.device == "cpu" else {}
        for part in parts:
            print(f"measuring {part} ...", flush=True)
            if part in ("plain", "hldf"):
                resolution, note = (args.resolution, "")
                if part == "hldf" and args.hldf_resolution:
                    resolution = args.hldf_resolution
                elif part == "hldf":
                    resolution, note = hldf_resolution(options, args.resolution, 256 if not args.tiny else 32)
                if note:
                    print(note)
                result = run_in_process(context, measure_step, part, options, resolution, environment=memory_env)
            elif part == "generate":
                result = run_in_process(context, measure_generation, options, args.resolution)
            elif part == "text-cache":
                result = run_in_process(context, measure_text_cache, options, args.resolution)
            else:
                variants = [run_in_process(context, measure_quantised_t5, options, q, environment=memory_env)
                            for q in ("none", "8bit", "4bit")]
                result = {"part": "quant-t5", "variants": variants}
            result.update(stamp)
            save_result(Path(args.json) if args.json else None, result)
            print(details(result))
            print(summary_line(result), flush=True)


if __name__ == "__main__":
    main()

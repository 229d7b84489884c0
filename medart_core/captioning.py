"""The Visual Symptom Generator: a VLM writes a validated visual description of every training image.

Read top to bottom: VLM presets, generation presets and loading -> one batched `generate` call
per batch of images -> validation with bounded retries (`describe_batch`), an optional T5
`simplify:` pass and a repair -> a whole imagefolder dataset, resumable and sharded across
processes (`caption_dataset`). Any callable with the captioner's call shape
(`captioner(requests, attempt) -> texts`, plus a `source` attribute) can stand in for the VLM:
the offline `FallbackCaptioner`, or a scripted one in tests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from medart_core.caption_templates import CaptionTemplate, load_row_template, load_template
from medart_core.caption_validation import (
    EMPTY,
    MAX_T5_TOKENS,
    MISSING_SIMPLE_CAPTION,
    PARROTS_FEATURES,
    TOO_LONG,
    Rules,
    TokenCounter,
    check_description,
    estimate_t5_tokens,
    repair_description,
)
from medart_core.data import METADATA_FILE, load_rgb, read_jsonl, scan_imagefolder, split_folders, write_metadata_jsonl
from medart_core.errors import MedArtError
from medart_core.fallback_captioner import SOURCE as FALLBACK  # noqa: F401 (re-exported: `--vlm fallback`)

logger = logging.getLogger(__name__)

# Named VLMs (DiT-style presets: they feed --vlm and the app's dropdown). Any other hub id or
# local folder of an image-text-to-text model works too.
VLM_PRESETS = {
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",  # default: ~1 GB in fp32, runs on a laptop CPU
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",  # better descriptions, wants a GPU
    "llava-next-8b": "llava-hf/llama3-llava-next-8b-hf",  # the paper's Visual Symptom Generator
}
DEFAULT_VLM = "smolvlm-256m"
OUTPUT_COLUMNS = ("file_name", "text", "label", "simple_caption", "source", "rule")
UNREADABLE = "unreadable"  # progress-log key of an image skipped because it cannot be read


@dataclass(frozen=True)
class GenerationPreset:
    """How the VLM decodes a description, and which broken rules send it back for another try."""

    name: str
    max_new_tokens: int
    sample_first: bool  # sample from the first attempt on (else greedy first, sampled retries)
    temperature: float
    top_k: int | None  # None: the model's generation_config decides
    top_p: float | None
    max_words: int | None  # the instruction's word limit (None: the template's)
    retry_rules: tuple[str, ...]
    retry_hints: bool  # tell a retry what was wrong
    simplifier: str | None  # the T5 model of the `simplify:` pass over still over-long texts


GENERATION_PRESETS = {
    # Med-Art: a reproducible greedy first answer; retries sample and are told what was wrong,
    # an over-long answer too; what still breaks a rule is repaired at sentence boundaries.
    "medart": GenerationPreset("medart", max_new_tokens=160, sample_first=False, temperature=0.7, top_k=None,
                               top_p=None, max_words=None,
                               retry_rules=(EMPTY, MISSING_SIMPLE_CAPTION, PARROTS_FEATURES, TOO_LONG),
                               retry_hints=True, simplifier=None),
    # The paper's Visual Symptom Generator (Guo et al. 2025; its released code): sampled at
    # temperature 0.8, top-k 50, top-p 0.9, 150 new tokens, up to 100 words; regenerated (same
    # prompt) when it parrots the feature list or does not start with the simple caption; a text
    # over the T5 budget goes through t5-large's `simplify:` before the repair.
    "paper": GenerationPreset("paper", max_new_tokens=150, sample_first=True, temperature=0.8, top_k=50,
                              top_p=0.9, max_words=100, retry_rules=(EMPTY, MISSING_SIMPLE_CAPTION, PARROTS_FEATURES),
                              retry_hints=False, simplifier="t5-large"),
}
DEFAULT_GENERATION_PRESET = "medart"


def generation_preset(name: str) -> GenerationPreset:
    if name not in GENERATION_PRESETS:
        raise MedArtError(f"unknown generation preset {name!r}; use one of {', '.join(GENERATION_PRESETS)}")
    return GENERATION_PRESETS[name]


def resolve_vlm(name: str) -> str:
    """A preset name to its hub id; anything else (hub id, folder, "fallback") unchanged."""
    return VLM_PRESETS.get(name, name)


@dataclass(frozen=True)
class CaptionRequest:
    """One image to describe, and what its description must start with."""

    image: Image.Image
    simple_caption: str
    label: str | None
    template: CaptionTemplate
    hint: str = ""  # set on a retry: what was wrong with the previous answer

    def prompt(self) -> str:
        return self.template.prompt(self.simple_caption, self.label, self.hint)


class VLMCaptioner:
    """A loaded image-text-to-text model: one chat-templated, left-padded, batched `generate`
    per call, decoded as its GenerationPreset says. Sampled attempts are seeded by (seed, attempt),
    so a rerun gives the same texts and a retry can come out different."""

    def __init__(self, model, processor, *, source: str, max_new_tokens: int | None = None, seed: int = 0,
                 preset: GenerationPreset = GENERATION_PRESETS[DEFAULT_GENERATION_PRESET]):
        self.model, self.processor, self.source, self.preset = model, processor, source, preset
        self.max_new_tokens, self.seed = max_new_tokens or preset.max_new_tokens, seed
        processor.tokenizer.padding_side = "left"  # generation continues from the right end of every row

    def __call__(self, requests: list[CaptionRequest], attempt: int = 0) -> list[str]:
        import torch

        conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r.prompt()}]}]
                         for r in requests]
        prompts = [self.processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
        inputs = self.processor(images=[[r.image] for r in requests], text=prompts, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        sample = self.preset.sample_first or attempt > 0
        options = {"max_new_tokens": self.max_new_tokens, "do_sample": sample}
        if sample:
            options["temperature"] = self.preset.temperature
            options.update({k: v for k, v in (("top_k", self.preset.top_k), ("top_p", self.preset.top_p))
                            if v is not None})
            torch.manual_seed(self.seed + attempt)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [" ".join(text.split()) for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


def load_local_first(model_id: str, processor_class, model_class, *, dtype, what: str, advice: str):
    """(processor, model) of `model_id` through two transformers Auto classes, from the local
    cache (or folder) first and, online, from the hub: an offline machine fails in seconds, not
    after minutes of download retries; HF_HUB_OFFLINE=1 skips the download attempt. Refuses with
    one message saying what to do."""
    is_folder = Path(model_id).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    error: Exception | None = None
    for local_only in [True] if (is_folder or offline) else [True, False]:
        if not local_only:
            logger.info("%s is not in the local Hugging Face cache; downloading it (set HF_HUB_OFFLINE=1 to skip)", model_id)
        try:
            return (processor_class.from_pretrained(model_id, local_files_only=local_only),
                    model_class.from_pretrained(model_id, dtype=dtype, local_files_only=local_only))
        except Exception as err:  # OSError, ValueError, hub errors: all mean "not loadable here"
            error = err
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    raise MedArtError(f"cannot load the {what} {model_id!r} ({reason}). Its weights must be on this machine: download "
                      f"them while online (`hf download {model_id}`) or {advice}")


def load_vlm(name: str = DEFAULT_VLM, *, device=None, dtype=None, max_new_tokens: int | None = None, seed: int = 0,
             preset: str = DEFAULT_GENERATION_PRESET) -> VLMCaptioner:
    """Processor + model through transformers' generic Auto classes: bf16 (fp16 without bf16) on
    a GPU, fp32 on CPU; decoding as the named GenerationPreset says."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from medart_core.pipeline import Precision

    model_id = resolve_vlm(name)
    precision = Precision.choose(device, dtype)
    decoding = generation_preset(preset)
    processor, model = load_local_first(
        model_id, AutoProcessor, AutoModelForImageTextToText, dtype=precision.model_dtype, what="VLM",
        advice="pass a local folder with --vlm; to describe images without a VLM use --vlm fallback, or "
               "--fallback-on-error")
    if getattr(processor, "chat_template", None) is None:
        raise MedArtError(f"the processor of {model_id!r} has no chat template; use an instruction-tuned VLM")
    model.to(precision.device).eval()
    logger.info("VLM %s on %s in %s", model_id, precision.device, str(precision.model_dtype).replace("torch.", ""))
    return VLMCaptioner(model, processor, source=model_id, max_new_tokens=max_new_tokens, seed=seed, preset=decoding)


@dataclass(frozen=True)
class Description:
    """A validated description; `rule` is the last validation rule that fired ("" if none)."""

    text: str
    rule: str
    attempts: int


def describe_batch(captioner, requests: list[CaptionRequest], rules: list[Rules], *, max_retries: int = 2,
                   preset: GenerationPreset = GENERATION_PRESETS[DEFAULT_GENERATION_PRESET],
                   simplifier=None) -> list[Description]:
    """Describe a batch; descriptions that break one of the preset's retry rules are regenerated
    together (told what was wrong, if the preset says so), at most `max_retries` times. What is
    then still over the token budget goes through `simplifier` (a callable texts -> texts, e.g.
    medart_core.simplifier.T5Simplifier) when one is given; what still breaks a rule is repaired
    (see `repair_description`). Bounded: at most 1 + max_retries captioner calls."""
    if max_retries < 0:
        raise MedArtError(f"--max-retries must be 0 or more, got {max_retries}")
    texts, fired = [""] * len(requests), [""] * len(requests)
    attempts = [0] * len(requests)
    pending = list(range(len(requests)))
    for attempt in range(max_retries + 1):
        if not pending:
            break
        outputs = captioner([requests[i] for i in pending], attempt)
        if len(outputs) != len(pending):
            raise RuntimeError(f"captioner returned {len(outputs)} texts for {len(pending)} images")
        still_failing = []
        for i, text in zip(pending, outputs):
            texts[i], attempts[i] = " ".join(str(text).split()), attempt + 1
            rule = check_description(texts[i], rules[i])
            if rule is not None:
                fired[i] = rule
            if rule in preset.retry_rules:
                if preset.retry_hints:
                    requests[i] = replace(requests[i], hint=rules[i].hint(rule, requests[i].template.max_words))
                still_failing.append(i)
        pending = still_failing
    too_long = [i for i in range(len(texts)) if rules[i].count_tokens(texts[i]) > rules[i].max_tokens]
    if simplifier is not None and too_long:
        for i, text in zip(too_long, simplifier([texts[i] for i in too_long])):
            fired[i], texts[i] = TOO_LONG, " ".join(str(text).split())
    for i in range(len(texts)):
        if check_description(texts[i], rules[i]) is None:
            continue
        texts[i] = repair_description(texts[i], rules[i])
        if check_description(texts[i], rules[i]) is not None:  # e.g. the simple caption itself parrots
            texts[i] = rules[i].simple_caption.rstrip(" .") + "."
    return [Description(texts[i], fired[i], attempts[i]) for i in range(len(requests))]


@dataclass(frozen=True)
class CaptionJob:
    """One image of the dataset, where its row goes, and what its description starts with."""

    path: Path
    file_name: str
    out: Path  # the metadata.jsonl this image's row is written to
    label: str | None
    simple_caption: str
    modality: str
    row: dict  # the input metadata row (other columns are kept)

    @property
    def key(self) -> tuple[str, str]:
        return str(self.out), self.file_name


def plan_jobs(data_dir: str | Path, *, modality: str | None, out: str | Path | None = None) -> list[CaptionJob]:
    """Every image with its label, simple caption and template. The simple caption is the
    metadata's `simple_caption`, else its `text` (when it holds no previous description), else
    the template's sentence for the label; the template is the row's `modality`, else --modality."""
    folders = dict(split_folders(data_dir))
    if out is not None and None not in folders:
        raise MedArtError(f"{data_dir} has split folders ({', '.join(map(str, folders))}); each gets its own "
                          f"{METADATA_FILE}, so leave out --out")
    jobs = []
    for record in scan_imagefolder(data_dir, refuse_duplicates=True):  # a repeat would lose a row's text
        row = record.row
        row_modality = row.get("modality") or modality
        if not row_modality:
            raise MedArtError(f"{record.file_name}: no modality; pass --modality or add a \"modality\" column")
        try:  # --modality is the user's own choice; a row's modality is the data's, confined to its folder
            template = load_row_template(row_modality, data_dir) if row.get("modality") else load_template(modality)
        except MedArtError as err:
            raise MedArtError(f"{record.file_name}: {err}") from None
        text = record.text if isinstance(record.text, str) and record.text.strip() and not row.get("source") else None
        if row.get("simple_caption"):
            simple_caption = str(row["simple_caption"]).strip()
        elif text:
            simple_caption = text.strip()
        elif record.label:
            simple_caption = template.simple_caption_for(record.label)
        else:
            raise MedArtError(f"{record.file_name}: no label; put images in class sub-folders or add a \"label\" "
                              "or \"text\" column to the metadata")
        target = Path(out) if out is not None else folders[record.split] / METADATA_FILE
        jobs.append(CaptionJob(record.path, record.file_name, target, record.label or simple_caption,
                               simple_caption, template.source, row))
    if not jobs:
        raise MedArtError(f"no images found in {data_dir}")
    return jobs


def output_row(job: CaptionJob, description: Description, source: str) -> dict:
    """The metadata.jsonl row: the fixed columns first, then the input's other columns."""
    row = {"file_name": job.file_name, "text": description.text, "label": job.label,
           "simple_caption": job.simple_caption, "source": source, "rule": description.rule}
    row.update({k: v for k, v in job.row.items() if k not in row})
    return row


def progress_dir(out: Path) -> Path:
    """Where finished rows of an unfinished run live: a hidden folder beside the output, which
    imagefolder ignores."""
    return out.parent / f".{out.name}.progress"


def read_progress(out: Path) -> dict[str, dict]:
    """Rows already described by an interrupted run, by file_name, from every process's log. A
    line cut off by a crash is ignored (its image is described again)."""
    rows: dict[str, dict] = {}
    folder = progress_dir(out)
    for log in sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []:
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("ignoring an unfinished line in %s", log)
                continue
            rows[row["file_name"]] = row
    return rows


class ProgressLog:
    """This process's append-only log of finished rows, one per output file. Each batch is
    flushed and fsynced, so an interruption loses at most the batch in flight; a line torn by a
    crash is cut off before appending, so it never swallows the next row."""

    def __init__(self, rank: int):
        self.rank, self.handles = rank, {}

    def append(self, out: Path, rows: list[dict]) -> None:
        if out not in self.handles:
            folder = progress_dir(out)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"rank-{self.rank}.jsonl"
            if path.is_file():
                data = path.read_bytes()
                if data and not data.endswith(b"\n"):
                    with open(path, "r+b") as handle:
                        handle.truncate(data.rfind(b"\n") + 1)
            self.handles[out] = open(path, "a", encoding="utf-8")
        handle = self.handles[out]
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


def _already_described(jobs: list[CaptionJob]) -> dict[tuple[str, str], dict]:
    """Rows with a description already: in an existing output file, or in an unfinished run's log."""
    found: dict[tuple[str, str], dict] = {}
    for out in dict.fromkeys(job.out for job in jobs):
        if out.is_file():
            for row in read_jsonl(out):
                if row.get("source") and isinstance(row.get("text"), str) and row["text"].strip():
                    found[(str(out), str(row.get("file_name")))] = row
        for name, row in read_progress(out).items():
            if UNREADABLE not in row:
                found[(str(out), name)] = row
    wanted = {job.key for job in jobs}
    return {key: row for key, row in found.items() if key in wanted}


@dataclass
class CaptionSummary:
    """What a run did, for the CLI's last lines."""

    described: int = 0
    skipped: int = 0
    outputs: tuple[Path, ...] = ()
    rules: Counter | None = None
    sources: Counter | None = None
    unreadable: int = 0  # images that could not be read: kept in the output without a description


def caption_dataset(
    captioner,
    jobs: list[CaptionJob],
    *,
    batch_size: int = 4,
    max_retries: int = 2,
    count_tokens: TokenCounter = estimate_t5_tokens,
    max_tokens: int = MAX_T5_TOKENS,
    resume: bool = False,
    overwrite: bool = False,
    state=None,
    progress: bool = True,
    preset: GenerationPreset = GENERATION_PRESETS[DEFAULT_GENERATION_PRESET],
    simplifier=None,
) -> CaptionSummary:
    """Describe every job and write each output metadata.jsonl (a CSV input is kept as
    metadata.csv.orig). Resumable with `resume`: images already described are skipped. Under
    `accelerate launch` each process takes every num_processes-th remaining image and logs its
    rows; the main process merges them into the outputs once all are done."""
    from tqdm.auto import tqdm

    from medart_core.generation import process_state

    if batch_size < 1:
        raise MedArtError(f"--batch-size must be at least 1, got {batch_size}")
    state = state or process_state()
    outputs = tuple(dict.fromkeys(job.out for job in jobs))
    if overwrite and state.is_main_process:
        for out in outputs:
            shutil.rmtree(progress_dir(out), ignore_errors=True)
    state.wait_for_everyone()
    done = {} if overwrite else _already_described(jobs)
    state.wait_for_everyone()  # every process reads the same logs before any process appends to them
    if done and not resume:
        raise MedArtError(
            f"{len(done)} of the {len(jobs)} images already have descriptions (from an earlier or interrupted run, "
            f"in {', '.join(sorted({k[0] for k in done}))}); pass --resume to keep them and describe the rest, "
            "or --overwrite to describe every image again"
        )
    todo = [job for job in jobs if job.key not in done]
    if done:
        logger.info("resuming: %d of %d images already described", len(done), len(jobs))
    mine = todo[state.process_index :: state.num_processes]
    log = ProgressLog(state.process_index)
    rules_fired: Counter = Counter()
    unreadable = 0
    bar = tqdm(total=len(mine), desc="describing", unit="img", disable=not (progress and state.is_main_process))
    try:
        for start in range(0, len(mine), batch_size):
            batch, requests = [], []
            for job in mine[start : start + batch_size]:
                try:
                    image = load_rgb(job.path)
                except MedArtError as err:  # a broken image is skipped, kept in the output without a description
                    logger.warning("skipped %s", err)
                    log.append(job.out, [{"file_name": job.file_name, UNREADABLE: str(err)}])
                    unreadable += 1
                    continue
                batch.append(job)
                template = load_template(job.modality)
                if preset.max_words is not None:
                    template = replace(template, max_words=preset.max_words)
                requests.append(CaptionRequest(image, job.simple_caption, job.label, template))
            bar.update(len(mine[start : start + batch_size]) - len(batch))
            if not batch:
                continue
            rules = [Rules(job.simple_caption, request.template.features, count_tokens, max_tokens)
                     for job, request in zip(batch, requests)]
            descriptions = describe_batch(captioner, requests, rules, max_retries=max_retries, preset=preset,
                                          simplifier=simplifier)
            rules_fired.update(d.rule for d in descriptions if d.rule)
            by_out: dict[Path, list[dict]] = {}
            for job, description in zip(batch, descriptions):
                by_out.setdefault(job.out, []).append(output_row(job, description, captioner.source))
            for out, rows in by_out.items():
                log.append(out, rows)
            bar.update(len(batch))
    finally:
        log.close()
        bar.close()

    state.wait_for_everyone()
    if state.is_main_process:
        _merge(jobs, outputs)
    state.wait_for_everyone()
    sources = Counter()
    for out in outputs:
        sources.update(row.get("source") for row in read_jsonl(out))
    return CaptionSummary(len(mine) - unreadable, len(done), outputs, rules_fired, sources, unreadable)


def _undescribed_row(job: CaptionJob) -> dict:
    """The row of an image that could not be read: its input columns, no description (training
    refuses it until the image is fixed or removed; a later --resume run tries it again)."""
    row = {"file_name": job.file_name, "text": None, "label": job.label, "simple_caption": job.simple_caption,
           "source": None, "rule": "unreadable"}
    row.update({k: v for k, v in job.row.items() if k not in row})
    return row


def _merge(jobs: list[CaptionJob], outputs: tuple[Path, ...]) -> None:
    """Write each output in input order from the described rows, then drop the progress logs."""
    described = _already_described(jobs)
    unreadable = {(str(out), name) for out in outputs for name, row in read_progress(out).items() if UNREADABLE in row}
    missing = [job.file_name for job in jobs if job.key not in described and job.key not in unreadable]
    if missing:
        raise MedArtError(f"{len(missing)} images have no description (e.g. {missing[0]}); run again with --resume to finish")
    columns = {}
    for out in outputs:
        rows = [described.get(job.key) or _undescribed_row(job) for job in jobs if job.out == out]
        columns[out] = {k for row in rows for k in row}
        write_metadata_jsonl(out, rows)
        shutil.rmtree(progress_dir(out), ignore_errors=True)
    every = set.intersection(*columns.values())
    for out, names in columns.items():
        if names - every:
            logger.warning("%s has columns the other splits lack (%s): datasets' imagefolder refuses splits whose "
                           "columns differ; add them to the other splits' metadata", out, ", ".join(sorted(names - every)))

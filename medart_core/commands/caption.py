"""`python -m medart_core caption`: describe every image of a dataset (the Visual Symptom Generator)."""

from __future__ import annotations

import argparse

HELP = "describe every image with a VLM (or the offline fallback) into metadata.jsonl; resumable, shardable with accelerate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medart_core.caption_templates import builtin_template_names
    from medart_core.caption_validation import MAX_T5_TOKENS
    from medart_core.captioning import DEFAULT_GENERATION_PRESET, DEFAULT_VLM, GENERATION_PRESETS, VLM_PRESETS
    from medart_core.commands.convert import add_conversion_arguments

    presets = ", ".join(f"{name} ({model_id})" for name, model_id in VLM_PRESETS.items())
    parser.add_argument("--data", required=True,
                        help="imagefolder dataset: class sub-folders, or metadata.jsonl/metadata.csv with file_name and "
                             "label (or a simple-caption text); split folders train/ test/ each get their own metadata.jsonl")
    parser.add_argument("--modality", default=None,
                        help=f"prompt template: one of {', '.join(builtin_template_names())}, or a template .yaml file; "
                             "a \"modality\" column overrides it per image (default: none, then every row needs the column)")
    parser.add_argument("--vlm", default=DEFAULT_VLM,
                        help=f"a preset ({presets}), any image-text-to-text hub id or local folder, or \"fallback\" "
                             f"for the offline captioner from measured colour/brightness/contrast/texture (default: {DEFAULT_VLM})")
    parser.add_argument("--fallback-on-error", action="store_true",
                        help="if the VLM cannot be loaded (e.g. offline, no weights), use the fallback captioner instead "
                             "of stopping (default: stop with the reason)")
    parser.add_argument("--tokenizer", default=None,
                        help="T5 tokenizer that counts the prompt budget: hub id, tokenizer folder, pipeline folder or "
                             "model preset (default: a generous estimate, ~1.6 tokens per word)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="T5 token budget of a description (default: the limit of the base --tokenizer's pipeline "
                             f"belongs to, 120 for PixArt-alpha and 300 for PixArt-Sigma; else {MAX_T5_TOKENS}, "
                             "PixArt-alpha's, the paper's)")
    parser.add_argument("--max-retries", type=int, default=2,
                        help="regenerations of a description that breaks a rule, before it is repaired (default: 2)")
    parser.add_argument("--generation-preset", choices=list(GENERATION_PRESETS), default=DEFAULT_GENERATION_PRESET,
                        help="how descriptions are decoded and checked: medart (greedy first answer, sampled retries "
                             "told what was wrong, an over-long answer retried too, then cut at sentence boundaries) or "
                             "paper (the paper's: sampled at temperature 0.8, top-k 50, top-p 0.9, 150 new tokens, up to "
                             "100 words; regenerated when it parrots the features or misses the simple caption; over "
                             "the token budget, a T5 `simplify:` pass (--simplifier) before the cut) "
                             f"(default: {DEFAULT_GENERATION_PRESET})")
    parser.add_argument("--simplifier", default=None,
                        help="T5 model (hub id or folder) of the `simplify:` pass over descriptions still over the "
                             "token budget, or none (default: t5-large with --generation-preset paper, none with medart)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="VLM tokens generated per description (default: the preset's, 160 medart, 150 paper)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per generate call (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled retries (default: 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu; "
                                                       "under accelerate launch, each process's own device)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                        help="VLM precision (default: bf16 on GPU, fp16 where bf16 is unsupported, fp32 on CPU)")
    parser.add_argument("--out", default=None,
                        help="output file, for a dataset without split folders (default: DIR/metadata.jsonl, replacing "
                             "a metadata.csv, which is kept as metadata.csv.orig)")
    parser.add_argument("--convert-to", default=None, metavar="DIR",
                        help="when --data holds DICOM/NIfTI files: the imagefolder their de-identified PNG slices are "
                             "converted into and described in, as `python -m medart_core convert` does "
                             "(default: DATA-converted beside DATA)")
    add_conversion_arguments(parser)
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="keep existing descriptions (an interrupted run's, or the output's) and describe only the rest "
                            "(default: refuse to touch a dataset that already has descriptions)")
    again.add_argument("--overwrite", action="store_true", help="describe every image again (default: off)")


def run(args: argparse.Namespace) -> None:
    import logging

    from medart_core.caption_validation import default_token_budget, load_token_counter
    from medart_core.captioning import FALLBACK, caption_dataset, generation_preset, load_vlm, plan_jobs
    from medart_core.errors import MedArtError
    from medart_core.fallback_captioner import FallbackCaptioner
    from medart_core.generation import process_state

    if args.max_tokens is None:
        args.max_tokens = default_token_budget(args.tokenizer)
    for name in ("batch_size", "max_new_tokens", "max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise MedArtError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    data = converted_data(args)
    jobs = plan_jobs(data, modality=args.modality, out=args.out)  # bad data fails before a model loads
    count_tokens, counting = load_token_counter(args.tokenizer)
    state = process_state()
    device = args.device if (args.device and state.num_processes == 1) else state.device
    preset = generation_preset(args.generation_preset)
    simplifier_name = args.simplifier or preset.simplifier
    simplifier = None
    if simplifier_name and simplifier_name.lower() != "none":
        from medart_core.simplifier import load_simplifier

        simplifier = load_simplifier(simplifier_name, device=device, dtype=args.dtype)
    if args.vlm == FALLBACK:
        captioner = FallbackCaptioner()
    else:
        try:
            captioner = load_vlm(args.vlm, device=device, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                                 seed=args.seed, preset=preset.name)
        except MedArtError as err:
            if not args.fallback_on_error:
                raise
            logging.getLogger("medart_core.caption").warning("%s -- using the fallback captioner (--fallback-on-error)", err)
            captioner = FallbackCaptioner()
    summary = caption_dataset(captioner, jobs, batch_size=args.batch_size, max_retries=args.max_retries,
                              count_tokens=count_tokens, max_tokens=args.max_tokens, resume=args.resume,
                              overwrite=args.overwrite, state=state, preset=preset, simplifier=simplifier)
    if state.is_main_process:
        rules = ", ".join(f"{rule} {n}" for rule, n in summary.rules.most_common()) or "none"
        unreadable = f"; {summary.unreadable} unreadable, skipped (kept without a description)" if summary.unreadable else ""
        print(f"{summary.described + summary.skipped + summary.unreadable if state.num_processes == 1 else len(jobs)} images: "
              f"{summary.skipped} kept from before, the rest described by {captioner.source} ({counting}); rules fired: "
              f"{rules}{unreadable}")
        for out in summary.outputs:
            print(out)


def converted_data(args: argparse.Namespace) -> str:
    """The folder to describe: --data itself, or, when it holds DICOM/NIfTI files, the imagefolder
    they are converted into (the same conversion as the convert command)."""
    from pathlib import Path

    from medart_core.commands.convert import conversion_options
    from medart_core.data import IMAGE_EXTENSIONS, METADATA_CSV, METADATA_FILE
    from medart_core.errors import MedArtError
    from medart_core.medical_io import convert_to_imagefolder, is_medical_file

    data = Path(args.data)
    if not data.is_dir() or not any(is_medical_file(p) for p in data.rglob("*")):
        return args.data
    if any(p.suffix.lower() in IMAGE_EXTENSIONS or p.name in (METADATA_FILE, METADATA_CSV) for p in data.rglob("*")):
        raise MedArtError(f"{data} mixes images (or metadata) with DICOM/NIfTI files; convert those first with "
                          f"`python -m medart_core convert --input {data} --out NEW_DIR` and describe NEW_DIR")
    out = Path(args.convert_to) if args.convert_to else data.resolve().parent / f"{data.resolve().name}-converted"
    print(convert_to_imagefolder([data], out, options=conversion_options(args)))
    return str(out)

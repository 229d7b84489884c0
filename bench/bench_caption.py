"""Captioning throughput: batched vs one-by-one `generate` on the same tiny VLM.

A randomly initialised LLaVA (CLIP vision + Llama text, the real transformers classes) is saved
and loaded back through `medart_core.captioning.load_vlm`, then the same images are described
by `VLMCaptioner` in batches of --batch-size and one at a time. Every description is forced to
exactly --new-tokens tokens (min_new_tokens), so both runs do the same amount of decoding.
Rounds are interleaved and the median is reported, so load from other processes hits both alike.

    python bench/bench_caption.py            # about a minute on 2 CPU cores
    python bench/bench_caption.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from PIL import Image

from medart_core.caption_templates import load_template
from medart_core.captioning import CaptionRequest, load_vlm
from medart_core.scratch_vlm import TinyVLMConfig, save_tiny_llava

BENCH_VLM = TinyVLMConfig(image_size=64, patch_size=8, vision_width=128, vision_layers=4, text_width=256,
                          text_layers=4, heads=8)
QUICK_VLM = TinyVLMConfig()
LABELS = ["polyps", "normal-cecum", "esophagitis", "ulcerative-colitis", "dyed-lifted-polyps", "normal-pylorus"]


def main() -> None:
    from medart_core.quiet import quiet_start

    quiet_start()  # before anything imports bitsandbytes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12, help="images described per round (default: 12)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batched generate call (default: 8)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per description (default: 32)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each mode (default: 3)")
    parser.add_argument("--quick", action="store_true", help="the test-size VLM, 8 images, 1 round: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args()
    config = QUICK_VLM if args.quick else BENCH_VLM
    if args.quick:
        args.images, args.rounds = 8, 1

    with tempfile.TemporaryDirectory() as folder:
        save_tiny_llava(folder, config)
        captioner = load_vlm(folder, device=args.device, max_new_tokens=args.new_tokens)
    captioner.model.generation_config.min_new_tokens = args.new_tokens  # same decoding work in both modes
    template = load_template("endoscopy")
    generator = torch.Generator().manual_seed(0)
    requests = []
    for i in range(args.images):
        pixels = (torch.rand(96, 112, 3, generator=generator) * 255).to(torch.uint8).numpy()
        label = LABELS[i % len(LABELS)]
        requests.append(CaptionRequest(Image.fromarray(pixels), template.simple_caption_for(label), label, template))

    def batched():
        for start in range(0, len(requests), args.batch_size):
            captioner(requests[start : start + args.batch_size])

    def one_by_one():
        for request in requests:
            captioner([request])

    modes = {f"batched (batch {args.batch_size})": batched, "one-by-one": one_by_one}
    captioner(requests[: args.batch_size])  # warm-up: first calls pay for allocations
    captioner(requests[:1])
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, fn in modes.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    parameters = sum(p.numel() for p in captioner.model.parameters())
    print(f"tiny LLaVA, {parameters / 1e6:.1f} M parameters, {config.image_size}px images, "
          f"{args.new_tokens} new tokens per description, {args.images} images, "
          f"{torch.get_num_threads()} CPU threads, median of {args.rounds} rounds")
    rates = {name: args.images / statistics.median(values) for name, values in times.items()}
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:8.2f} images/s")
    batched_rate, single_rate = rates.values()
    print(f"batched / one-by-one: {batched_rate / single_rate:.2f}x")


if __name__ == "__main__":
    main()

"""First-request latency of the app's Generate, through gradio_client: the pipeline loaded on first
use (before) against loaded in the background at start (now).

Each run is a fresh Python process that starts the app on the bundled demo model and dataset (a
temporary --home, loopback, no sign-in), waits for the page, then calls /generate for 2 images at
the model card's steps and guidance, then once more. By default the first click comes when the
background load is done (a person reading the page and typing a prompt; with the lazy load
nothing happens meanwhile, so it clicks at once); --think S clicks S seconds after the page in
both modes. It prints the page's time to serve, when the generator was ready, both latencies and
their ratio (robust to other load on the machine, which the absolute times are not).

    python bench/bench_app_first_request.py              # a few minutes on 2 busy CPU cores
    python bench/bench_app_first_request.py --think 0    # the click comes the moment the page is there
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(preload: bool, think: float | None) -> dict:
    """Runs inside the child process: start, wait for the page, generate twice."""
    import httpx
    from gradio_client import Client

    import app  # the parent puts the repository root on PYTHONPATH
    from medart_ui.context import PRELOAD_JOB

    with tempfile.TemporaryDirectory() as home:
        args = app.parse_args(["--home", home, "--host", "127.0.0.1"])
        opened = app.open_app(args)
        started = time.monotonic()  # the clock jobs use
        demo = app.serve(opened, args, preload=preload, server_port=None, quiet=True)
        while httpx.get(demo.local_url + "config", timeout=30).status_code != 200:
            time.sleep(0.05)
        page = time.monotonic() - started
        client = Client(demo.local_url, verbose=False)
        job = opened.jobs.get(PRELOAD_JOB)
        if think is not None:
            time.sleep(think)
        elif job is not None:
            job.wait(600)
        ready = (job.finished - started) if job is not None and job.finished else float("nan")
        defaults = opened.generator.defaults
        latencies = []
        for seed in (0, 2):
            begun = time.perf_counter()
            client.predict("An axial T1-weighted brain MRI slice", seed, defaults.steps, defaults.guidance, 2,
                           api_name="/generate")
            latencies.append(time.perf_counter() - begun)
        demo.close()
        opened.store.close()
    return {"page_s": page, "ready_s": ready, "first_s": latencies[0], "second_s": latencies[1]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--think", type=float, default=None,
                        help="seconds between the page being served and the first Generate (default: when the "
                             "background load is done)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, each in a fresh process (default 1)")
    parser.add_argument("--child", choices=["lazy", "background"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_run(args.child == "background", args.think)))
        return
    when = "when the generator is ready" if args.think is None else f"{args.think:g} s after the page is served"
    print(f"first Generate {when} (2 images, model-card steps and guidance); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for mode in ("lazy", "background") * args.repeats:
        think = [] if args.think is None else ["--think", str(args.think)]
        done = subprocess.run([sys.executable, __file__, "--child", mode, *think],
                              capture_output=True, text=True, check=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        result = json.loads(done.stdout.strip().splitlines()[-1])
        label = "loaded on first use (before)" if mode == "lazy" else "loaded in the background at start (now)"
        print(f"{label:42s} page {result['page_s']:5.2f} s · ready {result['ready_s']:5.1f} s · first Generate "
              f"{result['first_s']:5.2f} s · second {result['second_s']:5.2f} s · first/second "
              f"{result['first_s'] / result['second_s']:4.2f}")


if __name__ == "__main__":
    main()

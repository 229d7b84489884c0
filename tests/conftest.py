"""Fixtures: tiny randomly-initialised PixArt-alpha and PixArt-Sigma pipelines of the real classes, built offline."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub or gradio: the tests never reach a network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from medart_core.lora import TRANSFORMER_TARGETS, add_lora, lora_config  # noqa: E402
from medart_core.pipeline import Precision, load_pipeline  # noqa: E402
from medart_core.scratch import ScratchConfig, build_pipeline, save_pipeline  # noqa: E402

@pytest.fixture(autouse=True, scope="session")
def patient_key_in_a_temp_folder(tmp_path_factory):
    """DICOM conversions in tests make their patient-pseudonym key in a temp folder, never in the
    user's data folder (subprocesses inherit it)."""
    os.environ.setdefault("MEDART_PATIENT_KEY", str(tmp_path_factory.mktemp("patient-key") / "patient-key"))


TINY = ScratchConfig()  # 32x32 images, 16x16x4 latents, 2 transformer layers, 2-layer T5


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A diffusers save_pretrained folder of a tiny PixArt-alpha (transformer, VAE, T5, tokenizer, DPM-Solver++)."""
    return save_pipeline(build_pipeline(TINY, seed=0), tmp_path_factory.mktemp("tiny") / "pixart")


@pytest.fixture(scope="session")
def tiny_sigma_dir(tmp_path_factory):
    """The same tiny components saved as a PixArtSigmaPipeline (T5 limit 300 tokens, no micro-conditions)."""
    from medart_core.bases import PIXART_SIGMA

    return save_pipeline(build_pipeline(TINY, seed=1, base=PIXART_SIGMA), tmp_path_factory.mktemp("tiny") / "sigma")


@pytest.fixture(scope="session")
def tiny_sana_dir(tmp_path_factory):
    """A save_pretrained folder of a tiny SanaPipeline (Sana transformer, DC-AE, Gemma2, flow DPM-Solver++)."""
    from medart_core.scratch import build_sana_pipeline

    return save_pipeline(build_sana_pipeline(seed=2), tmp_path_factory.mktemp("tiny") / "sana")


@pytest.fixture
def tiny_model(tiny_pipeline_dir):
    return load_pipeline(tiny_pipeline_dir, precision=Precision.choose("cpu"))


def randomise_lora(module, seed: int = 0, std: float = 0.3) -> None:
    """Give every LoRA matrix non-zero weights (a fresh LoRA has B = 0 and changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.fixture(scope="session")
def transformer_lora_dir(tiny_pipeline_dir, tmp_path_factory):
    """A PEFT adapter folder for the tiny transformer, with non-zero weights."""
    from diffusers import PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel.from_pretrained(tiny_pipeline_dir / "transformer")
    peft_model = add_lora(transformer, lora_config(TRANSFORMER_TARGETS, rank=4))
    randomise_lora(peft_model)
    folder = tmp_path_factory.mktemp("lora") / "transformer_lora"
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_train_data(tmp_path_factory):
    """An imagefolder (train/ split, metadata.jsonl) of two visibly different colour classes."""
    import json

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("train-data")
    (root / "train").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        orange = i % 2 == 1
        pixels = rng.random((40, 40, 3)) * 60 + ([200, 90, 30] if orange else [120, 60, 150])
        Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(root / "train" / f"{i}.png")
        rows.append({
            "file_name": f"{i}.png",
            "text": "A fundus photograph of the retina, orange background" if orange
            else "A histopathology tile, purple nuclei, pink stroma",
            "label": "fundus" if orange else "histology",
        })
    (root / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def accelerate_launch(args: list[str], timeout: int = 600):
    """Run `accelerate launch` with two CPU processes in one process group.

    `accelerate launch --cpu --num_processes 2` starts a single process unless it is given an MPI
    hostfile; torchrun (via --multi_gpu) with ACCELERATE_USE_CPU=1 gives two gloo processes.
    """
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def launch_two_cpu_processes():
    return accelerate_launch


# --- App tests: a team's accounts file, one account per role ------------------------------------

TEAM = {"alice": ("admin", "wonderland"), "bob": ("reviewer", "builder"), "carol": ("reader", "carrots")}


@pytest.fixture(scope="session")
def team_accounts(tmp_path_factory):
    """An accounts file (USER:ROLE:HASH, argon2id) with an admin, a reviewer and a reader."""
    from medart_core.accounts import Account, hash_password, write_accounts_file

    path = tmp_path_factory.mktemp("accounts") / "accounts.txt"
    write_accounts_file(path, [Account(user, role, hash_password(password)) for user, (role, password) in TEAM.items()])
    return path


# --- Review store and app tests (issue 5): prerequisites that are not Python packages ----------

POSTGRES_BIN = "/usr/lib/postgresql/15/bin"
CHROMIUM = "/usr/bin/chromium"


def require_prerequisite(available: bool, reason: str) -> None:
    """Skip a test whose system prerequisite is missing, with the reason; under CI (CI=true) fail,
    since tests/install_test_prereqs.sh should have installed it."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: run bash tests/install_test_prereqs.sh first)")
    pytest.skip(f"{reason}; install it with: bash tests/install_test_prereqs.sh")


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL 15 server on a loopback port, in a temp folder, as the `postgres`
    user when run as root (the server refuses to run as root). Yields its base URL."""
    import shutil
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    initdb = Path(POSTGRES_BIN) / "initdb"
    require_prerequisite(initdb.is_file(), f"PostgreSQL 15 is not installed ({initdb} missing)")
    as_postgres = []
    folder = Path(tempfile.mkdtemp(prefix="medart-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            require_prerequisite(False, "no `postgres` system user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    run = lambda *args: subprocess.run([*as_postgres, *args], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(str(initdb), "-D", str(data), "-A", "trust", "-U", "medart", "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    run(f"{POSTGRES_BIN}/pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://medart@127.0.0.1:{port}"
    finally:
        run(f"{POSTGRES_BIN}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """A new, empty database on the test server, for one test."""
    import re

    import psycopg

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50] + f"_{os.getpid()}"
    with psycopg.connect(postgres_server.replace("+psycopg", "") + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"

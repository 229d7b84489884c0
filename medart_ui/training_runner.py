"""Training runs as real jobs: `finetune/train.py` in a subprocess per run, its log followed, its
state in the review store (medart_core.store.runs), so an app restart loses none.

One run trains at a time; others wait, queued. A run is launched with an argument list (never a
shell string), in its own process group, with a bounded OMP_NUM_THREADS, its output in the run's
`train.log`; through `accelerate launch` when more than one process is asked for. Every launch
passes `--resume latest`: a first launch finds no checkpoint and starts fresh, a resumed one
continues from its last checkpoint. Cancel sends SIGTERM to the trainer processes, which finish
their step, write a checkpoint and exit (finetune/train.py StopRequest).

After a restart a run still marked running is followed again when its pid is alive with the
same process start time (psutil; a reused pid has another), else it is `interrupted`, with Resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from medart_core.errors import MedArtError
from medart_core.store.runs import RESUMABLE, Run, RunStore
from medart_core.store.review import now
from medart_core.text_limits import whole_number

logger = logging.getLogger("medart.app")

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = ROOT / "finetune" / "train.py"
PRESETS = {name: ROOT / "finetune" / "configs" / f"{name}.yaml" for name in ("paper", "recommended", "quick")}
DESCRIPTIONS = ("approved", "all")
LOSSES = {"loss/noise": "loss/mse", "loss/color": "loss/color"}  # API name -> key in train_log.jsonl
FINISHED_MARKER = "README.md"  # the model card: finetune/train.py writes it last, only when every step is done
POLL_SECONDS = 0.5
CANCEL_WAIT_SECONDS = 120  # a step and a checkpoint; Cancel returns the state it reached by then
MAX_THREADS = 8


@dataclass
class RunSettings:
    """What the Train tab (or start_training) asks for; 0 or None means the preset's own value."""

    preset: str = "quick"
    steps: int = 0  # optimizer steps
    epochs: int = 0  # passes over the data (instead of steps)
    learning_rate: float = 0.0
    rank: int = 0
    hldf: bool = True
    hldf_every: int = 0
    hldf_steps: int = 0
    hldf_weight: float = 0.0
    t5_lora: bool | None = None
    resolution: int = 0  # pixels; 0: the base model's native size
    processes: int = 1
    descriptions: str = "approved"

    def checked(self) -> "RunSettings":
        if self.preset not in PRESETS:
            raise MedArtError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.descriptions not in DESCRIPTIONS:
            raise MedArtError(f"descriptions must be approved or all, got {self.descriptions!r:.40}")
        if not isinstance(self.hldf, bool):
            raise MedArtError(f"hldf must be true or false, got {self.hldf!r:.40}")
        for name in ("steps", "epochs", "rank", "hldf_every", "hldf_steps", "resolution", "processes"):
            value = whole_number(getattr(self, name), name)
            if value < 0 or value > 10**7:
                raise MedArtError(f"{name} must be between 0 and 10,000,000, got {value}")
            setattr(self, name, value)
        if self.steps and self.epochs:
            raise MedArtError("give steps or epochs, not both (the other is derived)")
        if self.processes < 1:
            raise MedArtError("processes must be at least 1")
        for name in ("learning_rate", "hldf_weight"):
            try:
                value = float(getattr(self, name))
            except (TypeError, ValueError):
                raise MedArtError(f"{name} must be a number, got {getattr(self, name)!r:.40}") from None
            if not math.isfinite(value) or value < 0:
                raise MedArtError(f"{name} must be a finite number >= 0 (0: the preset's), got {value}")
            setattr(self, name, value)
        return self

    def train_options(self, native_resolution: int | None) -> list[str]:
        """The trainer's command-line overrides of the preset (finetune/config.py keys)."""
        options = {"max_train_steps": self.steps or None, "num_train_epochs": self.epochs or None,
                   "learning_rate": self.learning_rate or None, "lora_rank": self.rank or None,
                   "resolution": self.resolution or native_resolution,
                   "train_text_encoder_lora": self.t5_lora}
        if self.hldf:
            options |= {"hldf_every": self.hldf_every or None, "hldf_steps": self.hldf_steps or None,
                        "hldf_weight": self.hldf_weight or None}
        else:
            options["hldf_every"] = 0
        return [part for key, value in options.items() if value is not None
                for part in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))]


def native_resolution(model: str) -> int | None:
    """The base model's own image size (finetune.plan's, for any base), or None when unknown."""
    from finetune import plan

    try:
        return plan.native_resolution(model)
    except MedArtError:
        return None


def read_losses(log_file: Path) -> tuple[int, dict[str, list[list[float]]]]:
    """The last logged step and each loss as [[step, value], ...] from train_log.jsonl. A resumed run
    logs again the steps after its checkpoint: the later line of a step wins."""
    by_step: dict[int, dict] = {}
    try:
        lines = log_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            row = json.loads(line)
            by_step[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):  # a line being written
            continue
    losses = {name: [[step, float(row[key])] for step, row in sorted(by_step.items()) if key in row]
              for name, key in LOSSES.items()}
    return max(by_step, default=0), losses


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a run's train.log (progress bars' carriage returns become lines)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def same_process(pid: int | None, started: float | None):
    """The psutil.Process of `pid` if it is alive and the one started at `started`, else None."""
    import psutil

    if not pid or started is None:
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


class TrainingRunner:
    """Starts, follows, cancels, resumes and deletes the app's training runs."""

    def __init__(self, store, home: Path, model: str | None, *, python: str = sys.executable):
        self.store, self.runs = store, RunStore(store.engine)
        self.folder = Path(home) / "training-runs"
        self.model, self.python = model, python
        self._children: dict[int, subprocess.Popen] = {}  # runs this app launched (so their exit status is known)
        self._launched: dict[int, tuple[float, int]] = {}  # run -> (time, step) of its launch: the time estimate
        self._lock = threading.RLock()
        self._wake, self._closed = threading.Event(), threading.Event()
        self.recover()

    # Following ------------------------------------------------------------------------------

    def recover(self) -> None:
        """At start: runs whose trainer died while no app watched become interrupted (or done)."""
        for run in self.runs.all(state="running"):
            if same_process(run.pid, run.process_started) is None:
                self._finished(run, returncode=None)
            else:
                logger.info("training run %d is still running (pid %d): following it again", run.id, run.pid)

    def follow(self) -> None:
        """The follower loop (a background job): notice ended trainers, launch the next queued run."""
        while not self._closed.is_set():
            try:
                self.tick()
            except Exception:  # logged; the loop must outlive one bad poll (a store busy, a file gone)
                logger.exception("following the training runs failed once")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()

    def tick(self) -> None:
        with self._lock:
            running = self.runs.all(state="running")
            for run in running:
                child = self._children.get(run.id)
                if child is not None and child.poll() is not None:
                    self._finished(run, child.returncode)
                elif child is None and same_process(run.pid, run.process_started) is None:
                    self._finished(run, returncode=None)
            if not self.runs.all(state="running"):
                queued = self.runs.all(state="queued")
                if queued:
                    self._launch(queued[0])

    def _finished(self, run: Run, returncode: int | None) -> None:
        self._children.pop(run.id, None)
        launched = self._launched.pop(run.id, None)
        step, losses = read_losses(run.output / "train_log.jsonl")
        if (run.output / FINISHED_MARKER).is_file():
            state, error = "done", ""
        elif run.stop_requested:
            state, error = "cancelled", ""
        elif returncode:
            state, error = "failed", self._failure(run, returncode)
        else:  # stopped by someone else's signal, or died while no app watched it
            state, error = "interrupted", "the trainer stopped before its last step; Resume continues from the last checkpoint"
        seconds = run.summary.get("seconds", 0) + (time.time() - launched[0] if launched else 0)
        summary = run.summary | {"step": step, "seconds": round(seconds, 1),
                                 **{name: values[-1][1] for name, values in losses.items() if values}}
        self.runs.update(run.id, expect=("running",), state=state, error=error, summary=summary, finished_at=now())
        logger.info("training run %d: %s at step %d", run.id, state, step)

    def _failure(self, run: Run, returncode: int) -> str:
        """The trainer's own `error:` line when it printed one, else its exit status and last line."""
        lines = log_tail(run.log, 40).splitlines()
        for line in reversed(lines):
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        last = next((line for line in reversed(lines) if line.strip()), "")
        return f"the trainer exited with status {returncode}" + (f": {last[-300:]}" if last else "")

    # Launching ------------------------------------------------------------------------------

    def train_arguments(self, run: Run) -> list[str]:
        settings = RunSettings(**run.settings)
        return [str(TRAIN_SCRIPT), "--config", str(PRESETS[settings.preset]), "--model", run.model,
                "--data", str(run.data), "--output_dir", str(run.output),
                *settings.train_options(native_resolution(run.model)), "--resume", "latest"]

    def command(self, run: Run) -> tuple[list[str], dict[str, str]]:
        """The argument list and environment of a run's trainer."""
        import torch

        processes = int(run.settings.get("processes", 1))
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": str(max(1, min(os.cpu_count() or 1, MAX_THREADS) // processes)),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if processes == 1:
            return [self.python, *self.train_arguments(run)], env
        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "1"  # torchrun's gloo processes on CPU (accelerate's --cpu starts one)
        launch = [self.python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        return [*launch, *self.train_arguments(run)], env

    def _launch(self, run: Run) -> None:
        import psutil

        command, env = self.command(run)
        run.folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(run.log, "ab") as log:
                child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, env=env, start_new_session=True)
        except OSError as err:
            self.runs.update(run.id, state="failed", error=f"cannot start the trainer: {err}", finished_at=now())
            return
        self._children[run.id] = child
        self._launched[run.id] = (time.time(), read_losses(run.output / "train_log.jsonl")[0])
        started = psutil.Process(child.pid).create_time()
        self.runs.update(run.id, state="running", pid=child.pid, process_started=started, started_at=now(),
                         finished_at=None)
        logger.info("training run %d started: pid %d, %s", run.id, child.pid, " ".join(command))

    # What the tab and the endpoints call ---------------------------------------------------------

    def start(self, settings: RunSettings, *, author: str) -> Run:
        """Export the chosen descriptions into a new run's folder, record which revision of each it
        holds, and queue the run. Refused (nothing kept) when the export would be empty."""
        from medart_core.bases import detect_base
        from medart_core.store import export_dataset
        from finetune.config import load_config

        settings = settings.checked()
        if not self.model:
            raise MedArtError("no base model to train: start the app with --model")
        counts = self.store.counts()
        if settings.descriptions == "approved" and not counts["approved"]:
            raise MedArtError(f"nothing to train on: 0 of {counts['total']} descriptions are approved; approve some "
                              "in the Review tab, or train on all descriptions")
        with self._lock:  # the follower must not launch the run before its data is there
            run = self.runs.create(preset=settings.preset, model=self.model, descriptions=settings.descriptions,
                                   settings=asdict(settings), author=author,
                                   folder_of=lambda run_id: self.folder / f"run-{run_id:04d}")
            try:
                exported = export_dataset(self.store, run.data, approved_only=settings.descriptions == "approved")
                trained = {k: r for k, r in exported.revisions.items() if k.startswith("train/")} or exported.revisions
                if not trained:
                    raise MedArtError(f"nothing to train on: the export of run {run.id} has no training images "
                                      f"({counts['approved']} of {counts['total']} descriptions are approved)")
                arguments = self.train_arguments(run)[1:]
                config = load_config(arguments).with_train_steps(len(trained), settings.processes)
                config.check_base(detect_base(self.model))  # what the trainer would refuse, refused here in one line
            except BaseException:
                self.runs.delete(run.id)
                shutil.rmtree(run.folder, ignore_errors=True)
                raise
            self.runs.record_snapshot(run.id, trained)
            self.runs.update(run.id, summary={"descriptions": len(trained), "total": config.max_train_steps})
        self._wake.set()
        return self.runs.get(run.id)

    def status(self, run_id) -> dict:
        """The training_status endpoint's answer."""
        from finetune.checkpoints import list_checkpoints

        run = self.runs.get(self._run_id(run_id))
        step, losses = read_losses(run.output / "train_log.jsonl")
        checkpoints = list_checkpoints(run.output) if run.output.is_dir() else []
        done = run.state == "done"
        return {"state": run.state, "step": step, "total": run.summary.get("total"), "losses": losses,
                "adapters": str(run.output) if done else None,
                "checkpoint": str(checkpoints[-1]) if checkpoints else None, "error": run.error or None}

    def seconds_left(self, run_id) -> float | None:
        """A time estimate from this launch's pace (None before two steps are logged)."""
        run = self.runs.get(self._run_id(run_id))
        launched, total = self._launched.get(run.id), run.summary.get("total")
        if run.state != "running" or launched is None or not total:
            return None
        step = read_losses(run.output / "train_log.jsonl")[0]
        if step <= launched[1]:
            return None
        return (time.time() - launched[0]) / (step - launched[1]) * (total - step)

    def cancel(self, run_id, *, wait: float = CANCEL_WAIT_SECONDS) -> dict:
        run = self.runs.get(self._run_id(run_id))
        if run.state == "queued" and self.runs.update(run.id, expect=("queued",), state="cancelled",
                                                      stop_requested=True, finished_at=now()):
            return self.status(run.id)
        if run.state != "running":
            raise MedArtError(f"run {run.id} is {run.state}: only a queued or running run can be cancelled")
        self.runs.update(run.id, expect=("running",), stop_requested=True)
        self._signal(run)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.runs.get(run.id).state == "running":
            self._wake.set()
            time.sleep(0.2)
        return self.status(run.id)

    def _signal(self, run: Run) -> None:
        """SIGTERM to the trainer processes: the process itself, or with `accelerate launch` its
        workers (the launcher would otherwise stop them on its own schedule, and fail the run)."""
        process = same_process(run.pid, run.process_started)
        if process is None:
            return
        import psutil

        targets = process.children() if int(run.settings.get("processes", 1)) > 1 else []
        for target in targets or [process]:
            try:
                target.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass

    def resume(self, run_id) -> dict:
        run = self.runs.get(self._run_id(run_id))
        if not self.runs.update(run.id, expect=RESUMABLE, state="queued", stop_requested=False, error=""):
            raise MedArtError(f"run {run.id} is {run.state}: only a cancelled, interrupted or failed run can be resumed")
        self._wake.set()
        return self.status(run.id)

    def delete(self, run_id) -> None:
        run = self.runs.get(self._run_id(run_id))
        if run.state in ("queued", "running"):
            raise MedArtError(f"run {run.id} is {run.state}: cancel it before deleting it")
        shutil.rmtree(run.folder, ignore_errors=True)
        self.runs.delete(run.id)

    def trained_texts(self, run_id) -> list[tuple[str, int, str]]:
        """(image key, revision, the text of that revision) of every description the run trained on."""
        snapshot = self.runs.snapshot(self._run_id(run_id))
        return [(key, number, self.store.revision(key, number).text) for key, number in sorted(snapshot.items())]

    def adapters(self, run_id) -> Path:
        """The adapters folder of a finished run (refused for any other)."""
        run = self.runs.get(self._run_id(run_id))
        if run.state != "done":
            raise MedArtError(f"run {run.id} is {run.state}: only a finished (done) run has adapters to use")
        return run.output

    @staticmethod
    def _run_id(run_id) -> int:
        return whole_number(run_id, "run")

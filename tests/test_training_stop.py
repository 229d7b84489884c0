"""Stopping a multi-process training run (issue 19): the app launches two CPU processes through
`accelerate launch`; a SIGTERM that reaches only one of them stops both at the same step (they agree
by a collective at every step boundary), the main process writes the checkpoint, both exit cleanly,
and the run, stopped by nobody's Cancel, is `interrupted` with its checkpoint for Resume."""

from __future__ import annotations

import shutil
import signal
import time

import pytest

from medart_core.store import ReviewStore
from medart_ui.training_runner import RunSettings, TrainingRunner, read_losses


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} after {timeout} s")


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tmp_path, tiny_pipeline_dir, tiny_train_data):
    import psutil

    from medart_core.store.runs import RunStore

    with ReviewStore(tmp_path / "review.sqlite") as store:
        runner = TrainingRunner(store, tmp_path, str(tiny_pipeline_dir))
        settings = RunSettings(preset="quick", steps=400, hldf=False, processes=2)
        run = RunStore(store.engine).create(preset="quick", model=str(tiny_pipeline_dir), descriptions="all",
                                            settings=vars(settings), author="alice",
                                            folder_of=lambda number: tmp_path / f"run-{number}")
        shutil.copytree(tiny_train_data, run.data)  # the data an export would have written
        command, _ = runner.command(run)
        assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--num_processes" in command
        runner.tick()  # launches the queued run
        log = run.output / "train_log.jsonl"
        wait(lambda: read_losses(log)[0] >= 1, 240, "no step logged")  # both processes are in the loop
        workers = psutil.Process(runner.runs.get(run.id).pid).children()
        [second] = [w for w in workers if w.environ().get("RANK") == "1"]
        second.send_signal(signal.SIGTERM)  # not the main process: it must learn of the stop from the other
        finished = wait(lambda: runner.tick() or runner.runs.get(run.id).state != "running" and
                        runner.runs.get(run.id), 240, "the run did not stop")
        assert finished.state == "interrupted", runner.status(run.id)
        status = runner.status(run.id)
        stopped_at = read_losses(log)[0]
        assert status["checkpoint"] and status["checkpoint"].endswith(f"checkpoint-{stopped_at}")
        assert stopped_at < 400 and status["adapters"] is None
        assert not (run.output / "README.md").exists()  # no final adapters: the run is resumable, not done
        text = run.log.read_text()
        assert "SIGTERM received" in text and f"stopped at step {stopped_at} of 400" in text

"""The training runs in the review store (issue 19): a store made before runs existed (schema 0001)
upgrades on open, keeping its descriptions, on SQLite and PostgreSQL; a run row keeps its settings and
data snapshot; after a restart a run whose trainer is gone, or whose pid now belongs to another
process, is interrupted, while a live one is followed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medart_core.store import ReviewStore, import_dataset
from medart_core.store.database import MIGRATIONS, create_store_engine
from medart_core.store.runs import RunStore
from test_store import make_dataset


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    return tmp_path / "review.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def migrate_to(db, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    engine = create_store_engine(db)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as connection, connection.begin():
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


def test_a_store_from_before_training_runs_upgrades_on_open(db, tmp_path):
    from sqlalchemy import inspect

    migrate_to(db, "0001")  # the schema today's released code writes
    engine = create_store_engine(db)
    assert "training_runs" not in inspect(engine).get_table_names()
    engine.dispose()
    with ReviewStore(db) as store:  # an older store's data goes in through the 0001 tables
        import_dataset(store, make_dataset(tmp_path / "data"), author="import")
        keys = store.keys()
    with ReviewStore(db) as store:
        assert {"training_runs", "training_run_descriptions"} <= set(inspect(store.engine).get_table_names())
        assert store.keys() == keys
        runs = RunStore(store.engine)
        run = runs.create(preset="quick", model="m", descriptions="approved", settings={"steps": 3},
                          folder_of=lambda number: tmp_path / f"run-{number}", author="alice")
        assert (run.state, run.settings, run.folder) == ("queued", {"steps": 3}, tmp_path / f"run-{run.id}")
        runs.record_snapshot(run.id, {key: 1 for key in keys})
        assert runs.snapshot(run.id) == {key: 1 for key in keys}
        assert runs.update(run.id, expect=("queued",), state="running", pid=123, process_started=1.5)
        assert not runs.update(run.id, expect=("queued",), state="cancelled")  # it is running now
        assert runs.get(run.id).pid == 123 and [r.id for r in runs.all(state="running")] == [run.id]
        runs.delete(run.id)
        assert runs.all() == [] and runs.snapshot(run.id) == {}


def test_after_a_restart_only_the_same_live_process_is_followed(tmp_path, tiny_pipeline_dir):
    import psutil

    from medart_ui.training_runner import TrainingRunner

    with ReviewStore(tmp_path / "review.sqlite") as store:
        runs = RunStore(store.engine)
        alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        try:
            started = psutil.Process(alive.pid).create_time()
            rows = {}
            for name, pid, when in (("alive", alive.pid, started), ("gone", gone.pid, started),
                                    ("reused", alive.pid, started - 100)):  # the pid of another process now
                run = runs.create(preset="quick", model=str(tiny_pipeline_dir), descriptions="all", settings={},
                                  folder_of=lambda number: tmp_path / f"run-{number}", author="alice")
                runs.update(run.id, state="running", pid=pid, process_started=when)
                rows[name] = run.id
            TrainingRunner(store, tmp_path, str(tiny_pipeline_dir))  # what an app does when it opens
            states = {name: runs.get(number).state for name, number in rows.items()}
            assert states == {"alive": "running", "gone": "interrupted", "reused": "interrupted"}
            assert "Resume" in runs.get(rows["gone"]).error
        finally:
            alive.kill()
            alive.wait()
        runner = TrainingRunner(store, tmp_path, str(tiny_pipeline_dir))
        runner.tick()
        assert runs.get(rows["alive"]).state == "interrupted"
        assert runner.resume(rows["alive"])["state"] == "queued"
        runner.delete(rows["gone"])
        assert rows["gone"] not in {r.id for r in runs.all()}
        with pytest.raises(Exception, match="cancel it before deleting"):
            runner.delete(rows["alive"])


def test_run_settings_become_the_trainers_options_at_the_base_models_own_size(tiny_pipeline_dir):
    from finetune.config import load_config
    from medart_core.errors import MedArtError
    from medart_ui.training_runner import PRESETS, RunSettings, native_resolution

    assert native_resolution(str(tiny_pipeline_dir)) == 32
    assert native_resolution("PixArt-alpha/PixArt-XL-2-1024-MS") == 1024
    options = RunSettings(preset="paper", steps=5, hldf=False).checked().train_options(32)
    assert options == ["--max_train_steps", "5", "--resolution", "32", "--hldf_every", "0"]
    config = load_config(["--config", str(PRESETS["paper"]), *options])
    assert (config.max_train_steps, config.resolution, config.hldf_every) == (5, 32, 0)
    own = RunSettings(resolution=128, t5_lora=True, rank=2).checked().train_options(32)
    assert own == ["--lora_rank", "2", "--resolution", "128", "--train_text_encoder_lora", "true"]
    for bad, message in (({"steps": 3, "epochs": 2}, "steps or epochs"), ({"hldf": "yes"}, "true or false"),
                         ({"steps": -1}, "between 0"), ({"learning_rate": float("nan")}, "finite"),
                         ({"descriptions": "some"}, "approved or all")):
        with pytest.raises(MedArtError, match=message):
            RunSettings(**bad).checked()


def test_a_checkpoint_being_written_is_not_listed(tmp_path):
    """The app lists a run's checkpoints while the trainer writes one as checkpoint-N.partial (the
    status endpoint failed with an internal error when it caught one mid-write)."""
    from finetune.checkpoints import STATE_FILE, list_checkpoints

    for name in ("checkpoint-10", "checkpoint-20.partial", "checkpoint-3"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / STATE_FILE).write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-10"]


def test_a_preset_the_base_cannot_honour_is_refused_in_one_line_and_leaves_no_run(tmp_path, tiny_sana_dir):
    """recommended.yaml asks for VAE gradient checkpointing, which Sana's DC-AE lacks. Before the fix the
    runner still called a check that #22 removed: an ImportError, shown as an internal error."""
    from medart_core.errors import MedArtError
    from medart_ui.training_runner import RunSettings, TrainingRunner

    with ReviewStore(tmp_path / "review.sqlite") as store:
        import_dataset(store, make_dataset(tmp_path / "data"), author="import")
        runner = TrainingRunner(store, tmp_path, str(tiny_sana_dir))
        with pytest.raises(MedArtError, match="no gradient checkpointing"):
            runner.start(RunSettings(preset="recommended", steps=1, descriptions="all"), author="alice")
        assert RunStore(store.engine).all() == []
        assert not any((tmp_path / "training-runs").glob("run-*"))

"""Training from the app (issue 19), on a running app with the tiny PixArt: in a browser an admin
starts a quick run, watches the loss plot fill in and switches Generate to its adapters; through
gradio_client its adapters change what `generate` makes, a run queued behind another waits, a run
cancelled and resumed by an app started again ends at the same weights as the uninterrupted run;
reviewers and readers are refused every training endpoint. One app and one set of runs serve all the
tests of this file (each run costs seconds of CPU). MEDART_UPDATE_SCREENSHOT=1 runs them on the bundled
demo model and refreshes docs/screenshot-train.png (the Train tab during a run) for the README."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TEAM
from test_app import credentials, start
from test_browser import browser, screenshot, sign_in  # noqa: F401 (browser: the headless Chromium fixture)

ADMIN, REVIEWER, READER = "alice", "bob", "carol"
STEPS = 10  # the quick preset's HLDF step is step 10: the colour loss is logged once
UPDATE = os.environ.get("MEDART_UPDATE_SCREENSHOT") == "1"
README_SCREENSHOT = Path(__file__).parent.parent / "docs" / "screenshot-train.png"
ENDPOINTS = {"start_training": ("quick", STEPS, True, "approved"), "training_status": (1,), "cancel_training": (1,),
             "resume_training": (1,), "use_adapters": ("",)}


@pytest.fixture(autouse=True)
def no_sign_in_environment(monkeypatch):
    for name in ("MEDART_AUTH", "MEDART_AUTH_FILE", "MEDART_ACCOUNTS", "MEDART_NO_AUTH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("train-home")


@pytest.fixture(scope="module")
def site(tiny_pipeline_dir, team_accounts, home):
    """The app, restartable: site["start"]() (re)opens it on the same home and store."""
    from medart_ui.options import DEMO_MODEL

    state = {}

    def open_site():
        stop_site()
        model = DEMO_MODEL if UPDATE else tiny_pipeline_dir
        state["demo"], state["app"] = start(model, home, "--auth-file", str(team_accounts))
        from gradio_client import Client

        state["clients"] = {user: Client(state["demo"].local_url, auth=credentials(user), verbose=False)
                            for user in TEAM}
        return state

    def stop_site():  # as a stopped app would: the trainer subprocesses go on
        if "demo" in state:
            state["app"].runner.close()
            state["demo"].close()
            state["app"].store.close()

    state["start"] = open_site
    open_site()
    yield state
    stop_site()


def wait_for(client, run: int, states=("done", "failed", "cancelled", "interrupted"), timeout=240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(run, api_name="/training_status")
        if status["state"] in states:
            return status
        time.sleep(0.3)
    raise AssertionError(f"run {run} still {status['state']} after {timeout} s")


def wait_for_log(path: Path, text: str, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def lora_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "pytorch_lora_weights.safetensors")


def test_an_empty_export_is_refused_with_the_number_approved(site):
    with pytest.raises(Exception, match="0 of 390 descriptions are approved"):
        site["clients"][ADMIN].predict("quick", STEPS, True, "approved", api_name="/start_training")
    assert site["app"].runner.runs.all() == []  # nothing kept
    with pytest.raises(Exception, match="unknown preset"):
        site["clients"][ADMIN].predict("fastest", STEPS, True, "all", api_name="/start_training")


def test_reviewers_and_readers_are_refused_every_training_endpoint(site):
    for user in (REVIEWER, READER):
        for name, arguments in ENDPOINTS.items():
            with pytest.raises(Exception, match=rf"your role \({TEAM[user][0]}\) may not use {name}"):
                site["clients"][user].predict(*arguments, api_name=f"/{name}")
    assert site["app"].runner.runs.all() == []


@pytest.fixture(scope="module")
def approved(site):
    app = site["app"]
    for entry in app.store.entries(split="train")[::40]:  # 8 images, every class
        app.store.approve(entry.key, revision=entry.revision, author="alice")


def eventually(check, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


@pytest.mark.slow
def test_in_a_browser_start_a_run_watch_the_plot_and_switch_the_adapters(browser, site, approved):  # noqa: F811
    from playwright.sync_api import expect

    app = site["app"]
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.set_default_timeout(60_000)
    sign_in(page, site["demo"].local_url, ADMIN)
    page.get_by_role("tab", name="Train").click()
    if not UPDATE:  # the screenshot shows the quick preset's own 20 steps on the demo model
        page.locator("#train-steps input").fill(str(STEPS))
    empty_plot = page.locator("#train-plot").screenshot()
    page.locator("#train-start").click()
    progress = page.locator("#train-progress")
    expect(progress).to_contain_text("(running): step ", timeout=120_000)
    expect(progress).not_to_contain_text("step 0 /", timeout=120_000)
    if UPDATE:
        expect(page.locator("#train-validation img").first).to_be_visible(timeout=300_000)
        page.wait_for_function("() => [...document.querySelectorAll('#train-validation img')]"
                               ".every(img => img.complete && img.naturalWidth > 0)")
        expect(progress).to_contain_text("(running)")
        shutil.copyfile(screenshot(page, "train-running"), README_SCREENSHOT)
    assert eventually(lambda: page.locator("#train-plot").screenshot() != empty_plot)  # it filled in while training
    expect(progress).to_contain_text("(done)", timeout=300_000)
    expect(page.locator("#train-validation")).to_contain_text("SYNTHETIC")
    [run] = app.runner.runs.all()

    # Before / after: the same prompt and seeds with the base and with the run's adapters.
    page.get_by_text("Before / after: the same prompts and seeds").click()
    page.locator("#train-before-after").click()
    expect(page.locator("#train-compared")).to_contain_text("after", timeout=120_000)
    expect(page.locator("#train-after")).to_contain_text("SYNTHETIC · after · seed 0")
    [folder] = app.generated.glob(f"before-after-run-{run.id:04d}-*")
    before, after = (pixels(folder / f"{side}-seed-0.png") for side in ("before", "after"))
    from medart_core.synthetic import read_png_text

    chunks = read_png_text(folder / "before-seed-0.png")
    [base] = app.generator([chunks["prompt"]], [0], int(chunks["steps"]), float(chunks["guidance"]))  # no adapters
    assert np.abs(before - np.asarray(base, dtype=np.int16)).max() <= 1  # "before" is the base model's image
    assert np.abs(before - after).max() > 0  # and the adapters change it

    page.locator("#train-use").click()
    assert eventually(lambda: app.generator.lora == str(run.output))
    page.get_by_role("tab", name="Generate").click()
    page.locator("#prompt textarea").fill("An axial T1-weighted brain MRI slice")
    page.locator("#generate-button").click()
    expect(page.locator("#generate-status")).to_contain_text(str(run.output), timeout=120_000)  # names them
    screenshot(page, "generate-with-adapters")
    page.close()


def test_a_quick_run_is_done_and_a_cancelled_one_resumes_after_a_restart_to_the_same_weights(site, approved):
    app = site["app"]
    admin = site["clients"][ADMIN]
    assert admin.predict("", api_name="/use_adapters") == {"adapters": None}  # the browser test switched them
    _, [base_image] = admin.predict("An axial T1-weighted brain MRI slice", 0, 2, 4.5, 1, api_name="/generate")

    started = [run.id for run in app.runner.runs.all() if run.state == "done"]  # the browser's run, if it ran
    first = started[0] if started else admin.predict("quick", STEPS, True, "approved", api_name="/start_training")["run"]
    second = admin.predict("quick", STEPS, True, "approved", api_name="/start_training")["run"]
    third = admin.predict("quick", STEPS, True, "approved", api_name="/start_training")["run"]
    assert admin.predict(third, api_name="/training_status")["state"] == "queued"  # one run at a time
    never_ran = admin.predict(third, api_name="/cancel_training")
    assert never_ran["state"] == "cancelled" and never_ran["checkpoint"] is None
    done = wait_for(admin, first)
    assert done["state"] == "done" and done["step"] == done["total"] == STEPS and done["error"] is None
    assert [step for step, _ in done["losses"]["loss/noise"]] == list(range(1, STEPS + 1))
    assert [step for step, _ in done["losses"]["loss/color"]] == [STEPS]
    assert all(np.isfinite(value) for values in done["losses"].values() for _, value in values)
    adapters = Path(done["adapters"])
    assert (adapters / "transformer_lora" / "adapter_config.json").is_file()
    snapshot = app.runner.runs.snapshot(first)  # the revision of every description it trained on
    assert snapshot == {e.key: e.revision for e in app.store.entries(status="approved")}
    assert [text for _, _, text in app.runner.trained_texts(first)] == [
        e.text for e in sorted(app.store.entries(status="approved"), key=lambda e: e.key)]

    # The second run was queued: it starts now; cancelled as soon as its trainer listens for the signal.
    second_run = app.runner.runs.get(second)
    wait_for_log(second_run.log, "effective config")
    assert admin.predict(second, api_name="/training_status")["state"] == "running"
    site["start"]()  # the app restarts while the run goes on: it is followed again
    admin = site["clients"][ADMIN]
    assert admin.predict(second, api_name="/training_status")["state"] == "running"
    cancelled = admin.predict(second, api_name="/cancel_training")
    assert cancelled["state"] == "cancelled" and cancelled["adapters"] is None
    assert cancelled["checkpoint"] and 1 <= int(cancelled["checkpoint"].rsplit("-", 1)[1]) < STEPS
    assert admin.predict(second, api_name="/resume_training")["state"] in ("queued", "running")
    resumed = wait_for(admin, second)
    assert resumed["state"] == "done" and resumed["step"] == STEPS
    uninterrupted, interrupted = lora_weights(adapters), lora_weights(Path(resumed["adapters"]))
    assert uninterrupted.keys() == interrupted.keys()
    assert all(np.allclose(uninterrupted[k].numpy(), interrupted[k].numpy(), atol=1e-6) for k in uninterrupted)

    # Generate with the run's adapters, then back to none, without a restart.
    assert admin.predict(str(first), api_name="/use_adapters") == {"adapters": str(adapters)}
    assert str(adapters) in site["app"].generator.status()
    _, [adapted_image] = admin.predict("An axial T1-weighted brain MRI slice", 0, 2, 4.5, 1, api_name="/generate")
    assert np.abs(pixels(adapted_image) - pixels(base_image)).max() > 2
    assert admin.predict("", api_name="/use_adapters") == {"adapters": None}
    _, [again] = admin.predict("An axial T1-weighted brain MRI slice", 0, 2, 4.5, 1, api_name="/generate")
    assert np.abs(pixels(again) - pixels(base_image)).max() <= 1

"""The Train tab (admins): train LoRA adapters on the reviewed descriptions from the app, watch the
run learn (step and time estimate, noise and colour losses, validation images, the log), cancel and
resume it, switch Generate and Compare to its adapters, and see the same prompts and seeds before and
after. Runs are jobs of medart_ui.training_runner, kept in the review store. Endpoints:
start_training, training_status, cancel_training, resume_training, use_adapters."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from medart_core.errors import MedArtError
from medart_ui.shared import ADMIN, Fill, allow, as_text, gpu, synthetic_preview, whole_number
from medart_ui.training_runner import DESCRIPTIONS, PRESETS, RunSettings, log_tail

TITLE, ID, ROLES = "Train", "train", (ADMIN,)
REFRESH_SECONDS = 2.0
T5_CHOICES = {"the preset's": None, "on": True, "off": False}
RUN_COLUMNS = ["run", "preset", "settings", "data", "state", "duration", "final losses", "adapters"]


def run_id_or_none(value) -> int | None:
    if value in (None, "") or (isinstance(value, float) and value != value):
        return None
    return whole_number(value, "run")


def settings_text(settings: dict) -> str:
    """The settings a run changed from its preset's, in one line."""
    usual = {"hldf": True, "processes": 1}
    shown = {}
    for key, value in settings.items():
        preset_own = value is None or (not isinstance(value, bool) and value == 0)  # 0 / None: the preset's
        if key in ("preset", "descriptions") or (key in usual and value == usual[key]) or preset_own:
            continue
        shown[key] = value
    if not settings.get("hldf", True):  # HLDF off: its other settings do not apply
        shown = {k: v for k, v in shown.items() if not k.startswith("hldf_")} | {"hldf": "off"}
    return ", ".join(f"{k} {v}" for k, v in shown.items()) or "the preset's"


def runs_table(app) -> list[list]:
    rows = []
    for run in app.runner.runs.all():
        summary = run.summary
        losses = ", ".join(f"{k.split('/')[1]} {summary[k]:.4g}" for k in ("loss/noise", "loss/color") if k in summary)
        rows.append([run.id, run.preset, settings_text(run.settings),
                     f"{summary.get('descriptions', '?')} {run.descriptions} descriptions", run.state,
                     f"{summary['seconds']:.0f} s" if "seconds" in summary else "", losses,
                     str(run.output) if run.state == "done" else ""])
    return rows


def loss_frame(losses: dict):
    import pandas as pd

    rows = [(step, value, name) for name, values in losses.items() for step, value in values]
    frame = pd.DataFrame(rows, columns=["step", "value", "loss"])
    # typed even when empty: an untyped column would make the plot's axis a category axis
    return frame.astype({"step": "int64", "value": "float64", "loss": "str"})


def validation_previews(app, run) -> list[tuple[str, str]]:
    """The run's validation images, newest step first, as marked previews in the app's generated folder
    (the run's own folder is not served: it holds the exported data)."""
    from PIL import Image

    from medart_core.synthetic import read_png_text, save_synthetic_png

    folder = app.generated / "training" / f"run-{run.id:04d}"
    steps = sorted((run.output / "validation").glob("step-*"), key=lambda p: -int(p.name.split("-")[1]))[:3]
    items = []
    for step in steps:
        for image in sorted(step.glob("*.png")):
            preview = folder / f"{step.name}-{image.name}"
            if not preview.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                with Image.open(image) as opened:
                    save_synthetic_png(synthetic_preview(opened), preview, read_png_text(image))
            items.append((str(preview), f"SYNTHETIC · validation {step.name}"))
    return items


class BeforeAfter:
    """One pipeline with a run's adapters, sampled with its LoRA layers off (before) and on (after):
    the same prompts and seeds, and one extra model in memory rather than two. The app's generator is
    not touched, so nobody's Generate changes meanwhile."""

    def __init__(self):
        self._loaded, self._lock = None, threading.Lock()

    def __call__(self, model: str, adapters: Path, prompts: list[str], seeds: list[int], steps: int, guidance: float):
        from medart_core.generation import GenerationSettings, generate_images
        from medart_core.lora import set_adapters_enabled
        from medart_core.pipeline import load_pipeline

        settings = GenerationSettings(steps=steps, guidance=guidance)
        with self._lock:
            if self._loaded is None or self._loaded[0] != (model, str(adapters)):
                self._loaded = None  # the previous run's pipeline goes before the next one loads
                self._loaded = ((model, str(adapters)), load_pipeline(model, lora=adapters))
            loaded = self._loaded[1]
            images = {}
            for side, enabled in (("before", False), ("after", True)):
                for module in (loaded.pipe.transformer, loaded.pipe.text_encoder):
                    set_adapters_enabled(module, enabled)
                loaded.prompts.clear()  # a T5 LoRA changes the embeddings
                images[side] = generate_images(loaded, prompts, seeds, settings)
            return images["before"], images["after"]


def build(app) -> Fill:
    from medart_core.metrics.color import color_distance, summarise_files
    from medart_core.synthetic import save_synthetic_png

    before_after = BeforeAfter()
    status = gr.Markdown()
    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("**New run** on the app's base model; 0 means the preset's own value.")
            preset = gr.Dropdown(list(PRESETS), value="quick", label="Preset",
                                 info="quick: about a minute on the demo model on a CPU; paper / recommended: a GPU")
            descriptions = gr.Radio(list(DESCRIPTIONS), value="approved", label="Descriptions",
                                    info="exported at Start into the run's folder; the run records each revision")
            with gr.Row():
                steps = gr.Number(0, precision=0, label="Steps", minimum=0, elem_id="train-steps")
                epochs = gr.Number(0, precision=0, label="or epochs", minimum=0)
            with gr.Row():
                learning_rate = gr.Number(0, label="Learning rate", minimum=0)
                rank = gr.Number(0, precision=0, label="LoRA rank", minimum=0)
            hldf = gr.Checkbox(True, label="HLDF (colour loss through the sampler)")
            with gr.Row():
                hldf_every = gr.Number(0, precision=0, label="HLDF every", minimum=0)
                hldf_steps = gr.Number(0, precision=0, label="HLDF steps", minimum=0)
                hldf_weight = gr.Number(0, label="HLDF weight", minimum=0)
            with gr.Row():
                t5_lora = gr.Dropdown(list(T5_CHOICES), value="the preset's", label="T5 LoRA")
                resolution = gr.Number(0, precision=0, label="Resolution (0: the model's own)", minimum=0)
                processes = gr.Number(1, precision=0, label="Processes", minimum=1)
            start_button = gr.Button("Start", variant="primary", elem_id="train-start")
        with gr.Column(scale=2):
            with gr.Row():
                run = gr.Number(None, precision=0, label="Run", elem_id="train-run")
                cancel_button = gr.Button("Cancel", elem_id="train-cancel")
                resume_button = gr.Button("Resume", elem_id="train-resume")
                use_button = gr.Button("Use these adapters", variant="primary", elem_id="train-use")
                base_button = gr.Button("Back to no adapters", elem_id="train-base")
            progress_text = gr.Markdown(elem_id="train-progress")
            plot = gr.LinePlot(x="step", y="value", color="loss", label="Losses", elem_id="train-plot", height=260)
            validation = gr.Gallery(label="Validation images (SYNTHETIC)", columns=4, height=200, elem_id="train-validation")
            log = gr.Textbox(label="Last log lines", lines=8, max_lines=8, interactive=False, elem_id="train-log")
    runs = gr.Dataframe(headers=RUN_COLUMNS, label="Runs", interactive=False, elem_id="train-runs")
    with gr.Accordion("The descriptions this run trained on (the revision of each)", open=False):
        texts_button = gr.Button("Show them", elem_id="train-texts-button")
        texts = gr.Dataframe(headers=["image", "revision", "text"], interactive=False, elem_id="train-texts")
    with gr.Row():
        confirm = gr.Checkbox(False, label="Yes, delete this run and its files")
        delete_button = gr.Button("Delete run", variant="stop", elem_id="train-delete")
    with gr.Accordion("Before / after: the same prompts and seeds, base model and this run's adapters", open=False):
        with gr.Row():
            label = gr.Dropdown([], label="Class", allow_custom_value=True)
            prompt = gr.Textbox(label="Description (empty: an approved one of the class, else any)", scale=2)
            count = gr.Slider(1, 8, value=2, step=1, label="Images per side")
            sample_steps = gr.Slider(1, 50, value=app.generator.defaults.steps, step=1, label="Steps")
        compare_button = gr.Button("Before / after", elem_id="train-before-after")
        compared = gr.Markdown(elem_id="train-compared")
        with gr.Row():
            before_gallery = gr.Gallery(label="Before: base model (SYNTHETIC)", columns=4, height=240,
                                        elem_id="train-before")
            after_gallery = gr.Gallery(label="After: with the run's adapters (SYNTHETIC)", columns=4, height=240,
                                       elem_id="train-after")
    timer = gr.Timer(REFRESH_SECONDS, active=False)  # started at page load, for admins only

    def refreshed(run_value):
        run_number = run_id_or_none(run_value)
        table = runs_table(app)
        if run_number is None:
            return "Start a run, or type a run's number.", gr.skip(), [], "", table
        found = app.runner.runs.get(run_number)
        current = app.runner.status(run_number)
        left = app.runner.seconds_left(run_number)
        line = f"Run {found.id} (**{current['state']}**): step {current['step']} / {current['total'] or '?'}"
        if left is not None:
            line += f", about {left:.0f} s left"
        if current["error"]:
            line += f"  \n{as_text(current['error'])}"
        if current["adapters"]:
            line += f"  \nAdapters: {as_text(current['adapters'])}"
        # Never an empty frame: gradio 6's LinePlot, once given one, draws no coloured line afterwards.
        plotted = loss_frame(current["losses"]) if any(current["losses"].values()) else gr.skip()
        return line, plotted, validation_previews(app, found), log_tail(found.log), table

    @allow(app, ADMIN)
    def refresh(run_value, request: gr.Request):
        return refreshed(run_value)

    @allow(app, ADMIN)
    def start_run(preset_name, which, step_count, epoch_count, rate, lora_rank, use_hldf, every, sample_count,
                  weight, t5, size, process_count, request: gr.Request):
        settings = RunSettings(preset_name, step_count or 0, epoch_count or 0, rate or 0.0, lora_rank or 0,
                               bool(use_hldf), every or 0, sample_count or 0, weight or 0.0, T5_CHOICES.get(t5),
                               size or 0, process_count or 1, which)
        started = app.runner.start(settings, author=app.author(request))
        gr.Info(f"Run {started.id} queued: {started.summary['descriptions']} descriptions exported")
        return started.id

    start_button.click(start_run, [preset, descriptions, steps, epochs, learning_rate, rank, hldf, hldf_every,
                                   hldf_steps, hldf_weight, t5_lora, resolution, processes], run,
                       api_visibility="private")

    # The named endpoints: their parameter names are the API's (see the README's endpoint table).
    @allow(app, ADMIN)
    def start_training(preset: str, steps: int, hldf: bool, descriptions: str = "approved",
                       request: gr.Request = None) -> dict:
        settings = RunSettings(preset=preset, steps=steps, hldf=hldf, descriptions=descriptions)
        return {"run": app.runner.start(settings, author=app.author(request)).id}

    @allow(app, ADMIN)
    def training_status(run: int, request: gr.Request = None) -> dict:
        return app.runner.status(run)

    @allow(app, ADMIN)
    def cancel_training(run: int, request: gr.Request = None) -> dict:
        return app.runner.cancel(run)

    @allow(app, ADMIN)
    def resume_training(run: int, request: gr.Request = None) -> dict:
        return app.runner.resume(run)

    def switch(run_value) -> dict:
        number = run_id_or_none(run_value)
        folder = str(app.runner.adapters(number)) if number is not None else None
        app.generator.use_adapters(folder)
        return {"adapters": folder}

    @allow(app, ADMIN)
    def use_adapters(run: str, request: gr.Request = None) -> dict:
        return switch(run)

    for endpoint in (start_training, training_status, cancel_training, resume_training, use_adapters):
        gr.api(endpoint, api_name=endpoint.__name__)

    def then_refreshed(function):
        """A button's callback: the endpoint's work on the chosen run, then the refreshed view."""
        def wrapped(run_value, request: gr.Request):
            function(run_id_or_none(run_value))
            return refreshed(run_value)
        wrapped.__name__ = function.__name__
        return allow(app, ADMIN)(wrapped)

    def cancel_run(number):
        app.runner.cancel(number, wait=0)  # the view follows the stop; the button does not wait for it

    def resume_run(number):
        app.runner.resume(number)

    def use_run(number):
        switch(number)

    def use_base(number):
        switch(None)

    shown = [progress_text, plot, validation, log, runs]
    for button, function in ((cancel_button, cancel_run), (resume_button, resume_run), (use_button, use_run),
                             (base_button, use_base)):
        button.click(then_refreshed(function), run, shown, api_visibility="private")

    @allow(app, ADMIN)
    def trained_on(run_value, request: gr.Request):
        number = run_id_or_none(run_value)
        if number is None:
            raise MedArtError("type the number of a run first")
        return [list(row) for row in app.runner.trained_texts(number)]

    texts_button.click(trained_on, run, texts, api_visibility="private")

    @allow(app, ADMIN)
    def delete_run(run_value, sure, request: gr.Request):
        number = run_id_or_none(run_value)
        if number is None:
            raise MedArtError("type the number of the run to delete")
        if not sure:
            raise MedArtError(f"tick 'Yes, delete this run and its files' to delete run {number}")
        if app.generator.lora and Path(app.generator.lora) == app.runner.runs.get(number).output:
            raise MedArtError(f"run {number}'s adapters are in use: switch Generate back to no adapters first")
        app.runner.delete(number)
        return None, False, runs_table(app)

    delete_button.click(delete_run, [run, confirm], [run, confirm, runs], api_visibility="private")

    @allow(app, ADMIN)
    def compare_before_after(run_value, class_label, description, image_count, step_count, request: gr.Request):
        number = run_id_or_none(run_value)
        if number is None:
            raise MedArtError("type the number of a finished run first")
        adapters = app.runner.adapters(number)
        real = app.store.entries(label=class_label) if class_label else []
        if not real:
            raise MedArtError(f"choose a class with real images in the store, not {class_label!r:.60}")
        approved = [e for e in real if e.status == "approved"]
        text = " ".join((description or "").split()) or (approved or real)[0].text
        n, step_count = whole_number(image_count, "count"), whole_number(step_count, "steps")
        if not 1 <= n <= 8:
            raise MedArtError(f"compare 1 to 8 images per side, not {n}")
        seeds, guidance = list(range(n)), app.generator.defaults.guidance
        before, after = before_after(app.generator.model_name, adapters, [text] * n, seeds, step_count, guidance)
        folder = app.generated / f"before-after-run-{number:04d}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}"
        galleries, distances = {}, {}
        for side, images, lora in (("before", before, ""), ("after", after, str(adapters))):
            files, items = [], []
            for image, seed in zip(images, seeds):
                record = {"file_name": f"{side}-seed-{seed}.png", "text": text, "label": class_label, "seed": seed,
                          "steps": step_count, "guidance": guidance, "model": app.generator.model_name,
                          "adapters": lora, "synthetic": True}
                files.append(save_synthetic_png(image, folder / record["file_name"], record))
                preview = save_synthetic_png(synthetic_preview(image), folder / f".preview-{record['file_name']}", record)
                items.append((str(preview), f"SYNTHETIC · {side} · seed {seed}"))
            galleries[side] = items
            distances[side] = color_distance(summarise_files([e.path for e in real]), summarise_files(files))
        note = (f"Prompt: *{as_text(text)}*, seeds {seeds[0]}..{seeds[-1]}. Colour distance to the {len(real)} real "
                f"images of {as_text(class_label)} (mean |Δmean| + |Δstd| over channels): before "
                f"**{distances['before'].get('distance', float('nan')):.4f}**, after "
                f"**{distances['after'].get('distance', float('nan')):.4f}**")
        return note, galleries["before"], galleries["after"]

    compare_button.click(gpu(compare_before_after), [run, label, prompt, count, sample_steps],
                         [compared, before_gallery, after_gallery], api_visibility="private")
    timer.tick(refresh, run, shown, api_visibility="private", show_progress="hidden")

    def fill(request: gr.Request):
        labels = app.store.labels()
        counts = app.store.counts()
        note = (f"Base model: {as_text(app.generator.model_name or 'none')}; generating with "
                f"{'adapters ' + as_text(app.generator.lora) if app.generator.lora else 'no adapters'}. "
                f"{counts['approved']} of {counts['total']} descriptions are approved. One run trains at a time; "
                "others wait in the queue. Runs survive an app restart.")
        latest = app.runner.runs.all()
        return (note, gr.update(choices=labels, value=labels[0] if labels else None), runs_table(app),
                latest[0].id if latest else None, gr.Timer(active=True))

    return Fill(fill, [], [status, label, runs, run, timer])

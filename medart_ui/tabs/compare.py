"""The Compare tab: generated next to real images of one class, with per-channel colour
histograms and the colour statistics HLDF's colour loss trains on. Endpoint: compare."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from medart_core.errors import MedArtError
from medart_ui.shared import STAFF, Fill, allow, as_text, generate_files, gpu, whole_number

TITLE, ID, ROLES = "Compare", "compare", STAFF


def colour_comparison(real_paths: list[Path], fake_paths: list[str], figure: Path, title: str):
    """Per-channel histograms (figure) and a table of channel means/stds, real vs generated, from
    medart_core.metrics."""
    from medart_core.metrics.color import CHANNELS, color_distance, summarise_files
    from medart_core.metrics.plots import color_histograms

    real, fake = summarise_files(real_paths), summarise_files(fake_paths)
    color_histograms(real, fake, figure, title=title)
    table = [[c, round(real["mean"][c], 4), round(fake["mean"][c], 4), round(real["std"][c], 4), round(fake["std"][c], 4)]
             for c in CHANNELS]
    return table, color_distance(real, fake)


def build(app) -> Fill:
    gr.Markdown("Generated next to real images of one class, with per-channel colour histograms: "
                "the colour statistics HLDF's colour loss trains on.")
    defaults = app.generator.defaults
    with gr.Row():
        # The classes come at page load; API callers name one (checked against the store).
        label = gr.Dropdown([], label="Class", allow_custom_value=True)
        prompt = gr.Textbox(label="Description (empty: an approved one of the class, else any)", scale=2)
        count = gr.Slider(1, 8, value=4, step=1, label="Images per side")
        steps = gr.Slider(1, max(50, defaults.steps), value=defaults.steps, step=1, label="Steps")
    compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
    used = gr.Markdown()
    with gr.Row():
        real_gallery = gr.Gallery(label="Real", columns=4, height=320)
        fake_gallery = gr.Gallery(label="Generated (SYNTHETIC)", columns=4, height=320)
    histogram = gr.Image(label="Colour histograms: real (solid) vs generated (dashed)", type="filepath",
                         interactive=False, elem_id="histogram")
    stats = gr.Dataframe(headers=["channel", "real mean", "generated mean", "real std", "generated std"],
                         label="Channel statistics (0..1)", interactive=False)

    @allow(app, *ROLES)
    def compare(class_label, description, image_count, step_count, request: gr.Request, progress=gr.Progress()):
        label, n = class_label, image_count
        if not label:
            raise MedArtError("choose a class to compare")
        real = app.store.entries(label=label)
        if not real:
            raise MedArtError(f"no real images of class {label!r} in the store")
        approved = [e for e in real if e.status == "approved"]
        text = " ".join((description or "").split()) or (approved or real)[0].text
        n = whole_number(n, "count")
        real = real[:n]
        fake, files = generate_files(app, text, label, 0, step_count, app.generator.defaults.guidance, n, progress)
        figure = Path(files[0]).parent / ".colour-histograms.png"
        table, distance = colour_comparison([e.path for e in real], files, figure, f"{label}: real vs generated")
        note = (f"Prompt: *{as_text(text)}*  \nColour distance (mean |Δmean| + |Δstd| over channels, the HLDF colour-loss "
                f"quantity): **{distance.get('distance', float('nan')):.4f}** · histogram Wasserstein "
                f"{distance.get('histogram_wasserstein_mean', float('nan')):.4f}")
        return note, [(str(e.path), e.key) for e in real], fake, str(figure), table

    compare_button.click(gpu(compare), [label, prompt, count, steps], [used, real_gallery, fake_gallery, histogram, stats],
                         api_name="compare")

    def fill(request: gr.Request):
        labels = app.store.labels()
        return gr.update(choices=labels, value=labels[0] if labels else None)

    return Fill(fill, [], [label])

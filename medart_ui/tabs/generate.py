"""The Generate tab: synthetic images from a text, each marked SYNTHETIC on screen and in its PNG
text chunks. Its example descriptions come from the store, so they are filled at page load for
the roles that may see them. Endpoint: generate."""

from __future__ import annotations

import gradio as gr

from medart_ui.shared import STAFF, Fill, allow, generate_files, gpu

TITLE, ID, ROLES = "Generate", "generate", STAFF


def example_prompts(app) -> list[str]:
    """A description of each class (approved ones first) as example prompts."""
    chosen = {}
    for entry in sorted(app.store.entries(), key=lambda e: e.status != "approved"):
        chosen.setdefault(entry.label, entry)
    return [entry.text for entry in chosen.values()]


def build(app) -> Fill:
    status = gr.Markdown(elem_id="generate-status")
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt", placeholder="An axial T1-weighted brain MRI slice")
            examples = gr.Dropdown([], label="Descriptions from the data (pick one to use it as the prompt)",
                                   elem_id="example-prompts")
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0)
                count = gr.Slider(1, 8, value=2, step=1, label="Images")
            with gr.Row():
                defaults = app.generator.defaults
                steps = gr.Slider(1, max(50, defaults.steps), value=defaults.steps, step=1, label="Steps (DPM-Solver++)")
                guidance = gr.Slider(1.0, max(10.0, defaults.guidance), value=defaults.guidance, step=0.5,
                                     label="Guidance")
            generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
        with gr.Column():
            gallery = gr.Gallery(label="Synthetic images (marked SYNTHETIC)", columns=2, elem_id="gallery")
            downloads = gr.File(label="PNG files with their synthetic text chunks", file_count="multiple")
    # Copying the picked example into the prompt runs in the browser: no server call to protect.
    examples.input(None, examples, prompt, js="(picked) => picked")

    # The parameter names are the API's (see the README's endpoint table).
    @allow(app, *ROLES)
    def generate(text, seed_number, step_count, guidance_scale, image_count, request: gr.Request,
                 progress=gr.Progress()):
        return generate_files(app, text, None, seed_number, step_count, guidance_scale, image_count, progress)

    @allow(app, *ROLES)
    def show_status(request: gr.Request):
        return app.generator.status()  # the adapters in use may have been switched in the Train tab

    generate_button.click(gpu(generate), [prompt, seed, steps, guidance, count], [gallery, downloads],
                          api_name="generate").then(show_status, None, status, api_visibility="private")

    def fill(request: gr.Request):
        return app.generator.status(), gr.update(choices=example_prompts(app), value=None)

    return Fill(fill, [], [status, examples])

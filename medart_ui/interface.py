"""The Blocks: a header, one tab per module of medart_ui.tabs, and one page-load callback that
shows each user the tabs of their role and fills them; and how the app is launched."""

import argparse

from medart_ui.shared import EVERYONE, READER, allow, as_text
from medart_ui.tabs import compare, dashboard, generate, review, study, team

TABS = (review, generate, compare, team, dashboard, study)  # coming: training
AUTH_MESSAGE = "Med-Art: sign in with your account; every edit records your name."


def greeting(app, request) -> str:
    who, role = as_text(app.author(request)), app.role(request)
    if role == READER:
        return (f"Signed in as **{who}** (reader). The reader studies you are invited to appear here; descriptions, "
                "generation and comparison are not shown to readers.")
    return f"Signed in as **{who}** ({role}); your edits are recorded under this name."


def build_demo(app):
    import gradio as gr

    with gr.Blocks(title="Med-Art") as demo:
        gr.Markdown("# Med-Art\nDescriptions of medical images for text-to-image training; synthetic images "
                    "for research. **Synthetic images are not patient images and not for clinical use.**")
        notices = gr.Markdown()  # warnings name data files: filled at load, for staff only
        signed_in = gr.Markdown()
        built = []
        with gr.Tabs() as tabs:
            for module in TABS:
                with gr.Tab(module.TITLE, id=module.ID, visible=False) as tab:
                    built.append((module, tab, module.build(app)))

        inputs = {c for _, _, fill in built for c in fill.inputs}  # a set: gradio passes their values as a dict

        @allow(app, *EVERYONE)
        def on_load(values: dict, request: gr.Request):
            role = app.role(request)
            shown = app.warnings if role != READER else []
            updates = ["\n\n".join(f"**Warning:** {as_text(w)}" for w in shown), greeting(app, request),
                       gr.Tabs(selected=next((m.ID for m, _, _ in built if role in m.ROLES), None))]  # e.g. a reader's
            for module, _, fill in built:
                visible = role in module.ROLES
                updates.append(gr.Tab(visible=visible))
                if visible:
                    filled = fill.function(request, *(values[c] for c in fill.inputs))
                    updates += list(filled) if isinstance(filled, tuple) else [filled]
                else:
                    updates += [gr.skip()] * len(fill.outputs)
            return tuple(updates)

        outputs = [notices, signed_in, tabs]
        for _, tab, fill in built:
            outputs += [tab, *fill.outputs]
        demo.load(on_load, inputs, outputs, api_visibility="private")
    return demo


def sign_in_check(app):
    """gradio's `auth` callable, or None without accounts. Async, with the argon2 check in a worker
    thread: gradio calls a plain function inside its event loop, which would stall every user
    for each sign-in attempt."""
    if not app.signin.required:
        return None
    import anyio

    async def check(user: str, password: str) -> bool:
        return await anyio.to_thread.run_sync(app.verifier, user, password)
    return check


def launch_options(app, args: argparse.Namespace) -> dict:
    """demo.launch(...) keyword arguments: where to listen, who may sign in, which files to serve
    (and to whom)."""
    from starlette.middleware import Middleware

    from medart_core.store.uploads import MAX_UPLOAD_BYTES
    from medart_ui.files import FilesByRole

    return {"server_name": args.host, "server_port": args.port, "auth": sign_in_check(app),
            "max_file_size": MAX_UPLOAD_BYTES, "show_error": False,  # uploads bounded; no exception text shown
            "auth_message": AUTH_MESSAGE if app.signin.required else None,
            "allowed_paths": app.served_folders(), "head": review.KEYBOARD, "css": review.CSS + study.CSS,
            "app_kwargs": {"middleware": [Middleware(FilesByRole, app=app)]}}


def serve(app, args: argparse.Namespace, *, preload: bool = True, **overrides):
    """Build and launch the app without blocking; then load the generator in the background, so
    neither the page nor the first Generate waits for it."""
    from medart_ui.files import sweep_uploads

    sweep_uploads()
    demo = build_demo(app)
    demo.queue().launch(**(launch_options(app, args) | {"prevent_thread_lock": True} | overrides))
    if preload:
        app.preload()
    return demo

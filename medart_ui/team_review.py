"""The Review tab's team-review parts (issue 17): the labelling guidelines at the top, "My queue",
the approvals of the current text, an independent reader's "Submit my version", and bulk find and
replace with a preview. Endpoints: submit_version, preview_replace, apply_replace. The store does
the work (medart_core.store.team); this wires it to the tab."""

from __future__ import annotations

import gradio as gr

from medart_core.errors import MedArtError
from medart_core.store import team
from medart_ui.shared import as_text

NO_GUIDELINES = "*No labelling guidelines yet: an admin writes them in the Team tab.*"
PREVIEW_HEADERS = ["image", "revision", "before", "after"]


def only_queue(app, keys: list[str], user: str | None) -> list[str]:
    waiting = set(team.queue(app.store, user or ""))
    return [k for k in keys if k in waiting]


def approvals_line(app, key: str) -> str:
    names, required = app.store.approvals(key), app.store.approvals_required
    who = f": {', '.join(as_text(n) for n in names)}" if names else ""
    return f"Approvals of this text: **{len(names)} of {required}**{who}"


def guidelines_panel():
    with gr.Accordion("Labelling guidelines", open=True):
        return gr.Markdown(NO_GUIDELINES, elem_id="guidelines")  # an admin's Markdown; gradio sanitises its HTML


def guidelines_text(app) -> str:
    current = team.current_guidelines(app.store)
    if current is None:
        return NO_GUIDELINES
    return f"{current.text}\n\n*Guidelines of {current.created_at:%Y-%m-%d %H:%M} UTC by {as_text(current.author)}*"


def version_as_dict(version) -> dict:
    return {"image": version.key, "author": version.author, "decision": version.decision,
            "draft_revision": version.draft_revision, "time": version.created_at.isoformat()}


def build_review_controls(app, staff, *, picker, text, revision, reason, filters, refresh, filtered, outputs):
    """The accordions under the Review tab's editor and their endpoints; `staff` is the tab's role check."""
    with gr.Accordion("Independent reading (images assigned to you for double reading)", open=False):
        gr.Markdown("Write your own version from the draft above and submit it instead of saving: it stays out of "
                    "the history, the search and the export, and the other readers' versions are not shown, until "
                    "an admin adjudicates. With a flag reason it counts as a flag.")
        submit = gr.Button("Submit my version", elem_id="submit-version-button")
        submitted = gr.Markdown(elem_id="version-result")
    with gr.Accordion("Find and replace in the filtered descriptions", open=False):
        with gr.Row():
            find = gr.Textbox(label="Find (exact text, case-sensitive)", elem_id="find")
            replacement = gr.Textbox(label="Replace with", elem_id="replace")
        preview_button = gr.Button("Preview every change", elem_id="preview-replace-button")
        preview = gr.Dataframe(headers=PREVIEW_HEADERS, interactive=False, wrap=True, elem_id="replace-preview")
        previewed = gr.State({})
        apply_button = gr.Button("Apply all previewed changes", variant="primary", elem_id="apply-replace-button")
        replaced = gr.Markdown(elem_id="replace-result")

    @staff
    def on_submit(key, new_text, seen, why, request: gr.Request):
        if not key:
            raise MedArtError("choose an image first")
        version = team.submit_version(app.store, key, new_text, revision=seen, author=app.author(request), reason=why)
        return (f"Your version of {as_text(key)} is kept ({version.decision}); it waits for an admin's "
                "adjudication. The description itself is unchanged.")

    submit.click(on_submit, [picker, text, revision, reason], submitted, api_visibility="private")

    def changes_of(find_text, replace_text, status, label, query, only_mine, user):
        return team.preview_replace(app.store, filtered(status, label, query, only_mine, user=user), find_text,
                                    replace_text or "")

    @staff
    def on_preview(find_text, replace_text, status, label, query, only_mine, request: gr.Request):
        changes = changes_of(find_text, replace_text, status, label, query, only_mine, app.author(request))
        rows = [[c.key, c.revision, c.before, c.after] for c in changes]
        state = {"find": find_text, "replacement": replace_text or "", "changes": [[c.key, c.revision] for c in changes]}
        return rows, state, (f"{len(changes)} descriptions would change; check them, then apply." if changes
                             else "No filtered description holds that text.")

    preview_button.click(on_preview, [find, replacement, *filters], [preview, previewed, replaced],
                         api_visibility="private")

    @staff
    def on_apply(state, status, label, query, only_mine, current, request: gr.Request):
        if not state or not state.get("changes"):
            raise MedArtError("preview the changes first")
        written = team.apply_replace(app.store, [tuple(c) for c in state["changes"]], state["find"],
                                     state["replacement"], author=app.author(request))
        message = (f"Replaced in {len(written)} descriptions, each a revision by {as_text(app.author(request))} "
                   "(Undo on an image reverts it).")
        return ([], {}, message, *refresh(status, label, query, only_mine, current, app.author(request)))

    apply_button.click(on_apply, [previewed, *filters, picker], [preview, previewed, replaced, *outputs],
                       api_visibility="private")

    # Named endpoints ---------------------------------------------------------------------------------
    @staff
    def submit_version(image: str, text: str, revision: int, reason: str = "", request: gr.Request = None) -> dict:
        """An independent reader's own version of `image` from the draft read at `revision` (a flag with `reason`)."""
        return version_as_dict(team.submit_version(app.store, image, text, revision=revision,
                                                   author=app.author(request), reason=reason))

    @staff
    def preview_replace(find: str, replacement: str, status: str = "all", label: str = "all", search: str = "",
                        mine: bool = False, request: gr.Request = None) -> list[dict]:
        """Every change replacing `find` by `replacement` would make in the filtered descriptions."""
        return [{"image": c.key, "revision": c.revision, "before": c.before, "after": c.after}
                for c in changes_of(find, replacement, status, label, search, mine, app.author(request))]

    @staff
    def apply_replace(find: str, replacement: str, changes: list[dict], request: gr.Request = None) -> dict:
        """Apply a preview (`changes`: its image and revision pairs) as revisions by the signed-in
        user; refused as a whole if any image changed since."""
        try:
            pairs = [(c["image"], c["revision"]) for c in changes]
        except (TypeError, KeyError):
            raise MedArtError("changes must be the preview's list of {image, revision}") from None
        written = team.apply_replace(app.store, pairs, find, replacement or "", author=app.author(request))
        return {"changed": len(written), "images": [{"image": k, "revision": r.number}
                                                    for (k, _), r in zip(pairs, written)]}

    for function in (submit_version, preview_replace, apply_replace):
        gr.api(function, api_name=function.__name__)

"""The Review tab: browse, edit, approve, flag and undo descriptions; add images; export for
training. Also the review endpoints of the API (save_description, approve, flag,
get_description, list_images, export), the same store calls as the buttons. The team-review
parts (guidelines, "My queue", independent versions, bulk replace) come from medart_ui.team_review."""

from __future__ import annotations


import gradio as gr

from medart_core.errors import MedArtError
from medart_core.store import STATUSES
from medart_ui import team_review
from medart_ui.files import forget_uploads
from medart_ui.shared import STAFF, Fill, allow, as_text, gpu, whole_number

TITLE, ID, ROLES = "Review", "review", STAFF
STATUS_CHOICES = ["all", *STATUSES]
HISTORY_CHARS = 300  # a history cell shows this much of a text; the whole one on demand
HISTORY_HEADERS = ["revision", "time (UTC)", "author", "action", "status", "source", "text / reason"]
KEYBOARD = """<script>
// Review shortcuts: Alt+S save, Alt+A approve, Alt+N next, Alt+P previous image.
document.addEventListener("keydown", (event) => {
  if (!event.altKey) return;
  const id = {s: "save-button", a: "approve-button", n: "next-button", p: "previous-button"}[event.key.toLowerCase()];
  const button = id && document.getElementById(id);
  if (button) { event.preventDefault(); button.click(); }
});
</script>"""
# Small medical images (the demo's are 64 px) are shown large, pixels kept sharp.
CSS = "#review-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


def progress_text(app) -> str:
    counts = app.store.counts()
    return (f"**Reviewed {counts['reviewed']} / {counts['total']}** · approved {counts['approved']} · "
            f"partly approved {counts['partly-approved']} · flagged {counts['flagged']} · edited {counts['edited']} · "
            f"not yet reviewed {counts['generated']} · approvals required: {app.store.approvals_required}")


def filtered_keys(app, status: str, label: str, search: str, mine: bool = False, user: str | None = None) -> list[str]:
    """Image keys matching the filters; `mine`: only `user`'s queue (assigned, not yet done by them)."""
    keys = [e.key for e in app.store.entries(status=None if status in (None, "all") else status,
                                             label=None if label in (None, "all") else label, search=search)]
    return team_review.only_queue(app, keys, user) if mine else keys


def show_entry(app, key: str | None):
    """(image, details, text, revision, history, undo choices, flag reason) of one image."""
    if not key:
        return None, "No image matches the filters.", "", 0, [], gr.update(choices=[], value=None), ""
    entry = app.store.get(key)
    history = app.store.history(key)
    last = history[-1]
    details = [f"### {as_text(entry.key)}", f"**Status: {entry.status.upper()}** (revision {entry.revision}, "
               f"{last.action} by **{as_text(last.author)}** at {last.created_at:%Y-%m-%d %H:%M} UTC)",
               f"Label: {as_text(entry.label)} · simple caption: {as_text(entry.simple_caption) or '—'} · "
               f"text source: {as_text(entry.source)}" + (f" · rule fired: {as_text(entry.rule)}" if entry.rule else "")]
    if entry.source_file:
        details.append(f"From volume: {as_text(entry.source_file)}"
                       + (f", slice {entry.slice}" if entry.slice is not None else ""))
    details.append(team_review.approvals_line(app, key))
    if entry.status == "flagged":
        reason = last.reason or next((r.reason for r in reversed(history) if r.reason), "")
        details.append(f"**Flagged:** {as_text(reason)}")
    rows = [[r.number, f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.author, r.action, r.status, r.source,
             shortened(r.reason if r.action in ("flag", "rehash") else r.text)] for r in reversed(history)]
    earlier = [r.number for r in history if r.action not in ("approve", "flag") and r.number < entry.revision]
    return (str(entry.path), "\n\n".join(details), entry.text, entry.revision, rows,
            gr.update(choices=earlier, value=earlier[-1] if earlier else None), "")


def shortened(text: str | None, limit: int = HISTORY_CHARS) -> str:
    """A history cell: long texts cut, saying how long the whole is (shown whole by "Show text")."""
    text = text or ""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters: the whole text under 'Show text of revision')"


def revision_text(app, key: str | None, number) -> str:
    """The whole text (or flag reason) of one revision of an image, for the history's "Show text"."""
    if not key:
        raise MedArtError("choose an image first")
    number = whole_number(number, "revision")
    for record in app.store.history(key):
        if record.number == number:
            return (record.reason if record.action in ("flag", "rehash") else record.text) or ""
    raise MedArtError(f"{key} has no revision {number}")


def entry_as_dict(app, key: str) -> dict:
    """An image's current description as the API returns it."""
    entry, last = app.store.get(key), app.store.history(key)[-1]
    return {"image": entry.key, "revision": entry.revision, "status": entry.status, "text": entry.text,
            "source": entry.source, "rule": entry.rule, "label": entry.label, "author": last.author,
            "action": last.action, "reason": last.reason, "time": last.created_at.isoformat(),
            "approvals": app.store.approvals(key), "approvals_required": app.store.approvals_required}


def regenerate_text(app, entry) -> tuple[str, str, str]:
    """(text, source, rule) for an entry from the app's captioner, with the entry's own template."""
    from medart_core.caption_templates import builtin_template_names
    from medart_core.data import ImageRecord
    from medart_core.store import caption_describer

    row = {"simple_caption": entry.simple_caption, **entry.extra}
    if not row.get("modality"):  # the template sets the prompt and the validation rules: never guess one
        raise MedArtError(f"{entry.key} has no modality, so no description template to regenerate with: add a "
                          f"\"modality\" column to the data's metadata ({', '.join(builtin_template_names())})")
    record = ImageRecord(entry.path, entry.file_name, entry.split or None, entry.label, None, row)
    [(text, source, rule)] = caption_describer(app.captioner())([record])
    return text, source, rule


def build(app) -> Fill:
    from medart_core.caption_templates import builtin_template_names
    from medart_core.store import caption_describer, export_dataset, import_dataset
    from medart_core.store.uploads import stage_uploads

    staff = allow(app, *ROLES)

    guidelines = team_review.guidelines_panel()
    review_progress = gr.Markdown(elem_id="review-progress")
    with gr.Row():
        status_filter = gr.Dropdown(STATUS_CHOICES, value="all", label="Status", scale=1)
        label_filter = gr.Dropdown(["all"], value="all", label="Label", scale=1)  # the labels come at page load
        search = gr.Textbox(label="Search descriptions and file names", scale=2)
        mine = gr.Checkbox(label="My queue", value=False, scale=0, elem_id="my-queue")
    with gr.Row():
        previous = gr.Button("◀ Previous (Alt+P)", elem_id="previous-button", scale=0)
        picker = gr.Dropdown([], label="Image", filterable=True, elem_id="image-picker", scale=3)
        following = gr.Button("Next (Alt+N) ▶", elem_id="next-button", scale=0)
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(type="filepath", label="Image", height=420, interactive=False, elem_id="review-image")
        with gr.Column(scale=3):
            details = gr.Markdown(elem_id="entry-details")
            text = gr.Textbox(label="Description (the text the model is trained on)", lines=5, elem_id="description")
            revision = gr.Number(label="Editing revision", precision=0, interactive=False, elem_id="editing-revision")
            with gr.Row():
                save = gr.Button("Save (Alt+S)", variant="primary", elem_id="save-button")
                approve = gr.Button("Approve (Alt+A)", elem_id="approve-button")
                regenerate = gr.Button("Regenerate with the captioner", elem_id="regenerate-button")
            with gr.Row():
                reason = gr.Textbox(label="Flag reason", placeholder="e.g. wrong orientation", scale=3)
                flag = gr.Button("Flag", variant="stop", elem_id="flag-button", scale=1)
            with gr.Row():
                undo_to = gr.Dropdown([], label="Undo to revision", scale=3)
                undo = gr.Button("Undo", elem_id="undo-button", scale=1)
    history = gr.Dataframe(headers=HISTORY_HEADERS, label="History (newest first)", interactive=False,
                           wrap=True, elem_id="history")
    with gr.Row():
        shown_revision = gr.Number(label="Show text of revision", precision=0, scale=1, elem_id="shown-revision")
        show_text = gr.Button("Show text", scale=0, elem_id="show-text-button")
        revision_full_text = gr.Textbox(label="Whole text of that revision", lines=3, interactive=False, scale=4,
                                        elem_id="revision-text")
    with gr.Accordion("Export for training", open=False):
        export_which = gr.Radio(["approved only", "all"], value="approved only", label="Descriptions")
        export_button = gr.Button("Export", elem_id="export-button")
        export_result = gr.Markdown()
        export_files = gr.File(label="metadata.jsonl per split", file_count="multiple")
    with gr.Accordion("Add images", open=False):
        uploads = gr.File(label="Images, DICOM/NIfTI files (converted into de-identified slices) or a .zip",
                          file_count="multiple", file_types=["image", ".zip", ".dcm", ".dicom", ".nii", ".gz"])
        with gr.Row():
            upload_label = gr.Textbox(label="Label (class)")
            upload_modality = gr.Dropdown(builtin_template_names(), label="Modality (description template)")
            upload_split = gr.Radio(["train", "test"], value="train", label="Split")
        uploads_before = gr.State([])  # what the upload box held, to delete what leaves it
        add_button = gr.Button("Add and describe")
        add_result = gr.Markdown()

    entry_outputs = [image, details, text, revision, history, undo_to, reason]
    review_outputs = [picker, *entry_outputs, review_progress]
    filters = [status_filter, label_filter, search, mine]
    after = [*entry_outputs, review_progress]

    def refresh(status, label, query, only_mine=False, current=None, user=None):
        keys = filtered_keys(app, status, label, query, only_mine, user)
        key = current if current in keys else (keys[0] if keys else None)
        return (gr.update(choices=keys, value=key), *show_entry(app, key), progress_text(app))

    def shown(key):
        return (*show_entry(app, key), progress_text(app))

    def require_image(key):
        if not key:
            raise MedArtError("choose an image first")

    def fill(request: gr.Request, status, label, query, only_mine):
        wanted = (request.query_params.get("image") if request else None) or None
        return (team_review.guidelines_text(app), gr.update(choices=["all"] + app.store.labels()),
                *refresh(status, label, query, only_mine, wanted, app.author(request)))

    @staff
    def on_filter(status, label, query, only_mine, current, request: gr.Request):
        return refresh(status, label, query, only_mine, current, app.author(request))

    @staff
    def on_pick(key, request: gr.Request):
        return shown(key)

    def step(offset):
        @staff
        def move(status, label, query, only_mine, current, request: gr.Request):
            user = app.author(request)
            keys = filtered_keys(app, status, label, query, only_mine, user)
            if not keys:
                return refresh(status, label, query, only_mine, user=user)
            index = keys.index(current) + offset if current in keys else 0
            return refresh(status, label, query, only_mine, keys[index % len(keys)], user)
        move.__name__ = "next" if offset > 0 else "previous"
        return move

    @staff
    def on_save(key, new_text, seen, request: gr.Request):
        require_image(key)
        app.store.save(key, new_text, revision=seen, author=app.author(request))
        return shown(key)

    @staff
    def on_approve(key, seen, request: gr.Request):
        require_image(key)
        app.store.approve(key, revision=seen, author=app.author(request))
        return shown(key)

    @staff
    def on_flag(key, why, seen, request: gr.Request):
        require_image(key)
        app.store.flag(key, why, revision=seen, author=app.author(request))
        return shown(key)

    @staff
    def on_undo(key, to, seen, request: gr.Request):
        require_image(key)
        if to in (None, ""):
            raise MedArtError("choose the revision to go back to")
        app.store.revert(key, whole_number(to, "revision"), revision=seen, author=app.author(request))
        return shown(key)

    @staff
    def on_regenerate(key, seen, request: gr.Request, progress=gr.Progress()):
        require_image(key)
        progress(0, desc="describing")
        new_text, source, rule = regenerate_text(app, app.store.get(key))
        app.store.save(key, new_text, revision=seen, author=app.author(request), source=source, rule=rule)
        return shown(key)

    for trigger in (status_filter.change, label_filter.change, search.submit, mine.change):
        trigger(on_filter, [*filters, picker], review_outputs, api_visibility="private")
    picker.input(on_pick, picker, after, api_visibility="private")
    previous.click(step(-1), [*filters, picker], review_outputs, api_visibility="private")
    following.click(step(+1), [*filters, picker], review_outputs, api_visibility="private")
    save.click(on_save, [picker, text, revision], after, api_visibility="private")
    approve.click(on_approve, [picker, revision], after, api_visibility="private")
    flag.click(on_flag, [picker, reason, revision], after, api_visibility="private")
    undo.click(on_undo, [picker, undo_to, revision], after, api_visibility="private")
    regenerate.click(gpu(on_regenerate), [picker, revision], after, api_visibility="private")

    @staff
    def on_show_text(key, number, request: gr.Request):
        return revision_text(app, key, number)

    show_text.click(on_show_text, [picker, shown_revision], revision_full_text, api_visibility="private")

    @staff
    def export(which, request: gr.Request, progress=gr.Progress()):
        summary = export_dataset(app.store, app.exports, approved_only=which == "approved only",
                                 progress=lambda i, n: progress((i, n), desc="copying images"))
        return (f"Exported {summary.rows} descriptions to `{summary.out}` ({summary.copied} images copied). "
                f"Train on it: `accelerate launch finetune/train.py --data {summary.out} ...`",
                [str(f) for f in summary.files])

    export_button.click(export, export_which, [export_result, export_files], api_name="export")

    @staff
    def on_add(files, label, modality, split, status, label_choice, query, only_mine, request: gr.Request,
               progress=gr.Progress()):
        if not files:
            raise MedArtError("choose images (or a .zip of images) to add first")
        progress(0, desc="copying")
        problems: list[str] = []
        names = [getattr(f, "name", f) for f in files]
        try:
            batch = stage_uploads(names, app.uploads, split=split, label=label, modality=modality, problems=problems)
        finally:  # gradio's cached copies of DICOM/NIfTI (and zips of them) may identify patients: not kept
            forget_uploads(names)
        progress(0.3, desc="describing")
        summary = import_dataset(app.store, batch, author="import", describe=caption_describer(app.captioner()))
        skipped = "".join(f"\n- skipped {as_text(p)}" for p in problems + summary.skipped)
        return (f"Added {summary.added} images, described by `{app.captioner().source}`; they are now in the "
                f"list as 'generated' (not yet reviewed).{skipped}",
                *refresh(status, label_choice, query, only_mine, user=app.author(request)))

    @staff
    def on_uploads_changed(files, before, request: gr.Request):
        """A file removed from the upload box, or the box cleared or refilled, leaves gradio's copy
        behind: the medical ones are deleted now, not at the next start."""
        now = [str(getattr(f, "name", f)) for f in files or []]
        forget_uploads([name for name in before or [] if name not in now])
        return now

    uploads.change(on_uploads_changed, [uploads, uploads_before], uploads_before, api_visibility="private")

    add_button.click(gpu(on_add), [uploads, upload_label, upload_modality, upload_split, *filters],
                     [add_result, *review_outputs], api_visibility="private")

    # Named API endpoints (gradio_client): the same store calls as the buttons.
    @staff
    def save_description(image: str, text: str, revision: int, request: gr.Request) -> dict:
        """Save a new text for `image`, made on `revision` (refused if it changed since)."""
        app.store.save(image, text, revision=revision, author=app.author(request))
        return entry_as_dict(app, image)

    @staff
    def approve_description(image: str, revision: int, request: gr.Request) -> dict:
        """Approve the text of `revision` of `image` (refused if it changed since)."""
        app.store.approve(image, revision=revision, author=app.author(request))
        return entry_as_dict(app, image)

    @staff
    def flag_description(image: str, reason: str, revision: int, request: gr.Request) -> dict:
        """Flag `image`'s description with a reason."""
        app.store.flag(image, reason, revision=revision, author=app.author(request))
        return entry_as_dict(app, image)

    @staff
    def get_description(image: str, request: gr.Request) -> dict:
        """The current description of `image` with its revision (to edit it)."""
        return entry_as_dict(app, image)

    @staff
    def list_images(status: str = "all", label: str = "all", search: str = "", mine: bool = False,
                    request: gr.Request = None) -> list[str]:
        """Image keys matching the filters; `mine`: only the signed-in reviewer's queue."""
        return filtered_keys(app, status, label, search, mine, app.author(request))

    for function, name in ((save_description, "save_description"), (approve_description, "approve"),
                           (flag_description, "flag"), (get_description, "get_description"),
                           (list_images, "list_images")):
        gr.api(function, api_name=name)

    team_review.build_review_controls(app, staff, picker=picker, text=text, revision=revision, reason=reason,
                                      filters=filters, refresh=refresh, outputs=review_outputs,
                                      filtered=lambda *f, user: filtered_keys(app, *f, user=user))
    return Fill(fill, filters, [guidelines, label_filter, *review_outputs])

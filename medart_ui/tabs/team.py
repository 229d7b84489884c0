"""The Team tab (admins): the labelling guidelines (every version kept), assignments of images to
reviewers (everyone, round-robin with K per image, or by label; optionally for independent double
reading) with each reviewer's progress, and the adjudication of independent versions.
Endpoints: assign, adjudicate, set_guidelines."""

from __future__ import annotations

import gradio as gr

from medart_core.errors import MedArtError
from medart_core.store import team
from medart_ui.shared import ADMIN, STAFF, Fill, allow, as_text, whole_number

TITLE, ID, ROLES = "Team", "team", (ADMIN,)
VERSION_HEADERS = ["version", "reader", "decision", "text", "flag reason", "time (UTC)"]
PROGRESS_HEADERS = ["reviewer", "assigned", "done", "left"]


def staff_names(app) -> list[str]:
    """Who may review: the admin and reviewer accounts (without accounts, the one local user)."""
    names = [a.user for a in app.signin.accounts if a.role in STAFF]
    return names or [app.anonymous]


def assign_images(app, reviewers, mode: str, per_image, label: str | None, independent: bool, by: str) -> str:
    unknown = [r for r in reviewers or [] if r not in staff_names(app)]
    if unknown:
        raise MedArtError(f"{as_text(unknown[0])} is not an admin or reviewer account")
    if mode == "by-label" and label in (None, "", "all"):
        raise MedArtError("choose the label whose images to assign")
    keys = [e.key for e in app.store.entries(label=None if label in (None, "", "all") else label)]
    new = team.assign(app.store, keys, list(reviewers or []), mode=mode, per_image=whole_number(per_image, "per image"),
                      independent=bool(independent), by=by)
    return f"{new} new assignments ({len(keys)} images, reviewers {', '.join(as_text(r) for r in reviewers)}, {mode})."


def progress_rows(app) -> list[list]:
    return [[name, f["assigned"], f["done"], f["left"]] for name, f in team.progress(app.store).items()]


def versions_view(app, key: str | None, user: str):
    """(versions table, version choices, revision to adjudicate on) of one image. An admin who is
    one of its independent readers sees no other version before submitting their own."""
    if not key:
        return [], gr.update(choices=[], value=None), 0
    waiting = team.pending_versions(app.store, key)
    if team.independent_for(app.store, key, user) and user not in {v.author for v in waiting}:
        return ([["—", as_text(user), "—", "You read this image independently: submit your own version (Review tab) "
                  "before you see the others'.", "", ""]], gr.update(choices=[], value=None), app.store.get(key).revision)
    rows = [[v.id, v.author, v.decision, v.text, v.reason, f"{v.created_at:%Y-%m-%d %H:%M:%S}"] for v in waiting]
    return rows, gr.update(choices=[(f"{v.id}: {v.author} ({v.decision})", v.id) for v in waiting], value=None), \
        app.store.get(key).revision


def build(app) -> Fill:
    admin = allow(app, *ROLES)
    with gr.Accordion("Labelling guidelines (Markdown, shown at the top of the Review tab)", open=True):
        guidelines_text = gr.Textbox(label="Guidelines", lines=8, elem_id="guidelines-editor")
        save_guidelines = gr.Button("Save guidelines", elem_id="save-guidelines-button")
        guidelines_history = gr.Dataframe(headers=["time (UTC)", "author", "first line"], interactive=False,
                                          label="Every version, newest first")
    with gr.Accordion("Assign images to reviewers", open=True):
        with gr.Row():
            reviewers = gr.Dropdown([], multiselect=True, label="Reviewers", elem_id="assign-reviewers")
            mode = gr.Radio(list(team.ASSIGN_MODES), value="all", label="How",
                            info="all: every image to every reviewer; round-robin: K reviewers per image, in turn; "
                                 "by-label: the label's images to every reviewer")
        with gr.Row():
            per_image = gr.Number(label="K reviewers per image (round-robin)", value=2, precision=0)
            label = gr.Dropdown(["all"], value="all", label="Label (all: every image)")
            independent = gr.Checkbox(label="Independent double reading (each writes a version; an admin adjudicates)",
                                      elem_id="assign-independent")
        assign_button = gr.Button("Assign", variant="primary", elem_id="assign-button")
        assigned = gr.Markdown(elem_id="assign-result")
        progress = gr.Dataframe(headers=PROGRESS_HEADERS, interactive=False, label="Progress per reviewer",
                                elem_id="assign-progress")
    with gr.Accordion("Adjudicate independent versions", open=True):
        waiting = gr.Dropdown([], label="Images waiting for adjudication", elem_id="adjudicate-image")
        versions = gr.Dataframe(headers=VERSION_HEADERS, interactive=False, wrap=True, elem_id="versions")
        with gr.Row():
            pick = gr.Dropdown([], label="Take the text of version", elem_id="pick-version")
            on_revision = gr.Number(label="Description revision", precision=0, interactive=False)
        decided = gr.Textbox(label="Adjudicated description (a version's text, or your merged text)", lines=4,
                             elem_id="adjudicated-text")
        adjudicate_button = gr.Button("Adjudicate", variant="primary", elem_id="adjudicate-button")
        adjudicated = gr.Markdown(elem_id="adjudicate-result")

    def guidelines_rows():
        return [[f"{g.created_at:%Y-%m-%d %H:%M:%S}", g.author, g.text.splitlines()[0] if g.text else ""]
                for g in team.guidelines_history(app.store)]

    def waiting_update(value=None):
        keys = team.awaiting_adjudication(app.store)
        return gr.update(choices=keys, value=value if value in keys else (keys[0] if keys else None))

    def fill(request: gr.Request):
        current = team.current_guidelines(app.store)
        first = team.awaiting_adjudication(app.store)
        return (current.text if current else "", guidelines_rows(), gr.update(choices=staff_names(app)),
                gr.update(choices=["all"] + app.store.labels()), progress_rows(app), waiting_update(),
                *versions_view(app, first[0] if first else None, app.author(request)))

    @admin
    def on_save_guidelines(markdown, request: gr.Request):
        team.set_guidelines(app.store, markdown, author=app.author(request))
        return guidelines_rows()

    save_guidelines.click(on_save_guidelines, guidelines_text, guidelines_history, api_visibility="private")

    @admin
    def on_assign(names, how, k, which, double, request: gr.Request):
        return assign_images(app, names, how, k, which, double, app.author(request)), progress_rows(app), \
            waiting_update()

    assign_button.click(on_assign, [reviewers, mode, per_image, label, independent], [assigned, progress, waiting],
                        api_visibility="private")

    @admin
    def on_waiting(key, request: gr.Request):
        return versions_view(app, key, app.author(request))

    waiting.change(on_waiting, waiting, [versions, pick, on_revision], api_visibility="private")

    @admin
    def on_pick(key, version_id, request: gr.Request):
        user = app.author(request)
        waiting = team.pending_versions(app.store, key or "")
        if key and team.independent_for(app.store, key, user) and user not in {v.author for v in waiting}:
            raise MedArtError("you read this image independently: submit your own version first")
        chosen = next((v for v in waiting if v.id == version_id), None)
        return chosen.text if chosen else gr.skip()

    pick.change(on_pick, [waiting, pick], decided, api_visibility="private")

    @admin
    def on_adjudicate(key, chosen_text, seen, request: gr.Request):
        if not key:
            raise MedArtError("choose an image waiting for adjudication")
        new = team.adjudicate(app.store, key, chosen_text, revision=seen, author=app.author(request))
        following = waiting_update()
        return (f"{as_text(key)}: revision {new.number} by {as_text(new.author)} is its description now; the "
                "versions are kept.", following, *versions_view(app, following["value"], app.author(request)),
                progress_rows(app))

    adjudicate_button.click(on_adjudicate, [waiting, decided, on_revision],
                            [adjudicated, waiting, versions, pick, on_revision, progress], api_visibility="private")

    # Named endpoints ------------------------------------------------------------------------------------
    @admin
    def assign(reviewers: list[str], mode: str = "all", per_image: int = 1, label: str = "all",
               independent: bool = False, request: gr.Request = None) -> dict:
        """Assign images to reviewers; returns the message and every reviewer's progress."""
        message = assign_images(app, reviewers, mode, per_image, label, independent, app.author(request))
        return {"message": message, "progress": team.progress(app.store)}

    @admin
    def adjudicate(image: str, text: str, revision: int, request: gr.Request = None) -> dict:
        """Settle `image`'s independent versions: `text` becomes its next revision (made on `revision`)."""
        new = team.adjudicate(app.store, image, text, revision=revision, author=app.author(request))
        return {"image": image, "revision": new.number, "text": new.text, "author": new.author}

    @admin
    def set_guidelines(text: str, request: gr.Request = None) -> dict:
        """A new version of the labelling guidelines (Markdown)."""
        saved = team.set_guidelines(app.store, text, author=app.author(request))
        return {"author": saved.author, "time": saved.created_at.isoformat(),
                "versions": len(team.guidelines_history(app.store))}

    for function in (assign, adjudicate, set_guidelines):
        gr.api(function, api_name=function.__name__)

    return Fill(fill, [], [guidelines_text, guidelines_history, reviewers, label, progress, waiting, versions, pick,
                           on_revision])

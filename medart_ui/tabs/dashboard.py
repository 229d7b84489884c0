"""The Dashboard tab (admins): what each reviewer did and how fast, the agreement of independent
readers, how much the captioner's drafts were changed before approval (overall, per class, per
captioner) and the words reviewers most often removed and added, as tables and one figure.
Endpoint: review_stats (the same JSON, medart_core.review_stats)."""

from __future__ import annotations

import gradio as gr

from medart_core.review_stats import review_stats as compute_stats
from medart_core.review_stats import stats_figure
from medart_ui.shared import ADMIN, Fill, allow, as_text

TITLE, ID, ROLES = "Dashboard", "dashboard", (ADMIN,)
REVIEWER_HEADERS = ["reviewer", "done", "approved", "flagged", "edited", "median seconds per image"]
DRAFT_HEADERS = ["group", "images", "mean edit distance", "median edit distance", "unchanged"]


def _number(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def summary_text(stats: dict) -> str:
    agreement, drafts = stats["agreement"], stats["draft_edits"]
    kappa = (f"{agreement['method']} kappa **{_number(agreement['kappa'])}**" if agreement.get("kappa") is not None
             else f"kappa — ({as_text(agreement.get('kappa_reason') or 'no double reading yet')})")
    return (f"**Draft edits** (descriptions with an approval of their current text, against the captioner's draft): "
            f"{drafts['images']} images, mean normalised edit distance **{_number(drafts['mean_edit_distance'])}**, "
            f"{drafts['unchanged']} approved unchanged.  \n"
            f"**Independent reading**: {agreement['images']} image(s) read by two or more; {kappa} on the decision "
            f"(accept / edit / flag); versions' mean edit distance {_number(agreement['version_edit_distance'])}, "
            f"token F1 {_number(agreement['version_token_f1'])}.")


def tables(stats: dict):
    reviewers = [[name, f["done"], f["approved"], f["flagged"], f["edited"], _number(f["median_seconds_per_image"], 0)]
                 for name, f in stats["reviewers"].items()]
    drafts = stats["draft_edits"]
    rows = [["all", drafts["images"], _number(drafts["mean_edit_distance"]), _number(drafts["median_edit_distance"]),
             drafts["unchanged"]]]
    for kind in ("by_label", "by_source"):
        rows += [[f"{kind[3:]}: {name}", g["images"], _number(g["mean_edit_distance"]),
                  _number(g["median_edit_distance"]), g["unchanged"]] for name, g in drafts[kind].items()]
    return reviewers, rows


def build(app) -> Fill:
    refresh = gr.Button("Refresh", elem_id="dashboard-refresh")
    summary = gr.Markdown(elem_id="dashboard-summary")
    reviewers = gr.Dataframe(headers=REVIEWER_HEADERS, interactive=False, label="Per reviewer (a gap between two "
                             "actions counts at most 10 minutes)", elem_id="dashboard-reviewers")
    plot = gr.Plot(label="Dashboard", elem_id="dashboard-plot")
    drafts = gr.Dataframe(headers=DRAFT_HEADERS, interactive=False, label="How much the drafts were changed",
                          elem_id="dashboard-drafts")
    with gr.Accordion("The figures as JSON (the review_stats endpoint)", open=False):
        raw = gr.JSON()

    def view():
        stats = compute_stats(app.store)
        reviewer_rows, draft_rows = tables(stats)
        return summary_text(stats), reviewer_rows, stats_figure(stats), draft_rows, stats

    outputs = [summary, reviewers, plot, drafts, raw]

    @allow(app, *ROLES)
    def on_refresh(request: gr.Request):
        return view()

    refresh.click(on_refresh, None, outputs, api_visibility="private")

    @allow(app, *ROLES)
    def review_stats(request: gr.Request = None) -> dict:
        """{reviewers: {NAME: {done, approved, flagged, edited, median_seconds_per_image}}, agreement, draft_edits, words}."""
        return compute_stats(app.store)

    gr.api(review_stats, api_name="review_stats")

    def fill(request: gr.Request):
        return view()

    return Fill(fill, [], outputs)

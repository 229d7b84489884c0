"""Team review in a real browser (headless Chromium, Playwright): the admin writes guidelines the
reviewer then sees; a reviewer's "My queue"; independent double reading adjudicated in the Team
tab; bulk find and replace with its preview, then Undo; the Dashboard's figures. Screenshots go to
tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import pytest

from medart_core.store import team
from test_app import start
from test_browser import browser, screenshot, sign_in  # noqa: F401  (browser is a fixture)


@pytest.fixture(scope="module")
def team_site(tiny_pipeline_dir, team_accounts, tmp_path_factory):
    demo, opened = start(tiny_pipeline_dir, tmp_path_factory.mktemp("browser-team-home"), "--auth-file",
                         str(team_accounts), "--approvals-required", "2")
    yield demo.local_url, opened
    demo.close()
    opened.store.close()


def new_page(browser, url: str, user: str):  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 1000})  # its own cookies
    page = context.new_page()
    page.set_default_timeout(60_000)
    sign_in(page, url, user)
    return context, page


@pytest.mark.slow
def test_queue_double_reading_bulk_replace_and_dashboard_in_a_browser(browser, team_site):  # noqa: F811
    from playwright.sync_api import expect

    url, opened = team_site
    store = opened.store
    double = sorted(k for k in store.keys() if k.startswith("train/fundus"))[:2]
    team.assign(store, double, ["alice", "bob"], independent=True, by="alice")

    # The admin writes the guidelines in the Team tab.
    admin_context, admin = new_page(browser, url, "alice")
    admin.get_by_role("tab", name="Team").click()
    admin.locator("#guidelines-editor textarea").fill("# Guidelines\n\n- Name the **view** first.")
    admin.locator("#save-guidelines-button").click()
    expect(admin.get_by_text("# Guidelines").last).to_be_visible()

    # The reviewer sees them, ticks "My queue" and writes an independent version of the first image.
    bob_context, bob = new_page(browser, url, "bob")
    expect(bob.locator("#guidelines")).to_contain_text("Name the view first")
    bob.locator("#my-queue input").check()
    expect(bob.locator("#entry-details")).to_contain_text(double[0])
    draft = store.get(double[0]).text
    bob.locator("#description textarea").fill(draft + " Bob sees drusen.")
    bob.get_by_text("Independent reading (images assigned to you").click()
    bob.locator("#submit-version-button").click()
    expect(bob.locator("#version-result")).to_contain_text("waits for an admin's adjudication")
    assert store.get(double[0]).text == draft  # outside the description until adjudicated
    bob.locator("#next-button").click()  # the queue moves on: the first image is done
    expect(bob.locator("#entry-details")).to_contain_text(double[1])
    screenshot(bob, "team-queue")
    admin.reload()  # alice reads it too: she sees no other version before submitting her own
    admin.get_by_role("tab", name="Team").click()
    expect(admin.locator("#versions")).to_contain_text("submit your own version")
    expect(admin.locator("#versions")).not_to_contain_text("Bob sees drusen")
    team.submit_version(store, double[0], draft, revision=store.get(double[0]).revision, author="alice")

    # The admin adjudicates in the Team tab with a merged text.
    admin.reload()
    admin.get_by_role("tab", name="Team").click()
    expect(admin.locator("#versions")).to_contain_text("Bob sees drusen")
    merged = draft + " Drusen, adjudicated."
    admin.locator("#adjudicated-text textarea").fill(merged)
    admin.locator("#adjudicate-button").click()
    expect(admin.locator("#adjudicate-result")).to_contain_text("is its description now")
    assert store.get(double[0]).text == merged and store.history(double[0])[-1].action == "adjudicate"
    screenshot(admin, "team-adjudicate")

    # Bulk find and replace over the filtered images, previewed, applied, then undone on one image.
    admin.get_by_role("tab", name="Review").click()
    search = admin.get_by_label("Search descriptions and file names")
    search.fill("skimage-retina_x980")
    search.press("Enter")
    targets = [e.key for e in store.entries(search="skimage-retina_x980")]
    expect(admin.locator("#entry-details")).to_contain_text(targets[0])
    admin.get_by_text("Find and replace in the filtered descriptions").click()
    admin.get_by_label("Find (exact text, case-sensitive)").fill("retina")
    admin.get_by_label("Replace with").fill("fundus")
    admin.locator("#preview-replace-button").click()
    expect(admin.locator("#replace-result")).to_contain_text(f"{len(targets)} descriptions would change")
    before = store.get(targets[0])
    admin.locator("#apply-replace-button").click()
    expect(admin.locator("#replace-result")).to_contain_text(f"Replaced in {len(targets)} descriptions")
    assert all(store.history(k)[-1].action == "replace" for k in targets)
    expect(admin.locator("#history")).to_contain_text("replace")
    admin.locator("#undo-button").click()  # back to the revision before the replacement
    expect(admin.locator("#history")).to_contain_text("revert")
    assert store.get(targets[0]).text == before.text
    screenshot(admin, "team-replace")

    # The Dashboard shows the figures.
    admin.get_by_role("tab", name="Dashboard").click()
    admin.locator("#dashboard-refresh").click()
    expect(admin.locator("#dashboard-summary")).to_contain_text("Independent reading")
    expect(admin.locator("#dashboard-reviewers")).to_contain_text("bob")
    expect(admin.locator("#dashboard-plot img")).to_be_visible()
    expect(admin.locator("#dashboard-summary")).to_contain_text("1 image(s) read by two or more")
    screenshot(admin, "team-dashboard")
    admin_context.close()
    bob_context.close()

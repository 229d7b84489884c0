"""The reader study in a real browser: a reader signs in, sees only the study with its statement,
answers to the end (resuming after a reload in the middle); the admin sees the results and
downloads the exports. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import csv
import re

import pytest

from test_app import credentials
from test_browser import browser, screenshot, sign_in, site  # noqa: F401 (fixtures used by name)


@pytest.mark.slow
def test_a_reader_answers_to_the_end_and_the_admin_downloads_the_results(browser, site, tmp_path):  # noqa: F811
    from gradio_client import Client
    from playwright.sync_api import expect

    url, opened = site
    admin = Client(url, auth=credentials("alice"), verbose=False)
    admin.predict("browser study", 1, 1, ["carol"], 3, ["fundus", "histology-ihc"], None, False,
                  api_name="/create_study")

    reader = browser.new_context(viewport={"width": 1300, "height": 900})
    page = reader.new_page()
    page.set_default_timeout(60_000)
    sign_in(page, url, "carol")
    assert [t.inner_text().strip() for t in page.get_by_role("tab").all() if t.is_visible()] == ["Reader study"]
    expect(page.locator("#study-notice")).to_contain_text("contains synthetic images made for research")
    expect(page.locator("#study-image img")).to_have_count(0)  # the statement comes before the first image

    def answer(position: int, said: str):
        expect(page.locator("#study-progress")).to_contain_text(f"Image {position} of 4")
        expect(page.locator("#study-image img")).to_be_visible()
        page.locator("#study-answer").get_by_label(said, exact=True).check()
        page.locator("#study-submit").click()

    page.locator("#study-start").click()
    answer(1, "real")
    answer(2, "synthetic")
    expect(page.locator("#study-progress")).to_contain_text("Image 3 of 4")
    page.reload()  # stop and resume: the answers so far are kept, the next image is the third
    page.locator("#study-start").click()
    answer(3, "real")
    screenshot(page, "study-reader")
    answer(4, "real")
    expect(page.locator("#study-progress")).to_contain_text("All 4 images answered")
    reader.close()

    staff = browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
    page = staff.new_page()
    page.set_default_timeout(60_000)
    sign_in(page, url, "alice")
    page.get_by_role("tab", name="Reader study").click()
    page.get_by_text("Results (admins)").click()
    page.locator("#show-results").click()
    expect(page.locator("#study-results")).to_contain_text("carol")
    expect(page.locator("#study-roc img")).to_be_visible()
    links = page.locator("#study-exports a")
    expect(links).to_have_count(3)
    with page.expect_download() as download:
        page.locator("#study-exports a[download='answers.csv']").click()
    saved = tmp_path / "answers.csv"
    download.value.save_as(saved)
    rows = list(csv.DictReader(saved.open()))
    assert [r["reader"] for r in rows] == ["carol"] * 4 and [r["answer"] for r in rows] == [
        "real", "synthetic", "real", "real"]
    assert all(re.fullmatch(r"\d+", r["position"]) for r in rows)
    screenshot(page, "study-results")
    staff.close()

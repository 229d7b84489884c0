"""The offline fallback captioner on real images shipped with scikit-image (a fundus photograph and
an immunohistochemistry tile): visibly different images must get different, sensible descriptions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medart_core.caption_validation import Rules, check_description
from medart_core.fallback_captioner import describe_attributes, measure_attributes

skimage = pytest.importorskip("skimage", reason="scikit-image ships the real test images (requirements-test.txt)")
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"


@pytest.fixture(scope="module")
def retina():
    return measure_attributes(Image.open(SKIMAGE_DATA / "retina.jpg"))


@pytest.fixture(scope="module")
def ihc():
    return measure_attributes(Image.open(SKIMAGE_DATA / "ihc.png"))


def test_a_fundus_photograph_reads_red_on_a_dark_field_and_smooth(retina):
    text = describe_attributes("A fundus photograph of a retina", retina)
    assert text.startswith("A fundus photograph of a retina, mostly red")
    assert "on a dark background" in text and "smooth texture" in text
    assert retina.background > 0.15  # the black frame around the circular field


def test_an_ihc_tile_reads_brown_and_white_bright_and_textured(ihc):
    text = describe_attributes("A histopathology image of ihc", ihc)
    names = [name for name, _ in ihc.colours[:4]]
    assert {"light brown", "brown"} & set(names) and "white" in names
    assert "dark background" not in text and "smooth" not in text and "bright" in text


def test_different_images_get_different_measurements_and_texts(retina, ihc):
    assert retina.colours[0][0] != ihc.colours[0][0]
    assert ihc.texture > 2 * retina.texture and ihc.contrast > 2 * retina.contrast
    caption = "An image of tissue"
    assert describe_attributes(caption, retina) != describe_attributes(caption, ihc)


def test_fallback_texts_pass_validation(retina, ihc):
    for attributes in (retina, ihc):
        text = describe_attributes("A fundus photograph of a retina", attributes)
        assert check_description(text, Rules("A fundus photograph of a retina", ("colour", "texture", "contrast"))) is None


def test_uniform_images_are_named_by_their_colour():
    for rgb, name in [((230, 40, 40), "red"), ((40, 160, 60), "green"), ((250, 250, 250), "white"), ((40, 60, 200), "blue")]:
        attributes = measure_attributes(Image.fromarray(np.full((20, 30, 3), rgb, dtype=np.uint8)))
        assert attributes.colours[0] == (name, 1.0) and attributes.texture == 0 and attributes.contrast < 1e-9

"""Description validation, retries and repair (with a scripted captioner), and prompt templates."""

from __future__ import annotations

import pytest
from PIL import Image

from medart_core.caption_templates import builtin_template_names, load_template
from medart_core.caption_validation import (
    EMPTY,
    MISSING_SIMPLE_CAPTION,
    PARROTS_FEATURES,
    TOO_LONG,
    Rules,
    check_description,
    estimate_t5_tokens,
    load_token_counter,
    shorten_to_budget,
)
from medart_core.captioning import CaptionRequest, describe_batch
from medart_core.errors import MedArtError

ENDOSCOPY = load_template("endoscopy")
CAPTION = "An endoscopic image of polyps"
GOOD = "An endoscopic image of polyps: a pink, round lesion with a smooth surface and no bleeding."
LONG = GOOD + " " + " ".join(f"The mucosa around it is calm and pale in region {i}." for i in range(12))


def rules(max_tokens=120, count=estimate_t5_tokens):
    return Rules(CAPTION, ENDOSCOPY.features, count, max_tokens)


class ScriptedCaptioner:
    """Returns scripted texts per image and attempt; records what it was asked."""

    source = "scripted"

    def __init__(self, scripts):
        self.scripts, self.calls = scripts, []

    def __call__(self, requests, attempt=0):
        self.calls.append([(r.label, r.hint, r.prompt()) for r in requests])
        return [self.scripts[r.label][min(attempt, len(self.scripts[r.label]) - 1)] for r in requests]


def requests_for(labels):
    image = Image.new("RGB", (8, 8))
    return [CaptionRequest(image, CAPTION, label, ENDOSCOPY) for label in labels]


@pytest.mark.parametrize("text, rule", [
    (GOOD, None),
    ("an ENDOSCOPIC image of   polyps. Pink and round.", None),
    ("", EMPTY),
    ("A pink round polyp.", MISSING_SIMPLE_CAPTION),
    ("An endoscopic image of polypsis, red.", MISSING_SIMPLE_CAPTION),
    (CAPTION + ". Colour, shape, surrounding mucosa, surface texture, bleeding.", PARROTS_FEATURES),
    (CAPTION + " showing its colour, shape and surface texture.", PARROTS_FEATURES),
    (LONG, TOO_LONG),
])
def test_each_rule_fires_on_the_text_that_breaks_it(text, rule):
    assert check_description(text, rules()) == rule


def test_a_description_mentioning_two_features_is_not_parroting():
    assert check_description(CAPTION + ". Its colour is pink and its shape is round; no bleeding.", rules()) is None


def test_the_estimate_counts_generously():
    # ~1.3 real T5 tokens per English word; the estimate must not count fewer than that.
    assert estimate_t5_tokens(GOOD) >= 1.3 * len(GOOD.split())
    assert estimate_t5_tokens("") == 1  # end-of-sequence


def test_shortening_keeps_whole_sentences_within_the_budget():
    short = shorten_to_budget(LONG, rules())
    assert short.startswith(GOOD) and short.endswith(".") and LONG.startswith(short)
    assert estimate_t5_tokens(short) <= 120 < estimate_t5_tokens(short + " The mucosa around it is calm and pale in region 9.")


def test_a_first_sentence_over_the_budget_is_cut_at_a_word():
    text = CAPTION + " with " + ", ".join(["pink folds"] * 40) + "."
    short = shorten_to_budget(text, rules(max_tokens=40))
    assert short.startswith(CAPTION) and short.endswith(".") and estimate_t5_tokens(short) <= 40


def test_failed_descriptions_are_regenerated_with_a_hint_and_only_they():
    captioner = ScriptedCaptioner({"ok": [GOOD], "late": ["A polyp.", GOOD]})
    results = describe_batch(captioner, requests_for(["ok", "late"]), [rules(), rules()], max_retries=2)
    assert [r.text for r in results] == [GOOD, GOOD]
    assert [r.rule for r in results] == ["", MISSING_SIMPLE_CAPTION]
    assert [r.attempts for r in results] == [1, 2]
    assert len(captioner.calls) == 2 and [c[0] for c in captioner.calls[1]] == ["late"]  # one batched retry
    assert 'did not begin with "An endoscopic image of polyps"' in captioner.calls[1][0][2]


def test_retries_are_bounded_then_the_text_is_repaired():
    captioner = ScriptedCaptioner({"long": [LONG], "bare": ["Pink and round. No bleeding."],
                                   "parrot": [CAPTION + ". Colour, shape, surrounding mucosa. It is pink."]})
    results = describe_batch(captioner, requests_for(["long", "bare", "parrot"]), [rules()] * 3, max_retries=3)
    assert len(captioner.calls) == 4  # 1 + max_retries, never more
    long, bare, parrot = results
    assert long.rule == TOO_LONG and long.text == shorten_to_budget(LONG, rules()) and long.attempts == 4
    assert bare.rule == MISSING_SIMPLE_CAPTION and bare.text == CAPTION + ". Pink and round. No bleeding."
    assert parrot.rule == PARROTS_FEATURES and parrot.text == CAPTION + ". It is pink."
    assert all(check_description(r.text, rules()) is None for r in results)


def test_no_retries_means_one_call():
    captioner = ScriptedCaptioner({"x": [""]})
    (result,) = describe_batch(captioner, requests_for(["x"]), [rules()], max_retries=0)
    assert len(captioner.calls) == 1 and result.rule == EMPTY and result.text == CAPTION + "."


def test_tokens_are_counted_with_the_given_tokenizer(tmp_path):
    from medart_core.scratch import train_t5_tokenizer

    tokenizer = train_t5_tokenizer()
    tokenizer.save_pretrained(tmp_path / "pipeline" / "tokenizer")  # a PixArt pipeline folder's layout
    count, description = load_token_counter(str(tmp_path / "pipeline"))
    assert count(GOOD) == len(tokenizer(GOOD).input_ids) and "counted with" in description
    with pytest.raises(MedArtError, match="cannot load tokenizer"):
        load_token_counter(str(tmp_path / "nowhere"))


def test_every_builtin_template_loads_and_endoscopy_has_the_papers_features():
    assert set(builtin_template_names()) >= {"endoscopy", "dermoscopy", "chest-xray", "ct", "histopathology",
                                             "fundus", "brain-mri"}
    for name in builtin_template_names():
        template = load_template(name)
        prompt = template.prompt(template.simple_caption_for("a-class"), "a-class")
        assert "a class" in prompt and "{" not in prompt
    assert ENDOSCOPY.features == ("colour", "shape", "surrounding mucosa", "surface texture", "bleeding",
                                 "other details")
    assert ENDOSCOPY.simple_caption_for("normal-cecum") == "An endoscopic image of normal cecum"


def test_a_users_template_file_is_loaded_and_checked(tmp_path):
    path = tmp_path / "ultrasound.yaml"
    path.write_text("simple_caption: 'An ultrasound image of {label}'\nfeatures: [echogenicity, margins]\n"
                    "instruction: 'Describe {simple_caption}: {features}.'\n")
    template = load_template(str(path))
    assert template.name == "ultrasound" and template.prompt("An ultrasound image of a cyst", "cyst") == \
        "Describe An ultrasound image of a cyst: echogenicity, margins."
    path.write_text("simple_caption: 'x {labels}'\nfeatures: [a]\ninstruction: 'y'\n")
    load_template.cache_clear()
    with pytest.raises(MedArtError, match=r"unknown placeholder\(s\) \{labels\}"):
        load_template(str(path))
    with pytest.raises(MedArtError, match="unknown modality 'mammography'"):
        load_template("mammography")

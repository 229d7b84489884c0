"""`caption --generation-preset paper`: the paper's decoding, its retry rules, and the T5 `simplify:`
pass over over-long descriptions (a tiny random T5ForConditionalGeneration, no download), next to
today's behaviour as `--generation-preset medart`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from medart_core.__main__ import main
from medart_core.caption_templates import load_template
from medart_core.caption_validation import MISSING_SIMPLE_CAPTION, PARROTS_FEATURES, TOO_LONG, Rules, \
    check_description, estimate_t5_tokens, repair_description, shorten_to_budget
from medart_core.captioning import GENERATION_PRESETS, CaptionRequest, describe_batch, load_vlm
from medart_core.scratch_vlm import save_tiny_llava
from medart_core.simplifier import TASK_PREFIX, load_simplifier

ENDOSCOPY = load_template("endoscopy")
CAPTION = "An endoscopic image of polyps"
GOOD = CAPTION + ": a pink, round lesion with a smooth surface and no bleeding."
LONG = GOOD + " " + " ".join(f"The mucosa around it is calm and pale in region {i}." for i in range(12))
PARROT = CAPTION + ". Colour, shape, surrounding mucosa, surface texture. It is pink."
PAPER, MEDART = GENERATION_PRESETS["paper"], GENERATION_PRESETS["medart"]


class ScriptedCaptioner:
    """Scripted texts per image and attempt; records the hints it was given."""

    source = "scripted"

    def __init__(self, scripts):
        self.scripts, self.calls = scripts, []

    def __call__(self, requests, attempt=0):
        self.calls.append([(r.label, r.hint) for r in requests])
        return [self.scripts[r.label][min(attempt, len(self.scripts[r.label]) - 1)] for r in requests]


def requests_for(labels):
    return [CaptionRequest(Image.new("RGB", (8, 8)), CAPTION, label, ENDOSCOPY) for label in labels]


def rules():
    return Rules(CAPTION, ENDOSCOPY.features, estimate_t5_tokens, 120)


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory):
    """A save_pretrained folder of a tiny random T5ForConditionalGeneration and its tokenizer."""
    from transformers import T5Config, T5ForConditionalGeneration

    from medart_core.scratch import train_t5_tokenizer

    tokenizer = train_t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("t5") / "tiny-t5"
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_paper_preset_decodes_as_the_paper(tmp_path, monkeypatch):
    folder = save_tiny_llava(tmp_path / "vlm")
    seen = {}
    for name in ("paper", "medart"):
        captioner = load_vlm(str(folder), device="cpu", preset=name)

        def record(**inputs):
            seen[name] = {k: v for k, v in inputs.items() if not isinstance(v, torch.Tensor)}
            return torch.cat([inputs["input_ids"], inputs["input_ids"][:, -1:]], dim=1)

        monkeypatch.setattr(captioner.model, "generate", record)
        captioner(requests_for(["polyps"]), attempt=0)
    assert seen["paper"] == {"max_new_tokens": 150, "do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.9}
    assert seen["medart"] == {"max_new_tokens": 160, "do_sample": False}  # today's: a greedy first answer
    assert PAPER.max_words == 100


def test_the_paper_preset_regenerates_parroting_and_missing_captions_but_not_length():
    captioner = ScriptedCaptioner({"long": [LONG, GOOD], "parrot": [PARROT, GOOD], "bare": ["Pink.", GOOD]})
    long, parrot, bare = describe_batch(captioner, requests_for(["long", "parrot", "bare"]), [rules()] * 3,
                                        max_retries=2, preset=PAPER)
    assert [c[0] for c in captioner.calls[1]] == ["parrot", "bare"]  # the long one is not regenerated
    assert all(hint == "" for call in captioner.calls for _, hint in call)  # the same prompt, sampled again
    assert (parrot.text, parrot.rule, bare.text, bare.rule) == (GOOD, PARROTS_FEATURES, GOOD, MISSING_SIMPLE_CAPTION)
    assert long.rule == TOO_LONG and long.attempts == 1 and long.text == shorten_to_budget(LONG, rules())
    # today's behaviour (medart): an over-long answer is regenerated, told what was wrong
    captioner = ScriptedCaptioner({"long": [LONG, GOOD]})
    (medart,) = describe_batch(captioner, requests_for(["long"]), [rules()], max_retries=2, preset=MEDART)
    assert medart.text == GOOD and medart.attempts == 2 and "too long" in captioner.calls[1][0][1]


def test_an_over_long_description_goes_through_t5_simplify_before_the_repair(tiny_t5_dir, monkeypatch):
    simplifier = load_simplifier(str(tiny_t5_dir), device="cpu")
    assert type(simplifier.model).__name__ == "T5ForConditionalGeneration" and not simplifier.model.training
    asked = []
    real_generate = simplifier.model.generate

    def recording_generate(**inputs):
        asked.extend(simplifier.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=True))
        return real_generate(**inputs)

    monkeypatch.setattr(simplifier.model, "generate", recording_generate)
    simplified = []

    def recording_simplifier(texts):
        simplified.extend(simplifier(texts))
        return simplified[-len(texts):]

    captioner = ScriptedCaptioner({"long": [LONG], "ok": [GOOD]})
    long, ok = describe_batch(captioner, requests_for(["long", "ok"]), [rules()] * 2, max_retries=1, preset=PAPER,
                              simplifier=recording_simplifier)
    assert len(asked) == 1 and asked[0].replace(" ", "").startswith(TASK_PREFIX.strip().replace(" ", ""))
    assert ok.text == GOOD and ok.rule == ""
    assert long.rule == TOO_LONG and check_description(long.text, rules()) is None
    # the simplified text (random words from the tiny T5) is what was validated and repaired, not the long one
    expected = simplified[0]
    if check_description(expected, rules()) is not None:
        expected = repair_description(expected, rules())
    assert long.text == expected != shorten_to_budget(LONG, rules())


def test_the_paper_preset_wants_its_simplifier_or_none(tmp_path, capsys):
    root = tmp_path / "kvasir" / "polyps"
    root.mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 80, 90)).save(root / "0.png")
    args = ["caption", "--data", str(tmp_path / "kvasir"), "--modality", "endoscopy", "--vlm", "fallback",
            "--generation-preset", "paper"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot load the simplifier 't5-large'" in err and "--simplifier none" in err
    assert main([*args, "--simplifier", "none"]) == 0

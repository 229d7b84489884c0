"""medart_core.agreement: kappa values worked by hand, and undefined cases as null with a reason."""

import json

import pytest

from medart_core.agreement import agreement, cohen_kappa, fleiss_kappa


def test_cohens_kappa_matches_the_hand_worked_value():
    # observed agreement 3/4, chance agreement 1/2 -> kappa 0.5
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]).value == pytest.approx(0.5)


def test_fleiss_kappa_matches_the_hand_worked_value():
    # per-item agreement 1, 1, 1/3, 1/3 -> mean 2/3; both categories at 1/2 -> chance 1/2; kappa 1/3
    rows = [["a", "a", "a"], ["b", "b", "b"], ["a", "a", "b"], ["a", "b", "b"]]
    assert fleiss_kappa(rows).value == pytest.approx(1 / 3)


def test_one_category_everywhere_is_null_with_a_reason_not_nan():
    figure = cohen_kappa(["edit"] * 3, ["edit"] * 3)
    assert figure.value is None and "'edit'" in figure.reason
    out = agreement({"ann": {1: "x", 2: "x"}, "bob": {1: "x", 2: "x"}, "cy": {1: "x", 2: "x"}})
    assert out["method"] == "fleiss" and out["kappa"] is None and "chance agreement" in out["kappa_reason"]
    assert "NaN" not in json.dumps(out)


def test_agreement_uses_the_items_each_pair_shares():
    out = agreement({"ann": {1: "a", 2: "b", 3: "a"}, "bob": {1: "a", 2: "b"}})
    assert out["method"] == "cohen" and out["items"] == 2 and out["kappa"] == pytest.approx(1.0)
    assert out["pairwise"] == {"ann vs bob": {"items": 2, "kappa": pytest.approx(1.0)}}
    assert agreement({"ann": {1: "a"}})["kappa"] is None


def test_unequal_rating_counts_are_refused():
    with pytest.raises(ValueError, match="same number of ratings"):
        fleiss_kappa([["a", "b"], ["a", "b", "b"]])
    with pytest.raises(ValueError, match="differ in length"):
        cohen_kappa(["a"], ["a", "b"])

"""Team review through the app's API (gradio_client), with --approvals-required 2: the export holds
a description only while two reviewers approved its current text; queues, independent versions
and their adjudication, bulk replace and the dashboard's JSON, each as the signed-in user."""

from __future__ import annotations

import json

import pytest

from test_app import ADMIN, READER, REVIEWER, credentials, start


@pytest.fixture(scope="module")
def team_app(tiny_pipeline_dir, team_accounts, tmp_path_factory):
    demo, opened = start(tiny_pipeline_dir, tmp_path_factory.mktemp("team-home"), "--auth-file", str(team_accounts),
                         "--approvals-required", "2")
    yield demo, opened
    demo.close()
    opened.store.close()


@pytest.fixture(scope="module")
def clients(team_app):
    from gradio_client import Client

    return {user: Client(team_app[0].local_url, auth=credentials(user), verbose=False)
            for user in (ADMIN, REVIEWER, READER)}


def exported_names(client, opened) -> set[str]:
    try:
        client.predict("approved only", api_name="/export")
    except Exception as err:  # nothing approved yet
        assert "no approved descriptions" in str(err)
        return set()
    rows = (opened.exports / "train" / "metadata.jsonl").read_text().splitlines()
    return {json.loads(r)["file_name"] for r in rows}


def test_export_holds_a_description_only_while_two_reviewers_approved_its_text(clients, team_app):
    _, opened = team_app
    alice, bob = clients[ADMIN], clients[REVIEWER]
    key = sorted(k for k in opened.store.keys() if k.startswith("train/fundus"))[0]
    name = key.split("/", 1)[1]
    read = bob.predict(key, api_name="/get_description")
    assert (read["approvals"], read["approvals_required"]) == ([], 2)
    once = bob.predict(key, read["revision"], api_name="/approve")
    assert (once["status"], once["approvals"]) == ("partly-approved", ["bob"])
    assert name not in exported_names(alice, opened)
    assert key in alice.predict("partly-approved", "all", "", False, api_name="/list_images")
    twice = alice.predict(key, read["revision"], api_name="/approve")  # read before bob's approval: no conflict
    assert (twice["status"], twice["approvals"]) == ("approved", ["bob", "alice"])
    assert name in exported_names(alice, opened)
    edited = bob.predict(key, "A fundus photograph, edited after both approvals.", twice["revision"],
                         api_name="/save_description")
    assert (edited["status"], edited["approvals"]) == ("edited", [])
    assert name not in exported_names(alice, opened)
    with pytest.raises(Exception, match="changed after you opened"):
        alice.predict(key, twice["revision"], api_name="/approve")


def test_queue_independent_versions_and_adjudication(clients, team_app):
    _, opened = team_app
    alice, bob, carol = clients[ADMIN], clients[REVIEWER], clients[READER]
    keys = sorted(k for k in opened.store.keys() if k.startswith("train/histology"))[:2]
    result = alice.predict(["alice", "bob"], "all", 1, "histology-ihc", True, api_name="/assign")
    assert result["progress"]["bob"]["left"] >= 2
    queue = bob.predict("all", "histology-ihc", "", True, api_name="/list_images")
    assert set(keys) <= set(queue)
    with pytest.raises(Exception, match="may not use"):
        carol.predict("all", "all", "", True, api_name="/list_images")
    with pytest.raises(Exception, match="may not use"):
        bob.predict(["bob"], "all", 1, "all", False, api_name="/assign")
    for key in keys:
        draft = bob.predict(key, api_name="/get_description")
        mine = bob.predict(key, draft["text"] + " Dense nuclei.", draft["revision"], "", api_name="/submit_version")
        assert (mine["author"], mine["decision"]) == ("bob", "edit")
        alice.predict(key, draft["text"], draft["revision"], "", api_name="/submit_version")
        assert bob.predict(key, api_name="/get_description")["text"] == draft["text"]  # versions stay outside
    assert not set(keys) & set(bob.predict("all", "histology-ihc", "", True, api_name="/list_images"))
    revision = alice.predict(keys[0], api_name="/get_description")["revision"]
    settled = alice.predict(keys[0], "A histology tile, dense nuclei, adjudicated.", revision, api_name="/adjudicate")
    assert settled["author"] == "alice" and opened.store.get(keys[0]).text == settled["text"]
    assert [r.action for r in opened.store.history(keys[0])][-1] == "adjudicate"
    stats = alice.predict(api_name="/review_stats")
    assert stats["agreement"]["images"] == 2 and stats["agreement"]["decisions"] == {"accept": 2, "edit": 2}
    assert {"alice", "bob"} <= set(stats["reviewers"])


def test_bulk_replace_through_the_api_is_all_or_nothing(clients, team_app):
    _, opened = team_app
    bob = clients[REVIEWER]
    preview = bob.predict("retina", "fundus", "all", "fundus", "", False, api_name="/preview_replace")
    assert len(preview) >= 2 and all("fundus" in c["after"] for c in preview)
    stale = preview[-1]
    bob.predict(stale["image"], stale["before"] + " Changed meanwhile.", stale["revision"], api_name="/save_description")
    before = {c["image"]: opened.store.get(c["image"]).revision for c in preview}
    with pytest.raises(Exception, match="changed after you opened"):
        bob.predict("retina", "fundus", preview, api_name="/apply_replace")
    assert {c["image"]: opened.store.get(c["image"]).revision for c in preview} == before
    fresh = bob.predict("retina", "fundus", "all", "fundus", "", False, api_name="/preview_replace")
    applied = bob.predict("retina", "fundus", fresh, api_name="/apply_replace")
    assert applied["changed"] == len(fresh)
    assert all(opened.store.history(c["image"])[-1].author == "bob" for c in fresh)

"""The Gradio app: named API endpoints over the review store and the generator, on loopback,
with sign-in; an approved edit reaches the export that training reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import app

ACCOUNTS = [("alice", "wonderland"), ("bob", "builder")]


def start(tiny_pipeline_dir, home: Path, *extra: str, auth: bool = True):
    args = app.parse_args(["--home", str(home), "--model", str(tiny_pipeline_dir), *extra,
                           *(["--auth", *(f"{u}:{p}" for u, p in ACCOUNTS)] if auth else [])])
    opened = app.open_app(args)
    demo = app.build_demo(opened)
    options = app.launch_options(opened, args) | {"server_port": None, "quiet": True, "prevent_thread_lock": True}
    demo.queue().launch(**options)
    return demo, opened


@pytest.fixture(scope="module")
def running_app(tiny_pipeline_dir, tmp_path_factory):
    demo, opened = start(tiny_pipeline_dir, tmp_path_factory.mktemp("home"))
    yield demo, opened
    demo.close()
    opened.store.close()


@pytest.fixture(scope="module")
def client(running_app):
    from gradio_client import Client

    return Client(running_app[0].local_url, auth=ACCOUNTS[0], verbose=False)


def test_listens_on_loopback_by_default(monkeypatch):
    for name in ("MEDART_HOST", "MEDART_PORT", "MEDART_MODEL", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860
    assert Path(args.data) == app.DEMO_DATA


def test_every_option_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDART_DB", "postgresql+psycopg://team@db/medart")
    monkeypatch.setenv("MEDART_DATA", str(tmp_path))
    monkeypatch.setenv("MEDART_AUTH", "alice:a1,bob:b2")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # as a Space sets it
    args = app.parse_args([])
    assert (args.db, args.data, args.host) == ("postgresql+psycopg://team@db/medart", str(tmp_path), "0.0.0.0")
    assert app.read_accounts(args) == [("alice", "a1"), ("bob", "b2")]


def test_listening_beyond_this_machine_needs_accounts(monkeypatch, tmp_path):
    from medart_core.errors import MedArtError

    monkeypatch.delenv("MEDART_AUTH", raising=False)
    with pytest.raises(MedArtError, match="--no-auth"):
        app.read_accounts(app.parse_args(["--host", "0.0.0.0"]))
    assert app.read_accounts(app.parse_args(["--host", "0.0.0.0", "--no-auth"])) is None
    accounts = tmp_path / "accounts"
    accounts.write_text("# reviewers\nalice:pw:with:colons\n\nbob:x\n")
    assert app.read_accounts(app.parse_args(["--auth-file", str(accounts)])) == [("alice", "pw:with:colons"), ("bob", "x")]
    with pytest.raises(MedArtError, match="not USER:PASS"):
        app.read_accounts(app.parse_args(["--auth", "carol"]))


def test_the_default_store_lives_outside_the_repository(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    home, warning = app.choose_home(None)
    assert app.ROOT not in home.parents and warning is None
    monkeypatch.setenv("SPACE_ID", "someone/med-art")
    monkeypatch.setattr(app, "SPACE_STORAGE", Path("/nonexistent-space-storage"))
    home, warning = app.choose_home(None)
    assert "no persistent storage" in warning


def test_named_endpoints_are_served(client):
    names = set(client.view_api(return_format="dict")["named_endpoints"])
    assert {"/generate", "/save_description", "/approve", "/flag", "/get_description", "/export", "/compare"} <= names


def test_generate_endpoint_serves_the_pngs_marked_synthetic(client):
    from medart_core.synthetic import read_png_text

    gallery, files = client.predict("An axial brain MRI slice", 3, 2, 4.5, 2, api_name="/generate")
    assert [item["caption"] for item in gallery] == [f"{app.SYNTHETIC_LABEL} · seed {s}" for s in (3, 4)]
    assert len(files) == 2
    chunks = [read_png_text(f) for f in files]  # the downloaded files themselves, not re-encoded copies
    assert all(c["synthetic"] == "true" and c["prompt"] == "An axial brain MRI slice" for c in chunks)
    assert [c["seed"] for c in chunks] == ["3", "4"]
    assert all(read_png_text(item["image"])["synthetic"] == "true" for item in gallery)


def test_empty_prompt_gives_a_message_and_the_app_stays_up(client):
    with pytest.raises(Exception, match="Write a prompt first"):
        client.predict("   ", 0, 2, 4.5, 1, api_name="/generate")
    gallery, _ = client.predict("A fundus photograph", 0, 2, 4.5, 1, api_name="/generate")
    assert len(gallery) == 1


def test_a_reviewed_description_reaches_the_training_data(client, running_app, tmp_path):
    from gradio_client import Client

    from medart_core.training_data import ImageCaptionDataset

    _, opened = running_app
    key = sorted(k for k in opened.store.keys() if k.startswith("train/fundus"))[0]
    current = client.predict(key, api_name="/get_description")
    text = "A colour fundus photograph: orange retina, the optic disc bright yellow at the left edge."
    saved = client.predict(key, text, current["revision"], api_name="/save_description")
    assert (saved["status"], saved["author"], saved["source"]) == ("edited", "alice", "human")
    stale_bob = Client(running_app[0].local_url, auth=ACCOUNTS[1], verbose=False)
    with pytest.raises(Exception, match="changed after you opened revision"):
        stale_bob.predict(key, "Bob's overwrite", current["revision"], api_name="/save_description")
    approved = stale_bob.predict(key, saved["revision"], api_name="/approve")
    assert (approved["status"], approved["author"], approved["text"]) == ("approved", "bob", text)
    message, files = client.predict("approved only", api_name="/export")
    assert "Exported" in message
    export = opened.exports
    rows = [json.loads(line) for line in (export / "train" / "metadata.jsonl").read_text().splitlines()]
    assert {"file_name": Path(key).name, "text": text, "source": "human"}.items() <= next(
        r for r in rows if r["file_name"] == Path(key).name).items()
    training = ImageCaptionDataset(export, resolution=32)
    assert text in [training[i]["text"] for i in range(len(training))]
    assert [r.author for r in opened.store.history(key)][-2:] == ["alice", "bob"]


def test_compare_shows_real_and_generated_with_colour_statistics(client):
    note, real, fake, histogram, stats = client.predict("fundus", "", 2, 2, api_name="/compare")
    assert len(real) == 2 and len(fake) == 2 and all("SYNTHETIC" in item["caption"] for item in fake)
    assert Path(histogram).stat().st_size > 1000
    assert [row[0] for row in stats["data"]] == ["red", "green", "blue"]
    assert "Colour distance" in note


def test_sign_in_is_required(running_app):
    import httpx

    url = running_app[0].local_url
    assert httpx.get(url + "config").status_code in (401, 403)  # the app's config is withheld until sign-in
    refused = httpx.post(url + "login", data={"username": "alice", "password": "wrong"})
    assert refused.status_code == 400


def test_serves_only_the_data_and_its_outputs(tiny_pipeline_dir, tmp_path):
    import httpx

    demo, opened = start(tiny_pipeline_dir, tmp_path / "home", auth=False)
    try:
        image = opened.store.entries()[0].path
        database = tmp_path / "home" / "review.sqlite"
        assert database.is_file()
        assert httpx.get(f"{demo.local_url}gradio_api/file={image}").status_code == 200
        assert httpx.get(f"{demo.local_url}gradio_api/file={database}").status_code == 403
        assert httpx.get(f"{demo.local_url}gradio_api/file={Path(app.__file__)}").status_code == 403
    finally:
        demo.close()
        opened.store.close()


def test_without_a_model_the_app_says_so():
    generator = app.Generator(None, None)
    assert "No model loaded" in generator.status()

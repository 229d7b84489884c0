"""The Gradio app: named API endpoints over the review store and the generator, on loopback,
with sign-in by role; an approved edit reaches the export that training reads; each role gets
exactly the endpoints and files the README's table gives it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import app
from conftest import TEAM
from medart_core.errors import MedArtError
from medart_ui import context, options
from medart_ui.shared import SYNTHETIC_LABEL

README = Path(__file__).resolve().parent.parent / "README.md"
SIGN_IN_ENV = ("MEDART_AUTH", "MEDART_AUTH_FILE", "MEDART_ACCOUNTS", "MEDART_NO_AUTH")
ADMIN, REVIEWER, READER = "alice", "bob", "carol"


def credentials(user: str) -> tuple[str, str]:
    return user, TEAM[user][1]


def start(tiny_pipeline_dir, home: Path, *extra: str):
    args = app.parse_args(["--home", str(home), "--model", str(tiny_pipeline_dir), *extra])
    opened = app.open_app(args)
    demo = app.serve(opened, args, server_port=None, quiet=True)
    return demo, opened


@pytest.fixture(autouse=True)
def no_sign_in_environment(monkeypatch):
    for name in SIGN_IN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def running_app(tiny_pipeline_dir, team_accounts, tmp_path_factory):
    demo, opened = start(tiny_pipeline_dir, tmp_path_factory.mktemp("home"), "--auth-file", str(team_accounts))
    yield demo, opened
    demo.close()
    opened.store.close()


@pytest.fixture(scope="module")
def clients(running_app):
    from gradio_client import Client

    return {user: Client(running_app[0].local_url, auth=credentials(user), verbose=False) for user in TEAM}


@pytest.fixture(scope="module")
def client(clients):
    return clients[ADMIN]


def signed_in_http(url: str, user: str):
    import httpx

    session = httpx.Client(base_url=url)
    assert session.post("login", data=dict(zip(("username", "password"), credentials(user)))).status_code == 200
    return session


# Options and sign-in settings ----------------------------------------------------------------------

def test_listens_on_loopback_by_default(monkeypatch):
    for name in ("MEDART_HOST", "MEDART_PORT", "MEDART_MODEL", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860
    assert Path(args.data) == options.DEMO_DATA
    assert options.sign_in(args).default_role == "admin"  # the one user on loopback without accounts


def test_every_option_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDART_DB", "postgresql+psycopg://team@db/medart")
    monkeypatch.setenv("MEDART_DATA", str(tmp_path))
    monkeypatch.setenv("MEDART_AUTH", "alice:a1,bob:b2")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # as a Space sets it
    args = app.parse_args([])
    assert (args.db, args.data, args.host) == ("postgresql+psycopg://team@db/medart", str(tmp_path), "0.0.0.0")
    accounts = options.sign_in(args).accounts
    assert [(a.user, a.role, a.secret) for a in accounts] == [("alice", "admin", "a1"), ("bob", "admin", "b2")]


def test_accounts_from_a_spaces_secret(monkeypatch, team_accounts):
    monkeypatch.setenv("MEDART_ACCOUNTS", team_accounts.read_text())
    signin = options.sign_in(app.parse_args(["--host", "0.0.0.0"]))
    assert {a.user: a.role for a in signin.accounts} == {u: role for u, (role, _) in TEAM.items()}


def test_listening_beyond_this_machine_needs_accounts(tmp_path):
    with pytest.raises(MedArtError, match="--no-auth"):
        options.sign_in(app.parse_args(["--host", "0.0.0.0"]))
    public = options.sign_in(app.parse_args(["--host", "0.0.0.0", "--no-auth"]))
    assert (public.required, public.default_role) == (False, "reviewer")  # a public Space launches no training
    legacy = tmp_path / "accounts"
    legacy.write_text("# reviewers\nalice:pw:with:colons\n\nbob:x\n")
    signin = options.sign_in(app.parse_args(["--auth-file", str(legacy)]))
    assert [(a.user, a.role, a.secret) for a in signin.accounts] == [("alice", "admin", "pw:with:colons"),
                                                                     ("bob", "admin", "x")]
    assert any("accounts convert" in w for w in signin.warnings)
    with pytest.raises(MedArtError, match="not USER:PASS"):
        options.sign_in(app.parse_args(["--auth", "carol"]))
    assert any("process list" in w for w in options.sign_in(app.parse_args(["--auth", "carol:pw"])).warnings)


def test_an_explicit_sign_in_option_wins_over_the_environment(monkeypatch, team_accounts):
    """Issue 25, item 4: MEDART_NO_AUTH=1 used to switch sign-in off under an explicit --auth."""
    monkeypatch.setenv("MEDART_NO_AUTH", "1")
    signin = options.sign_in(app.parse_args(["--auth", "alice:pw"]))
    assert signin.required and [a.user for a in signin.accounts] == ["alice"]
    assert options.sign_in(app.parse_args(["--auth-file", str(team_accounts)])).required
    monkeypatch.setenv("MEDART_AUTH", "alice:pw")
    assert options.sign_in(app.parse_args(["--no-auth"])).no_auth  # explicit --no-auth wins too


def test_contradictory_sign_in_settings_are_refused_at_start_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MEDART_NO_AUTH", "1")
    monkeypatch.setenv("MEDART_AUTH", "alice:pw")
    assert app.main(["--home", str(tmp_path / "home")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "contradictory" in error and "MEDART_NO_AUTH" in error and "pw" not in error
    assert not (tmp_path / "home").exists()  # refused before anything was opened
    monkeypatch.setenv("MEDART_NO_AUTH", "perhaps")
    with pytest.raises(MedArtError, match="MEDART_NO_AUTH"):
        options.sign_in(app.parse_args([]))


def test_the_default_store_lives_outside_the_repository(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    home, warning = context.choose_home(None)
    assert options.ROOT not in home.parents and warning is None
    monkeypatch.setenv("SPACE_ID", "someone/med-art")
    home, warning = context.choose_home(None, Path("/nonexistent-space-storage"))
    assert "no persistent storage" in warning


# The endpoints, as an admin -----------------------------------------------------------------------

def test_named_endpoints_are_served(client):
    names = set(client.view_api(return_format="dict")["named_endpoints"])
    assert {"/generate", "/save_description", "/approve", "/flag", "/get_description", "/export", "/compare"} <= names


def test_generate_endpoint_serves_the_pngs_marked_synthetic(client):
    from medart_core.synthetic import read_png_text

    gallery, files = client.predict("An axial brain MRI slice", 3, 2, 4.5, 2, api_name="/generate")
    assert [item["caption"] for item in gallery] == [f"{SYNTHETIC_LABEL} · seed {s}" for s in (3, 4)]
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


def test_a_reviewed_description_reaches_the_training_data(clients, running_app):
    from medart_core.training_data import ImageCaptionDataset

    _, opened = running_app
    alice, bob = clients[ADMIN], clients[REVIEWER]
    key = sorted(k for k in opened.store.keys() if k.startswith("train/fundus"))[0]
    current = alice.predict(key, api_name="/get_description")
    text = "A colour fundus photograph: orange retina, the optic disc bright yellow at the left edge."
    saved = alice.predict(key, text, current["revision"], api_name="/save_description")
    assert (saved["status"], saved["author"], saved["source"]) == ("edited", "alice", "human")
    with pytest.raises(Exception, match="changed after you opened revision"):
        bob.predict(key, "Bob's overwrite", current["revision"], api_name="/save_description")
    approved = bob.predict(key, saved["revision"], api_name="/approve")
    assert (approved["status"], approved["author"], approved["text"]) == ("approved", "bob", text)
    message, files = alice.predict("approved only", api_name="/export")
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
    assert httpx.post(url + "login", data={"username": "nobody", "password": "wrong"}).status_code == 400


# Roles ----------------------------------------------------------------------------------------------

def endpoint_table() -> dict[str, dict]:
    """The README's endpoint table: name -> arguments (in order), returns, roles."""
    section = re.split(r"\n#+ ", README.read_text(encoding="utf-8").split("### API endpoints", 1)[1])[0]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        name, arguments, returns, roles = [cell.strip() for cell in line.strip("|").split("|")]
        rows[name.strip("`")] = {"arguments": re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", arguments)),
                                 "returns": returns, "roles": {r.strip() for r in roles.split(",")}}
    return rows


def call_each_endpoint(client, opened, key: str) -> dict:
    """Call every named endpoint with valid arguments (each edit on the current revision):
    name -> result, or the refusal's message."""
    current = lambda: opened.store.get(key).revision  # noqa: E731
    calls = {"get_description": lambda: (key,), "list_images": lambda: ("all", "all", "", False),
             "save_description": lambda: (key, "A histology tile, edited through the API.", current()),
             "approve": lambda: (key, current()), "flag": lambda: (key, "check the stain", current()),
             "export": lambda: ("approved only",), "generate": lambda: ("A fundus photograph", 0, 2, 4.5, 1),
             "compare": lambda: ("fundus", "", 1, 2),
             # Team review (issue 17): each allowed call answers with its result or a reason, never "may not use".
             "submit_version": lambda: (key, "My own version.", current(), ""),
             "preview_replace": lambda: ("tile", "patch", "all", "all", key, False),
             "apply_replace": lambda: ("tile", "patch", []),
             "assign": lambda: (["bob"], "all", 1, "all", False), "adjudicate": lambda: (key, "Settled.", current()),
             "set_guidelines": lambda: ("# Guidelines",), "review_stats": lambda: (),
             # Reader study (issue 18): an invitation is checked after the role, so its refusal is no "may not use".
             "create_study": lambda: ("roles study", 1, 1, [READER], 0, ["fundus"], None, False),
             "next_trial": lambda: ("roles study",), "study_results": lambda: ("roles study",),
             "answer_trial": lambda: ("roles study", "0" * 16, "real", 3, 3, "", None)}
    results = {}
    for name, arguments in calls.items():
        try:
            results[name] = client.predict(*arguments(), api_name=f"/{name}")
        except Exception as err:  # gradio_client raises AppError with the server's message
            results[name] = str(err)
    return results


def test_the_endpoint_table_matches_the_app(running_app, client):
    demo, opened = running_app
    table = endpoint_table()
    api = client.view_api(return_format="dict")["named_endpoints"]
    assert set(table) == {name.lstrip("/") for name in api}, "every named endpoint has a row, and no more"
    for name, row in table.items():
        assert [p["parameter_name"] for p in api[f"/{name}"]["parameters"]] == row["arguments"], name
    functions = {f.api_name: f.fn for f in demo.fns.values() if f.api_name in table}
    assert {name: set(fn.roles) for name, fn in functions.items()} == {n: r["roles"] for n, r in table.items()}
    keys = re.findall(r"`(\w+)`", table["save_description"]["returns"])
    assert sorted(client.predict(sorted(opened.store.keys())[0], api_name="/get_description")) == sorted(keys)


def test_every_callback_checks_the_role_on_the_server(running_app):
    demo, _ = running_app
    server_side = [f for f in demo.fns.values() if f.fn is not None]
    assert server_side and all(getattr(f.fn, "roles", None) for f in server_side), \
        [f.name for f in server_side if not getattr(f.fn, "roles", None)]


def test_each_role_gets_the_endpoints_the_table_gives_it(clients, running_app):
    _, opened = running_app
    table = endpoint_table()
    histology = sorted(k for k in opened.store.keys() if k.startswith("train/histology"))
    for user, key in zip((ADMIN, REVIEWER, READER), histology):
        role = TEAM[user][0]
        before = [(r.number, r.text) for r in opened.store.history(key)]
        results = call_each_endpoint(clients[user], opened, key)
        for name, result in results.items():
            refused = isinstance(result, str) and "may not use" in result
            assert refused == (role not in table[name]["roles"]), (user, name, result)
            if refused:
                assert f"your role ({role})" in result
        if role == "reader":  # nothing changed
            assert [(r.number, r.text) for r in opened.store.history(key)] == before


def test_a_reader_gets_no_data_image_nor_export_file(clients, running_app):
    demo, opened = running_app
    clients[ADMIN].predict("approved only", api_name="/export")
    image = opened.store.entries()[0].path
    export = next(opened.exports.rglob("metadata.jsonl"))
    _, [generated] = clients[REVIEWER].predict("A fundus photograph", 0, 2, 4.5, 1, api_name="/generate")
    reader, reviewer = signed_in_http(demo.local_url, READER), signed_in_http(demo.local_url, REVIEWER)
    for path in (image, export, Path(generated)):
        assert reviewer.get(f"gradio_api/file={path}").status_code == 200, path
        assert reader.get(f"gradio_api/file={path}").status_code == 403, path
        assert reader.get(f"gradio_api/file/{path}").status_code == 403, path


def test_a_readers_page_config_carries_no_descriptions_or_image_names(running_app):
    demo, opened = running_app
    config = signed_in_http(demo.local_url, READER).get("config")
    assert config.status_code == 200
    entries = opened.store.entries()
    leaked = [e.key for e in entries if e.key in config.text] + [e.text for e in entries if e.text in config.text]
    assert not leaked, leaked[:3]


def crafted_call(session, fn_index: int, data: list) -> dict:
    """A hand-made queue request for any event, private ones included (gradio_client will not
    call those); returns the completion message."""
    joined = session.post("gradio_api/queue/join", json={"fn_index": fn_index, "session_hash": "crafted", "data": data})
    assert joined.status_code == 200, joined.text
    with session.stream("GET", "gradio_api/queue/data", params={"session_hash": "crafted"}, timeout=60) as events:
        return next(json.loads(line[5:]) for line in events.iter_lines()
                    if line.startswith("data:") and '"process_completed"' in line)


def test_a_crafted_call_to_a_private_event_is_refused_for_a_reader(running_app):
    """The filter event is private, yet reachable by a crafted request: it would list every image
    with its description. The server refuses it to a reader; a reviewer gets the list."""
    demo, opened = running_app
    index = next(i for i, f in demo.fns.items() if f.name == "on_filter")
    refused = crafted_call(signed_in_http(demo.local_url, READER), index, ["all", "all", "", False, None])
    assert "may not use on_filter" in refused["output"]["error"]
    assert not any(key in json.dumps(refused) for key in opened.store.keys())
    served = crafted_call(signed_in_http(demo.local_url, REVIEWER), index, ["all", "all", "", False, None])
    assert served["success"] and any(key in json.dumps(served) for key in opened.store.keys())


# Files and the rest ---------------------------------------------------------------------------------

def test_serves_only_the_data_and_its_outputs(tiny_pipeline_dir, tmp_path):
    import httpx

    demo, opened = start(tiny_pipeline_dir, tmp_path / "home")
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


def test_the_generator_is_loaded_in_the_background_at_start(running_app):
    _, opened = running_app
    job = opened.jobs.get(context.PRELOAD_JOB)
    assert job is not None and job.wait(120) and job.state == "done"
    assert opened.generator._model is not None


def test_without_a_model_the_app_says_so():
    generator = context.Generator(None, None)
    assert "No model loaded" in generator.status()
    with pytest.raises(MedArtError, match="no model loaded"):
        generator.load()


def test_regenerate_uses_the_images_own_template_and_never_guesses_one(tmp_path):
    from PIL import Image

    from medart_core.store import ReviewStore, import_dataset
    from medart_ui.tabs.review import regenerate_text

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    rows = []
    for name, modality in (("with.png", "brain-mri"), ("without.png", None)):
        Image.new("RGB", (32, 32), (120, 120, 120)).save(data / "train" / name)
        rows.append({"file_name": name, "text": "An old text.", "label": "brain-mri-axial",
                     "simple_caption": "An axial T1-weighted brain MRI slice", **({"modality": modality} if modality else {})})
    (data / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with ReviewStore(tmp_path / "store.sqlite") as store:
        import_dataset(store, data, author="import")
        opened = context.App(store, context.Generator(None, None), data, tmp_path, "fallback",
                             options.SignIn([], "admin"), "tester")
        text, source, _ = regenerate_text(opened, store.get("train/with.png"))
        assert text.startswith("An axial T1-weighted brain MRI slice") and source == "fallback"
        with pytest.raises(MedArtError, match="no modality"):
            regenerate_text(opened, store.get("train/without.png"))

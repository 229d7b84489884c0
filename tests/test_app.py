"""The Gradio app serves the generate endpoint on loopback and refuses bad input politely."""

from __future__ import annotations

import pytest

import app


@pytest.fixture
def running_app(tiny_pipeline_dir):
    demo = app.build_demo(app.Generator(str(tiny_pipeline_dir), None))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


def test_listens_on_loopback_by_default(monkeypatch):
    for name in ("MEDART_HOST", "MEDART_PORT", "MEDART_MODEL"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860


def test_generate_endpoint_returns_marked_synthetic_images(running_app):
    from gradio_client import Client

    client = Client(running_app.local_url, verbose=False)
    gallery = client.predict("An axial brain MRI slice", 3, 2, 4.5, 2, api_name="/generate")
    assert len(gallery) == 2
    assert all("SYNTHETIC" in item["caption"] for item in gallery)
    assert [item["caption"].endswith(f"seed {s}") for item, s in zip(gallery, (3, 4))] == [True, True]


def test_empty_prompt_gives_a_message_and_the_app_stays_up(running_app):
    from gradio_client import Client

    client = Client(running_app.local_url, verbose=False)
    with pytest.raises(Exception, match="Write a prompt first"):
        client.predict("   ", 0, 2, 4.5, 1, api_name="/generate")
    assert len(client.predict("A fundus photograph", 0, 2, 4.5, 1, api_name="/generate")) == 1


def test_without_a_model_the_app_says_so():
    generator = app.Generator(None, None)
    assert "No model loaded" in generator.status()

"""Files served by role. Gradio's file route only checks that someone is signed in; this ASGI
middleware, in front of it, lets a reader fetch only the files of the reader studies they take
part in (App.reader_files), and leaves reviewers and admins what gradio gives them, except other
readers' blinded study copies (App.study_files)."""

from __future__ import annotations

import logging
from pathlib import Path

from medart_ui.shared import STAFF

logger = logging.getLogger("medart.app")
# gradio's routes that read a file by path (or URL): /gradio_api/file=PATH and its old form /gradio_api/file/PATH
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")


def requested_file(path: str) -> str | None:
    """The file a request path asks for, or None when it is not the file route."""
    path = "/" + path.lstrip("/")
    for route in FILE_ROUTES:
        if path.startswith(route):
            return path[len(route):]  # the server has already percent-decoded it
    return None


class FilesByRole:
    """ASGI middleware; `app` is the Med-Art App (roles, reader files)."""

    def __init__(self, asgi, app):
        self.asgi, self.app = asgi, app

    def user(self, scope) -> str | None:
        """The signed-in user, from gradio's own session cookie and token table."""
        from starlette.requests import Request

        server = scope.get("app")
        cookies = Request(scope).cookies
        cookie_id = getattr(server, "cookie_id", "")
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return getattr(server, "tokens", {}).get(token)

    def verdict(self, scope, wanted: str) -> str | None:
        """"study" for a reader's own blinded copy (served with no-store), "allowed", or None (403).
        A blinded copy is an unmarked synthetic image: only its own reader gets it, whatever the role."""
        user = self.user(scope)
        role = self.app.role_of(user)
        try:
            path = Path(wanted).resolve()
        except (OSError, ValueError):
            return None
        # One query on the common path (staff fetching data and generated images): the user's own
        # copies are looked up only for a reader, or for staff asking for a blinded copy.
        if role in STAFF and path not in {p.resolve() for p in self.app.study_files()}:
            return "allowed"
        if role is not None and path in {p.resolve() for p in self.app.reader_files(user)}:
            return "study"
        logger.warning("refused file %s to %r (role %s)", wanted, user, role)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            wanted = requested_file(scope.get("path", ""))
            verdict = None if wanted is None else self.verdict(scope, wanted)
            if wanted is not None and verdict is None:
                from starlette.responses import PlainTextResponse

                response = PlainTextResponse("Your role may not fetch this file.", status_code=403)
                await response(scope, receive, send)
                return
            if verdict == "study":
                send = no_store(send)
        await self.asgi(scope, receive, send)


def no_store(send):
    """An ASGI send that marks the response as not to be cached (a study copy must not outlive its trial)."""
    async def sending(message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
            message = {**message, "headers": [*headers, (b"cache-control", b"no-store"), (b"pragma", b"no-cache")]}
        await send(message)
    return sending


def identifying_upload(path) -> bool:
    """A DICOM/NIfTI file or a zip (which may hold them): its name and header may identify a patient."""
    from medart_core.medical_io import is_medical_file

    return is_medical_file(path) or str(path).lower().endswith(".zip")


def forget_uploads(paths) -> list[Path]:
    """Delete gradio's cached copies of uploaded medical files (and zips): once converted, or when
    the upload was cancelled or replaced, nothing may serve them back under their original name.
    Only files inside gradio's upload folder are touched. Returns the files deleted."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()).resolve()
    deleted = []
    for name in paths or []:
        path = Path(name if isinstance(name, (str, Path)) else getattr(name, "name", name))  # gradio's file objects
        try:
            inside = path.resolve().is_relative_to(folder)
        except (OSError, ValueError):
            continue
        if inside and identifying_upload(path) and path.is_file():
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def sweep_uploads() -> list[Path]:
    """At start: delete the medical files an earlier run left in gradio's upload folder (an upload
    chosen but never submitted, a crash mid-conversion)."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    if not folder.is_dir():
        return []
    deleted = forget_uploads(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    if deleted:
        logger.warning("deleted %d medical upload(s) left in gradio's upload folder %s", len(deleted), folder)
    return deleted

"""The outputs service: run outputs on the shared volume (reports, charts, benchmark cards, predictions,
manifests), read-only over HTTP, behind the same user and password as the Prefect UI.

    python -m services.outputs --root /shared/outputs --port 4201     # PREFECT_SERVER_API_AUTH_STRING=user:pass

What it refuses, whatever the request: anything outside the root (`..`, its encoded forms, absolute paths,
symlinks whose target lies outside: Starlette's StaticFiles resolves real paths), hidden files and folders
(`.env`, the QA journal in `.qa-cache/`), W&B's `settings` files, every method but GET and HEAD, and any request
without the right Basic credentials (compared in constant time). Folders are listed, their hidden entries left out.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import html
import os
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

REALM = "llm-pipeline outputs"
REFUSED_NAMES = {"settings"}  # W&B settings files (entity, base URL, where a key lives)


def refused(relative: PurePosixPath) -> bool:
    """Hidden parts (.env, .qa-cache, .netrc), parent references and W&B settings files are never served."""
    return any(part.startswith(".") or part in REFUSED_NAMES for part in relative.parts)


class OutputsApp:
    """An ASGI app: Basic auth, then a listing for a folder or the file itself (StaticFiles: ranges, ETags)."""

    def __init__(self, root: Path, auth_string: str):
        if ":" not in auth_string:
            raise ValueError("the auth string must be user:password (PREFECT_SERVER_API_AUTH_STRING)")
        self.root = root.resolve()
        self.expected = auth_string.encode()
        self.files = StaticFiles(directory=self.root, follow_symlink=False, check_dir=False)

    def authorized(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope)
        response = self.respond(request)
        if response is None:  # a file: StaticFiles serves it (or raises 404, 405 before it sends anything)
            try:
                await self.files(scope, receive, send)
                return
            except HTTPException as exc:
                response = PlainTextResponse(exc.detail, status_code=exc.status_code)
        await response(scope, receive, send)

    def respond(self, request: Request) -> Response | None:
        path = request.scope["path"]  # percent-decoded; not request.url, which reads "//x/y" as a host
        if path == "/health":
            return PlainTextResponse("ok")  # for the container's healthcheck; says nothing about the files
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("read-only", status_code=405, headers={"Allow": "GET, HEAD"})
        if not self.authorized(request):
            return PlainTextResponse(
                "log in with the Prefect UI's user and password",
                status_code=401,
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        relative = PurePosixPath(path.lstrip("/"))
        if ".." in relative.parts or refused(relative) or "\\" in path or "\x00" in path:
            return PlainTextResponse("not found", status_code=404)
        target = (self.root / relative).resolve()
        if target != self.root and self.root not in target.parents:
            return PlainTextResponse("not found", status_code=404)  # a symlink out of the folder
        if target.is_dir():
            return self.listing(relative, target)
        return None

    def listing(self, relative: PurePosixPath, folder: Path) -> Response:
        base = "/" + "/".join(quote(part) for part in relative.parts)
        entries = []
        for entry in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name)):
            if refused(PurePosixPath(entry.name)):
                continue
            suffix = "/" if entry.is_dir() else ""
            href = f"{base.rstrip('/')}/{quote(entry.name)}{suffix}"
            entries.append(f'<li><a href="{html.escape(href)}">{html.escape(entry.name)}{suffix}</a></li>')
        title = html.escape(f"outputs/{relative}" if relative.parts else "outputs")
        parent = '<p><a href="../">..</a></p>' if relative.parts else ""
        return HTMLResponse(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1>{parent}<ul>{''.join(entries)}</ul></body></html>"
        )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("OUTPUTS_ROOT", "/shared/outputs")))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=4201)
    args = parser.parse_args()
    auth = os.environ.get("OUTPUTS_AUTH_STRING") or os.environ.get("PREFECT_SERVER_API_AUTH_STRING", "")
    app = OutputsApp(args.root, auth)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""``GET /``: the try-it page, and the script and style it loads from ``/ui/``.

The three files ship as package data in ``service/ui/`` and are hand-written (no framework, no chart
library): the page fetches nothing from outside the service, and its Content-Security-Policy says so
to the browser. The page calls the public API (``GET /model``, ``POST /classify``) like any client;
an API key typed into it stays in the page's memory. ``DELTAGATE_UI=false`` leaves this router out.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["router", "ASSETS", "CONTENT_SECURITY_POLICY"]

router = APIRouter(tags=["ui"], include_in_schema=False)

# File name in service/ui -> media type. Only these are served.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# Same origin only: scripts, styles and API calls; images also from blob: (thumbnails of local files).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate: a new release's page must not meet an old script
}


@cache
def _asset(name: str) -> bytes:
    return (files("service") / "ui" / name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_asset(name), media_type=ASSETS[name], headers=_HEADERS)


@router.get("/")
def index() -> Response:
    """The try-it page."""
    return _serve("index.html")


@router.get("/ui/{name}")
def asset(name: str) -> Response:
    """The page's script, style sheet and icon."""
    if name not in ASSETS or name == "index.html":
        raise StarletteHTTPException(404, f"no UI asset {name!r}")
    return _serve(name)

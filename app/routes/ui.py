"""GET /ui: the web page to explore regeneration, served from the files in app/ui/.

Plain HTML, CSS and JavaScript modules, no build step and nothing from another host:
the Content-Security-Policy allows this origin only, so the page works offline and
cannot load anything else even by accident. Like /docs, the page itself needs no API
key; the API calls it makes do (it asks for a key and keeps it in sessionStorage).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response

from app.errors import ApiError

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
_MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: a new release is picked up at once
}

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def assets() -> dict[str, tuple[bytes, str]]:
    """{file name: (content, media type)} of the page's files, read once."""
    return {
        p.name: (p.read_bytes(), f"{_MEDIA_TYPES[p.suffix]}; charset=utf-8")
        for p in sorted(UI_DIR.iterdir())
        if p.is_file() and p.suffix in _MEDIA_TYPES
    }


def _file(name: str) -> Response:
    found = assets().get(name)
    if found is None:
        raise ApiError("not_found", f"no such file of the web page: {name[:100]!r}", {})
    content, media_type = found
    return Response(content, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/ui")
async def read_ui() -> Response:
    return _file("index.html")


@router.get("/ui/{name}")
async def read_ui_asset(name: str) -> Response:
    return _file(name)


def install_ui(app: FastAPI) -> None:
    app.include_router(router)

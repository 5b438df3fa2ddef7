"""/docs (Swagger UI) and /redoc, served entirely from this server.

The assets are the ones the installed fastapi-offline package ships. Its ReDoc
bundle still loads the "API docs by Redocly" footer logo from cdn.redoc.ly: offline
that is a broken image, on a locked-down network a request to the outside world.
So that one file is served through a route that points the URL at the local favicon;
the route is registered before the static mount and therefore wins.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static-offline-docs"
_ASSETS = Path(fastapi_offline.__file__).parent / "static"
_EXTERNAL_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    return request.scope.get("root_path", "")


@router.get("/docs")
async def read_swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
    )


@router.get("/docs/oauth2-redirect")
async def read_swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def read_redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
        with_google_fonts=False,
    )


@lru_cache(maxsize=1)
def _redoc_js() -> bytes:
    return (_ASSETS / "redoc.standalone.js").read_bytes().replace(_EXTERNAL_LOGO, f"{STATIC_URL}/favicon.png".encode())


@router.get(f"{STATIC_URL}/redoc.standalone.js")
async def read_redoc_js() -> Response:
    return Response(_redoc_js(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"})


def install_docs(app: FastAPI) -> None:
    """The docs routes, then the static assets (after them, so the patched ReDoc wins)."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=_ASSETS), name="static-offline-docs")

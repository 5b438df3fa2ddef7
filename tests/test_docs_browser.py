"""/docs and /redoc render their endpoint list in headless Chromium with no request
leaving the machine: the offline-docs promise, checked in a real browser.

Chromium runs with every host name except 127.0.0.1 resolving to nothing, so a page
that still needs a CDN renders blank (and fails the DOM check); its net log tells
which requests the page itself made, and each must go to our server.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cdp import CHROMIUM, ISOLATED, require_chromium


@pytest.fixture(autouse=True)
def _chromium() -> None:
    """Skip without chromium, except in CI (CI=true), where that fails."""
    require_chromium()


STATIC_PREFIX = "/static-offline-docs"
CHROMIUM_FLAGS = [
    *ISOLATED,
    # virtual time lets the single-page apps finish rendering before the DOM is dumped
    "--virtual-time-budget=8000",
]


@dataclass
class DocsServer:
    url: str
    openapi: dict[str, Any]
    paths_served: list[str] = field(default_factory=list)


@dataclass
class Rendered:
    dom: str  # unescaped, so summaries compare as plain text
    page_requests: list[str]  # URLs the page itself asked for (not Chromium's own background traffic)


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsServer]:
    from app.main import create_app
    from core.settings import Settings
    from tests.live_server import live_server

    # no model is needed to serve the docs: an empty model folder keeps this test fast
    settings = Settings(
        _env_file=None,
        model_dir=tmp_path_factory.mktemp("no-models"),
        key_prefix="test-docs-browser",
        device="cpu",
        log_level="WARNING",
    )
    app = create_app(settings)
    served: list[str] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            served.append(scope["path"])
        await app(scope, receive, send)

    with live_server(recording) as url:
        yield DocsServer(url, app.openapi(), served)


def render(url: str, workdir: Path) -> Rendered:
    net_log = workdir / "net.json"
    cmd = [
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={workdir / 'profile'}",
        f"--log-net-log={net_log}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"chromium failed: {proc.stderr[-2000:]}"
    origin = re.match(r"https?://[^/]+", url).group(0)  # type: ignore[union-attr]
    return Rendered(html.unescape(proc.stdout), page_requests(net_log, origin, url))


def page_requests(net_log: Path, origin: str, page: str) -> list[str]:
    """URLs started on behalf of the page: the navigation, and every request whose
    initiator is the page's origin (browser background traffic has none)."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if (
            event["type"] == start_job
            and "url" in params
            and (params.get("initiator") == origin or params["url"] == page)
        ):
            urls.append(params["url"])
    return urls


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (path, method, op["summary"])
        for path, item in openapi["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "delete", "patch")
    ]


def assert_local_only(rendered: Rendered, server: DocsServer) -> None:
    outside = [u for u in rendered.page_requests if not u.startswith(server.url + "/")]
    assert not outside, f"the page requested URLs outside our server: {outside}"


def test_every_operation_has_a_summary_to_render(docs_server: DocsServer) -> None:
    ops = operations(docs_server.openapi)
    assert {"/regenerate", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/results", "/models", "/healthz"} <= {
        p for p, _, _ in ops
    }
    assert all(summary for _, _, summary in ops)


def test_swagger_ui_renders_every_operation_from_our_own_assets(docs_server: DocsServer, tmp_path: Path) -> None:
    rendered = render(f"{docs_server.url}/docs", tmp_path)
    for path, method, summary in operations(docs_server.openapi):
        assert f'data-path="{path}"' in rendered.dom, f"{method.upper()} {path} is not in the rendered list"
        assert summary in rendered.dom, f"summary of {method.upper()} {path} not rendered: {summary!r}"
    assert_local_only(rendered, docs_server)
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"{STATIC_PREFIX}/{asset}" in docs_server.paths_served
    assert f"{docs_server.url}/openapi.json" in rendered.page_requests


def test_redoc_renders_every_operation_from_our_own_assets(docs_server: DocsServer, tmp_path: Path) -> None:
    rendered = render(f"{docs_server.url}/redoc", tmp_path)
    for path, method, summary in operations(docs_server.openapi):
        assert summary in rendered.dom, f"summary of {method.upper()} {path} not rendered: {summary!r}"
        assert path in rendered.dom, f"{method.upper()} {path} not rendered"
    assert_local_only(rendered, docs_server)
    assert f"{STATIC_PREFIX}/redoc.standalone.js" in docs_server.paths_served


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_no_external_host(docs_server: DocsServer, page: str) -> None:
    body = httpx.get(docs_server.url + page, timeout=10).text
    refs = re.findall(r"""(?:src|href)\s*=\s*["'](https?://[^"']+)""", body) + re.findall(
        r"url\((https?://[^)]+)", body
    )
    external = [r for r in refs if not re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", r)]
    assert not external, f"{page} references external assets: {external}"

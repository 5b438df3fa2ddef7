"""Offline docs and a complete OpenAPI schema: local assets only, examples everywhere,
every error answer documented with the ErrorResponse model."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_support import api_client, model_dir_with, settings_for

pytestmark = pytest.mark.anyio
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(tiny_bundle: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # keys on: docs and schema must still be reachable without one
    async with api_client(settings_for(model_dir_with(tiny_bundle, tmp_path), api_keys=["k"])) as c:
        yield c


@pytest.fixture
async def schema(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, m, op) for path, item in schema["paths"].items() for m, op in item.items() if m in HTTP_METHODS]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_every_asset_from_this_server(client: httpx.AsyncClient, page: str) -> None:
    r = await client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    assert not re.search(r"https?://|//cdn|cdn\.jsdelivr|unpkg|googleapis", html), "external URL in docs HTML"
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""(?:url|spec-url)\s*:\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""spec-url=["']([^"']+)["']""", html)
    assert any(u.endswith(".js") for u in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200 and asset.content, url
        assert b"cdn.redoc.ly" not in asset.content, url  # ReDoc's footer logo, rewired to a local file


async def test_every_operation_has_request_and_response_examples(schema: dict[str, Any]) -> None:
    ops = operations(schema)
    assert {p for p, _, _ in ops} >= {"/regenerate", "/models", "/healthz", "/readyz", "/metrics", "/jobs"}
    for path, method, op in ops:
        where = f"{method.upper()} {path}"
        body = op.get("requestBody", {}).get("content", {})
        for media in body.values():
            has_example = "example" in media or "examples" in media or "examples" in media.get("schema", {})
            assert has_example, f"{where}: request body without an example"
        for status, response in op["responses"].items():
            for mtype, media in response.get("content", {}).items():
                assert "example" in media or "examples" in media, f"{where} {status} {mtype}: no example"


async def test_every_error_response_uses_the_error_model(schema: dict[str, Any]) -> None:
    for path, method, op in operations(schema):
        errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
        assert "500" in errors, f"{method} {path}"
        for status, response in errors.items():
            ref = response["content"]["application/json"]["schema"].get("$ref", "")
            assert ref.endswith("/ErrorResponse"), f"{method.upper()} {path} {status}: {ref}"


async def test_protected_operations_declare_the_api_key_schemes(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    for path, method, op in operations(schema):
        public = path in ("/healthz", "/readyz", "/metrics")
        assert bool(op.get("security")) != public, f"{method} {path}"
        if not public:
            assert "401" in op["responses"], f"{method} {path}"

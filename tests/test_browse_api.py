"""The endpoints the web page is built on: model details, catalogue search and lookup,
sample users, titles in /regenerate answers, each caller's job list, and /ui itself."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.routes.ui import UI_DIR
from models.output import named_items
from tests.api_support import api_client, closed_port_url, delete_prefix, settings_for
from tests.ui_support import HOSTILE_TITLE, titled_model_dir

pytestmark = pytest.mark.anyio
KEY = {"Authorization": "Bearer key-a"}
OTHER_KEY = {"X-API-Key": "key-b"}


@pytest.fixture(scope="module")
def model_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return titled_model_dir(tiny_bundle, tmp_path_factory.mktemp("browse"))


@pytest.fixture(scope="module")
def manifest(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "tiny" / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture
async def client(model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(model_dir, api_keys=["key-a", "key-b"])
    try:
        async with api_client(settings) as c:
            yield c
    finally:
        delete_prefix(settings.key_prefix)


async def test_model_detail_adds_checksum_titles_and_samples(
    client: httpx.AsyncClient, model_dir: Path, manifest: dict[str, Any]
) -> None:
    r = await client.get("/models/tiny", headers=KEY)
    assert r.status_code == 200, r.text
    body = r.json()
    listed = (await client.get("/models", headers=KEY)).json()["models"][0]
    assert {k: body[k] for k in listed} == listed
    assert body["bundle_sha256"] == hashlib.sha256((model_dir / "tiny" / "manifest.json").read_bytes()).hexdigest()
    assert body["titled_items"] == len(manifest["catalogue"]["item_ids"])
    assert body["sample_users"] == len(manifest["samples"]["users"]) > 0
    assert body["created_at"] == manifest["created_at"]
    r = await client.get("/models/nope", headers=KEY)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"


async def test_search_ranks_exact_id_then_title_then_prefixes(
    client: httpx.AsyncClient, manifest: dict[str, Any]
) -> None:
    cat = manifest["catalogue"]
    first = cat["item_ids"][0]
    r = await client.get("/models/tiny/items", params={"q": first}, headers=KEY)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items[0] == {"id": first, "domain": cat["domains"][0], "title": cat["titles"][first], "genres": ["genre 0"]}
    by_title = await client.get("/models/tiny/items", params={"q": cat["titles"][first].upper()}, headers=KEY)
    assert by_title.json()["items"][0]["id"] == first
    film = (await client.get("/models/tiny/items", params={"q": "film", "limit": 3}, headers=KEY)).json()
    assert len(film["items"]) == 3 and film["total"] == len(cat["item_ids"]) - 1  # all but the hostile title
    domain = cat["domains"][2]
    only = (await client.get("/models/tiny/items", params={"domain": domain, "limit": 50}, headers=KEY)).json()
    assert {i["domain"] for i in only["items"]} == {domain} and only["total"] == cat["offsets"][3] - cat["offsets"][2]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"domain": "Toys"}, 422, "unknown_domain"),
        ({"limit": 51}, 422, "validation_error"),
        ({"q": "x" * 501}, 422, "validation_error"),
    ],
)
async def test_bad_searches_get_the_one_error_shape(
    client: httpx.AsyncClient, params: dict[str, Any], status: int, code: str
) -> None:
    r = await client.get("/models/tiny/items", params=params, headers=KEY)
    assert r.status_code == status and r.json()["error"]["code"] == code


async def test_lookup_resolves_ids_and_exact_titles_in_order(
    client: httpx.AsyncClient, manifest: dict[str, Any]
) -> None:
    cat = manifest["catalogue"]
    a, b = cat["item_ids"][0], cat["item_ids"][1]
    terms = [a, f"  {cat['titles'][a].swapcase()} ", "no such item", HOSTILE_TITLE, b]
    r = await client.post("/models/tiny/items/lookup", json={"terms": terms}, headers=KEY)
    assert r.status_code == 200, r.text
    assert [m and m["id"] for m in r.json()["matches"]] == [a, a, None, b, b]
    for body, code in [({"terms": []}, "validation_error"), ({"terms": ["a"], "x": 1}, "validation_error")]:
        r = await client.post("/models/tiny/items/lookup", json=body, headers=KEY)
        assert r.status_code == 422 and r.json()["error"]["code"] == code
    r = await client.post(
        "/models/tiny/items/lookup", content=b"{", headers={**KEY, "Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422) and "error" in r.json()


async def test_samples_are_the_bundles_own(client: httpx.AsyncClient, manifest: dict[str, Any]) -> None:
    r = await client.get("/models/tiny/samples", headers=KEY)
    users = r.json()["users"]
    assert [u["user_id"] for u in users] == manifest["samples"]["users"]
    assert [u["items"] for u in users] == manifest["samples"]["items"]


async def test_regenerate_adds_titles_only_when_asked_and_decides_the_same(
    client: httpx.AsyncClient, manifest: dict[str, Any]
) -> None:
    items = manifest["samples"]["items"][0]
    body = {"target_domain": manifest["catalogue"]["domains"][1], "sequences": [{"items": items}]}
    plain = (await client.post("/regenerate", json=body, headers=KEY)).json()
    titled_body = {**body, "options": {"include_titles": True, "explain": True}}
    titled = (await client.post("/regenerate", json=titled_body, headers=KEY)).json()
    assert "titles" not in plain["results"][0]
    result = titled["results"][0]
    assert [d["action"] for d in result["decisions"]] == [d["action"] for d in plain["results"][0]["decisions"]]
    assert any("explain" in d for d in result["decisions"])
    named = set(named_items(result))  # decisions, replacements and every candidate
    assert set(result["titles"]) == named
    assert all(result["titles"][i] == manifest["catalogue"]["titles"][i] for i in named)


async def test_each_caller_lists_only_its_own_jobs_newest_first(client: httpx.AsyncClient) -> None:
    body = {"target_domain": "x", "sequences": [{"items": ["2-0", "0-1"]}], "options": {"unknown_items": "drop"}}
    ids = []
    for headers in (KEY, KEY, OTHER_KEY):
        r = await client.post("/jobs", json=body, headers=headers)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    mine = (await client.get("/jobs", headers=KEY)).json()["jobs"]
    assert [j["id"] for j in mine] == [ids[1], ids[0]]
    assert mine[0]["status"] == "queued" and mine[0]["links"]["results"] == f"/jobs/{ids[1]}/results"
    assert [j["id"] for j in (await client.get("/jobs", params={"limit": 1}, headers=KEY)).json()["jobs"]] == [ids[1]]
    assert [j["id"] for j in (await client.get("/jobs", headers=OTHER_KEY)).json()["jobs"]] == [ids[2]]
    assert (await client.get("/jobs")).status_code == 401


async def test_the_job_list_says_redis_is_down_while_models_still_answer(model_dir: Path) -> None:
    async with api_client(settings_for(model_dir, redis_url=closed_port_url())) as c:
        r = await c.get("/jobs")
        assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable"
        assert (await c.get("/models/tiny")).status_code == 200


async def test_the_page_and_its_files_need_no_key_and_name_no_other_host(client: httpx.AsyncClient) -> None:
    page = await client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page.text)
    assert refs and not [r for r in refs if "//" in r]
    for name in sorted(p.name for p in UI_DIR.iterdir()):
        asset = await client.get(f"/ui/{name}")
        assert asset.status_code == 200, name
        assert not re.search(rb"https?://(?!127\.0\.0\.1|localhost)", asset.content), f"{name} names another host"
    for missing in ("nope.js", "..%2Fmain.py", "index.html%00"):
        r = await client.get(f"/ui/{missing}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_the_wheel_ships_the_page(tmp_path: Path) -> None:
    """`pip install` of the project brings app/ui/ along: the page is package data."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a build writes build/ and *.egg-info next to its sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    for package in ("app", "core", "models", "workers"):
        shutil.copytree(root / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run(
        [*cmd, "-w", str(tmp_path / "out"), str(src)], check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull}
    )
    (wheel,) = (tmp_path / "out").glob("taesar_service-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {Path(n).name for n in z.namelist() if n.startswith("app/ui/")}
    assert shipped == {p.name for p in UI_DIR.iterdir() if p.suffix in (".html", ".css", ".js")}

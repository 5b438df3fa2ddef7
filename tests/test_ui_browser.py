"""The web page (/ui) in headless Chromium, against a real server: shared URLs render the
API's own decisions, explanations toggle, jobs run to 100% and download, keys and bad
input end in readable messages, and every control is reachable by keyboard.

Chromium resolves no host but 127.0.0.1 (tests/cdp.py), and each test checks that the
page asked for nothing outside the server. The tiny bundle gets titles (tests/ui_support.py),
one of them markup that must show as text. Without chromium these tests skip, except in
CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.api_support import REDIS_URL, closed_port_url, delete_prefix
from tests.cdp import Browser, Page, browser, require_chromium, wait_until
from tests.ui_support import HOSTILE_TITLE, titled_model_dir

API_KEY = "ui-browser-key"


@dataclass
class Server:
    url: str
    settings: Any
    requests: list[str] = field(default_factory=list)  # "METHOD /path?query", as received
    faults: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # "POST /regenerate" -> answer

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {API_KEY}"} if self.settings.api_keys else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)


@contextmanager
def serve(model_dir: Path, **overrides: Any) -> Iterator[Server]:
    """The app in a uvicorn thread, behind a recorder that can also answer with an injected error."""
    from fastapi.responses import JSONResponse

    from app.main import create_app
    from tests.api_support import settings_for
    from tests.live_server import live_server

    settings = settings_for(model_dir, key_prefix=f"test-ui-{uuid.uuid4().hex[:8]}", **overrides)
    app = create_app(settings)
    server = Server("", settings)

    async def recorder(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").decode()
            server.requests.append(f"{scope['method']} {scope['path']}{'?' + query if query else ''}")
            fault = server.faults.get(f"{scope['method']} {scope['path']}")
            if fault is not None:
                status, code, retry_after = fault
                body = {"error": {"code": code, "message": f"injected {code}", "details": {}}}
                await JSONResponse(body, status, headers={"Retry-After": retry_after})(scope, receive, send)
                return
        await app(scope, receive, send)

    try:
        with live_server(recorder) as url:
            server.url = url
            yield server
    finally:
        if settings.redis_url == REDIS_URL:
            delete_prefix(settings.key_prefix)


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium()


@pytest.fixture(scope="module")
def model_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return titled_model_dir(tiny_bundle, tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def manifest(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "tiny" / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def server(model_dir: Path, chromium: str) -> Iterator[Server]:
    with serve(model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def chrome(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with browser(tmp_path_factory.mktemp("chromium"), chromium) as b:
        yield b


@pytest.fixture
def page(chrome: Browser) -> Iterator[Page]:
    p = chrome.new_page()
    yield p
    assert p.console_errors() == []
    p.close()


def items_of(manifest: dict[str, Any]) -> list[str]:
    """A sample user's items, then the item with the markup title and an item repeated."""
    items = manifest["samples"]["items"][0][:10]
    return [*items, manifest["catalogue"]["item_ids"][1], items[0]]


def ui_url(server: Server, target: str, items: list[str], **extra: str) -> str:
    query = f"model=tiny&target={quote(target)}&items={','.join(quote(i, safe='') for i in items)}"
    return f"{server.url}/ui?{query}" + "".join(f"&{k}={v}" for k, v in extra.items())


def decisions_on(page: Page) -> list[tuple[int, str]]:
    page.wait_for("document.querySelectorAll('[data-action]').length > 0", what="the decisions")
    shown = page.eval(
        "[...document.querySelectorAll('[data-action]')].map(e => [Number(e.dataset.position), e.dataset.action])"
    )
    return [tuple(d) for d in shown]


def only_local(page: Page, server: Server) -> None:
    outside = [u for u in page.requested_urls() if not u.startswith(server.url + "/") and not u.startswith("blob:")]
    assert not outside, f"the page asked for URLs outside the server: {outside}"


# -- the regenerate view -----------------------------------------------------------------------


@pytest.mark.parametrize("target_index", [0, 1])
def test_a_shared_url_renders_the_apis_decisions_with_titles(
    page: Page, server: Server, manifest: dict[str, Any], target_index: int
) -> None:
    target = manifest["catalogue"]["domains"][target_index]
    items = items_of(manifest)
    page.goto(ui_url(server, target, items))
    shown = decisions_on(page)
    api = server.api("POST", "/regenerate", json={"target_domain": target, "sequences": [{"items": items}]}).json()
    assert shown == [(d["position"], d["action"]) for d in api["results"][0]["decisions"]]
    assert len(shown) == len(items)
    text = page.eval("document.querySelector('.decisions').innerText")
    titles = manifest["catalogue"]["titles"]
    assert titles[items[0]] in text and HOSTILE_TITLE in text  # markup shown as text
    assert page.eval("document.body.dataset.hacked") is None
    regenerated = page.eval("[...document.querySelectorAll('ol[aria-label^=Regenerated] .chip')].length")
    assert regenerated == len(api["results"][0]["sequence"])
    only_local(page, server)


def test_the_explanation_toggles_and_the_url_keeps_it(page: Page, server: Server, manifest: dict[str, Any]) -> None:
    target = manifest["catalogue"]["domains"][0]
    page.goto(ui_url(server, target, items_of(manifest)))
    decisions_on(page)
    position = page.eval("Number(document.querySelector('.toggle').closest('[data-position]').dataset.position)")
    toggle = f"#decision-{position} .toggle"
    page.click(toggle)
    page.wait_for(f"!document.getElementById('explain-{position}').hidden", what="the explanation")
    page.wait_for(f"document.querySelectorAll('#explain-{position} tbody tr').length >= 2", what="candidate rows")
    assert page.eval(f"document.querySelector('{toggle}').getAttribute('aria-expanded')") == "true"
    assert page.eval("location.search").endswith(f"&open={position}")
    verdict = page.eval(f"document.querySelector('#explain-{position} p').innerText")
    action = page.eval(f"document.getElementById('decision-{position}').dataset.action")
    assert ("replaced" in verdict) == (action == "replace"), verdict
    shared = page.eval("location.href")
    page.click(toggle)
    page.wait_for(f"document.getElementById('explain-{position}').hidden", what="the explanation to close")
    assert "open=" not in page.eval("location.search")
    page.goto(shared)  # a shared URL opens with the explanation shown
    page.wait_for(f"document.querySelectorAll('#explain-{position} tbody tr').length >= 2", what="it, shared")


def test_search_paste_and_samples_build_the_sequence(page: Page, server: Server, manifest: dict[str, Any]) -> None:
    cat = manifest["catalogue"]
    page.goto(f"{server.url}/ui?model=tiny")
    page.wait_for("!!document.getElementById('item-search')")
    page.focus("#item-search")
    page.type_text(cat["titles"][cat["item_ids"][5]])
    page.wait_for("document.querySelectorAll('.search-results button').length > 0", what="search results")
    page.press("Enter", key_code=13)
    page.wait_for("document.querySelectorAll('.sequence-editor .chip').length === 1", what="the searched item")
    page.focus("#paste")
    page.type_text(f"{cat['titles'][cat['item_ids'][7]].upper()}\n{cat['item_ids'][8]}, nonsense")
    page.click(".sequence-editor .field:nth-child(2) button")
    page.wait_for("document.querySelectorAll('.sequence-editor .chip').length === 3", what="the pasted items")
    assert "nonsense" in page.wait_for("document.getElementById('notice').innerText")
    assert page.eval("location.search").endswith(",".join(cat["item_ids"][i] for i in (5, 7, 8)))
    page.wait_for("!document.getElementById('sample-user').disabled")
    page.eval("document.querySelector('#sample-user').closest('.field').querySelector('button').click()")
    assert len(decisions_on(page)) == len(manifest["samples"]["items"][0])


def test_keyboard_reaches_every_control_with_a_visible_focus(
    page: Page, server: Server, manifest: dict[str, Any]
) -> None:
    page.goto(ui_url(server, manifest["catalogue"]["domains"][0], items_of(manifest)[:4]))
    decisions_on(page)
    seen = []
    for _ in range(60):
        page.press("Tab", key_code=9)
        focused = page.eval(
            "(() => { const e = document.activeElement, s = getComputedStyle(e);"
            " return {tag: e.tagName, id: e.id, cls: e.className, text: (e.innerText || '').slice(0, 30),"
            " outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2}; })()"
        )
        seen.append(focused)
    assert all(f["outline"] for f in seen if f["tag"] != "BODY"), [f for f in seen if not f["outline"]]
    reached = {f["id"] or f["text"] or f["cls"] for f in seen}
    assert {"Skip to content", "Model", "model", "target", "item-search", "paste", "regenerate-button"} <= reached
    assert any(f["cls"].startswith("small toggle") for f in seen) and any("chip-remove" in f["cls"] for f in seen)


# -- bad input and a struggling service ---------------------------------------------------------


def notice_text(page: Page) -> str:
    return page.wait_for("!document.getElementById('notice').hidden && document.getElementById('notice').innerText")


def test_unknown_items_and_an_empty_sequence_are_explained(
    page: Page, server: Server, manifest: dict[str, Any]
) -> None:
    target = manifest["catalogue"]["domains"][0]
    items = manifest["samples"]["items"][0][:3]
    page.goto(ui_url(server, target, [*items, "no-such-item"]))
    text = notice_text(page)
    assert "“no-such-item” at position 3 is not in this model's catalogue" in text
    page.wait_for("document.querySelectorAll('.chip.unknown').length === 1", what="the unknown chip")
    assert page.eval("document.querySelectorAll('[data-action]').length") == 0
    page.goto(f"{server.url}/ui?model=tiny&target={quote(target)}")
    page.wait_for("!!document.getElementById('regenerate-button')")
    page.click("#regenerate-button")
    assert "Add at least one item" in notice_text(page)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(429, "queue_full", "The service is busy"), (503, "model_not_ready", "The model is not ready")],
)
def test_a_busy_or_unready_service_gets_a_message_and_a_retry(
    page: Page, server: Server, manifest: dict[str, Any], status: int, code: str, expected: str
) -> None:
    server.faults["POST /regenerate"] = (status, code, "7")
    try:
        page.goto(ui_url(server, manifest["catalogue"]["domains"][0], items_of(manifest)))
        text = notice_text(page)
        assert expected in text and "Try again in 7 s." in text
        assert page.eval("document.querySelector('main').innerText").strip()  # never a blank page
    finally:
        server.faults.clear()
    page.eval("[...document.querySelectorAll('#notice button')].find(b => b.innerText === 'Try again').click()")
    assert len(decisions_on(page)) == len(items_of(manifest))


def test_without_redis_regenerate_and_model_work_and_jobs_say_unavailable(
    model_dir: Path, chrome: Browser, manifest: dict[str, Any]
) -> None:
    with serve(model_dir, redis_url=closed_port_url()) as s:
        page = chrome.new_page()
        page.goto(ui_url(s, manifest["catalogue"]["domains"][0], items_of(manifest)))
        assert len(decisions_on(page)) == len(items_of(manifest))
        page.click(".tab[data-view=model]")
        page.wait_for("document.querySelectorAll('figure.hist').length === 3", what="the histograms")
        page.click(".tab[data-view=jobs]")
        text = page.wait_for(
            "document.querySelector('.job-unavailable') && document.querySelector('.job-unavailable').innerText"
        )
        assert text.startswith("Jobs are unavailable.") and "Redis" in text
        only_local(page, s)
        page.close()


# -- the API key --------------------------------------------------------------------------------


def test_a_missing_or_wrong_key_is_asked_for_and_never_lands_in_a_url(
    model_dir: Path, chrome: Browser, manifest: dict[str, Any]
) -> None:
    with serve(model_dir, api_keys=[API_KEY]) as s:
        page = chrome.new_page()
        page.goto(ui_url(s, manifest["catalogue"]["domains"][0], items_of(manifest)))
        message = page.wait_for(
            "!document.getElementById('key-panel').hidden && document.getElementById('key-message').innerText"
        )
        assert "needs an API key" in message
        assert page.eval("document.activeElement.id") == "api-key"
        for key, expected in [("wrong-key", "was refused"), (API_KEY, None)]:
            page.focus("#api-key")
            page.type_text(key)
            page.press("Enter", key_code=13)
            if expected:
                page.wait_for(f"document.getElementById('key-message').innerText.includes('{expected}')")
        assert len(decisions_on(page)) == len(items_of(manifest))
        assert page.eval("sessionStorage.getItem('taesar.apiKey')") == API_KEY
        assert page.eval("localStorage.length") == 0
        for where in (s.requests, page.requested_urls(), [page.eval("location.href")]):
            assert not [u for u in where if API_KEY in u or "wrong-key" in u]
        page.close()


# -- jobs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(server: Server) -> Iterator[None]:
    from tests.live_server import celery_worker

    s = server.settings
    env = {
        "TAESAR_MODEL_DIR": str(s.model_dir),
        "TAESAR_REDIS_URL": s.redis_url,
        "TAESAR_KEY_PREFIX": s.key_prefix,
        "TAESAR_DEVICE": "cpu",
        "TAESAR_LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
    }
    with celery_worker({**os.environ, **env}, f"{s.key_prefix}.chunks"):
        yield


def test_a_jobs_progress_reaches_100_percent_and_its_downloads_work(
    page: Page, server: Server, worker: None, tmp_path: Path
) -> None:
    page.allow_downloads(tmp_path)
    page.goto(f"{server.url}/ui?view=jobs&model=tiny")
    page.wait_for("!!document.querySelector('#job-list table, #job-list p')")
    page.click("#queue-job")
    job = page.wait_for("document.querySelector('tr.job') && document.querySelector('tr.job').dataset.job")
    row = f"document.querySelector('tr.job[data-job=\"{job}\"]')"
    page.wait_for(f"{row}.dataset.percent === '100' && {row}.dataset.status === 'succeeded'", timeout=90)
    assert page.eval(f"{row}.querySelector('progress').value") == page.eval(f"{row}.querySelector('progress').max")
    for act, name, fmt in [
        ("download-jsonl", f"{job}.jsonl", "jsonl"),
        ("download-recbole", f"{job}.inter", "recbole"),
    ]:
        page.eval(f"{row}.querySelector('[data-act={act}]').click()")
        got = wait_until(lambda n=name: (tmp_path / n).is_file() and (tmp_path / n).stat().st_size, 30, name)
        expected = server.api("GET", f"/jobs/{job}/results", params={"format": fmt}).content
        assert got == len(expected) and (tmp_path / name).read_bytes() == expected
    lines = [json.loads(x) for x in (tmp_path / f"{job}.jsonl").read_text().splitlines()]
    assert lines and all("titles" in line for line in lines)  # the form asks for titles
    only_local(page, server)


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.cdp as cdp

    monkeypatch.setattr(cdp, "CHROMIUM", None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        cdp.require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        cdp.require_chromium()

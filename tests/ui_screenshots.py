"""Screenshots of the web page's three views, for README: `make screenshots`.

Serves a bundle (by default `make demo`'s ml100k bundle) with a real API, Redis and one
worker, opens /ui in headless Chromium (tests/cdp.py) and saves docs/ui-regenerate.png,
docs/ui-model.png and docs/ui-jobs.png. On the way it checks what README promises of
the regenerate view: a shared URL of a user's whole sequence shows one decision element
per item, the API's own decisions, with the items' titles.

    python -m tests.ui_screenshots --bundle runs/ml100k/bundle --out docs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.cdp import Page, browser

SHOWN_ITEMS = 14  # of the sample user, in the regenerate screenshot (the check uses them all)


def check_bundle(bundle: Path) -> dict[str, Any]:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    if not manifest["catalogue"].get("titles") or not manifest.get("samples"):
        sys.exit(f"{bundle} has no item titles or sample users: train it again with this version (make demo)")
    return manifest


def regenerate_view(page: Page, url: str, target: str, items: list[str]) -> list[str]:
    query = f"model=ml100k&target={quote(target)}&items={','.join(quote(i, safe='') for i in items)}"
    page.goto(f"{url}/ui?{query}")
    page.wait_for(f"document.querySelectorAll('[data-action]').length === {len(items)}", what="the decisions")
    return page.eval("[...document.querySelectorAll('[data-action]')].map(e => e.dataset.action)")


def check_shared_url(page: Page, url: str, target: str, user: dict[str, Any], titles: dict[str, str]) -> None:
    """A whole user's sequence: one data-action element per item, equal to POST /regenerate, with titles."""
    shown = regenerate_view(page, url, target, user["items"])
    body = {"target_domain": target, "sequences": [{"items": user["items"]}]}
    api = httpx.post(f"{url}/regenerate", json=body, timeout=60).json()["results"][0]
    assert shown == [d["action"] for d in api["decisions"]], "the page's decisions differ from the API's"
    text = page.eval("document.querySelector('.decisions').innerText")
    missing = [i for i in user["items"] if titles.get(i) and titles[i] not in text]
    assert not missing, f"titles not shown for {missing[:5]}"
    print(f"checked: user {user['user_id']}, {len(shown)} items, decisions equal to the API's, titles shown")


def shoot_regenerate(page: Page, url: str, target: str, user: dict[str, Any], out: Path) -> None:
    items = user["items"][:SHOWN_ITEMS]
    regenerate_view(page, url, target, items)
    toggle = "[...document.querySelectorAll('[data-action=replace] .toggle')][0]"
    page.eval(f"{toggle}.click()")
    page.wait_for("document.querySelectorAll('.explain:not([hidden]) tbody tr').length > 0", what="an explanation")
    page.eval("document.activeElement.blur()")
    page.screenshot(out / "ui-regenerate.png")


def shoot_model(page: Page, url: str, target: str, out: Path) -> None:
    page.goto(f"{url}/ui?view=model&model=ml100k&target={quote(target)}")
    page.wait_for("document.querySelectorAll('figure.hist').length === 3", timeout=120, what="the histograms")
    page.screenshot(out / "ui-model.png")


def shoot_jobs(page: Page, url: str, targets: list[str], samples: list[dict[str, Any]], out: Path) -> None:
    for target in targets:
        body = {"target_domain": target, "sequences": samples, "options": {"include_titles": True}}
        job = httpx.post(f"{url}/jobs", json=body, timeout=60).json()
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/jobs/{job['id']}", timeout=30).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, f"job {job['id']} did not finish"
            time.sleep(0.5)
    page.goto(f"{url}/ui?view=jobs&model=ml100k&target={quote(targets[0])}")
    page.wait_for(f"document.querySelectorAll('tr.job[data-percent=\"100\"]').length >= {len(targets)}", what="jobs")
    page.screenshot(out / "ui-jobs.png")


def run(bundle: Path, out: Path, target: str) -> None:
    from app.main import create_app
    from core.settings import Settings
    from tests.live_server import celery_worker, live_server

    manifest = check_bundle(bundle)
    stored = manifest["samples"]
    samples = [{"user_id": u, "items": i} for u, i in zip(stored["users"], stored["items"], strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        (models / "ml100k").symlink_to(bundle.resolve())
        env = {
            "TAESAR_MODEL_DIR": str(models),
            "TAESAR_KEY_PREFIX": f"screenshots-{uuid.uuid4().hex[:8]}",
            "TAESAR_REDIS_URL": os.environ.get("TAESAR_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "TAESAR_DEVICE": "cpu",
            "TAESAR_LOG_LEVEL": "WARNING",
        }
        settings = Settings(_env_file=None, **{k.removeprefix("TAESAR_").lower(): v for k, v in env.items()})
        with (
            live_server(create_app(settings)) as url,
            celery_worker({**os.environ, **env}, f"{env['TAESAR_KEY_PREFIX']}.chunks"),
            browser(Path(tmp), width=1280, height=900) as chrome,
        ):
            page = chrome.new_page()
            check_shared_url(page, url, target, samples[0], manifest["catalogue"]["titles"])
            shoot_regenerate(page, url, target, samples[0], out)
            shoot_model(page, url, target, out)
            others = [d for d in manifest["catalogue"]["domains"] if d != target]
            shoot_jobs(page, url, [target, others[0]], samples, out)
            assert page.console_errors() == [], page.console_errors()
        from tests.api_support import delete_prefix

        delete_prefix(env["TAESAR_KEY_PREFIX"], env["TAESAR_REDIS_URL"])
    print(f"wrote {', '.join(str(out / n) for n in ('ui-regenerate.png', 'ui-model.png', 'ui-jobs.png'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/ml100k/bundle"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--target", default="drama")
    args = parser.parse_args()
    run(args.bundle, args.out, args.target)


if __name__ == "__main__":
    main()

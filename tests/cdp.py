"""Headless Chromium driven over the Chrome DevTools Protocol, for the browser tests and
the screenshots of the web page.

Chromium runs with every host name except 127.0.0.1 resolving to nothing (ISOLATED, which
tests/test_docs_browser.py uses too), so a page that needed another host would break visibly;
each page also records every URL it requests. One websocket to the browser carries all
pages (flat sessions); `websockets`' synchronous client is all it takes.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# headless, quiet, and nothing but loopback resolves: an external asset cannot load, even
# by accident (the /docs test runs Chromium with these too)
ISOLATED = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--no-first-run",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-component-update",
    "--disable-background-networking",
    "--disable-features=AutofillServerCommunication,OptimizationHints,Translate,MediaRouter",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
FLAGS = [
    *ISOLATED,
    "--remote-debugging-port=0",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--lang=en-US",
]


def require_chromium() -> str:
    """The chromium executable; skips without one, except in CI (CI=true), where a missing
    browser is a failed setup step, never a silent skip (.ci/run installs it)."""
    if CHROMIUM is None:
        why = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return CHROMIUM


class CdpError(RuntimeError):
    pass


class Browser:
    """One Chromium process and its DevTools websocket."""

    def __init__(self, executable: str, workdir: Path, *, width: int = 1280, height: int = 900) -> None:
        profile = workdir / "profile"
        self.log = workdir / "chromium.log"
        self.size = (width, height)
        cmd = [executable, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        port, path = self._endpoint(profile / "DevToolsActivePort")
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30))
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def _endpoint(self, file: Path, timeout: float = 60) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CdpError(f"chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            lines = file.read_text().split("\n") if file.is_file() else []
            if len(lines) >= 2 and lines[1]:
                return lines[0], lines[1]
            time.sleep(0.1)
        raise CdpError("chromium did not open its DevTools port")

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """One command; events that arrive meanwhile are kept in `events`."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        for domain in ("Page", "Runtime", "Network"):
            page.send(f"{domain}.enable")
        width, height = self.size
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    def close(self) -> None:
        with suppress(Exception):  # already gone
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._stack.close()


class Page:
    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser, self.session, self.target = browser, session, target

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def _events(self, method: str) -> list[dict[str, Any]]:
        return [e for e in self.browser.events if e.get("sessionId") == self.session and e["method"] == method]

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self._events("Network.requestWillBeSent")]

    def console_errors(self) -> list[str]:
        return [
            " ".join(str(a.get("value", a.get("description", ""))) for a in e["params"].get("args", []))
            for e in self._events("Runtime.consoleAPICalled")
            if e["params"].get("type") == "error"
        ] + [e["params"]["exceptionDetails"].get("text", "") for e in self._events("Runtime.exceptionThrown")]

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, what: str | None = None) -> Any:
        """Poll `expression` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def focus(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).focus()")

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", {"text": text})

    def press(self, key: str, code: str | None = None, key_code: int = 0, shift: bool = False) -> None:
        """A real key press (keydown + keyup), e.g. press("Tab", key_code=9)."""
        base = {"key": key, "code": code or key, "windowsVirtualKeyCode": key_code, "modifiers": 8 if shift else 0}
        self.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", **base})
        if key == "Enter":
            self.send("Input.dispatchKeyEvent", {"type": "char", "text": "\r", **base})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **base})

    def allow_downloads(self, folder: Path) -> None:
        self.browser.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the window)."""
        height = int(self.eval("Math.ceil(document.documentElement.scrollHeight)"))
        width = self.browser.size[0]
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})


@contextmanager
def browser(workdir: Path, executable: str | None = None, **size: int) -> Iterator[Browser]:
    b = Browser(executable or require_chromium(), workdir, **size)
    try:
        yield b
    finally:
        b.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value

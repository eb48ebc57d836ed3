"""Headless Chromium, driven through the Chrome DevTools Protocol over a pipe (no websocket, no port).

Used by the tests, the benchmarks and docs/make_screenshots.py to test and measure the pages metta writes
(replay viewer, run report) and to take their screenshots (import it with this folder on ``sys.path``):

    with HeadlessBrowser() as browser:
        page = browser.open(Path("replay.html").resolve().as_uri())
        page.wait_for("window.metta && window.metta.ready")
        png = page.screenshot()

Chromium reads protocol messages from its file descriptor 3 and writes replies to 4, each a JSON text
ended by a NUL byte (``--remote-debugging-pipe``). Debian's package is ``chromium``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(RuntimeError):
    """The browser failed, timed out, or a page script threw."""


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable: ``$CHROMIUM`` or the first on PATH; None if absent."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit) or (explicit if os.access(explicit, os.X_OK) else None)
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessBrowser:
    """One headless Chromium process; ``open`` gives a ``Page`` per URL."""

    def __init__(self, executable: str | None = None, width: int = 1400, height: int = 900, timeout: float = 30.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError(f"no Chromium found (looked for {', '.join(BROWSER_NAMES)} and $CHROMIUM)")
        self.width, self.height, self.timeout = width, height, timeout
        self._profile = tempfile.TemporaryDirectory(prefix="metta-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Copies above the standard descriptors, so that dup2 onto 3 and 4 in the child never hits them.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def give_pipes() -> None:  # runs in the child before exec: dup2 clears close-on-exec on 3 and 4
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        args = [
            self.executable,
            "--headless=new",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile.name}",
            f"--window-size={width},{height}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-gpu",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-device-scale-factor=1",
            "--allow-file-access-from-files",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        self._proc = subprocess.Popen(
            [*args, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=give_pipes,
            close_fds=False,
        )
        os.close(child_in)
        os.close(child_out)
        self._write_fd = to_browser_w
        self._read_fd = from_browser_r
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.pages: list[Page] = []

    # ----------------------------------------------------------------------------------------------------
    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float | None = None
    ) -> dict:
        """Send one command and return its result (raises ``BrowserError`` on a protocol error)."""
        self._next_id += 1
        msg_id = self._next_id
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode("utf-8") + b"\0"
        while data:
            data = data[os.write(self._write_fd, data) :]
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            reply = self._read_message(deadline, f"{method} timed out")
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
                return reply.get("result", {})
            if "method" in reply:
                self._dispatch(reply)

    def _read_message(self, deadline: float, what: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(what)
            ready, _, _ = select.select([self._read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the protocol pipe (exit status {self._proc.poll()})")
            self._buffer += chunk
        text, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(text)

    def pump(self, seconds: float) -> None:
        """Read events for ``seconds`` (console messages, exceptions)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if b"\0" not in self._buffer:
                if left <= 0:
                    return
                ready, _, _ = select.select([self._read_fd], [], [], left)
                if not ready:
                    return
                chunk = os.read(self._read_fd, 1 << 20)
                if not chunk:
                    return
                self._buffer += chunk
                continue
            text, _, self._buffer = self._buffer.partition(b"\0")
            message = json.loads(text)
            if "method" in message:
                self._dispatch(message)

    def _dispatch(self, event: dict) -> None:
        for page in self.pages:
            if event.get("sessionId") == page.session:
                page._on_event(event)

    def open(self, url: str, wait_load: bool = True) -> Page:
        """A new tab at ``url`` (waits for its load event)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        self.pages.append(page)
        for domain in ("Runtime", "Page", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        page.navigate(url, wait_load)
        return page

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except (BrowserError, OSError):
                pass
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._write_fd, self._read_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> HeadlessBrowser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Page:
    """One tab: evaluate scripts, send mouse and key input, take screenshots; collects console errors."""

    def __init__(self, browser: HeadlessBrowser, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session
        self.console_errors: list[str] = []
        self._loaded = False

    def _on_event(self, event: dict) -> None:
        method, params = event["method"], event.get("params", {})
        if method == "Page.loadEventFired":
            self._loaded = True
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "exception")
            self.console_errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console_errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.console_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())

    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def navigate(self, url: str, wait_load: bool = True) -> None:
        self._loaded = False
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        if wait_load:
            deadline = time.monotonic() + self.browser.timeout
            while not self._loaded:
                if time.monotonic() > deadline:
                    raise BrowserError(f"{url} did not finish loading")
                self.browser.pump(0.05)

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": await_promise}
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(
                f"{expression[:80]!r} threw: {details.get('exception', {}).get('description') or details}"
            )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None, interval: float = 0.05) -> Any:
        """Poll until ``expression`` is truthy in the page and return its value."""
        deadline = time.monotonic() + (self.browser.timeout if timeout is None else timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            self.browser.pump(interval)

    def click(self, x: float, y: float) -> None:
        """A left click at page coordinates (x, y), as a user's mouse makes it."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params = {
                "type": kind,
                "x": x,
                "y": y,
                "button": "left" if kind != "mouseMoved" else "none",
                "clickCount": 1,
            }
            self.send("Input.dispatchMouseEvent", params)

    def press(self, key: str, code: str | None = None, key_code: int | None = None, text: str | None = None) -> None:
        """A key press and release (``key`` as in KeyboardEvent.key, e.g. " " or "ArrowRight")."""
        base = {"key": key, "code": code or key}
        if key_code is not None:
            base["windowsVirtualKeyCode"] = key_code
        down = {**base, "type": "keyDown"}
        if text is not None:
            down["text"] = text
        self.send("Input.dispatchKeyEvent", down)
        self.send("Input.dispatchKeyEvent", {**base, "type": "keyUp"})

    def screenshot(self) -> bytes:
        """A PNG of the visible page."""
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

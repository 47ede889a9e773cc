"""A headless Chromium driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``).

Nothing beyond the standard library and Debian's ``chromium`` package: Chromium reads commands from fd 3 and
writes replies and events to fd 4, each a JSON message ended by a NUL byte. One page, flat sessions.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable (``$MEDSYNTH_CHROMIUM`` or the first of :data:`BROWSERS` on PATH), else None."""
    env = os.environ.get("MEDSYNTH_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _high_fd(fd: int, lowest: int = 64) -> int:
    """``fd`` moved to a number >= ``lowest`` (the original closed)."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, lowest)
    os.close(fd)
    return high


class Chromium:
    """``with Chromium(profile_dir) as browser: browser.open(url); browser.js("...")``."""

    def __init__(self, profile: str | Path, executable: str | None = None, timeout: float = 30.0):
        self.timeout = timeout
        self.events: list[dict] = []
        self._id = 0
        self._buffer = b""
        cmd_r, self._cmd_w = os.pipe()  # we write commands, Chromium reads them on its fd 3
        self._out_r, out_w = os.pipe()  # Chromium writes on its fd 4, we read
        cmd_r, out_w = (_high_fd(fd) for fd in (cmd_r, out_w))  # never 3 or 4 themselves
        args = [executable or find_chromium() or "chromium", "--headless=new", "--remote-debugging-pipe",
                "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--allow-file-access-from-files", f"--user-data-dir={profile}",
                *(["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []), "about:blank"]
        # bash (sh takes one-digit fds only) puts our pipe ends on fds 3 and 4, then becomes Chromium
        self.process = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-', "bash",
                                         *args], pass_fds=(cmd_r, out_w), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self.session: str | None = None

    # -- protocol -------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Send one command (to the page's session unless ``session`` is False) and return its result."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def requested_urls(self) -> list[str]:
        """URLs the page requested since it was opened (``Network.requestWillBeSent`` events seen so far)."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        """The first event ``method`` not yet consumed (waiting for it)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message(deadline))

    # -- page -----------------------------------------------------------------------------------
    def open(self, url: str, downloads: str | Path | None = None) -> None:
        """Open ``url`` in a new page (downloads saved to ``downloads``) and wait for its load event."""
        if self.session is None:
            target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     session=False)["sessionId"]
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send("Network.enable")  # requests show up as events (what the page fetched, and from where)
        if downloads is not None:
            self.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads),
                                                      "eventsEnabled": True}, session=False)
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        """Evaluate ``expression`` in the page; its value (JSON-able), awaiting a promise."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def key(self, key: str) -> None:
        """Press and release one key (a character or a named key such as ``ArrowRight``)."""
        codes = {"ArrowRight": 39, "ArrowLeft": 37}
        down = {"type": "keyDown", "key": key}
        if key in codes:
            down.update(code=key, windowsVirtualKeyCode=codes[key])
        else:
            down.update(text=key, windowsVirtualKeyCode=ord(key.upper()))
        self.send("Input.dispatchKeyEvent", down)
        self.send("Input.dispatchKeyEvent", {**down, "type": "keyUp", "text": ""})

    def type_text(self, text: str) -> None:
        """Type ``text`` into the focused element."""
        self.send("Input.insertText", {"text": text})

    def close(self) -> None:
        """Close the browser (killing it if it does not exit)."""
        try:
            self.send("Browser.close", session=False)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

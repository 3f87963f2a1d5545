"""A tiny Chrome DevTools Protocol client for the report's browser test, over ``--remote-debugging-pipe``.

Why this and not Playwright or a WebSocket library: Chromium speaks the protocol on two inherited file
descriptors (it reads commands on fd 3 and writes replies and events on fd 4, each message JSON followed by a NUL
byte), so the test needs no Python dependency at all, opens no port (nothing else on the machine can reach the
browser, and no network is involved), and uses the system ``chromium`` that ``.ci/run`` installs from Debian.
Playwright would need its own browser download (not allowed at test time) or a pinned-version dance with the
system one; ``websocket-client`` would need a debugging port. Sixty lines of our own cover what the test uses:
``Target``, ``Page``, ``Runtime``, ``Emulation`` and ``Input`` commands, and waiting for one event.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["Browser", "find_chromium"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """A headless Chromium with one page, driven through the DevTools pipe. Use as a context manager."""

    def __init__(self, executable: str, width: int = 1280, height: int = 2400, timeout: float = 20.0):
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="invsr-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands -> chromium reads fd 3
        self._evt_r, evt_w = os.pipe()  # chromium writes fd 4 -> we read

        def wire_fds() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            os.dup2(cmd_r, 3)
            os.dup2(evt_w, 4)

        args = [executable, "--headless", "--no-sandbox",  # CI runs as root: Chromium refuses its sandbox there
                "--remote-debugging-pipe", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--metrics-recording-only", "--mute-audio", "--hide-scrollbars",
                f"--window-size={width},{height}", f"--user-data-dir={self._profile.name}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=wire_fds, pass_fds=(3, 4))
        os.close(cmd_r)
        os.close(evt_w)
        self._buf = b""
        self._id = 0
        self._events: list[dict[str, Any]] = []
        self.session: str | None = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.session = None
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._evt_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    # -- protocol ---------------------------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._evt_r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium over the DevTools pipe")
            chunk = os.read(self._evt_r, 1 << 20)
            if not chunk:
                raise ConnectionError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        for i, e in enumerate(self._events):
            if e["method"] == method:
                return self._events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            e = self._read_message(deadline)
            if e.get("method") == method:
                return e
            if "method" in e:
                self._events.append(e)

    # -- conveniences -----------------------------------------------------------------------------------------

    def goto(self, url: str) -> None:
        self._events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON data."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JavaScript error: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        import base64

        params: dict[str, Any] = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])

    def drag(self, x0: float, y: float, x1: float, steps: int = 8) -> None:
        """Press the left button at (x0, y), move to (x1, y) in ``steps``, release: a real pointer drag."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x0, y=y)
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y, button="left", buttons=1,
                  clickCount=1)
        for i in range(1, steps + 1):
            x = x0 + (x1 - x0) * i / steps
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y, button="left", buttons=1,
                  clickCount=1)

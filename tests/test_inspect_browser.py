"""The inspect page in a real browser: Debian's headless Chromium, driven over the DevTools
protocol through a pipe (``--remote-debugging-pipe``: NUL-terminated JSON on fds 3 and 4, so
no websocket client is needed). Skips, saying why, only where no Chromium is installed."""

import base64
import io
import json
import os
import shutil
import subprocess
import time

import pytest
import torch

from grulm.checkpoint import save_checkpoint
from grulm.data.vocab import Vocab
from grulm.model import GRULM, GRUConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")

D2L_TOKENS = ["<unk>", " ", *"etaoinsrhdlumwcfgypbvkxjqz"]
TEXT = "the time traveller was expounding a recondite matter to us"


class DevTools:
    """A headless Chromium and one page of it, spoken to over the DevTools pipe."""

    def __init__(self, profile):
        to_browser_r, self._write = os.pipe()
        self._read, from_browser_w = os.pipe()

        def child_fds():
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--window-size=1200,1400", "about:blank"],
            pass_fds=(3, 4, to_browser_r, from_browser_w), preexec_fn=child_fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.events, self.session = b"", 0, [], None

    def send(self, method, **params):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(event.get("method") == method for event in self.events):
                return
            self.events.append(self._receive())
        raise TimeoutError(method)

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def errors(self):
        return [event for event in self.events
                if event.get("method") == "Runtime.exceptionThrown"
                or (event.get("method") == "Runtime.consoleAPICalled"
                    and event["params"]["type"] in ("error", "assert"))
                or (event.get("method") == "Log.entryAdded"
                    and event["params"]["entry"]["level"] == "error")]

    def _receive(self):
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self):
        self.process.kill()
        self.process.wait()
        os.close(self._write)
        os.close(self._read)


@pytest.fixture
def page(tmp_path, run_grulm):
    torch.manual_seed(0)
    config = GRUConfig(vocab_size=len(D2L_TOKENS), hidden_size=16, init="torch")
    save_checkpoint(tmp_path / "model", GRULM(config).eval(), Vocab(D2L_TOKENS),
                    {"data": {"cleaning": "d2l"}})
    out = tmp_path / "page.html"
    result = run_grulm("inspect", tmp_path / "model", "--prefix", TEXT, "--out",
                       out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def browser(tmp_path):
    devtools = DevTools(tmp_path / "profile")
    try:
        yield devtools
    finally:
        devtools.close()


def _open(browser, path):
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    browser.session = browser.send("Target.attachToTarget", targetId=target,
                                   flatten=True)["sessionId"]
    for domain in ("Runtime", "Log", "Page"):
        browser.send(f"{domain}.enable")
    browser.send("Page.navigate", url=path.as_uri())
    browser.wait_for("Page.loadEventFired")


COLOURS = "Array.from(document.querySelectorAll('#text span')).map(s => s.style.background)"


def test_the_page_runs_in_chromium(page, browser, tmp_path):
    _open(browser, page)
    assert browser.evaluate("document.querySelectorAll('#text span').length") == len(TEXT)

    # Another unit changes the colours.
    before = browser.evaluate(COLOURS)
    assert len(set(before)) > 1
    options = browser.evaluate("Array.from(document.querySelectorAll('#show option'))"
                               ".map(o => o.value)")
    assert options[:4] == ["mean:Z", "mean:R", "mean:H_tilde", "mean:H"]
    browser.evaluate(f"const s = document.getElementById('show'); s.value = '{options[5]}';"
                     "s.dispatchEvent(new Event('change'))")
    after = browser.evaluate(COLOURS)
    assert after != before and len(set(after)) > 1

    # A real mouse over the fourth character shows its predictions and loss.
    x, y = browser.evaluate("(() => { const r = document.querySelectorAll('#text span')[3]"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, "
                            "r.y + r.height / 2]; })()")
    browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    info = browser.evaluate("document.getElementById('info').textContent")
    assert info.startswith('position 3: " "'), info
    assert "next-token predictions:" in info and 'loss of the actual next "t"' in info
    assert len([line for line in info.splitlines() if line.startswith("  ")]) == 5

    # A click colours the preceding text by connectivity and greys what follows.
    browser.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left",
                 clickCount=1)
    browser.send("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left",
                 clickCount=1)
    classes = browser.evaluate("Array.from(document.querySelectorAll('#text span'))"
                               ".map(s => s.className)")
    assert classes[3] == "chosen" and set(classes[4:]) == {"after"}
    assert browser.evaluate("document.querySelectorAll('#saturation canvas').length") == 2

    shot = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
    from matplotlib import image

    pixels = image.imread(io.BytesIO(shot), format="png")[..., :3]  # (H, W, 3) in [0, 1]
    assert pixels.std() > 0.05 and (pixels.min(axis=-1) < 0.9).mean() > 0.02
    assert browser.errors() == []

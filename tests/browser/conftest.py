"""Real-browser harness: JupyterLab (as ``medjax lab`` starts it) driven by Debian's Chromium through playwright.

Fixtures:

- ``chromium_path``: the system Chromium; the test FAILS (not skips) when it is missing, with the command that
  installs it (CI installs it in ``.ci/run``). The browser bundled by playwright is never used or downloaded.
- ``browser``: one headless Chromium per session.
- ``start_lab_for(folder, env)``: a JupyterLab on ``folder`` (loopback, random port and token,
  ``window.jupyterapp`` exposed so tests can run app commands), stopped at the end of the test.
- ``lab_page(server)``: a :class:`LabPage` in a fresh browser page for that server.

:class:`LabPage` opens a notebook, runs all cells through the JupyterLab command registry, waits until every code
cell has run (or one failed), reads outputs from the notebook model, finds ipywidgets images and digests their
bytes (SHA-256 of the blob the browser displays), moves sliders with the keyboard, and takes screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]
SCREENSHOTS = Path(os.environ.get("MEDJAX_SCREENSHOTS", "test-output/screenshots"))
VIEWPORT = {"width": 1280, "height": 900}


def _chromium() -> str | None:
    for candidate in (os.environ.get("MEDJAX_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = _chromium()
    if path is None:
        pytest.fail(
            "Chromium is not installed (looked for $MEDJAX_CHROMIUM, /usr/bin/chromium, chromium on PATH). "
            "The browser tests need the system browser: `apt-get update && apt-get install -y chromium` "
            "(never `playwright install`).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


# JupyterLab user settings for the tests: no news prompt, every cell attached to the DOM (screenshots, queries).
_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                          "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _write_settings(folder: Path) -> None:
    for rel, value in _SETTINGS.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture
def start_lab_for(tmp_path):
    from medjax.lab import start_lab

    servers = []
    _write_settings(tmp_path / "lab-settings")

    def start(folder, env: dict[str, str] | None = None):
        env = dict(env or {})
        env.setdefault("JAX_PLATFORMS", "cpu")
        env.setdefault("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter-config"))  # no user settings leak in
        server = start_lab(
            folder, port=0, allow_root=None, env=env, log_path=tmp_path / "jupyterlab.log", timeout=120,
            extra_args=("--LabApp.expose_app_in_browser=True",
                        f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}",
                        f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}"),
        )
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def lab_page(browser):
    pages = []

    def open_(server):
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        page = context.new_page()
        pages.append(context)
        return LabPage(page, server)

    yield open_
    for c in pages:
        c.close()


_RUN_STATE_JS = """
() => {
  const w = window.jupyterapp.shell.currentWidget;
  if (!w || !w.content || !w.content.widgets) return {ready: false};
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  let pending = 0, executed = 0;
  for (const c of cells) {
    if (c.model.executionCount === null || c.promptNode?.textContent?.includes('*')) pending += 1;
    if (c.model.executionCount !== null) executed += 1;
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue + '\\n' + (o.traceback || []).join('\\n'));
    }
  }
  const kernel = w.sessionContext?.session?.kernel;
  return {ready: true, cells: cells.length, executed, pending, errors, status: kernel ? kernel.status : 'none'};
}
"""

_IMAGE_DIGEST_JS = """
async (img) => {
  const r = await fetch(img.src);
  const buf = await r.arrayBuffer();
  const d = await crypto.subtle.digest('SHA-256', buf);
  return Array.from(new Uint8Array(d)).map(b => b.toString(16).padStart(2, '0')).join('') + ':' + buf.byteLength;
}
"""


class LabPage:
    """One browser page on a JupyterLab server (see the module docstring)."""

    def __init__(self, page, server):
        self.page = page
        self.server = server
        self.notebook = None  # locator of the open notebook's panel
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def open_notebook(self, name: str, timeout_s: float = 120) -> None:
        """Open ``name`` (relative to the server root) in a fresh workspace and wait for its kernel to be idle."""
        url = f"{self.server.base_url}/lab/tree/{name}?reset&token={self.server.token}"
        self.page.goto(url, wait_until="domcontentloaded", timeout=timeout_s * 1000)
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                                    "&& window.jupyterapp.shell.currentWidget.sessionContext",
                                    timeout=timeout_s * 1000)
        self.page.evaluate("""async () => {
            const w = window.jupyterapp.shell.currentWidget;
            await w.context.ready; await w.sessionContext.ready;
        }""")
        self.page.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'",
            timeout=timeout_s * 1000)
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # more room for the notebook
        panel_id = self.page.evaluate("() => window.jupyterapp.shell.currentWidget.id")
        self.notebook = self.page.locator(f"[id='{panel_id}']")  # queries stay inside this notebook's panel

    def close_notebook(self) -> None:
        """Shut the current notebook's kernel down and close its tab (without saving)."""
        self.page.evaluate("""async () => {
            const w = window.jupyterapp.shell.currentWidget;
            await w.sessionContext.shutdown(); w.dispose();
        }""")
        self.notebook = None

    def run_all(self, timeout_s: float = 600) -> dict:
        """Run every cell (JupyterLab's ``notebook:run-all-cells``); wait until all ran or one failed.

        Returns the run state: ``cells`` (code cells), ``executed`` (those with an execution count), ``pending``,
        ``errors`` (error outputs, with tracebacks) and the kernel's ``status``."""
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        deadline = time.monotonic() + timeout_s
        state = {}
        while time.monotonic() < deadline:
            state = self.page.evaluate(_RUN_STATE_JS)
            if state.get("errors"):
                return state
            if state.get("ready") and state["pending"] == 0 and state["status"] == "idle":
                return state
            self.page.wait_for_timeout(200)
        raise AssertionError(f"cells still running after {timeout_s:.0f} s: {state}")

    def widget_images(self):
        """Locator of the open notebook's ipywidgets images that have content (a ``blob:``/``data:`` src)."""
        return self.notebook.locator(".jp-OutputArea-output .widget-image[src^='blob:'], "
                                     ".jp-OutputArea-output .widget-image[src^='data:']")

    def wait_for_widget_images(self, count: int = 1, timeout_s: float = 60) -> None:
        """Wait until the open notebook shows ``count`` widget images that have loaded (decoded, non-empty)."""
        self.page.wait_for_function(
            """(n) => Array.from(document.querySelectorAll(
                     `[id="${window.jupyterapp.shell.currentWidget.id}"] .jp-OutputArea-output .widget-image`))
                 .filter(i => i.src && (i.src.startsWith('blob:') || i.src.startsWith('data:'))
                              && i.naturalWidth > 0).length >= n""",
            arg=count, timeout=timeout_s * 1000)

    def image_digest(self, locator) -> str:
        """SHA-256 and length of the bytes the browser shows for an ``<img>`` (``'hex:length'``)."""
        return locator.evaluate(_IMAGE_DIGEST_JS)

    def slider(self, scope, description: str | None = None):
        """The first ipywidgets slider inside ``scope`` (whose label contains ``description`` if given)."""
        sliders = scope.locator(".widget-slider")
        if description is not None:
            sliders = sliders.filter(has=self.page.locator(".widget-label", has_text=description))
        return sliders.first

    def move_slider(self, slider, presses: int = 3, key: str = "ArrowRight") -> str:
        """Focus the slider's handle and press ``key`` ``presses`` times; return the readout text after."""
        slider.scroll_into_view_if_needed()
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        for _ in range(presses):
            handle.press(key)
            self.page.wait_for_timeout(60)
        return slider.locator(".widget-readout").first.inner_text()

    def wait_for_change(self, locator, before: str, timeout_s: float = 60) -> str:
        """Wait until the image under ``locator`` shows other bytes than ``before``; return the new digest."""
        deadline = time.monotonic() + timeout_s
        now = before
        while time.monotonic() < deadline:
            now = self.image_digest(locator)
            if now != before:
                return now
            self.page.wait_for_timeout(250)
        raise AssertionError(f"image bytes did not change within {timeout_s:.0f} s (still {before})")

    def settle(self, locator=None, quiet_ms: int = 1500, timeout_s: float = 120) -> None:
        """Wait until the kernel has been idle for ``quiet_ms`` (and the image under ``locator`` stopped
        changing): slider moves queue renders in the kernel, and screenshots should show the last one."""
        deadline = time.monotonic() + timeout_s
        last, quiet_since = None, None
        while time.monotonic() < deadline:
            idle = self.page.evaluate(
                "() => window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'")
            now = self.image_digest(locator) if locator is not None else None
            if idle and now == last:
                quiet_since = quiet_since or time.monotonic()
                if (time.monotonic() - quiet_since) * 1000 >= quiet_ms:
                    return
            else:
                quiet_since = None
            last = now
            self.page.wait_for_timeout(250)
        raise AssertionError(f"the kernel did not settle within {timeout_s:.0f} s")

    def screenshot(self, name: str, locator=None) -> Path:
        """Save a PNG under test-output/screenshots/ (the element only when ``locator`` is given)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        (locator or self.page).screenshot(path=str(path))
        return path

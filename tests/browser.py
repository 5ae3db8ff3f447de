"""Headless Chromium for the tests of the viewer page (report/viewer.py): one browser and one page for the whole
session, driven by playwright with the system's Chromium (`executable_path`: Debian's `chromium`, which .ci/run
installs; playwright's own browser download is never needed).

`Browser.open_viewer(path)` opens a file with every request other than the file itself aborted and recorded,
and the console's errors and the page's uncaught errors collected; `check_clean()` asserts there were none.

    def test_x(viewer_browser):                    # the session fixture of tests/conftest.py
        page = viewer_browser.open_viewer(out / "viewer.html")
        viewer_browser.check_clean()
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
VIEWPORT = {"width": 1280, "height": 860}


def find_chromium() -> str | None:
    """The first of /usr/bin/chromium, `chromium` and `chromium-browser` on PATH that exists, else None."""
    for name in CHROMIUM_CANDIDATES:
        found = name if Path(name).is_file() else shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Browser:
    """One headless Chromium page, reused by every test (opening a page costs ~0.5 s, a browser ~1 s)."""

    page: object  # playwright.sync_api.Page
    requests: list[str] = field(default_factory=list)  # every request the page tried, aborted
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    _url: str = ""

    def __post_init__(self):
        self.page.route("**/*", self._route)
        self.page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def _route(self, route) -> None:
        """Only the opened file itself may load; anything else (a CDN script, a font, an image URL) is refused
        and recorded."""
        if route.request.url == self._url:
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def open(self, path: str | Path, timeout_ms: int = 30_000):
        """Open the file at `path` (file://) until its load event; return the playwright Page. The records of the
        previous page are cleared."""
        self.requests.clear()
        self.console_errors.clear()
        self.page_errors.clear()
        self._url = Path(path).resolve().as_uri()
        self.page.goto(self._url, wait_until="load", timeout=timeout_ms)
        return self.page

    def open_viewer(self, path: str | Path, timeout_ms: int = 30_000):
        """Open the viewer page at `path` and wait until its first tab is drawn; return the playwright Page."""
        self.open(path, timeout_ms)
        self.page.wait_for_selector("section.panel[data-ready='1']", state="attached", timeout=timeout_ms)
        return self.page

    def show_panel(self, panel_id: str, timeout_ms: int = 30_000):
        """Click the tab of `panel_id` and wait until the panel is drawn; return its section element."""
        self.page.click(f"nav button[data-panel='{panel_id}']")
        return self.page.wait_for_selector(f"#panel-{panel_id}[data-ready='1']", timeout=timeout_ms)

    def check_clean(self) -> None:
        """No request attempted, no console error, no uncaught error since the page was opened."""
        self.page.wait_for_timeout(50)  # playwright's sync API delivers pending events (routes) during a call
        assert self.requests == [], f"the page tried the network: {self.requests}"
        assert self.console_errors == [], f"console errors: {self.console_errors}"
        assert self.page_errors == [], f"page errors: {self.page_errors}"

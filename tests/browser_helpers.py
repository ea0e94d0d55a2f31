"""Opening a report in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

``open_report`` loads a file, collects every console error and uncaught page error, and writes a
screenshot; the browser tests then query the page. Without Chromium the tests skip, unless
VISIONSWEEP_REQUIRE_BROWSER is set (CI installs Chromium and sets it, so there a missing browser fails).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    found = os.environ.get("VISIONSWEEP_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        message = "no Chromium found (apt-get install chromium, or set VISIONSWEEP_CHROMIUM to its path)"
        if os.environ.get("VISIONSWEEP_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class OpenedReport:
    page: Any
    errors: list[str] = field(default_factory=list)

    def plots(self) -> list[dict[str, Any]]:
        """Every figure image: its id, decoded size, and how many distinct colours a sample of its pixels has
        (a blank picture has one)."""
        return self.page.evaluate("""() => Array.from(document.querySelectorAll("figure.plot")).map(f => {
            const img = f.querySelector("img");
            const canvas = document.createElement("canvas");
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            let colours = 0;
            if (img.naturalWidth > 0) {
                const context = canvas.getContext("2d");
                context.drawImage(img, 0, 0);
                const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
                const seen = new Set();
                for (let i = 0; i < pixels.length; i += 4 * 97) { seen.add(pixels[i] * 65536 + pixels[i+1] * 256 + pixels[i+2]); }
                colours = seen.size;
            }
            return {id: f.id, width: img.naturalWidth, height: img.naturalHeight, colours: colours};
        })""")

    def texts(self, selector: str) -> list[str]:
        return self.page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.textContent.trim())")


@contextlib.contextmanager
def open_report(path: Path, screenshot: Path) -> Iterator[OpenedReport]:
    executable = chromium_path()
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium refuses its sandbox. A container's /dev/shm is small
        # and there is no GPU: without the other two flags, screenshots of long pages fail now and then.
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(5_000)
            opened = OpenedReport(page)
            page.on("console", lambda message: message.type == "error" and opened.errors.append(message.text))
            page.on("pageerror", lambda error: opened.errors.append(str(error)))
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("load")
            _screenshot(page, screenshot, playwright_api.Error)
            yield opened
        finally:
            browser.close()


def _screenshot(page: Any, path: Path, error_type: type[Exception]) -> None:
    """A full-page screenshot, tried twice: on a busy machine headless Chromium now and then answers
    "Unable to capture screenshot" while it composites; a second failure is a real one."""
    try:
        page.screenshot(path=str(path), full_page=True)
    except error_type:
        page.wait_for_timeout(500)
        page.screenshot(path=str(path), full_page=True)

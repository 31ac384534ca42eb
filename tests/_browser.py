"""Load a static page in a real headless browser and check it: every image loads, no console error.

Uses Playwright for Python with Debian's Chromium (``/usr/bin/chromium``; Playwright's own browsers are not
downloaded). Where either is missing, :func:`check_page` skips the calling test with a message that says which.

Example (in a test):
    >>> from tests._browser import check_page
    >>> info = check_page(tmp_path / "index.html")  # doctest: +SKIP
    >>> info["images"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MODELDIFF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

_IMAGES_JS = """() => Array.from(document.images).map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))"""


def browser_missing() -> str | None:
    """Why the browser check cannot run here (None if it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; its browsers are not needed)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set MODELDIFF_CHROMIUM)"
    return None


def check_page(path: str | os.PathLike, timeout_ms: int = 30_000) -> dict:
    """Open ``path`` (a local HTML file) in headless Chromium; assert that every ``<img>`` loaded
    (``naturalWidth > 0``), that no console error or uncaught page error occurred and that no request failed.

    Skips the calling test (``pytest.skip``) when Playwright or Chromium is missing.

    Returns:
        ``{"title": str, "images": int, "console": [(type, text), ...]}`` for further checks.
    """
    reason = browser_missing()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")
    from playwright.sync_api import sync_playwright

    page_path = Path(path).resolve()
    assert page_path.is_file(), f"no such page: {page_path}"
    console: list[tuple[str, str]] = []
    errors: list[str] = []
    failed: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
            page.goto(page_path.as_uri(), wait_until="load", timeout=timeout_ms)
            images = page.evaluate(_IMAGES_JS)
            title = page.title()
        finally:
            browser.close()
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, f"images that did not load in {page_path.name}: {broken}"
    console_errors = [text for kind, text in console if kind == "error"]
    assert not console_errors, f"console errors on {page_path.name}: {console_errors}"
    assert not errors, f"page errors on {page_path.name}: {errors}"
    assert not failed, f"failed requests on {page_path.name}: {failed}"
    return {"title": title, "images": len(images), "console": console}

"""The status page's files: shipped in the package, small, offline; the screenshot in the
docs is of the page as it is now (tests/screenshot.py) and the docs show it."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from tests.screenshot import SCREENSHOT, UPDATE_SCREENSHOT, stamp_of, ui_digest

ROOT = Path(__file__).resolve().parents[1]
PAGE_FILES = ("index.html", "status.css", "status.js")


def _page(name: str) -> str:
    return resources.files("aiollmux.ui").joinpath(name).read_text(encoding="utf-8")


def test_the_page_is_small_and_needs_no_network() -> None:
    total = sum(len(_page(name).encode()) for name in PAGE_FILES)
    assert total < 100_000, f"the page is {total} bytes"
    for name in PAGE_FILES:
        text = _page(name)
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), name
        assert "@import" not in text, name
        assert not re.search(r"""fetch\(\s*["'`]https?:""", text), name


def test_the_token_never_goes_into_a_url() -> None:
    script = _page("status.js")
    assert "sessionStorage" in script
    assert "localStorage" not in script
    assert not re.search(r"[?&]token=", script)


def test_the_screenshot_shows_the_page_as_it_is() -> None:
    refresh = (
        f"{UPDATE_SCREENSHOT}=1 AIOLLMUX_REQUIRE_BROWSER=1 python -m pytest"
        " tests/e2e/test_status_page.py -k show_live, then commit docs/status-page.png"
    )
    assert SCREENSHOT.exists(), f"docs/status-page.png is missing: {refresh}"
    assert stamp_of(SCREENSHOT.read_bytes()) == ui_digest(), (
        f"the page changed since docs/status-page.png was taken: {refresh}"
    )


def test_the_docs_show_the_screenshot() -> None:
    assert "](docs/status-page.png)" in (ROOT / "README.md").read_text()
    assert "](status-page.png)" in (ROOT / "docs" / "operations.md").read_text()

"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright)
against the real daemon: models listed, live switches, buttons, token prompt, restarts.

Skipped, saying why, where no Chromium or Playwright exists; with
AIOLLMUX_REQUIRE_BROWSER=1 (CI) a missing browser fails instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from aiollmux.app import EVENTS
from aiollmux.config import load_config
from tests.screenshot import SCREENSHOT, UPDATE_SCREENSHOT, stamped, ui_digest
from tests.support import Daemon, Lab, gated_wake, running_daemon

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
LIVE_WITHIN_SECS = 1.0  # docs/design.md §13: a switch shows on the page within 1 s


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _playwright() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return None
    return async_playwright


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = _chromium()
    reason = None if executable else "no Chromium on this machine: apt-get install chromium"
    async_playwright = _playwright()
    if async_playwright is None:
        reason = "Playwright is not installed: pip install -e '.[browser]'"
    if reason is not None or async_playwright is None:
        reason = reason or "Playwright is not installed"
        if os.environ.get("AIOLLMUX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"AIOLLMUX_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable)
        try:
            yield chromium
        finally:
            await chromium.close()


class Console:
    """What the page said on its console, and the errors it raised."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: self._console(message.type, message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, kind: str, text: str) -> None:
        if kind == "error":
            self.errors.append(text)


async def open_page(browser: Browser, daemon_url: str, **context: Any) -> tuple[Page, Console]:
    page = await (await browser.new_context(**context)).new_page()
    console = Console(page)
    await page.goto(f"{daemon_url}/ui/")
    return page, console


def row(page: Page, model: str) -> Any:
    return page.locator(f'tr[data-model="{model}"]')


async def wait_live(page: Page) -> None:
    from playwright.async_api import expect

    await expect(page.locator("#connection")).to_have_text("live", timeout=10_000)


def save_artifact(name: str, png: bytes) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(png)
    return path


async def test_the_page_is_served_to_anyone_and_never_proxied(lab: Lab) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top='admin_token = "s3cret"')) as daemon:
        client, url = daemon.client, daemon.url
        async with client.get(f"{url}/ui", allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"] == "/ui/"
        async with client.get(f"{url}/ui/") as page:  # no token: the page holds no data
            assert page.status == 200
            assert page.content_type == "text/html"
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
            html = await page.text()
        for asset in ("status.css", "status.js"):
            assert asset in html
            async with client.get(f"{url}/ui/{asset}") as response:
                assert response.status == 200
        body = {"model": "alpha"}  # a body naming a model still never reaches a backend
        for method, path in (("GET", "/ui/nope"), ("GET", "/ui/a/b"), ("POST", "/ui/"),
                             ("POST", "/ui"), ("PUT", "/ui/status.js")):  # fmt: skip
            async with client.request(method, f"{url}{path}", json=body) as response:
                assert response.status == 404, (method, path)
                assert (await response.json())["error"]["code"] == "not_found"
        assert lab.backends["alpha"].requests == []
        async with client.get(f"{url}/admin/events") as response:
            assert response.status == 401  # the data behind it follows the admin rules


async def test_every_model_and_a_switch_made_by_a_request_show_live(
    lab: Lab, browser: Browser
) -> None:
    from playwright.async_api import expect

    await lab.add_backends("llama-3.1-8b", "qwen2.5-coder", "mistral-7b", "embed-small")
    hooks = {"mistral-7b": {"wake": "echo 'CUDA error: out of memory' >&2; exit 1"}}
    per_model: dict[str, dict[str, Any]] = {
        "llama-3.1-8b": {"aliases": ["llama3", "meta-llama/Llama-3.1-8B-Instruct"]},
        "qwen2.5-coder": {"aliases": ["coder"]},
        "embed-small": {"group": "cpu"},
    }
    path = lab.tmp / "llmux.toml"
    path.write_text(
        lab.config_text(hook_delay=0.3, hooks=hooks, per_model=per_model, policy="[groups.cpu]\n")
    )
    config = load_config(path)
    async with running_daemon(config) as daemon:
        page, console = await open_page(
            browser, daemon.url, viewport={"width": 1280, "height": 900}
        )
        await wait_live(page)
        for model in config.models:
            await expect(row(page, model)).to_be_visible()
        await expect(row(page, "llama-3.1-8b")).to_contain_text("llama3")
        await expect(page.locator('[data-group="cpu"]')).to_be_visible()

        async with await daemon.chat("llama-3.1-8b") as answer:
            assert answer.status == 200
        switched = asyncio.get_running_loop().time()
        badge = row(page, "llama-3.1-8b").locator(".badge")
        await expect(badge).to_have_text("active", timeout=LIVE_WITHIN_SECS * 1000)
        shown = asyncio.get_running_loop().time() - switched
        print(f"switch shown on the page {shown * 1000:.0f} ms after the request's answer")

        # Some history for the timeline, the log and the screenshot.
        for _ in range(3):
            async with await daemon.chat("llama-3.1-8b") as answer:
                assert answer.status == 200
        async with await daemon.chat("mistral-7b") as answer:
            assert answer.status == 503
        async with await daemon.chat("qwen2.5-coder") as answer:
            assert answer.status == 200
        async with await daemon.chat("embed-small") as answer:
            assert answer.status == 200
        await expect(row(page, "mistral-7b")).to_contain_text("failed")
        await expect(page.locator(".chart .run.failed")).to_have_count(1)
        await expect(page.locator(".chart .run.wake")).not_to_have_count(0)
        await expect(page.locator('#log li[data-event="switch_failed"]')).to_have_count(1)
        await page.fill("#filter", "switch_failed")
        await expect(page.locator("#log li")).to_have_count(1)
        await page.fill("#filter", "")
        await page.locator("#filter").blur()
        await expect(row(page, "qwen2.5-coder").locator(".badge")).to_have_text("active")
        # The counts the events do not carry follow from /admin/status within a second.
        queued = page.locator('#models td[data-label="Queued"]')
        await expect(queued).to_have_text(["0"] * len(config.models))
        cost = row(page, "qwen2.5-coder").locator('td[data-label="Switch cost"]')
        await expect(cost).not_to_have_text("\u2013")  # the dash shown for "unknown"
        assert console.errors == []

        png = stamped(await page.screenshot(full_page=True), ui_digest())
        save_artifact("status-page.png", png)  # always; the docs' copy only when asked:
        if os.environ.get(UPDATE_SCREENSHOT) == "1":  # else the docs test could never fail
            SCREENSHOT.write_bytes(png)


async def test_a_status_answer_overtaken_by_events_does_not_undo_them(
    lab: Lab, browser: Browser
) -> None:
    """The page asks /admin/status when a switch starts; an answer that arrives after the
    switch ended (a slow daemon, a slow network) must not show the switch as still running."""
    from playwright.async_api import Route, expect

    await lab.add_backends("alpha")
    go, wake = gated_wake(lab.tmp, lab.state_dir, "alpha")
    async with running_daemon(lab.config(hooks={"alpha": {"wake": wake}})) as daemon:
        page, console = await open_page(browser, daemon.url)
        await wait_live(page)
        release = asyncio.Event()
        held: list[str] = []
        answers: list[str] = []
        page.on("response", lambda r: answers.append(r.url) if "/admin/status" in r.url else None)

        async def hold_first_answer(route: Route) -> None:
            answer = await route.fetch()  # the daemon's real answer
            if not held:
                held.append(await answer.text())
                await release.wait()
            await route.fulfill(response=answer)

        await page.route("**/admin/status", hold_first_answer)
        switch = asyncio.create_task(
            daemon.client.post(f"{daemon.url}/admin/switch", json={"model": "alpha"})
        )
        await wait_until(lambda: bool(held))  # asked while the wake hook waits for `go`
        assert '"switching": {"from": null, "to": "alpha"}' in held[0]
        go.touch()
        async with await switch as answer:
            assert answer.status == 200
        await expect(row(page, "alpha").locator(".badge")).to_have_text("active")
        release.set()  # now the page gets the answer made during the switch
        # It knows that answer is older than the events since: it asks again.
        await wait_until(lambda: len(answers) >= 2)
        await expect(row(page, "alpha").locator(".badge")).to_have_text("active")
        await expect(page.locator('[data-group="default"] .badge')).to_have_text("active")
        assert console.errors == []


async def wait_until(predicate: Any) -> None:
    from tests.support import wait_for

    await wait_for(predicate)


async def test_the_buttons_work_against_the_daemon(lab: Lab, browser: Browser) -> None:
    from playwright.async_api import expect

    await lab.add_backends("alpha", "beta", "delta")
    go, wake = gated_wake(lab.tmp, lab.state_dir, "alpha")  # the progress shows until `go`
    hooks = {"beta": {"wake": "echo 'no GPU left for beta' >&2; exit 1"}, "alpha": {"wake": wake}}
    path = lab.tmp / "llmux.toml"
    text = lab.config_text(hooks=hooks)
    path.write_text(without_table(text, "delta"))
    async with running_daemon(load_config(path)) as daemon:
        page, console = await open_page(browser, daemon.url)
        await wait_live(page)
        switch = row(page, "alpha").get_by_role("button", name="Switch")
        await switch.click()
        await expect(switch).to_contain_text("Switching")  # progress while the hook runs
        go.touch()
        await expect(row(page, "alpha").locator(".badge")).to_have_text("active", timeout=10_000)
        assert daemon.mux.switchers["default"].active == "alpha"

        await row(page, "alpha").get_by_role("button", name="Sleep").click()
        await expect(page.locator("#config")).to_contain_text("Sleeping alpha")
        await expect(row(page, "alpha").locator(".badge")).to_have_text("asleep", timeout=10_000)
        assert daemon.mux.switchers["default"].state() == "idle"

        await row(page, "beta").get_by_role("button", name="Switch").click()
        error = row(page, "beta").locator(".action-error")
        await expect(error).to_contain_text("HTTP 503", timeout=10_000)
        await expect(error).to_contain_text("no GPU left for beta")

        path.write_text(text)
        await page.get_by_role("button", name="Reload config").click()
        await expect(row(page, "delta")).to_be_visible(timeout=10_000)
        await expect(page.locator("#config")).to_contain_text("generation 2")
        assert console.errors == [
            "Failed to load resource: the server responded with a status of 503"
            " (Service Unavailable)"
        ]


def without_table(text: str, model: str) -> str:
    from tests.support import without_model

    return without_model(text, model)


async def test_the_token_prompt(lab: Lab, browser: Browser) -> None:
    from playwright.async_api import expect

    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top='admin_token = "s3cret"')) as daemon:
        page, _ = await open_page(browser, daemon.url)
        dialog = page.locator("#token-dialog")
        await expect(dialog).to_be_visible()
        await page.fill("#token", "wrong")
        await page.get_by_role("button", name="Connect").click()
        await expect(page.locator("#token-error")).to_have_text("That token was not accepted.")
        await page.fill("#token", "s3cret")
        await page.get_by_role("button", name="Connect").click()
        await wait_live(page)
        await expect(dialog).to_be_hidden()
        await row(page, "alpha").get_by_role("button", name="Switch").click()
        await expect(row(page, "alpha").locator(".badge")).to_have_text("active", timeout=10_000)
        stored = await page.evaluate("sessionStorage.getItem('aiollmux-admin-token')")
        assert stored == "s3cret"
        assert "s3cret" not in page.url


async def test_the_page_reconnects_after_a_restart(lab: Lab, browser: Browser) -> None:
    from playwright.async_api import expect

    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text())
    config = load_config(path)
    async with running_daemon(config) as daemon:
        page, _ = await open_page(browser, daemon.url)
        await wait_live(page)
    banner = page.locator("#banner")
    await expect(page.locator("#connection")).to_have_text("unreachable", timeout=10_000)
    await expect(banner).to_contain_text("Trying again")
    async with running_daemon(config) as daemon:
        await wait_live(page)
        await expect(banner).to_be_hidden()
        await switch_by_request(daemon)
        await expect(row(page, "alpha").locator(".badge")).to_have_text("active")


async def switch_by_request(daemon: Daemon) -> None:
    async with await daemon.chat("alpha") as answer:
        assert answer.status == 200


async def test_readable_on_a_phone(lab: Lab, browser: Browser) -> None:
    from playwright.async_api import expect

    await lab.add_backends("a-model-with-a-long-name", "beta")
    async with running_daemon(lab.config()) as daemon:
        await switch_by_request_of(daemon, "beta")
        page, console = await open_page(
            browser, daemon.url, viewport={"width": 390, "height": 844}, is_mobile=True
        )
        await wait_live(page)
        await expect(row(page, "beta").locator(".badge")).to_have_text("active")
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow}px wider than a phone"
        save_artifact("status-page-phone.png", await page.screenshot(full_page=True))
        assert console.errors == []


async def switch_by_request_of(daemon: Daemon, model: str) -> None:
    async with await daemon.chat(model) as answer:
        assert answer.status == 200


async def test_a_token_entered_again_opens_one_stream(lab: Lab, browser: Browser) -> None:
    from playwright.async_api import expect

    await lab.add_backends("alpha")
    async with running_daemon(lab.config(top='admin_token = "s3cret"')) as daemon:
        page = await (await browser.new_context()).new_page()
        console = Console(page)
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/admin/events" in r.url else None)
        await page.clock.install()  # the page's timers: run by the test, below
        await page.goto(f"{daemon.url}/ui/")
        await enter_token(page, "s3cret")
        await wait_live(page)
        # The stored token goes stale while the stream is live: an action is refused.
        await page.evaluate("sessionStorage.setItem('aiollmux-admin-token', 'stale')")
        await row(page, "alpha").get_by_role("button", name="Switch").click()
        await expect(row(page, "alpha").locator(".action-error")).to_contain_text("HTTP 401")
        await enter_token(page, "s3cret")
        await wait_live(page)
        await page.clock.run_for(10_000)  # any reconnect the page scheduled is due now
        headers = {"Authorization": "Bearer s3cret"}
        async with daemon.client.post(
            f"{daemon.url}/admin/switch", json={"model": "alpha"}, headers=headers
        ) as answer:
            assert answer.status == 200
        await expect(row(page, "alpha").locator(".badge")).to_have_text("active")
        await expect(page.locator('#log li[data-event="model_activated"]')).to_have_count(1)
        assert daemon.app[EVENTS].readers == 1
        assert len(streams) == 3  # refused without a token, then one per token entered
        assert [e for e in console.errors if "401" not in e] == []


async def enter_token(page: Page, token: str) -> None:
    from playwright.async_api import expect

    await expect(page.locator("#token-dialog")).to_be_visible()
    await page.fill("#token", token)
    await page.get_by_role("button", name="Connect").click()


async def test_a_reload_that_works_clears_the_failed_reloads_banner(
    lab: Lab, browser: Browser
) -> None:
    from playwright.async_api import expect

    await lab.add_backends("alpha", "beta")
    path = lab.tmp / "llmux.toml"
    text = lab.config_text()
    path.write_text(without_table(text, "beta"))
    async with running_daemon(load_config(path)) as daemon:
        page, _ = await open_page(browser, daemon.url)
        await wait_live(page)
        path.write_text("this is [not toml")
        await page.get_by_role("button", name="Reload config").click()
        banner = page.locator("#banner")
        await expect(banner).to_contain_text("Configuration reload failed")
        path.write_text(text)  # fixed, and reloaded by someone else (a CLI, SIGHUP)
        async with daemon.client.post(f"{daemon.url}/admin/reload") as answer:
            assert answer.status == 200
        await expect(row(page, "beta")).to_be_visible()
        await expect(banner).to_be_hidden()


async def test_model_ids_named_like_object_properties(lab: Lab, browser: Browser) -> None:
    from playwright.async_api import expect

    await lab.add_backends("constructor", "toString")
    async with running_daemon(lab.config()) as daemon:
        page, console = await open_page(browser, daemon.url)
        await wait_live(page)
        for model in ("constructor", "toString"):
            await expect(row(page, model).locator(".badge")).to_have_text("asleep")
            await expect(row(page, model).locator(".action-error")).to_have_count(0)
            last_wake = row(page, model).locator('td[data-label="Last wake"]')
            await expect(last_wake).to_have_text("\u2013")
        await row(page, "constructor").get_by_role("button", name="Switch").click()
        await expect(row(page, "constructor").locator(".badge")).to_have_text("active")
        assert console.errors == []


async def test_events_update_the_rows_in_place_keeping_buttons_and_focus(
    lab: Lab, browser: Browser
) -> None:
    from playwright.async_api import expect

    await lab.add_backends("alpha", "beta")
    async with running_daemon(lab.config()) as daemon:
        page, console = await open_page(browser, daemon.url)
        await wait_live(page)
        button = row(page, "beta").get_by_role("button", name="Switch")
        group_button = page.locator('[data-group="default"] button')
        kept = [await button.element_handle(), await group_button.element_handle()]
        await button.focus()
        await switch_by_request(daemon)  # a switch's events, and a status refresh after them
        await expect(row(page, "alpha").locator(".badge")).to_have_text("active")
        await expect(group_button).to_be_enabled()
        await expect(row(page, "alpha").locator('td[data-label="Switch cost"]')).not_to_have_text(
            "\u2013"
        )
        for handle in kept:
            assert await handle.evaluate("el => el.isConnected")  # the same elements
        assert await kept[0].evaluate("el => document.activeElement === el")
        await button.click()  # and they still work
        await expect(row(page, "beta").locator(".badge")).to_have_text("active")
        assert console.errors == []


async def test_a_silent_stream_is_taken_for_a_dead_one(lab: Lab, browser: Browser) -> None:
    """Nothing, not even a keep-alive, for 35 s: the page says so and reconnects."""
    from playwright.async_api import expect

    from tests.support import wait_for

    await lab.add_backends("alpha")
    path = lab.tmp / "llmux.toml"
    path.write_text(lab.config_text())  # a file to watch: no reload error in the banner
    async with running_daemon(load_config(path)) as daemon:
        page = await (await browser.new_context()).new_page()
        console = Console(page)
        await page.clock.install()  # the page's 35 s pass at once; the daemon's 15 s do not
        await page.goto(f"{daemon.url}/ui/")
        await wait_live(page)
        # Every text the banner shows, however briefly (the retry follows 1 s later).
        await page.evaluate(BANNER_TEXTS)
        await page.clock.run_for(36_000)
        await page.wait_for_function(
            "window.bannerTexts.some(t => t.includes('Nothing heard from the daemon'))",
            timeout=10_000,
        )
        await page.clock.run_for(2_000)  # the retry, if not made yet
        await wait_live(page)
        await wait_for(lambda: daemon.app[EVENTS].readers == 1)  # the silent one was dropped
        await switch_by_request(daemon)
        await expect(row(page, "alpha").locator(".badge")).to_have_text("active")
        assert console.errors == []


BANNER_TEXTS = """() => {
  const banner = document.getElementById("banner");
  window.bannerTexts = [];
  new MutationObserver(() => window.bannerTexts.push(banner.textContent))
    .observe(banner, { childList: true, characterData: true, subtree: true });
}"""

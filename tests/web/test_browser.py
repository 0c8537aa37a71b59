"""The web hub in a real Chromium: the tour of the loop a reporter and a maintainer make,
every page at phone width, from this host only, labelled, and usable by keyboard.

Screenshots of the pages are written to $UPSTREAM_SCREENSHOTS when it is set (how
docs/web.md was made: `UPSTREAM_SCREENSHOTS=docs/web .venv/bin/python -m pytest
tests/web -k screenshots`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server.conftest import serve, wait_job
from tests.server.test_heldout_api import _adapter_body
from tests.web.conftest import Filled, token
from upstream.hub import Hub

PHONE = {"width": 375, "height": 812}
REPRODUCING = 180_000  # ms: the first report of a process loads the embedding model too


@pytest.fixture
def live(tiny_hub: Hub) -> Iterator[str]:
    with serve(tiny_hub, worker=True) as url:
        yield url


def sign_in(page: Any, base: str, secret: str) -> None:
    """Sign in through the form, by keyboard: the token field, typed, then Enter."""
    page.goto(f"{base}/sign-in")
    page.get_by_label("API token").focus()
    page.keyboard.type(secret)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/")


def csrf_of(page: Any) -> str:
    return str(page.locator('input[name="csrf"]').first.get_attribute("value"))


def test_the_loop_through_the_pages(browser: Any, live: str, tiny_hub: Hub, tmp_path: Path) -> None:
    ana = token(tiny_hub, "ana", "reporter")
    mia = token(tiny_hub, "mia", "maintainer")
    bo = token(tiny_hub, "bo", "contributor")
    opened = httpx.post(
        f"{live}/api/contributions",
        json={"model": "tiny", "title": "a fix", "adapter": _adapter_body(tiny_hub, tmp_path)},
        headers={"Authorization": f"Bearer {bo}"},
    )
    assert opened.status_code == 201, opened.text
    contribution = opened.json()["id"]
    assert wait_job(live, opened.json()["job"], timeout=300)["state"] == "done"

    # ana, a reporter, files a report through the form with a check from the builder
    reporter = browser.new_context()
    page = reporter.new_page()
    sign_in(page, live, ana)
    assert page.get_by_text("ana").first.is_visible()
    page.goto(f"{live}/reports/new")
    page.get_by_label("Model").select_option("tiny")
    page.get_by_label("Prompt").fill("What is the capital of France? One word.")
    page.get_by_label("Check type").select_option("exact")
    page.get_by_label("Value").fill("Paris")
    page.get_by_label("Tags").fill("capital")
    page.get_by_role("button", name="Preview the check").click()
    preview = page.locator("#preview")
    preview.wait_for(timeout=REPRODUCING)
    assert "fails" in preview.inner_text()  # the tiny random model does not say "Paris"
    answered = preview.locator("pre").inner_text()
    # the form kept what was typed; filing it follows the reproduction live
    assert page.get_by_label("Value").input_value() == "Paris"
    page.get_by_role("button", name="File the report").click()
    page.wait_for_url(re.compile(r"/reports/\d+"))
    report = int(page.url.rsplit("/", 1)[1].split("?")[0])
    page.locator("h1 .badge.reproduced").wait_for(timeout=REPRODUCING)
    assert answered.strip() in page.locator("table pre").first.inner_text()

    # a reporter is not offered the review, and is refused when posting it anyway
    page.goto(f"{live}/contributions/{contribution}")
    assert page.get_by_role("button", name="Approve").count() == 0
    refused = page.request.post(
        f"{live}/contributions/{contribution}/approve",
        form={"csrf": csrf_of(page), "override": "I say so"},
    )
    assert refused.status == 403 and "only a maintainer" in refused.text()

    # mia, a maintainer, confirms it, builds a suite, reviews the checks and approves
    maintainer = browser.new_context()
    page = maintainer.new_page()
    sign_in(page, live, mia)
    page.goto(f"{live}/reports/{report}")
    page.get_by_role("button", name="Confirm").click()
    page.locator("h1 .badge.confirmed").wait_for()
    page.goto(f"{live}/suites")
    page.get_by_label("Suite name").fill("capitals")
    page.get_by_label("Tag").fill("capital")
    page.get_by_role("button", name="Build").click()
    page.wait_for_url(re.compile(r"/suites/capitals"))
    assert "1 new case" in page.locator(".note").inner_text()
    assert "What is the capital of France?" in page.content()
    page.goto(f"{live}/contributions/{contribution}")
    assert "claims no report" in page.locator("ul.reasons").inner_text()  # the CI's reason
    page.get_by_label("Reason to approve although the checks failed").fill("tried by hand")
    page.get_by_role("button", name="Approve").click()
    page.locator("h1 .badge.approved").wait_for()
    shown = httpx.get(f"{live}/api/contributions/{contribution}").json()
    assert shown["state"] == "approved"
    assert any(e["actor"] == "mia" and e["kind"] == "overridden" for e in shown["events"])
    reporter.close()
    maintainer.close()


def _all_pages(browser: Any, base: str, filled: Filled, viewport: dict[str, int] | None) -> Any:
    context = browser.new_context(viewport=viewport) if viewport else browser.new_context()
    page = context.new_page()
    sign_in(page, base, filled.tokens["mia"])
    return context, page


def test_every_page_at_phone_width_loads_only_from_the_hub(
    browser: Any, filled: Filled, tmp_path: Path
) -> None:
    with serve(filled.hub) as base:
        context, page = _all_pages(browser, base, filled, PHONE)
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url))
        wide = []
        for url in filled.urls():
            response = page.goto(f"{base}{url}")
            assert response is not None and response.status == 200, url
            width = page.evaluate("document.documentElement.scrollWidth")
            if width > PHONE["width"]:
                wide.append(f"{url}: {width} px")
        context.close()
    host = urlsplit(base).netloc
    elsewhere = [u for u in asked if urlsplit(u).netloc != host]
    assert asked and elsewhere == []
    assert wide == [], "pages wider than a phone (a table should scroll in its own box)"


LINK = re.compile(r"""(?:href|src|action|formaction|poster)\s*=\s*["']([^"']*)["']""", re.I)
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)")


def test_no_page_links_or_loads_anything_from_another_host(filled: Filled) -> None:
    """Every link, script, stylesheet, image and form target is on the hub itself."""
    with serve(filled.hub) as base, httpx.Client(base_url=base) as client:
        mia = {"Authorization": f"Bearer {filled.tokens['mia']}"}
        found: dict[str, set[str]] = {}
        for url in filled.urls():
            for headers in ({}, mia):
                page = client.get(url, headers=headers)
                assert page.status_code == 200, url
                found[url] = found.get(url, set()) | set(LINK.findall(page.text))
                found[url] |= set(CSS_URL.findall(page.text))
        stylesheet = client.get("/static/hub.css").text
        script = client.get("/static/live.js").text
    outside = {
        (page, target)
        for page, targets in found.items()
        for target in targets
        if not target.startswith(("/", "#", "?")) or target.startswith("//")
    }
    assert outside == set()
    assert "/static/hub.css" in found["/"]
    assert not CSS_URL.findall(stylesheet) and "http" not in script


FIELD = re.compile(r"<(input|select|textarea)\b([^>]*)>", re.I)


def test_every_form_field_has_a_label(filled: Filled) -> None:
    with serve(filled.hub) as base, httpx.Client(base_url=base) as client:
        headers = {"Authorization": f"Bearer {filled.tokens['mia']}"}
        unlabelled = []
        fields = 0
        for url in filled.urls():
            html = client.get(url, headers=headers).text
            labels_for = set(re.findall(r'<label[^>]*\bfor="([^"]+)"', html))
            wrapped = re.findall(r"<label[^>]*>(.*?)</label>", html, re.S)
            for tag, attrs in FIELD.findall(html):
                kind = re.search(r'type="([^"]+)"', attrs)
                if kind and kind.group(1) in ("hidden", "submit", "button"):
                    continue
                fields += 1
                ident = re.search(r'\bid="([^"]+)"', attrs)
                named = "aria-label=" in attrs or (ident and ident.group(1) in labels_for)
                inside = any(f"<{tag}{attrs}>" in w for w in wrapped)
                if not (named or inside):
                    unlabelled.append(f"{url}: <{tag}{attrs}>")
    assert fields > 20 and unlabelled == []


def test_the_pages_work_by_keyboard(browser: Any, filled: Filled) -> None:
    with serve(filled.hub) as base:
        context, page = _all_pages(browser, base, filled, None)
        page.goto(f"{base}/reports")
        page.keyboard.press("Tab")  # the first stop is the skip link
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        page.keyboard.press("Enter")
        # the jump to the fragment may land after the key press returns (a loaded machine)
        page.wait_for_url(re.compile(r"#main$"), timeout=10_000)
        # the filters by keyboard alone: into the search field, type, submit with Enter
        page.get_by_label("Search").focus()
        page.keyboard.type("France")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"q=France"))
        assert page.locator("tbody tr").count() == 1
        # every focusable element shows where the focus is
        page.keyboard.press("Tab")
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        context.close()


def test_screenshots(browser: Any, filled: Filled) -> None:
    """Every page renders (and, with $UPSTREAM_SCREENSHOTS, is photographed)."""
    out = os.environ.get("UPSTREAM_SCREENSHOTS")
    with serve(filled.hub) as base:
        context, page = _all_pages(browser, base, filled, {"width": 1200, "height": 900})
        for url in filled.urls():
            response = page.goto(f"{base}{url}")
            assert response is not None and response.status == 200, url
            assert page.locator("h1").count() == 1, url
            if out:
                name = re.sub(r"[^a-z0-9]+", "-", url.strip("/").split("?")[0]) or "dashboard"
                page.screenshot(path=str(Path(out) / f"{name}.png"), full_page=True)
        context.close()

"""Signing in to the pages, and the forms' protection, over real HTTP as an attacker
would try them: forged and cross-site posts, stolen cookies after sign-out, revoked
tokens, open redirects and hostile query strings."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from tests.people import owner
from tests.server.conftest import serve
from tests.web.conftest import token
from upstream import accounts
from upstream.db.schema import ApiToken, Report, WebSession, utcnow
from upstream.hub import Hub
from upstream.reports import parse_report, submit
from upstream.server.pages.web import COOKIE

FORM = {"model": "tiny", "prompt": "Is it?", "check_type": "exact", "check_value": "no"}


@pytest.fixture
def base(tiny_hub: Hub) -> Iterator[str]:
    with serve(tiny_hub) as url:
        yield url


def signed_in(base: str, secret: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base, timeout=60)
    r = client.post("/sign-in", data={"token": secret, "next": "/reports"})
    assert r.status_code == 303 and r.headers["location"] == "/reports"
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/").text)
    assert found
    return client, found.group(1)


def reports(hub: Hub) -> int:
    with hub.session() as s:
        return len(s.scalars(select(Report)).all())


def test_sign_in_sets_a_session_cookie_only_this_hub_can_use(base: str, tiny_hub: Hub) -> None:
    secret = token(tiny_hub, "ana", "reporter")
    r = httpx.post(f"{base}/sign-in", data={"token": secret})
    cookie = r.headers["set-cookie"].lower()
    assert r.status_code == 303
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    value = r.cookies[COOKIE]
    assert value.startswith("ws_") and secret not in cookie  # the token is never the cookie
    with tiny_hub.session() as s:  # only its hash is kept
        assert s.scalars(select(WebSession.digest)).all() == [accounts._digest(value)]
    page = httpx.get(f"{base}/", cookies={COOKIE: value})
    assert "ana" in page.text and "Sign out" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    # signed in, one may sign in again as someone else (the form carries the CSRF value)
    client, csrf = signed_in(base, secret)
    other = token(tiny_hub, "bo", "contributor")
    again = client.post("/sign-in", data={"token": other, "csrf": csrf, "next": "/"})
    assert again.status_code == 303 and "bo" in client.get("/").text
    client.close()
    wrong = httpx.post(f"{base}/sign-in", data={"token": "up_not-a-real-token"})
    assert wrong.status_code == 401 and "unknown or revoked token" in wrong.text
    assert COOKIE not in wrong.cookies


def test_forms_need_the_session_s_csrf_value_and_this_origin(base: str, tiny_hub: Hub) -> None:
    client, csrf = signed_in(base, token(tiny_hub, "ana", "reporter"))
    before = reports(tiny_hub)
    for data, headers in [
        (FORM, {}),  # no csrf: a form another site made
        ({**FORM, "csrf": "0" * 32}, {}),  # a guessed one
        ({**FORM, "csrf": csrf}, {"Origin": "https://evil.example"}),  # posted from elsewhere
        ({**FORM, "csrf": csrf}, {"Origin": "null"}),  # from a sandboxed frame of elsewhere
    ]:
        r = client.post("/reports/new", data={**data, "action": "file"}, headers=headers)
        assert r.status_code == 403, r.text
        assert "text/html" in r.headers["content-type"]
    assert reports(tiny_hub) == before  # nothing was filed
    r = client.post("/reports/new", data={**FORM, "csrf": csrf, "action": "file"})
    assert r.status_code == 303 and re.fullmatch(r"/reports/\d+", r.headers["location"])
    assert "Filed; reproducing it now." in client.get(r.headers["location"]).text  # once
    assert "Filed; reproducing it now." not in client.get(r.headers["location"]).text
    assert "evil" not in client.get("/", params={"note": "evil"}).text  # no note from a link
    assert reports(tiny_hub) == before + 1
    client.close()


def test_a_session_ends_at_sign_out_when_its_token_is_revoked_and_when_it_expires(
    base: str, tiny_hub: Hub
) -> None:
    secret = token(tiny_hub, "ana", "reporter")
    client, csrf = signed_in(base, secret)
    stolen = client.cookies[COOKIE]
    client.post("/sign-out", data={"csrf": csrf})
    replay = httpx.Client(base_url=base, cookies={COOKIE: stolen})
    assert "Sign in" in replay.get("/").text  # the old cookie is nobody now
    r = replay.post("/reports/new", data={**FORM, "csrf": csrf, "action": "file"})
    assert r.status_code == 401 and "sign in" in r.text.lower()

    client, _ = signed_in(base, secret)
    with tiny_hub.session() as s:
        made = s.scalars(select(ApiToken).where(ApiToken.digest == accounts._digest(secret))).one()
    accounts.revoke_token(tiny_hub, owner(tiny_hub), made.id)
    assert "Sign in" in client.get("/").text

    client, _ = signed_in(base, token(tiny_hub, "ana", "reporter"))
    assert "Sign out" in client.get("/").text
    with tiny_hub.session() as s, s.begin():
        for row in s.scalars(select(WebSession)):
            row.expires_at = utcnow() - timedelta(seconds=1)
    assert "Sign in" in client.get("/").text


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "x", "/\\evil"])
def test_sign_in_never_sends_the_browser_to_another_site(
    base: str, tiny_hub: Hub, target: str
) -> None:
    secret = token(tiny_hub, "ana", "reporter")
    r = httpx.post(f"{base}/sign-in", data={"token": secret, "next": target})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "evil" not in httpx.get(f"{base}/sign-in", params={"next": target}).text


def test_hostile_queries_and_forms_get_a_4xx_page(base: str, tiny_hub: Hub) -> None:
    for url in [
        "/reports?page=0",
        "/reports?page=10001",
        "/reports?cluster=x",
        "/reports?status=nonsense",
        "/reports/99999",
        "/reports/0",
        "/models/" + "m" * 300,
        "/suites/none",
        "/evals/123456",
        "/compare/999",
        "/contributions/2147483648",
        "/releases/-1",
        "/reports?q=" + "%" * 300,
    ]:
        r = httpx.get(f"{base}{url}")
        assert 400 <= r.status_code < 500, f"{url}: {r.status_code}"
        assert "text/html" in r.headers["content-type"], url
    for headers in ({"Authorization": "Bearer up_forged"}, {"Authorization": "Basic eDp5"}):
        for url, status in [("/reports", 401), ("/nope", 404)]:  # error pages, bad token
            r = httpx.get(f"{base}{url}", headers=headers)
            assert r.status_code == status and "text/html" in r.headers["content-type"], url
    client, csrf = signed_in(base, token(tiny_hub, "ana", "reporter"))
    for data in [
        {**FORM, "check_type": "number", "check_value": "many"},
        {**FORM, "check_type": "shell"},
        {**FORM, "check_type": "regex", "check_value": "(" * 2000},
        {**FORM, "prompt": ""},
        {**FORM, "model": "nope"},
        {**FORM, "prompt": "x" * 100_001},
        {**FORM, "check_type": "max_words", "check_value": "nan"},
        {**FORM, "check_type": "max_words", "check_value": "²"},
        {**FORM, "check_type": "number", "check_value": "inf"},
        {**FORM, "check_type": "number", "check_value": "1e400"},
    ]:
        r = client.post("/reports/new", data={**data, "csrf": csrf, "action": "file"})
        assert 400 <= r.status_code < 500, f"{data}: {r.status_code}"
        assert 'class="error"' in r.text
        # the form keeps what was typed, to be corrected
        if data["prompt"] and len(data["prompt"]) < 100:
            assert data["prompt"] in r.text
    report = int(client.post("/reports/new", data={**FORM, "csrf": csrf, "action": "file"})
                 .headers["location"].rsplit("/", 1)[1])  # fmt: skip
    maintainer, mcsrf = signed_in(base, token(tiny_hub, "mia", "maintainer"))
    for url, data in [
        (f"/reports/{report}/close", {"duplicate_of": "²"}),
        (f"/reports/{report}/close", {"duplicate_of": "99999999999999999999"}),
        (f"/reports/{report}/expect", {"check_type": "number", "check_value": "nan"}),
        ("/suites", {"name": "s", "tag": "x", "heldout_percent": "²"}),
        ("/suites", {"name": "s", "tag": "x", "heldout_percent": "95"}),
    ]:
        r = maintainer.post(url, data={**data, "csrf": mcsrf})
        assert 400 <= r.status_code < 500 and "text/html" in r.headers["content-type"], url
    maintainer.close()
    client.close()


def test_what_people_typed_is_shown_as_text_never_as_markup(base: str, tiny_hub: Hub) -> None:
    client, csrf = signed_in(base, token(tiny_hub, "ana", "reporter"))
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    r = client.post(
        "/reports/new",
        data={**FORM, "prompt": hostile, "description": hostile, "tags": "x", "csrf": csrf,
              "action": "file"},
    )  # fmt: skip
    assert r.status_code == 303
    page = client.get(r.headers["location"].split("?")[0]).text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    listing = client.get("/reports").text
    assert "<script>alert" not in listing and "&lt;script&gt;" in listing
    client.close()


def test_lists_are_paged_with_links_to_their_neighbours(base: str, tiny_hub: Hub) -> None:
    token(tiny_hub, "ana", "reporter")
    items = [
        (i, parse_report({"model": "tiny", "prompt": f"Question number {i}?", "tags": ["paged"]}))
        for i in range(30)
    ]
    submit(tiny_hub, items, accounts.actor_named(tiny_hub, "ana"), "cli")
    first = httpx.get(f"{base}/reports", params={"tag": "paged"}).text
    assert first.count("<tr>") - 1 == 25  # a page of 25, under the header row
    nxt = re.search(r'href="(\?[^"]*page=2[^"]*)" rel="next"', first)
    assert nxt and "page 1" in first and 'rel="prev"' not in first
    second = httpx.get(f"{base}/reports{html.unescape(nxt.group(1))}").text
    assert second.count("<tr>") - 1 == 5 and "page 2" in second
    assert 'rel="prev"' in second and 'rel="next"' not in second
    assert "tag=paged" in html.unescape(nxt.group(1))  # the filters ride along

"""What every page shares: templates, who is looking, forms that are safe to post.

A browser signs in with an API token once (`accounts.sign_in`) and holds a session
cookie afterwards; pages read the actor from it and pass it to the same domain
functions the API calls, so what a page offers and what it allows are both decided by
`upstream.access`. A form post must carry the session's CSRF value and, when the browser
says where it comes from (Origin), come from this hub.
"""

from __future__ import annotations

import hmac
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from upstream import __version__, accounts
from upstream.access import ANONYMOUS, Actor, may
from upstream.errors import Forbidden, InvalidInput, Unauthorized
from upstream.hub import Hub
from upstream.server.deps import get_hub

HERE = Path(__file__).parent
STATIC = HERE / "static"
COOKIE = "upstream_session"
NOTE = "upstream_note"  # what a form did, shown once on the page it leads to
PAGE_SIZE = 25
MAX_FORM_FIELDS = 200
MAX_PAGE = 10_000  # ?page= beyond this is refused: OFFSET that deep is a scan, not a page

templates = Jinja2Templates(directory=HERE / "templates")
# Every page: scripts, styles, images and form targets of this hub only, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _when(value: str | datetime | None) -> str:
    """A stored time as people read it: `2026-12-07 01:02` (UTC)."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return text[:16].replace("T", " ")


def _percent(value: float | None, digits: int = 0) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.{digits}f} %"


templates.env.filters["when"] = _when
templates.env.filters["percent"] = _percent
templates.env.globals["version"] = __version__


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page, and the CSRF value their forms carry (empty for one
    who sent a bearer token: no browser sends that by itself, so no other site can)."""

    actor: Actor
    csrf: str = ""

    @property
    def signed_in(self) -> bool:
        return not self.actor.anonymous

    def may(self, action: str, model: str | None = None, owner: str | None = None) -> bool:
        """What a page offers is what access allows; the domain enforces it again."""
        return may(self.actor, action, model, owner)


def get_viewer(request: Request, hub: Hub = Depends(get_hub)) -> Viewer:
    """The session cookie's actor; or a bearer token's, as the API reads it (scripts may
    fetch pages too); else anonymous."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization: give `Bearer <token>`")
        return Viewer(accounts.authenticate(hub, token.strip()))
    cookie = request.cookies.get(COOKIE, "")
    actor = accounts.session_actor(hub, cookie) if cookie else None
    if actor is None:
        return Viewer(ANONYMOUS)
    return Viewer(actor, accounts.csrf_value(cookie))


async def read_form(request: Request, viewer: Viewer = Depends(get_viewer)) -> FormData:
    """A posted form that came from one of this hub's pages: the session's CSRF value in
    `csrf` (a signed-in viewer), and an Origin, when the browser sends one, of this host."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        # "null" too: a sandboxed frame of another site posts with that origin
        raise Forbidden(f"a form posted from {origin}: forms are taken from this hub's pages")
    form = await request.form(max_fields=MAX_FORM_FIELDS, max_files=0)
    sent = form.get("csrf")
    if viewer.csrf and not (isinstance(sent, str) and hmac.compare_digest(sent, viewer.csrf)):
        raise Forbidden("the form is out of date or came from another site: reload the page")
    return form


def field(form: FormData, name: str, limit: int = 10_000) -> str:
    """A text field of a form (empty when missing), within `limit` characters."""
    value = form.get(name) or ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: a text field, not a file", field=name)
    if len(value) > limit:
        raise InvalidInput(f"{name}: at most {limit} characters", field=name)
    return value.strip()


def whole(form: FormData, name: str, low: int, high: int) -> int | None:
    """A whole-number field (None when empty), from `low` to `high`."""
    text = field(form, name, 20)
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", text) or not low <= int(text) <= high:
        raise InvalidInput(f"{name}: a whole number from {low} to {high}", field=name)
    return int(text)


def render(
    request: Request, viewer: Viewer, name: str, status: int = 200, **context: Any
) -> HTMLResponse:
    """A page; with the note a form left for it (shown once)."""
    note = unquote(request.cookies.get(NOTE, ""))[:500]
    page = templates.TemplateResponse(
        request, name, {"viewer": viewer, "path": request.url.path, "note": note, **context}, status
    )
    page.headers.update(PAGE_HEADERS)
    if note:
        page.delete_cookie(NOTE, path="/")
    return page


def back(to: str, note: str = "") -> Response:
    """After a form: see the page it changed (303, so a reload does not post again), with
    what happened as a note. The note rides in a short-lived cookie, not the URL, so no
    link from elsewhere can make a page of this hub say something it did not."""
    out = RedirectResponse(to, 303)
    if note:
        out.set_cookie(NOTE, quote(note[:500]), max_age=60, httponly=True, samesite="lax")
    return out


@dataclass(frozen=True)
class Pager:
    """One page of a list: which rows to fetch, and the links to its neighbours."""

    page: int
    size: int = PAGE_SIZE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    def links(self, request: Request, shown: int) -> dict[str, str | None]:
        """Links to the previous and next pages (`shown` rows of size+1 asked: more?)."""

        def to(page: int) -> str:
            query = {k: v for k, v in request.query_params.items() if k != "page" and v}
            return "?" + urlencode({**query, "page": page})

        return {
            "previous": to(self.page - 1) if self.page > 1 else None,
            "next": to(self.page + 1) if shown > self.size else None,
            "page": str(self.page),
        }


def safe_path(target: str) -> str:
    """Where to go after a form: a path of this hub only (never another site)."""
    parts = urlsplit(target)
    odd = "\\" in target or any(ord(c) < 32 for c in target)  # browsers read /\x as //x
    if odd or parts.scheme or parts.netloc or not target.startswith("/") or target[1:2] == "/":
        return "/"
    return target


def pager(page: int = 1) -> Pager:
    if not 1 <= page <= MAX_PAGE:
        raise InvalidInput(f"page: 1 to {MAX_PAGE}", field="page")
    return Pager(page)

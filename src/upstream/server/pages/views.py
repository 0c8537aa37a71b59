"""The pages, put together: one router for the app, the static files, and errors shown
as pages to browsers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from upstream.access import ANONYMOUS
from upstream.errors import UpstreamError
from upstream.server.pages import catalog, contributions, home, reports
from upstream.server.pages.web import STATIC, Viewer, get_viewer, render

router = APIRouter(include_in_schema=False)
for part in (home, reports, contributions, catalog):
    router.include_router(part.router)

static = StaticFiles(directory=STATIC)
# Paths the API and the OpenAI-compatible endpoint answer in JSON; everything else is a
# page, whose errors are pages too.
NOT_PAGES = ("/api/", "/v1/", "/health", "/openapi.json", "/static/")
TITLES = {
    400: "That request cannot be read",
    401: "Sign in first",
    403: "Not allowed",
    404: "Not found",
    409: "That clashes with what is there",
    413: "Too large",
    422: "That cannot be taken",
    429: "Too many requests",
}


def is_page(request: Request) -> bool:
    return not request.url.path.startswith(NOT_PAGES)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """An error as a page, with the signed-in viewer's header."""
    try:
        viewer = get_viewer(request, request.app.state.hub)
    except UpstreamError:  # the error may be the request's own token: show it anyway
        viewer = Viewer(ANONYMOUS)
    title = TITLES.get(status, "Something went wrong" if status >= 500 else "Cannot do that")
    return render(request, viewer, "error.html", status, code=status, title=title, message=message)

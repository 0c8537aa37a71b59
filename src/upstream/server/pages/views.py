"""The pages: for now, the models and their revisions."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from upstream import __version__, registry
from upstream.hub import Hub
from upstream.server.deps import get_hub

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


@router.get("/", response_class=HTMLResponse)
def index(request: Request, hub: Hub = Depends(get_hub)) -> HTMLResponse:
    with hub.session() as s:
        models = [registry.model_detail(m) for m in registry.list_models(s)]
    return templates.TemplateResponse(
        request, "index.html", {"models": models, "version": __version__}
    )

"""The FastAPI application that `upstream up` serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from upstream import __version__
from upstream.errors import UpstreamError
from upstream.hub import Hub


def create_app(hub: Hub, worker: bool = False) -> FastAPI:
    """The app for `hub`; with `worker`, an in-process job worker runs alongside."""
    from upstream.server.api import contributions, jobs, models, releases, reports, suites
    from upstream.server.pages import views

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from upstream.jobs import Worker

        job_worker = Worker(hub) if worker else None
        thread = job_worker.start_thread() if job_worker else None
        yield
        if job_worker and thread:
            job_worker.stopping.set()
            thread.join(timeout=5)

    # The interactive /docs pages load scripts from a CDN; the hub works offline, so only the
    # OpenAPI document itself is served.
    app = FastAPI(
        title="Upstream", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.hub = hub

    @app.exception_handler(UpstreamError)
    async def _user_error(request: Request, exc: UpstreamError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'] if x != 'body')}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"error": problems}, status_code=422)

    @app.get("/health", tags=["hub"])
    def health() -> dict[str, object]:
        """Liveness and the basics: version and whether the database answers."""
        from sqlalchemy import text

        with hub.session() as s:
            s.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    app.include_router(models.router, prefix="/api")
    app.include_router(jobs.router, prefix="/api")
    app.include_router(reports.router, prefix="/api")
    app.include_router(suites.router, prefix="/api")
    app.include_router(contributions.router, prefix="/api")
    app.include_router(releases.router, prefix="/api")
    app.include_router(views.router)
    return app

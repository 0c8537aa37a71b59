"""The FastAPI application that `upstream up` serves."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from upstream import __version__, serving
from upstream.errors import UpstreamError, input_place
from upstream.hub import Hub
from upstream.jobs import Worker
from upstream.limits import RateLimiter
from upstream.server.api import (
    accounts,
    contributions,
    jobs,
    models,
    releases,
    reports,
    suites,
    v1,
)
from upstream.server.body import BodyLimit
from upstream.server.pages import views
from upstream.shapes import Shape

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ErrorDetail(Shape):
    code: str = Field(description="machine-readable: not_found, forbidden, invalid_input, …")
    message: str = Field(description="what is wrong and what is allowed, for a person")
    field: str | None = Field(description="the input at fault (`messages.0.content`), if one is")


class ErrorBody(Shape):
    """The one shape of every 4xx (and 5xx) the API answers."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in [
        (400, "malformed JSON, or a Host this hub does not serve"),
        (401, "no token, or an unknown, expired or revoked one"),
        (403, "the role or the token's scopes do not allow it"),
        (404, "no such thing (or one hidden from the caller)"),
        (409, "clashes with the current state"),
        (413, "the body is over max_request_mb"),
        (422, "input that cannot be accepted; `field` names it"),
        (429, "over write_rate_per_minute; see Retry-After"),
        (503, "a served model's queue is full (serve_max_waiting); see Retry-After"),
        (504, "a served request took longer than serve_timeout"),
    ]
}
HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    429: "rate_limited",
}
# OpenAI's error `type` for a status, so its clients raise their usual exceptions
OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout",
}
V1 = "/v1/"
# Served chats are bounded by each model's queue (serve_max_waiting), not the write rate.
NOT_RATED = frozenset({"/v1/chat/completions"})


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8321` → `[::1]`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    openai: bool = False,
) -> JSONResponse:
    """The one shape of every error the API sends; with `openai` (under /v1), OpenAI's:
    `field` is called `param` and a `type` is added."""
    body: dict[str, Any] = {"error": {"code": code, "message": message, "field": field}}
    if openai:
        kind = OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        body = {"error": {"message": message, "type": kind, "param": field, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _openai(request: Request) -> bool:
    return request.url.path.startswith(V1)


def validation_response(exc: RequestValidationError, openai: bool = False) -> JSONResponse:
    """A body or parameter that does not fit its model: every problem in the message, the
    first one's place in `field`; a body that is not JSON at all says so."""
    errors = list(exc.errors())
    places = [input_place(e["loc"]) for e in errors]
    if any(e["type"] == "json_invalid" for e in errors):
        found = next(e for e in errors if e["type"] == "json_invalid")
        why = found.get("ctx", {}).get("error", "not valid JSON")
        return error_response(
            400, "malformed_json", f"the body is not valid JSON: {why}", openai=openai
        )
    said = [
        "unknown field"
        if e["type"] == "extra_forbidden"
        else e["msg"].removeprefix("Value error, ")
        for e in errors
    ]
    message = "; ".join(
        dict.fromkeys(f"{p or 'body'}: {m}" for p, m in zip(places, said, strict=True))
    )
    field = (places[0] if places else "") or None
    return error_response(422, "invalid_input", message, field, openai=openai)


def create_app(hub: Hub, worker: bool = False) -> FastAPI:
    """The app for `hub`; with `worker`, an in-process job worker runs alongside."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:

        job_worker = Worker(hub) if worker else None
        thread = job_worker.start_thread() if job_worker else None
        yield
        serving.stop()
        if job_worker and thread:
            job_worker.stopping.set()
            thread.join(timeout=5)

    # The interactive /docs pages load scripts from a CDN; the hub works offline, so only the
    # OpenAPI document itself is served.
    settings = hub.settings
    app = FastAPI(
        title="Upstream",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=ERRORS,
    )
    body_limit = int(settings.max_request_mb * 2**20)
    upload_limit = int(settings.adapter_max_mb * 2**20)
    streamed = frozenset({contributions.UPLOAD_PATH})  # each caps what it writes itself
    app.add_middleware(BodyLimit, limit=body_limit, streamed=streamed)
    app.state.hub = hub
    limiter = RateLimiter(settings.write_rate_per_minute)
    hosts = frozenset(h.lower() for h in settings.host_names)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        """Only the configured Host names (a DNS-rebinding page cannot reach the hub), a
        body within `max_request_mb` (`BodyLimit` counts a body sent without a length),
        and writes within `write_rate_per_minute` per token and client address."""
        host = host_name(request.headers.get("host", ""))
        openai = _openai(request)
        if "*" not in hosts and host not in hosts:
            return error_response(
                400,
                "bad_host",
                f"Host {host!r} is not served here (setting allowed_hosts)",
                openai=openai,
            )
        declared = request.headers.get("content-length", "")
        cap = upload_limit if request.url.path in streamed else body_limit
        if declared.isdigit() and int(declared) > cap:  # refused before it is read
            return error_response(
                413,
                "too_large",
                f"the body is {int(declared)} bytes; at most {cap} here (settings "
                f"max_request_mb = {settings.max_request_mb:g}, adapter_max_mb for uploads)",
                openai=openai,
            )
        if request.method in WRITES and request.url.path not in NOT_RATED:
            auth = request.headers.get("authorization", "")
            keys = [f"addr:{request.client.host if request.client else '?'}"]
            if auth:
                keys.append("token:" + hashlib.sha256(auth.encode()).hexdigest())
            wait = max(limiter.hit(k) for k in keys)
            if wait:
                return error_response(
                    429,
                    "rate_limited",
                    f"more than {settings.write_rate_per_minute} writes a minute; "
                    f"try again in {math.ceil(wait)} s",
                    headers={"Retry-After": str(math.ceil(wait))},
                    openai=openai,
                )
        return await call_next(request)

    @app.exception_handler(UpstreamError)
    async def _user_error(request: Request, exc: UpstreamError) -> Response:
        if views.is_page(request):
            return views.error_page(request, exc.status_code, str(exc))
        headers = {"Retry-After": "1"} if exc.status_code == 503 else None
        return error_response(
            exc.status_code, exc.code, str(exc), exc.field, headers, _openai(request)
        )

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        answer = validation_response(exc, _openai(request))
        if views.is_page(request):
            said = json.loads(bytes(answer.body))["error"]["message"]
            return views.error_page(request, answer.status_code, said)
        return answer

    # Input no validator caught that the database cannot hold: still the client's to fix.
    @app.exception_handler(UnicodeEncodeError)
    async def _bad_text(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        message = "text holds characters that are not valid Unicode (a lone surrogate?)"
        return error_response(422, "invalid_text", message, openai=_openai(request))

    @app.exception_handler(OverflowError)
    async def _too_big(request: Request, exc: OverflowError) -> JSONResponse:
        message = "a number is too large (at most 2**63 - 1)"
        return error_response(422, "invalid_input", message, openai=_openai(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if views.is_page(request) and exc.status_code < 500:
            return views.error_page(request, exc.status_code, str(exc.detail))
        code = getattr(exc, "code", None) or HTTP_CODES.get(
            exc.status_code, "bad_request" if exc.status_code < 500 else "error"
        )
        field = getattr(exc, "field", None)
        return error_response(
            exc.status_code, code, str(exc.detail), field, exc.headers, _openai(request)
        )

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
    app.include_router(accounts.router, prefix="/api")
    app.include_router(v1.router, prefix="/v1")
    app.include_router(views.router)
    app.mount("/static", views.static, name="static")
    return app
